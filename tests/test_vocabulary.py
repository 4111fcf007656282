"""One vocabulary, one strictness rule (issue 20 item 4).

Every deprecated spelling of every command prints exactly one warning line and hands the library
the same settings as its new name; every option the chosen training method, attack, sampler or
(in purify) the absence of a purifier does not read is refused with one ``Error:`` line, exit
code 2. The library calls are captured as in tests/test_every_option.py (nothing runs).
"""

from __future__ import annotations

import json

import click
import pytest
from test_every_option import (
    BASES,
    DDPM,
    _capture,
    _invoke,
    _off_default,
    _options,
)

import cli

# (command, base id in BASES, deprecated arguments, the same with the canonical spelling)
DEPRECATED = [
    ("sample", "sample", ["--sampler", "ddim", "--steps", "7"],
     ["--sampler", "ddim", "--sampler-steps", "7"]),
    ("attack", "attack", ["--sampler", "ddim", "--steps", "7"],
     ["--sampler", "ddim", "--sampler-steps", "7"]),
    ("curve", "curve", ["--sampler", "ddim", "--steps", "7"],
     ["--sampler", "ddim", "--sampler-steps", "7"]),
    ("evaluate", "evaluate", ["--sampler", "ddim", "--steps", "7"],
     ["--sampler", "ddim", "--sampler-steps", "7"]),
    ("curve", "curve", ["--windows", "first,last"], ["--window", "first,last"]),
    ("purify", "purify", ["--attack", "bpda-eot"], ["--method", "bpda-eot"]),
]
# deprecated spellings whose value is recorded as given (a result key of its own), checked
# for the one warning and the setting it stands for
LEGACY = [("purify", "purify", ["--eval-mode", "majority:3"], ["--draws", "3"])]


def _deprecated_spellings(command: str) -> set[str]:
    """The hidden deprecated spellings a command accepts (``name__deprecated_i`` parameters)."""
    return {p.opts[0] for p in cli.main.commands[command].params
            if isinstance(p, click.Option) and "__deprecated_" in (p.name or "")}


def _run(base: str, args: list[str], tmp_path, monkeypatch) -> tuple[int, str, str | None]:
    command, base_args, target = BASES[base]
    _capture(monkeypatch, target)
    monkeypatch.setattr(cli, "RUNS_ROOT", tmp_path / "runs")
    return _invoke(command, [*base_args, *args], tmp_path)


def _assert_refused(code: int, output: str, names: list[str]) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), output
    assert any(n in lines[0] for n in names), output


def test_every_deprecated_spelling_is_covered():
    """A new deprecated spelling must be added to DEPRECATED (so this test runs it)."""
    for command in cli.main.commands:
        covered = {a for c, _, args, _ in [*DEPRECATED, *LEGACY] if c == command for a in args}
        assert _deprecated_spellings(command) <= covered, command
    olds = {o for *_, old in cli.VOCABULARY for o in old}  # docs/cli.md lists each
    assert {a for *_, args, _ in [*DEPRECATED, *LEGACY] for a in args
            if a.startswith("--")} - olds <= {"--sampler"}


@pytest.mark.parametrize("command,base,old,new", DEPRECATED,
                         ids=[f"{c}{o[-2]}" for c, _, o, _ in DEPRECATED])
def test_deprecated_spelling_warns_once_and_records_the_same(command, base, old, new,
                                                             tmp_path, monkeypatch):
    code, output, got = _run(base, old, tmp_path / "old", monkeypatch)
    assert got is not None, output
    warnings = [line for line in output.splitlines() if line.startswith("warning:")]
    spelled = next(a for a in old if a not in new)
    assert warnings == [f"warning: {spelled} is deprecated here; "
                        f"use {next(a for a in new if a not in old)}"], output
    code, output_new, want = _run(base, new, tmp_path / "new", monkeypatch)
    assert want is not None and "warning" not in output_new, output_new
    assert got.replace(str(tmp_path / "old"), "") == want.replace(str(tmp_path / "new"), "")
    assert got != _run(base, [], tmp_path / "base", monkeypatch)[2]  # the setting took effect


@pytest.mark.filterwarnings("ignore:--eval-mode is deprecated:DeprecationWarning")
@pytest.mark.parametrize("command,base,old,new", LEGACY)
def test_legacy_spelling_warns_once(command, base, old, new, tmp_path, monkeypatch):
    code, output, got = _run(base, old, tmp_path / "old", monkeypatch)
    assert got is not None, output
    warnings = [line for line in output.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {old[0]} is deprecated here; use {new[0]}"], output
    want = _run(base, new, tmp_path / "new", monkeypatch)[2]
    draws = [json.loads(r)[0][0]["draws"] for r in (got, want)]  # the setting it stands for
    assert draws[0] == draws[1] == int(new[1])


def _train_option(option: str) -> click.Option:
    return next(p for p in _options("train") if option in p.opts or option in
                p.secondary_opts)


def _objective_options() -> dict[str, str]:
    """train's objective options (every registered objective's): dotted path → option
    spelling."""
    from dmattack.core.settings import iter_settings, option_name
    from dmattack.training.objective_cli import train_options

    return {path: option_name(f) for path, f, _ in iter_settings(train_options())
            if path != "method"}


def test_train_refuses_what_the_objective_does_not_read(tmp_path, monkeypatch):
    """For each method: each objective option it does not read is refused (one line naming the
    option and the method); each it reads reaches the library with a changed setting."""
    from dmattack.core.registry import OBJECTIVES
    from dmattack.training.objectives import ObjectiveConfig

    base = _run("train", [], tmp_path / "base", monkeypatch)[2]
    checked = 0
    for method in OBJECTIVES.names():
        reads = ObjectiveConfig(method=method).reads()
        args0 = ["--method", method]
        recorded = _run("train", args0, tmp_path / method, monkeypatch)[2]
        assert recorded is not None and (method == "robust-adv" or recorded != base)
        for path, name in _objective_options().items():
            args = [*args0, *_off_default("train", _train_option(name))]
            code, output, got = _run("train", args, tmp_path / f"{method}{name}", monkeypatch)
            if path in reads:
                assert got is not None and got != recorded, (args, output)
            else:
                _assert_refused(code, output, [name])
                assert f"training method {method}" in output, output
                checked += 1
    assert checked >= 20  # ddpm alone reads none of the ~10 objective options


def test_madry_invariance_reads_no_lambda(tmp_path, monkeypatch):
    code, output, _ = _run("train", ["--method", "invariance", "--invariance-form", "madry",
                                     "--lambda", "0.5"], tmp_path, monkeypatch)
    _assert_refused(code, output, ["--lambda"])


@pytest.mark.parametrize("base", ["sample", "attack", "curve", "evaluate"])
def test_sampler_steps_refused_for_a_sampler_that_runs_every_step(base, tmp_path, monkeypatch):
    code, output, _ = _run(base, ["--sampler", "ddpm", "--sampler-steps", "10"], tmp_path,
                           monkeypatch)
    _assert_refused(code, output, ["--sampler-steps"])
    assert "sampler ddpm" in output
    code, output, got = _run(base, ["--sampler", "respaced", "--sampler-steps", "10"],
                             tmp_path / "ok", monkeypatch)
    assert got is not None, output


def test_attack_refuses_what_the_method_does_not_read(tmp_path, monkeypatch):
    """Every attack: each attack option its registry entry's config does not have is refused."""
    from dmattack.attacks.options import option_table
    from dmattack.core.registry import ATTACKS

    table = {o.param: o for o in option_table()}
    spec_options = [p for p in _options("attack") if p.name in table]
    checked = 0
    for method in ATTACKS.names():
        for option in spec_options:
            if method in table[option.name].entries:
                continue
            args = ["--method", method, *_off_default("attack", option)]
            code, output, _ = _run("attack", args, tmp_path / f"{method}{option.name}",
                                   monkeypatch)
            _assert_refused(code, output, [option.opts[0], option.name])
            checked += 1
    assert checked >= 10


def test_purify_refuses_purifier_options_without_a_purifier(tmp_path, monkeypatch):
    """Without --run only the undefended classifier is evaluated: t* (e.g. 5000, beyond any
    model's T) and every other purifier setting are refused before any work."""
    for option in _options("purify"):
        if option.name not in cli.PURIFIER_ONLY:
            continue
        args = [a.format(tmp=tmp_path) for a in _off_default("purify", option)]
        code, output, _ = _run("purify", args, tmp_path / option.name, monkeypatch)
        _assert_refused(code, output, [a for a in args if a.startswith("--")])
    code, output, _ = _run("purify", ["--t-star", "5000"], tmp_path / "t", monkeypatch)
    _assert_refused(code, output, ["--t-star 5000"])
    code, output, got = _run("purify", ["--run", DDPM, "--t-star", "0.2"], tmp_path / "run",
                             monkeypatch)
    assert got is not None, output


@pytest.mark.parametrize("args", [["sample", "--num-samples", "0"], ["demo", "--seeds", "0"],
                                  ["evaluate", "--feature-extractor", "x"],
                                  ["demo", "--section", "nope"], ["sample", "--eta", "5"],
                                  ["curve", "--memorization-space", "x"],
                                  ["attack", "--inception-weights", ""]])
def test_range_and_choice_errors_in_the_project_style(args):
    from click.testing import CliRunner

    result = CliRunner().invoke(cli.main, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"({args[1]}) = " in lines[0] and "is invalid; allowed: " in lines[0], result.output
