"""Inputs that run code when loaded (docs/reliability.md "Inputs that run code"): a DINOv2
checkout's hubconf.py and TorchScript classifiers. A cached checkout nobody named is said on
stderr; a failure inside such code is one line (exit code 2), not a traceback."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

import cli
from evaluators.errors import MetricError
from evaluators.inception import torchscript_reason
from evaluators.memorization import memorization

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "checkpoints" / "digits-ddpm")
GOOD_HUBCONF = (
    "import torch\n"
    "def dinov2_vitb14(pretrained=True):\n"
    "    torch.manual_seed(0)\n"
    "    return torch.nn.Sequential(torch.nn.AvgPool2d(28), torch.nn.Flatten(),\n"
    "                               torch.nn.Linear(3 * 8 * 8, 16))\n")


def torch_home(root: Path, hubconf: str | None) -> Path:
    """A TORCH_HOME whose hub holds DINOv2 (stand-in) weights and, unless ``hubconf`` is None,
    a cached facebookresearch/dinov2 checkout with that hubconf.py."""
    hub = root / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / "dinov2_vitb14_pretrain.pth").write_bytes(b"stand-in weights")
    if hubconf is not None:
        (hub / "facebookresearch_dinov2_main").mkdir()
        (hub / "facebookresearch_dinov2_main" / "hubconf.py").write_text(hubconf)
    return root


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """``hub(hubconf)``: TORCH_HOME set to a fresh torch_home for this test."""
    def make(hubconf: str | None) -> Path:
        home = torch_home(tmp_path / "home", hubconf)
        monkeypatch.setenv("TORCH_HOME", str(home))
        monkeypatch.setattr(torch.hub, "_hub_dir", None)
        module = importlib.import_module("evaluators.memorization")  # (a function shadows it)
        monkeypatch.setattr(module, "_ANNOUNCED", set())
        return home / "hub" / "facebookresearch_dinov2_main"

    return make


@pytest.fixture
def digit_samples(tmp_path) -> Path:
    """A samples.safetensors of 3 digits-shaped samples in model space."""
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    save_file({"samples": x}, str(tmp_path / "samples.safetensors"))
    return tmp_path / "samples.safetensors"


def evaluate_args(samples: Path, out: Path, *extra: str) -> list[str]:
    return ["evaluate", "--run", DIGITS, "--samples", str(samples), "--metrics", "memorization",
            "--memorization-space", "dinov2", "--out", str(out), *extra]


def test_cached_checkout_is_said_once_and_named_one_is_not(hub, digits_train, caplog):
    repo = hub(GOOD_HUBCONF)
    with caplog.at_level(logging.WARNING, "dmattack"):
        res = memorization(digits_train[:3], digits_train, space="dinov2")  # two feature passes
    np.testing.assert_allclose(res["max_similarity"], 1.0, atol=1e-6)  # each is in the set
    assert [r.getMessage() for r in caplog.records] == [
        f"DINOv2: using the cached checkout {repo}, which no option named (its hubconf.py "
        "runs as code; --dinov2-dir names one)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, "dmattack"):
        memorization(digits_train[:3], digits_train, space="dinov2", weights=repo)
    assert caplog.records == []


@pytest.fixture
def digits_train() -> torch.Tensor:
    """40 sklearn digits, (40, 1, 8, 8) float32 in [-1, 1]."""
    from sklearn.datasets import load_digits

    return torch.from_numpy(load_digits().images[:40]).float()[:, None] / 16 * 2 - 1


@pytest.mark.parametrize("body, reason", [
    ("raise RuntimeError('no xformers\\nsecond line')", "RuntimeError: no xformers"),
    ("import sys; sys.exit(4)", "SystemExit: 4"),
])
def test_named_checkout_whose_hubconf_fails_is_one_line(hub, tmp_path, digit_samples, body,
                                                        reason):
    hub(None)
    repo = tmp_path / "dinov2"
    repo.mkdir()
    (repo / "hubconf.py").write_text(f"{body}\n")
    result = CliRunner().invoke(cli.main, evaluate_args(digit_samples, tmp_path / "e",
                                                        "--dinov2-dir", str(repo)))
    assert result.exit_code == 2, result.output
    assert result.output.splitlines()[-1] == (
        f"Error: DINOv2 checkout {repo}: its hubconf.py failed ({reason}); it is code from that "
        "folder: check it or name another with --dinov2-dir")
    assert "Traceback" not in result.output and not (tmp_path / "e" / "results.json").exists()


def test_cached_checkout_failing_through_the_cli_is_two_lines_on_stderr(tmp_path,
                                                                        digit_samples):
    home = torch_home(tmp_path / "home", "def dinov2_vitb14(pretrained=True):\n"
                                         "    raise ImportError('dinov2 needs torch 9')\n")
    env = {**os.environ, "TORCH_HOME": str(home), "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("DMATTACK_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", "import cli; cli.main()",
                           *evaluate_args(digit_samples, tmp_path / "e")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    repo = home / "hub" / "facebookresearch_dinov2_main"
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith(("warning", "Error"))] == [
        f"warning: DINOv2: using the cached checkout {repo}, which no option named (its "
        "hubconf.py runs as code; --dinov2-dir names one)",
        f"Error: DINOv2 checkout {repo}: its hubconf.py failed (ImportError: dinov2 needs "
        "torch 9); it is code from that folder: check it or name another with --dinov2-dir"]


def test_checkout_model_failing_on_the_images_is_one_line(hub, digits_train):
    repo = hub("import torch\n"
               "def dinov2_vitb14(pretrained=True):\n"
               "    return torch.nn.Linear(5, 5)  # not a model of 224x224 images\n")
    with pytest.raises(MetricError) as err:
        memorization(digits_train[:3], digits_train, space="dinov2", weights=repo)
    assert str(err.value).startswith(f"DINOv2 checkout {repo}: its dinov2_vitb14 failed on the "
                                     "images (RuntimeError: mat1 and mat2 shapes")
    assert "\n" not in str(err.value)


class AlwaysFails(nn.Module):
    """A classifier whose TorchScript code raises on every input."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 0:
            raise ValueError("this classifier only accepts RGB\nsecond line")
        return self.lin(x.flatten(1))


def _purify_with_scripted(module: torch.nn.Module, path: Path, out: Path) -> Any:
    """``dmattack purify`` (tiny settings) with ``module`` saved as a TorchScript classifier."""
    with warnings.catch_warnings():  # torch >= 2.10 flags TorchScript as deprecated
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(module).save(str(path))
    return CliRunner().invoke(cli.main, [
        "purify", "--run", DIGITS, "--classifier", str(path), "--t-star", "0.05",
        "--purify-steps", "1", "--iterations", "1", "--eot", "1", "--num-samples", "4",
        "--out", str(out)])


def test_torchscript_classifier_failing_is_one_line_through_the_cli(tmp_path):
    path = tmp_path / "fails.pt"
    result = _purify_with_scripted(AlwaysFails(), path, tmp_path / "p")
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        f"Error: classifier {path} does not accept images of shape (1, 8, 8) (the purifier's "
        "data): builtins.ValueError: this classifier only accepts RGB"]
    assert not (tmp_path / "p").exists()


def test_torchscript_reason_is_the_raised_exception_line():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(AlwaysFails())
    with pytest.raises(torch.jit.Error) as err:
        scripted(torch.zeros(2, 1, 8, 8))
    assert str(err.value).count("Traceback of TorchScript") >= 1  # a traceback, many lines
    assert torchscript_reason(err.value) == (
        "builtins.ValueError: this classifier only accepts RGB")
    assert torchscript_reason(RuntimeError("mat1 and mat2\nmore")) == "mat1 and mat2"


def test_pinned_torchscript_inception_that_does_not_load_is_one_line(tmp_path, monkeypatch):
    import evaluators.inception as inception

    path = tmp_path / "default_1.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(AlwaysFails()).save(str(path))
    path.write_bytes(path.read_bytes()[:400])  # as if an incompatible torch read it
    monkeypatch.setattr(inception, "check_fid_helper_file", lambda p: Path(p))  # (pinned sha)
    with pytest.raises(MetricError, match=f"^TorchScript Inception {path} does not load: ") as err:
        inception.load_fid_helper_model(path)
    assert "\n" not in str(err.value)


class FailsOnLargeBatches(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 2:
            raise ValueError("batch too large for this classifier")
        return x.flatten(1)[:, :10]


def test_torchscript_classifier_failing_mid_run_is_one_line(tmp_path):
    """Passes the two-image check, then raises on the first real batch: one line, exit 2."""
    path = tmp_path / "mid.pt"
    result = _purify_with_scripted(FailsOnLargeBatches(), path, tmp_path / "p")
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error")]
    assert lines == [f"Error: classifier {path} failed on a batch of shape (4, 1, 8, 8): "
                     "builtins.ValueError: batch too large for this classifier"], result.output
    assert "Traceback" not in result.output
