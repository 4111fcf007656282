"""Every accepted option is used (issue 18 item 3).

For each option of each `dmattack` command, set off its default: the command either passes a
different setting on to the library (and so into the result's record and key) or refuses it
with exit 2 and one line naming it. The expensive library call of each command is replaced by
a capture of its arguments (the settings it was called with), so no sampling or training runs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click
import pytest
import torch
from click.testing import CliRunner

import cli
from dmattack.runs.checkpoints import LoadedModel

ROOT = Path(__file__).resolve().parent.parent
DDPM = str(ROOT / "checkpoints" / "digits-ddpm")
ROBUST = str(ROOT / "checkpoints" / "digits-robust-adv")

# Options that change where or how fast a command runs, not what it computes. Each reason says why.
ALLOWED_UNUSED = {
    "device": "where it runs: results are the same on every device up to float round-off",
    "out": "where the result is written (its location, not its content)",
    "threads": "how fast it runs (torch's CPU threads), not what it computes",
}

# id → (command, base arguments, the library function replaced by the capture); several
# bases for a command whose options depend on another (the attack method, given samples)
BASES: dict[str, tuple[str, list[str], str]] = {
    "train": ("train", ["--dataset", "oblique-plane", "--preset", "mlp-small", "--num-data",
                        "64"], "dmattack.training.train.train"),
    "sample": ("sample", ["--run", DDPM], "dmattack.commands.workflows.write_samples"),
    "attack": ("attack", ["--run", DDPM], "dmattack.evaluation.attack_eval.run_attack"),
    "attack-trajectory": ("attack", ["--run", DDPM, "--method", "trajectory"],
                          "dmattack.evaluation.attack_eval.run_attack"),
    "attack-lookahead": ("attack", ["--run", DDPM, "--method", "lookahead"],
                         "dmattack.evaluation.attack_eval.run_attack"),
    "curve": ("curve", ["--run", DDPM], "dmattack.evaluation.attack_eval.run_curve"),
    "evaluate": ("evaluate", ["--run", DDPM], "evaluators.evaluate"),
    "evaluate-samples": ("evaluate", ["--run", DDPM, "--samples", "{tmp}/x.safetensors"],
                         "evaluators.evaluate"),
    "export": ("export", ["--run", DDPM], "dmattack.runs.pipeline.export_pipeline"),
    "purify": ("purify", ["--num-samples", "8"], "dmattack.purification.run_purification"),
    "demo": ("demo", [], "dmattack.demo.run_demo"),
    "card": ("card", ["--run", DDPM, "--protocol", "digits-quick-v1"],
             "dmattack.card.compute.make_cards"),
    "compare": ("compare", ["{tmp}/a.json", "{tmp}/b.json"],
                "dmattack.card.compare.compare_cards"),
}

# option → arguments that set it off its default (validly where a valid value exists). Flags
# not listed are switched to the other spelling than their default (an automatic default,
# None, counts as on: images clip by default); a "{tmp}" is the test's temporary folder.
OFF_DEFAULT: dict[str, list[str]] = {
    # train
    "--dataset": ["--dataset", "3-gaussians"], "--data-dir": ["--data-dir", "{tmp}"],
    "--resolution": ["--resolution", "16"], "--num-data": ["--num-data", "32"],
    "--corrupt-mode": ["--corrupt-mode", "outliers"],
    "--corrupt-fraction": ["--corrupt-fraction", "0.5"],
    "--corrupt-sigma": ["--corrupt-sigma", "0.3"], "--preset": ["--preset", "mlp"],
    "--dropout": ["--dropout", "0.2"], "--schedule": ["--schedule", "cosine"],
    "--timesteps": ["--timesteps", "500"], "--variance-type": ["--variance-type", "fixed_small"],
    "--lambda": ["--lambda", "0.5"], "--lambda-scaling": ["--lambda-scaling", "std"],
    "--rho": ["--rho", "3"], "--bias": ["--bias", "0.1"], "--ray-base": ["--ray-base", "var"],
    "--xi-range": ["--xi-range", "1", "3"], "--fgsm-step": ["--fgsm-step", "wong"],
    "--fgsm-cost": ["--fgsm-cost", "equivariance"],
    "--invariance-form": ["--invariance-form", "madry"], "--ip-gamma": ["--ip-gamma", "0.2"],
    "--steps": ["--steps", "7"], "--lr": ["--lr", "1e-3"], "--weight-decay": ["--weight-decay",
                                                                              "0.01"],
    "--warmup": ["--warmup", "3"], "--grad-clip": ["--grad-clip", "0.5"],
    "--ema-decay": ["--ema-decay", "0.99"], "--checkpoint-every": ["--checkpoint-every", "7"],
    "--sample-every": ["--sample-every", "7"], "--num-preview": ["--num-preview", "4"],
    "--preview-steps": ["--preview-steps", "7"], "--log-every": ["--log-every", "7"],
    "--num-workers": ["--num-workers", "1"], "--nan-policy": ["--nan-policy", "skip"],
    "--grad-accum": ["--grad-accum", "2"], "--resume": ["--resume", "{tmp}/no-run"],
    # model commands
    "--run": ["--run", ROBUST], "--pipeline": ["--pipeline", "{tmp}/no-pipeline"],
    "--sampler": ["--sampler", "ddim"], "--sampler-steps": ["--sampler-steps", "7"],
    "--eta": ["--eta", "0.5"], "--num-samples": ["--num-samples", "100"],
    "--batch-size": ["--batch-size", "7"], "--seed": ["--seed", "3"],
    "--first-sample": ["--first-sample", "5"], "--metrics": ["--metrics", "kid"],
    "--inception-weights": ["--inception-weights", "{tmp}/inception.pth"],
    "--samples": ["--samples", "{tmp}/x.safetensors"], "--samples-key": ["--samples-key",
                                                                         "clean"],
    "--feature-extractor": ["--feature-extractor", "inception"],
    "--memorization-space": ["--memorization-space", "pixels"],
    "--dinov2-dir": ["--dinov2-dir", "{tmp}"],
    # attacks
    "--method": ["--method", "fgsm"], "--steps-attacked": ["--steps-attacked", "25"],
    "--window": ["--window", "first"], "--windows": ["--windows", "first,last"],
    "--loss": ["--loss", "x0"], "--pgd-steps": ["--pgd-steps", "7"],
    "--alpha-scale": ["--alpha-scale", "0.25"], "--project": ["--project", "end"],
    "--random-dist": ["--random-dist", "uniform"], "--eps-scale": ["--eps-scale", "0.5"],
    "--iterations": ["--iterations", "7"], "--distance": ["--distance", "features"],
    "--eot": ["--eot", "2"], "--horizon": ["--horizon", "2"], "--keep": ["--keep", "last"],
    "--step-counting": ["--step-counting", "all"],
    "--checkpoint-minutes": ["--checkpoint-minutes", "5"], "--restarts": ["--restarts", "2"],
    # purify
    "--classifier": ["--classifier", "{tmp}/no-classifier.pt"],
    "--data": ["--data", "{tmp}/no-data.safetensors"], "--t-star": ["--t-star", "0.2"],
    "--purify-steps": ["--purify-steps", "3"], "--purify-sampler": ["--purify-sampler", "ddim"],
    "--eps": ["--eps", "0.1"],
    "--step-size": ["--step-size", "0.01"], "--eval-mode": ["--eval-mode", "majority:3"],
    # demo
    "--seeds": ["--seeds", "2"], "--section": ["--section", "toy"],
}
# per command, where the generic value above does not fit
OFF_DEFAULT_FOR = {
    ("train", "--seed"): ["--seed", "3"], ("train", "--method"): ["--method", "ddpm"],
    ("train", "--batch-size"): ["--batch-size", "7"],
    ("train", "--flip"): ["--flip"],  # the base trains on vectors: flips are off by default
    ("curve", "--method"): ["--method", "fgsm"],
    ("curve", "--steps-attacked"): ["--steps-attacked", "0,50"],
    ("purify", "--method"): ["--method", "pgd-eot"],
    ("purify", "--iterations"): ["--iterations", "3"], ("purify", "--eot"): ["--eot", "2"],
    ("purify", "--num-samples"): ["--num-samples", "4"],
    ("purify", "--batch-size"): ["--batch-size", "4"],
    ("purify", "--eta"): ["--purify-sampler", "ddim", "--eta", "0.5"],
    ("purify", "--run"): ["--run", DDPM], ("purify", "--loss"): ["--loss", "margin"],
    ("purify", "--restarts"): ["--restarts", "2"], ("purify", "--draws"): ["--draws", "3"],
    ("purify", "--attack-purify-steps"): ["--attack-purify-steps", "2"],
    ("purify", "--attack-sampler"): ["--attack-sampler", "ddim"],
    ("purify", "--attack-gradient"): ["--attack-gradient", "bpda"],
    ("demo", "--seed"): ["--seed", "3"],
    ("card", "--protocol"): ["--protocol", "digits-v1"],
    ("card", "--protocol-dir"): ["--protocol-dir", "{tmp}"],
    ("compare", "--protocol-dir"): ["--protocol-dir", "{tmp}"],
}


class Captured(Exception):
    """Raised by the stand-in of a command's library call, carrying its arguments."""


def _plain(value: Any) -> Any:
    """A JSON-able view of a library argument: configs as dicts, a model as its source and
    weights, a metric function as its identity."""
    if isinstance(value, LoadedModel):
        return {"source": value.source, "ema": value.ema, "fingerprint": value.fingerprint}
    if hasattr(value, "identity") and callable(value):
        return {"metric_fn": value.identity}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__, **{f.name: _plain(getattr(value, f.name))
                                                  for f in dataclasses.fields(value)}}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if callable(value):
        return None  # progress callbacks, join functions
    if isinstance(value, torch.Tensor):  # samples read from files
        return {"tensor": list(value.shape), "sum": float(value.double().sum())}
    if hasattr(value, "describe"):  # a data set
        return {"data": _plain(value.describe()), "size": len(value)}
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def _capture(monkeypatch, target: str) -> None:
    module, name = target.rsplit(".", 1)

    def stand_in(*args, **kwargs):
        raise Captured(json.dumps(_plain([args, kwargs]), sort_keys=True, default=str))

    monkeypatch.setattr(f"{module}.{name}", stand_in)


def _invoke(command: str, args: list[str], tmp: Path) -> tuple[int, str, str | None]:
    """(exit code, output, captured settings or None)."""
    extra = {"train": ["--out", str(tmp / "run")], "export": ["--out", str(tmp / "pipe")],
             "demo": ["--out", str(tmp / "report")],
             "evaluate": ["--out", str(tmp / "eval")]}.get(command, [])
    result = CliRunner().invoke(cli.main, [command, *args, *extra])
    if isinstance(result.exception, Captured):  # the --out folder given here is not a setting
        return 0, result.output, str(result.exception).replace(str(tmp), "<out>")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output, None


def _options(command: str) -> list[click.Option]:
    return [p for p in cli.main.commands[command].params
            if isinstance(p, click.Option) and not p.hidden and p.name != "help"]


def _off_default(command: str, option: click.Option) -> list[str]:
    name = option.opts[0]
    if (command, name) in OFF_DEFAULT_FOR:
        return OFF_DEFAULT_FOR[command, name]
    if name in OFF_DEFAULT:
        return OFF_DEFAULT[name]
    if option.is_flag and option.secondary_opts:  # --x/--no-x: the other one than the default
        return [option.secondary_opts[0] if option.default in (True, None) else name]
    if option.is_flag:
        return [name]
    raise AssertionError(f"no off-default value for `{command} {name}`: add it to OFF_DEFAULT")


@pytest.fixture
def sample_file(tmp_path) -> Path:
    from safetensors.torch import save_file

    save_file({"samples": torch.zeros(100, 1, 8, 8), "clean": torch.ones(100, 1, 8, 8)},
              str(tmp_path / "x.safetensors"))
    return tmp_path / "x.safetensors"


@pytest.mark.slow
@pytest.mark.parametrize("base", list(BASES))
def test_every_option_is_used_or_refused(base, tmp_path, monkeypatch, sample_file):
    command, base_args, target = BASES[base]
    base_args = [a.format(tmp=tmp_path) for a in base_args]
    _capture(monkeypatch, target)
    monkeypatch.setattr(cli, "RUNS_ROOT", tmp_path / "runs")
    # evaluate runs for real up to scoring (what results.json records: the scoring call's
    # arguments and protocol), with zeros for samples
    monkeypatch.setattr("dmattack.commands.workflows.sample_batched",
                        lambda model, diffusion, shape, seeds, *a, **k: torch.zeros(
                            len(seeds), *shape))
    code, output, recorded = _invoke(command, base_args, tmp_path / "base")
    assert recorded is not None, f"the base `{base}` did not reach its library call: {output}"
    unused = []
    for option in _options(command):
        if option.name in ALLOWED_UNUSED or f"{option.name}@{command}" in ALLOWED_UNUSED:
            continue
        args = [a.format(tmp=tmp_path) for a in _off_default(command, option)]
        code, output, got = _invoke(command, [*base_args, *args], tmp_path / option.name)
        if got is None:
            lines = [line for line in output.splitlines() if line.strip()]
            assert code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), (
                command, args, output)
            named = {option.name, *(o.lstrip("-") for o in option.opts), *args[1:]}
            assert any(n in lines[0] for n in named), (command, args, output)
        elif got == recorded:
            unused.append(" ".join(args))
    assert not unused, f"`dmattack {command}` ({base}) accepts and ignores: {unused}"
