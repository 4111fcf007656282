"""Every OS error of a write is one line naming the path, exit code 2, and what was written
before is intact (issue 15): a file-size limit (RLIMIT_FSIZE → EFBIG, also seen by safetensors
as ``SafetensorError``), a name over 255 bytes (ENAMETOOLONG), a full disk (ENOSPC), a
permission (EACCES) or a read-only file system (EROFS)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import SafetensorError
from safetensors.torch import load_file

import cli
from dmattack.core.errors import OutputError
from dmattack.core.io import write_json
from dmattack.core.oserrors import describe, output_error, save_file, torch_save
from dmattack.runs.checkpoints import CHECKPOINT
from dmattack.training.objectives import ObjectiveConfig
from dmattack.training.train import TrainConfig, resume_config, train

ROOT = Path(__file__).resolve().parents[1]
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
LONG = "n" * 300  # one path component over the 255-byte limit of common file systems


@pytest.fixture(scope="module")
def plane_run(tmp_path_factory) -> Path:
    cfg = TrainConfig(dataset="oblique-plane", preset="mlp-small", num_data=128, steps=4,
                      batch_size=16, checkpoint_every=4, sample_every=10_000, num_preview=0,
                      log_every=2, warmup=2, objective=ObjectiveConfig("ddpm"))
    return train(cfg, tmp_path_factory.mktemp("runs") / "plane")


def _limited_cli(limit: int, *args: str) -> subprocess.CompletedProcess:
    """``dmattack ARGS`` with files capped at ``limit`` bytes: a write past it fails with
    EFBIG (SIGXFSZ ignored, as a shell does not)."""
    def cap() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=CLI_ENV,
                          preexec_fn=cap, capture_output=True, text=True, timeout=300)


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_file_size_limit_during_a_checkpoint_keeps_the_previous_one(plane_run, tmp_path):
    run = shutil.copytree(plane_run, tmp_path / "run")
    before = _files(run / CHECKPOINT)
    # the small files (lock, config.json, log.jsonl) pass; model.safetensors, first, does not
    done = _limited_cli(len(before["model.safetensors"]) // 2,
                        "train", "--resume", str(run), "--steps", "8")
    assert done.returncode == 2, done.stderr
    line = _error_line(done.stderr)
    assert f"writing the checkpoint of step 8 to {run}" in line
    assert "model.safetensors: file too large" in line and "(step 4) is intact" in line
    assert _files(run / CHECKPOINT) == before  # the previous checkpoint, bit for bit
    assert not list(run.glob(".checkpoint.*"))  # no temp folder left


def test_file_size_limit_on_the_optimiser_state_keeps_the_previous_checkpoint(plane_run,
                                                                              tmp_path):
    run = shutil.copytree(plane_run, tmp_path / "run")
    before = _files(run / CHECKPOINT)
    sizes = {name: len(data) for name, data in before.items()}
    limit = (sizes["model.safetensors"] + sizes["state.pt"]) // 2  # weights pass, state not
    with _file_size_limit(limit), pytest.raises(OSError) as err:  # an OutputError
        train(resume_config(run, steps=8), run, resume=True)
    assert "state.pt: file too large" in str(err.value) and "\n" not in str(err.value)
    assert _files(run / CHECKPOINT) == before


def test_file_size_limit_during_an_attack_keeps_the_previous_results(plane_run, tmp_path):
    out = tmp_path / "attack"
    args = ["attack", "--run", str(plane_run), "--method", "fgsm", "--num-samples", "512",
            "--sampler", "respaced", "--sampler-steps", "4", "--metrics", "variance-ratio",
            "--out", str(out)]
    first = CliRunner().invoke(cli.main, args)
    assert first.exit_code == 0, first.output
    before = _files(out)
    samples = len(before["samples.safetensors"])  # 2 × 512 × 3 float32: the largest file
    done = _limited_cli(samples // 2, *args)
    assert done.returncode == 2, done.stderr
    line = _error_line(done.stderr)
    assert f"cannot write the results into {out}" in line
    assert "too large" in line.lower() and "previous results" in line
    assert _files(out) == before


@pytest.mark.parametrize("command", ["train", "sample"])
def test_a_name_over_255_bytes_is_one_line(plane_run, tmp_path, command):
    out = tmp_path / LONG / "x"
    args = (["train", "--dataset", "oblique-plane", "--preset", "mlp-small", "--num-data", "64",
             "--steps", "2", "--batch-size", "16"] if command == "train" else
            ["sample", "--run", str(plane_run), "--num-samples", "4", "--sampler", "respaced",
             "--sampler-steps", "4"])
    result = CliRunner().invoke(cli.main, [*args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # handled, not an escaped OSError
    line = _error_line(result.output)
    assert str(tmp_path / LONG) in line
    assert "file name too long (a path component is 300 bytes" in line


@pytest.mark.parametrize("number,reason", [
    (errno.ENOSPC, "no space left"), (errno.EACCES, "permission denied"),
    (errno.EROFS, "read-only file system"), (errno.EDQUOT, "disk quota exceeded"),
    (errno.EFBIG, "file too large")])
def test_storage_errors_of_an_atomic_write_name_the_path(tmp_path, monkeypatch, number,
                                                         reason):
    path = tmp_path / "results.json"
    write_json(path, {"old": 1})

    def failing_fsync(fd):
        raise OSError(number, os.strerror(number))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError) as err:
        write_json(path, {"new": 2})
    text = str(err.value)
    assert text.startswith(f"cannot write {path}: {reason}") and "\n" not in text
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file


@contextlib.contextmanager
def _file_size_limit(limit: int):
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_safetensors_and_torch_writers_report_the_errno_and_the_file(tmp_path):
    import safetensors.torch

    big = {"x": torch.zeros(4096)}  # 16 KiB
    with _file_size_limit(4096):
        with pytest.raises(SafetensorError, match=r"os error 27") as raw:
            safetensors.torch.save_file(big, str(tmp_path / "raw.safetensors"))
        with pytest.raises(OutputError) as st:
            save_file(big, tmp_path / "a.safetensors")
        with pytest.raises(OutputError) as pt:
            torch_save(big, tmp_path / "a.pt")
    assert describe(raw.value).startswith("file too large")
    assert output_error(raw.value, "p").errno == errno.EFBIG
    for err, name in ((st, "a.safetensors"), (pt, "a.pt")):
        assert str(err.value) == (f"cannot write {tmp_path / name}: file too large (the "
                                  "file-size limit, ulimit -f, was reached)")
        assert err.value.errno == errno.EFBIG
    torch_save(big, tmp_path / "b.pt")  # without the limit: a file torch.load reads back
    assert torch.equal(torch.load(tmp_path / "b.pt", weights_only=True)["x"], big["x"])
    save_file(big, tmp_path / "b.safetensors")
    assert torch.equal(load_file(tmp_path / "b.safetensors")["x"], big["x"])


def test_other_errors_are_not_disguised():
    assert output_error(OSError(errno.EINVAL, "Invalid argument")) is None
    assert output_error(ValueError("x")) is None
    assert output_error(SafetensorError("Error while serializing: bad dtype")) is None
