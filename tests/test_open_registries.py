"""Samplers, metrics and plugins are open: an entry defined outside dmattack (here, in this
file or a temporary installed package) works through the library and the CLI."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import cli
import dmattack.registry as registry
from dmattack.diffusion import GaussianDiffusion
from dmattack.errors import ConfigError
from dmattack.registry import METRICS, PLUGINS, SAMPLERS
from dmattack.sampling import Sampler, SamplerConfig, sample
from evaluators import Metric, evaluate

DIGITS = str(Path(__file__).resolve().parents[1] / "checkpoints" / "digits-ddpm")
SEEDS = [3, 1, 4, 1, 5]


def run(*args: str):
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


def ddim0_step(sd, model, x, t, noise, cfg):
    """Deterministic DDIM: ignores its noise and η."""
    return sd.ddim_step(model, x, t, noise, 0.0, cfg.clip_denoised)


@pytest.fixture
def ddim0():
    SAMPLERS.register("ddim0", Sampler("deterministic DDIM (test)", ddim0_step))
    yield "ddim0"
    SAMPLERS.unregister("ddim0")


@pytest.fixture
def mean_abs():
    def compute(x, reference, context):
        return {"mean |x|": float(x.abs().mean())}

    METRICS.register("mean-abs", Metric("mean |x| of the samples (test)", compute,
                                        ("mean |x|",)))
    yield "mean-abs"
    METRICS.unregister("mean-abs")


def test_registered_sampler_samples_through_the_library(ddim0):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 3)
    eps = lambda x, t: model(x)  # noqa: E731 - any ε-model
    diffusion = GaussianDiffusion(np.linspace(1e-3, 0.2, 40))
    with torch.no_grad():
        mine = sample(eps, diffusion, (3,), SEEDS, SamplerConfig("ddim0", 8))
        ddim = sample(eps, diffusion, (3,), SEEDS, SamplerConfig("ddim", 8, 0.0))
    assert torch.equal(mine, ddim)  # the same steps on the same strided chain
    assert SamplerConfig("ddim0", 8).describe(40) == "ddim0-8"
    with pytest.raises(ConfigError, match=r"eta \(--eta\) = 0.5 is ignored by sampler ddim0; "
                       "allowed: a nonzero --eta only with --sampler ddim"):
        SamplerConfig("ddim0", 8, eta=0.5)


def test_registered_sampler_and_metric_through_the_cli(ddim0, mean_abs, tmp_path):
    for name, extra in (("ddim0", []), ("ddim", ["--eta", "0"])):
        result = run("sample", "--run", DIGITS, "--sampler", name, "--sampler-steps", "4",
                     "--num-samples", "3", "--out", str(tmp_path / name), *extra)
        assert result.exit_code == 0, result.output
    mine = load_file(str(tmp_path / "ddim0" / "samples.safetensors"))["samples"]
    ddim = load_file(str(tmp_path / "ddim" / "samples.safetensors"))["samples"]
    assert torch.equal(mine, ddim)
    result = run("evaluate", "--run", DIGITS, "--metrics", "mean-abs,variance-ratio",
                 "--samples", str(tmp_path / "ddim0" / "samples.safetensors"),
                 "--out", str(tmp_path / "e"))
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "e" / "results.json").read_text())["metrics"]
    assert res["mean |x|"] == pytest.approx(float(mine.abs().mean()), rel=1e-6)
    assert res["protocol"]["metrics"] == ["mean-abs", "variance-ratio"]
    # unknown names are still one-line errors listing the registered ones
    result = CliRunner().invoke(cli.main, ["sample", "--run", DIGITS, "--sampler", "heun"])
    assert result.exit_code == 2 and "ddim0" in result.output


def test_registered_metric_scores_finite_rows_through_evaluate(mean_abs):
    x = torch.randn(6, 4)
    x[2, 1] = float("nan")
    reference = torch.randn(10, 4)
    res = evaluate(x, reference, ["mean-abs", "variance-ratio"])
    finite = x[[0, 1, 3, 4, 5]]
    assert res["mean |x|"] == pytest.approx(float(finite.abs().mean()), rel=1e-6)
    assert res["protocol"]["num_nonfinite"] == 1
    assert evaluate(torch.full((2, 4), float("nan")), reference, ["mean-abs"])["mean |x|"] is None


def test_metric_returning_undeclared_keys_is_a_bug(mean_abs):
    METRICS.register("mean-abs", Metric("wrong keys", lambda x, r, c: {"other": 1.0},
                                        ("mean |x|",)), replace=True)
    with pytest.raises(ValueError, match="not its declared keys"):
        evaluate(torch.randn(4, 2), torch.randn(4, 2), ["mean-abs"])


def test_entry_point_plugin_is_loaded_and_listed(tmp_path, monkeypatch):
    (tmp_path / "dmattack_test_plugin.py").write_text(textwrap.dedent('''
        from dmattack.registry import SAMPLERS
        from dmattack.sampling import Sampler, ancestral_step

        SAMPLERS.register("plugin-ancestral", Sampler("a plugin's sampler", ancestral_step))
    '''))
    info = tmp_path / "dmattack_test_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dmattack-test-plugin\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text("[dmattack]\ntest-plugin = dmattack_test_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    try:
        result = CliRunner().invoke(cli.main, ["plugins"], terminal_width=200)
        assert result.exit_code == 0, result.output
        assert PLUGINS["test-plugin"] == "ok"
        assert "plugin-ancestral" in result.output and "dmattack_test_plugin" in result.output
        assert "test-plugin" in result.output
        assert SamplerConfig("plugin-ancestral", 4).num_steps(10) == 4
    finally:
        SAMPLERS.unregister("plugin-ancestral")
        PLUGINS.pop("test-plugin", None)
        sys.modules.pop("dmattack_test_plugin", None)
