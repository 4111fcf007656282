"""Every file a command reads is covered by its result's key (issue 18, "a test that finds the
next one").

One subprocess installs an audit hook (``sys.addaudithook``, the ``open`` event: it cannot be
removed, hence the subprocess) and runs ``sample``, ``attack``, ``curve``, ``evaluate`` and
``purify`` on a copy of the digits DDPM run, recording every file each opens. Leaving out the
Python installation, the repository's own source, scratch folders (temp, caches verified on
read) and the command's output folder, each file read must be covered by the result's key:

* a file of the run copy: changing one byte of it changes the key material of a fresh run
  (model fingerprints, point / unit keys, sha256s recorded in the result files) or makes the
  command refuse (exit 2, one line);
* a file that may not be changed here (e.g. the repository's digits-cnn weights): its sha256
  appears in the key material.

Files opened by native code (safetensors' Rust reader, mmap) raise no audit event; the loaders
hash every weight file in Python first (dmattack.runs.checkpoints.load_unet_folder), so they are
seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli

ROOT = Path(__file__).resolve().parents[1]
DDPM = ROOT / "checkpoints" / "digits-ddpm"

RECORDER = r'''
import json, os, sys
opened = set()

def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        opened.add(os.path.abspath(os.fsdecode(args[0])))

sys.addaudithook(hook)
import cli  # noqa: E402

try:
    cli.main(json.loads(sys.argv[2]), standalone_mode=False)
    code = 0
except SystemExit as e:
    code = e.code or 0
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "opened": sorted(opened)}, f)
'''

SMALL = ["--num-samples", "4", "--batch-size", "4", "--sampler", "respaced",
         "--sampler-steps", "2", "--dataset", "digits"]


def commands(run: Path, out: Path) -> dict[str, list[str]]:
    """Small runs of the five commands on ``run``, each writing into ``out/<command>``."""
    r = ["--run", str(run)]
    return {
        "sample": ["sample", *r, "--num-samples", "4", "--batch-size", "4", "--sampler",
                   "respaced", "--sampler-steps", "2", "--out", str(out / "sample")],
        "attack": ["attack", *r, *SMALL, "--method", "random", "--steps-attacked", "50",
                   "--metrics", "variance-ratio", "--out", str(out / "attack")],
        "curve": ["curve", *r, *SMALL, "--method", "random", "--steps-attacked", "0,50",
                  "--metrics", "variance-ratio", "--out", str(out / "curve")],
        "evaluate": ["evaluate", *r, *SMALL, "--metrics", "fid,variance-ratio",
                     "--allow-small-fid", "--out", str(out / "evaluate")],
        "purify": ["purify", *r, "--purify-steps", "1", "--iterations", "1", "--eot", "1",
                   "--num-samples", "4", "--batch-size", "4", "--eps", "8/255", "--device",
                   "cpu", "--out", str(out / "purify")],
    }


def key_material(folder: Path) -> list[str]:
    """What a result is keyed / identified by: every ``key`` and every value under a name
    containing ``fingerprint`` or ``sha256`` in the JSON / JSONL files under ``folder``."""
    found: list[str] = []

    def walk(v, name=""):
        if name == "key" or "fingerprint" in name or "sha256" in name:
            found.append(json.dumps(v, sort_keys=True))
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, str(k))
        elif isinstance(v, list):
            for x in v:
                walk(x, name)

    for path in sorted(folder.rglob("*.json*")):
        if path.name.startswith("."):
            continue
        for line in (path.read_text().splitlines() if path.suffix == ".jsonl"
                     else [path.read_text()]):
            walk(json.loads(line))
    return sorted(found)


def installation_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple({sys.prefix, sys.base_prefix, os.path.realpath(sys.prefix),
                  paths["purelib"], paths["platlib"], paths["stdlib"], "/usr", "/etc", "/proc",
                  "/sys", "/dev"})


def inputs(opened: list[str], scratch: list[Path]) -> list[Path]:
    """The files among ``opened`` that are a command's inputs: not the Python installation,
    not the repository's own source (.py and its bytecode) or its install metadata (an
    editable install's ``*.egg-info``, read to list plugins' entry points), not a scratch
    folder."""
    roots = installation_roots()
    keep = []
    for p in map(Path, opened):
        if str(p).startswith(roots) or p.suffix in (".py", ".pyc") or not p.is_file():
            continue
        if any(part.endswith((".egg-info", ".dist-info")) for part in p.parts):
            continue
        if any(p.is_relative_to(s) for s in scratch):
            continue
        keep.append(p)
    return keep


def flip_one_byte(path: Path) -> None:
    """Change one byte of ``path``: in a JSON file the digit nearest its middle (so it stays
    JSON and a value changes), else the middle byte."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2
    if path.suffix == ".json":
        digits = [j for j, c in enumerate(data) if chr(c).isdigit()]
        i = min(digits, key=lambda j: abs(j - len(data) // 2))
        data[i] = ord(str((int(chr(data[i])) + 1) % 10))
    else:
        data[i] ^= 0x01
    path.write_bytes(bytes(data))


def resign(run: Path, path: Path) -> None:
    """Record ``path``'s new sha256 in its checkpoint's meta.json, as if it had been written
    that way, so that only the key (not the integrity check) can notice the change."""
    meta_path = run / "checkpoint" / "meta.json"
    if not path.is_relative_to(run / "checkpoint") or path == meta_path:
        return
    meta = json.loads(meta_path.read_text())
    rel = path.relative_to(run / "checkpoint").as_posix()
    if rel in meta.get("files", {}):
        meta["files"][rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        meta_path.write_text(json.dumps(meta))


def record_opened(name: str, argv: list[str], tmp_path: Path, env: dict[str, str]
                  ) -> list[str]:
    """Run one command in a subprocess with the audit hook; the files it opened."""
    record = tmp_path / f"opened-{name}.json"
    proc = subprocess.run([sys.executable, "-c", RECORDER, str(record), json.dumps(argv)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(record.read_text())
    assert result["code"] == 0, (name, proc.stderr[-3000:])
    return result["opened"]


@pytest.mark.slow
def test_every_file_read_is_covered_by_the_key(tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(DDPM, run)
    scratch = [tmp_path / "tmp", tmp_path / "cache", tmp_path / "mpl", tmp_path / "out"]
    for s in scratch:
        s.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch[0]), "DMATTACK_CACHE": str(scratch[1]),
           "MPLCONFIGDIR": str(scratch[2]), "PYTHONPATH": str(ROOT)}
    for var in ("TMPDIR", "DMATTACK_CACHE", "MPLCONFIGDIR"):
        monkeypatch.setenv(var, env[var])
    checked = {"refused": 0, "rekeyed": 0, "sha256 keyed": 0}
    for name, argv in commands(run, scratch[3]).items():
        opened = record_opened(name, argv, tmp_path, env)
        files = inputs(opened, [*scratch, tmp_path / f"opened-{name}.json"])
        assert any(p.is_relative_to(run) for p in files), (name, files)  # the model was seen
        baseline = key_material(scratch[3] / name)
        for path in files:
            if not path.is_relative_to(run):  # may not be changed here: its sha256 is keyed
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                assert any(digest in k for k in baseline), (name, str(path))
                checked["sha256 keyed"] += 1
                continue
            originals = {p: p.read_bytes() for p in (path, run / "checkpoint" / "meta.json")}
            try:
                flip_one_byte(path)
                resign(run, path)
                out = tmp_path / "flipped" / name / path.relative_to(run).as_posix().replace(
                    "/", "_")
                argv = commands(run, out.parent)[name]
                argv[argv.index("--out") + 1] = str(out)
                res = CliRunner().invoke(cli.main, argv)
            finally:
                for p, data in originals.items():
                    p.write_bytes(data)
            if res.exit_code == 2:
                assert "Traceback" not in res.output, (name, str(path))
                checked["refused"] += 1
                continue
            assert res.exit_code == 0, (name, str(path), res.output[-2000:])
            assert key_material(out) != baseline, (
                f"{name}: changing one byte of {path} left the key unchanged")
            checked["rekeyed"] += 1
    # the key, not only the checkpoint's integrity check, was exercised
    assert checked["rekeyed"] >= 5 * 3 and checked["sha256 keyed"] >= 1, checked
