"""docs/architecture.md, "Adding an objective and a metric as plugins": the documented plugin
modules and entry points, read from the doc, installed as a distribution and run through the
documented commands in fresh processes (the documented example is the tested one)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import doc_plugins
import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
TITLE = "## Adding an objective and a metric as plugins"
MODULES = ("offset_noise_plugin", "mean_abs_plugin")


def blocks(language: str) -> list[str]:
    return doc_plugins.blocks(TITLE, language)


def commands() -> list[list[str]]:
    """The documented shell commands (continuation lines joined), as argument lists."""
    return doc_plugins.commands(TITLE)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A site folder holding one distribution: the doc's two modules and its entry points."""
    site = tmp_path_factory.mktemp("site")
    points = doc_plugins.install(site, TITLE, "docs-plugins")
    assert sorted(m for _, m in points) == sorted(MODULES)
    return site


def dmattack(site: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``dmattack *args`` in a fresh process with ``site`` on its path."""
    return doc_plugins.dmattack(site, cwd, args, cwd=cwd)


def _documented(verb: str) -> list[str]:
    (args,) = [c[2:] for c in commands() if c[:2] == ["dmattack", verb]]
    return [str(ROOT / a) if a.startswith("checkpoints/") else a for a in args]


def _last_log(run: Path) -> dict:
    return json.loads((run / "log.jsonl").read_text().splitlines()[-1])


@pytest.mark.slow
def test_the_plugin_objective_trains_with_its_own_option(site, tmp_path):
    """The documented run records its option and logs its stats; the option is listed in
    --help and refused for another method."""
    args = _documented("train")
    assert args[:4] == ["--method", "offset-noise", "--offset-strength", "0.3"]
    done = dmattack(site, ["train", *args], tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "offset"
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["objective"] == {"method": "offset-noise", "offset_strength": 0.3}
    record = _last_log(run)
    assert record["step"] == 2 and {"loss", "offset_abs"} <= set(record)

    refused = dmattack(site, ["train", "--method", "robust-adv", "--offset-strength", "0.3",
                              "--out", str(tmp_path / "no")], tmp_path)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("Error: --offset-strength is not read by training method "
                                     "robust-adv; it reads: --lambda")
    assert not (tmp_path / "no").exists()
    help_text = dmattack(site, ["train", "--help"], tmp_path).stdout
    assert re.search(r"--offset-strength NUMBER\s+Offset-noise strength", help_text)
    assert "[read by --method offset-noise]" in " ".join(help_text.split())


@pytest.mark.slow
def test_the_plugin_metric_appears_in_a_result(site, tmp_path):
    """The documented evaluation scores the plugin metric beside a built-in one with its own
    option: its value is mean |x|^p of the saved samples over that of the digits reference
    (p = --abs-power), the option is recorded in the result; the option is listed in --help
    with its reader and refused (one line, exit 2) for a metric that does not read it."""
    from dmattack.data import load_dataset

    args = _documented("evaluate")
    assert args[args.index("--abs-power") + 1] == "2"
    done = dmattack(site, ["evaluate", *args], tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "runs" / "mean-abs"
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    assert {"mean |x| ratio", "variance ratio"} <= set(metrics)
    assert metrics["protocol"]["metric_options"] == {"mean-abs-ratio": {"abs_power": 2.0}}
    samples = load_file(str(out / "samples.safetensors"))["samples"].double()
    reference = load_dataset("digits").tensor().double()
    want = float(samples.abs().pow(2).mean() / reference.abs().pow(2).mean())
    assert want != pytest.approx(float(samples.abs().mean() / reference.abs().mean()), rel=1e-3)
    assert metrics["mean |x| ratio"] == pytest.approx(want, rel=1e-5)

    refused = dmattack(site, ["evaluate", "--run", str(ROOT / "checkpoints" / "digits-ddpm"),
                              "--metrics", "fid", "--abs-power", "2", "--out",
                              str(tmp_path / "no")], tmp_path)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("Error: abs_power (--abs-power) = 2.0 is not used by "
                                     "metric 'fid'; it is read by: mean-abs-ratio")
    assert not (tmp_path / "no").exists()
    help_text = " ".join(dmattack(site, ["evaluate", "--help"], tmp_path).stdout.split())
    assert "--abs-power NUMBER mean-abs-ratio: power p of mean |x|^p" in help_text


@pytest.fixture
def offset_noise():
    """The doc's objective plugin registered in this process (removed afterwards)."""
    from dmattack.core.registry import OBJECTIVES

    (source,) = [b for b in blocks("python") if b.startswith("# offset_noise_plugin.py")]
    module = types.ModuleType("offset_noise_plugin")
    sys.modules[module.__name__] = module
    try:
        exec(compile(source, "offset_noise_plugin.py", "exec"), module.__dict__)
        yield OBJECTIVES["offset-noise"]
    finally:
        OBJECTIVES.unregister("offset-noise")
        del sys.modules[module.__name__]


def test_the_plugin_objective_is_ddpm_at_strength_zero(offset_noise):
    """ε + 0·η is DDPM's loss on the same draws; its η is one draw per (sample, channel), cut
    into rows like ε; a strength > 0 changes the loss; an unknown option is refused."""
    import torch

    from dmattack.core.errors import ConfigError
    from dmattack.diffusion.gaussian import GaussianDiffusion
    from dmattack.models import build_model
    from dmattack.training.objectives import ObjectiveConfig, draw_step, training_loss

    diffusion = GaussianDiffusion.from_schedule("linear", 1000)
    model = build_model("tiny", (1, 8, 8))
    x0 = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cfg = ObjectiveConfig("offset-noise", offset_strength=0.0)
    draws = draw_step(diffusion, cfg, tuple(x0.shape), "cpu",
                      generator=torch.Generator().manual_seed(1))
    assert draws["offset"].shape == (6, 1, 1, 1) and draws.rows(2, 4)["offset"].shape[0] == 2
    loss, stats = training_loss(model, diffusion, x0, cfg, draws)
    ddpm, _ = training_loss(model, diffusion, x0, ObjectiveConfig("ddpm"), draws)
    torch.testing.assert_close(loss, ddpm)
    assert set(stats) == set(offset_noise.stats)
    assert stats["offset_abs"] == pytest.approx(draws["offset"].abs().mean().item())
    strong, _ = training_loss(model, diffusion, x0,
                              ObjectiveConfig("offset-noise", offset_strength=1.0), draws)
    assert abs(strong.item() - ddpm.item()) > 1e-3
    with pytest.raises(ConfigError, match="lam is not an option of training method offset"):
        ObjectiveConfig("offset-noise", lam=0.3)
