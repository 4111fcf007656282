"""Fast answers (issue 20 item 2): `dmattack --help`, `dmattack CMD --help` and option errors
without importing torch, from options built from the config dataclasses and cached as data
(dmattack/commands/lazy.py): the cached options equal the live ones, a damaged or foreign cache is
not used; and --threads (item 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import cli
from dmattack.commands import lazy as cli_lazy
from dmattack.core import threads

ROOT = Path(__file__).resolve().parent.parent
LAZY_COMMANDS = ("train", "sample", "attack", "curve", "evaluate", "purify")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An option cache in ``tmp_path``, filled in this process (torch is imported here)."""
    monkeypatch.setenv(cli_lazy.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(cli_lazy, "_MEMO", {})
    cli_lazy._options(next(iter(cli_lazy._GROUPS.values())))
    monkeypatch.setattr(cli_lazy, "_MEMO", {})
    return tmp_path / "cache"


def _imported(args: list[str], cache_dir: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``dmattack args`` in a fresh interpreter; the modules it imported (-X importtime)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), cli_lazy.CACHE_ENV: str(cache_dir)}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import cli; cli.main()",
                           *args], env=env, capture_output=True, text=True, timeout=120)
    modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
               if line.startswith("import time:") and "|" in line}
    return proc, modules


@pytest.mark.parametrize("args,code", [
    (["--help"], 0),
    (["attack", "--help"], 0),
    (["curve", "--help"], 0),
    (["attack", "--method", "pgd", "--bogus", "1"], 2),
    (["train", "--steps", "x"], 2),
])
def test_help_and_option_errors_do_not_import_torch(cache, args, code):
    proc, modules = _imported(args, cache)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "click" in modules and "dmattack.commands.lazy" in modules  # the measurement works
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}
    if code == 2:
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1 and ("--bogus" in errors[0] or "'x'" in errors[0])


def test_cached_options_equal_the_live_ones(cache):
    """Rebuilt from the cache, every option of every command is the live option."""
    doc = json.loads(next((cache / "cli").glob("options-*.json")).read_text())
    assert set(doc["groups"]) == set(cli_lazy._GROUPS)  # every group was expressible as data
    for key, group in cli_lazy._GROUPS.items():
        live = [cli_lazy._to_data(o) for o in group.live()]
        rebuilt = [cli_lazy._to_data(cli_lazy._from_data(d)) for d in doc["groups"][key]]
        assert rebuilt == live, key


def test_help_from_the_cache_is_the_live_help(cache):
    runner = CliRunner()
    for name in LAZY_COMMANDS:
        command = cli.main.commands[name]
        command.params = command.declared  # built again when read
        cached = runner.invoke(cli.main, [name, "--help"]).output
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cli_lazy, "_read_cache", lambda: None)
            mp.setattr(cli_lazy, "_write_cache", lambda groups: None)
            command.params = command.declared
            live = runner.invoke(cli.main, [name, "--help"]).output
        command.params = command.declared
        assert cached == live and "--threads" in live, name


def test_damaged_or_foreign_cache_is_not_used(cache, monkeypatch):
    path = next((cache / "cli").glob("options-*.json"))
    doc = json.loads(path.read_text())
    key = next(iter(doc["groups"]))
    doc["groups"][key][0]["help"] = "edited"  # the digest no longer matches
    path.write_text(json.dumps(doc))
    assert cli_lazy._read_cache() is None
    monkeypatch.setattr(cli_lazy, "_MEMO", {})
    doc["sha256"] = cli_lazy._digest(doc["groups"])
    doc["key"] = "0" * 64  # another installation's options
    path.write_text(json.dumps(doc))
    assert cli_lazy._read_cache() is None
    monkeypatch.setattr(cli_lazy, "_MEMO", {})
    options = cli_lazy._options(cli_lazy._GROUPS[key])  # rebuilt live, cache rewritten
    assert all(o.help != "edited" for o in options)
    assert cli_lazy._read_cache() is not None


def test_unwritable_cache_folder_only_costs_speed(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(cli_lazy.CACHE_ENV, str(blocker / "cache"))  # under a file: no folder
    monkeypatch.setattr(cli_lazy, "_MEMO", {})
    group = next(iter(cli_lazy._GROUPS.values()))
    assert [o.name for o in cli_lazy._options(group)] == [o.name for o in group.live()]


def test_cache_key_follows_the_sources(monkeypatch, tmp_path):
    """The key hashes every source file: an edited file gives another key."""
    monkeypatch.setattr(cli_lazy, "_MEMO", {})
    key = cli_lazy.cache_key()
    monkeypatch.setattr(cli_lazy, "_MEMO", {})
    monkeypatch.setattr(cli_lazy.Path, "read_bytes",
                        lambda self: b"edited" if self.name == "settings.py" else
                        open(self, "rb").read())
    assert cli_lazy.cache_key() != key


# ----------------------------------------------------------------------------- threads
def test_idle_cores():
    assert threads.idle_cores(2, 7.3) == 1  # a busy 2-core machine: one thread
    assert threads.idle_cores(8, 2.4) == 6
    assert threads.idle_cores(4, 0.0) == 4
    assert threads.idle_cores(4, 0.6) == 3  # rounded


def test_default_threads_precedence(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv(threads.ENV, "2")
    assert threads.default_threads() == (2, threads.ENV)
    monkeypatch.delenv(threads.ENV)
    assert threads.default_threads() == (3, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "idle_cores", lambda: 5)
    assert threads.default_threads() == (5, "idle cores")


def test_threads_option_sets_torch_threads(monkeypatch, tmp_path):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    try:
        result = CliRunner().invoke(cli.main, ["leaderboard", "--threads", "2", "--out",
                                               str(tmp_path / "site"), str(tmp_path / "none")])
        assert result.exit_code == 2  # no such card: refused after --threads is applied
        assert torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"
        bad = CliRunner().invoke(cli.main, ["plugins", "--threads", "0"])
        assert bad.exit_code == 2 and "--threads" in bad.output
    finally:
        torch.set_num_threads(before)


def test_threads_allowed_with_resume(tmp_path):
    result = CliRunner().invoke(cli.main, ["train", "--resume", str(tmp_path / "none"),
                                           "--threads", "1"])
    assert result.exit_code == 2 and "cannot change on --resume" not in result.output
