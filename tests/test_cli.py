"""`dmattack train` / `dmattack sample`: happy paths and bad input (exit 2, one line)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import cli

FAST = ["--steps", "4", "--batch-size", "16", "--checkpoint-every", "2"]


def run(*args: str):
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def vector_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "plane"
    result = run("train", "--dataset", "oblique-plane", "--num-data", "128", "--preset",
                 "mlp-small", "--method", "robust-rand", "--corrupt-fraction", "0.5", *FAST,
                 "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_train_prints_run_folder(vector_run):
    cfg = json.loads((vector_run / "config.json").read_text())
    assert cfg["train"]["objective"]["method"] == "robust-rand"
    assert cfg["train"]["steps"] == 4 and cfg["data"]["corruption"]["fraction"] == 0.5


def test_train_resume_extends(vector_run, tmp_path):
    result = run("train", "--resume", str(vector_run), "--steps", "6")
    assert result.exit_code == 0, result.output
    meta = json.loads((vector_run / "checkpoint" / "meta.json").read_text())
    assert meta["step"] == 6


def test_sample_writes_grid_and_tensor(vector_run, tmp_path):
    result = run("sample", "--run", str(vector_run), "--num-samples", "10", "--sampler",
                 "respaced", "--steps", "5", "--out", str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    x = load_file(tmp_path / "s" / "samples.safetensors")["samples"]
    assert x.shape == (10, 3) and torch.isfinite(x).all()
    assert (tmp_path / "s" / "samples.png").exists()
    meta = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert meta["sampler_label"] == "respaced-5" and meta["seed"] == 0


def test_sample_ddim_and_newest_run(vector_run, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "RUNS_ROOT", vector_run.parent)
    result = run("sample", "--num-samples", "4", "--sampler", "ddim", "--steps", "4", "--out",
                 str(tmp_path / "d"))
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "d" / "samples.json").read_text())
    assert meta["source"] == str(vector_run.resolve())


def test_default_train_on_digits_tiny(tmp_path):
    result = run("train", "--steps", "2", "--out", str(tmp_path / "d"))
    assert result.exit_code == 0, result.output
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    assert cfg["train"]["dataset"] == "digits" and cfg["train"]["preset"] == "tiny"
    assert cfg["train"]["objective"]["method"] == "robust-adv"
    assert cfg["model"]["data_shape"] == [1, 8, 8]


BAD = [
    (["train", "--dataset", "mnist"], "mnist"),
    (["train", "--method", "trades"], "trades"),
    (["train", "--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["train", "--corrupt-fraction", "1.5"], "1.5"),
    (["train", "--corrupt-sigma", "-0.1"], "-0.1"),
    (["train", "--steps", "0"], "steps"),
    (["train", "--lambda-scaling", "cube"], "cube"),
    (["sample", "--run", "/nonexistent/run"], "/nonexistent/run"),
    (["sample", "--sampler", "euler"], "euler"),
    (["sample", "--num-samples", "0"], "num-samples"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_exits_2_with_one_line(args, needle, vector_run, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "RUNS_ROOT", vector_run.parent)
    if args[0] == "train":
        args = [*args, "--out", str(tmp_path / "new")]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2, result.output
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and needle in lines[0], result.output
    assert not (tmp_path / "new").exists()


def test_not_a_run_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(cli.main, ["sample", "--run", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "not a dmattack run" in result.output


def test_existing_run_is_not_overwritten(vector_run):
    before = (vector_run / "config.json").read_bytes()
    result = CliRunner().invoke(cli.main, ["train", "--out", str(vector_run), *FAST])
    assert result.exit_code == 2 and "--resume" in result.output
    assert (vector_run / "config.json").read_bytes() == before


def test_console_script_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cli", "train", "--corrupt-fraction", "2",
                           "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
