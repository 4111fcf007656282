"""Samplers, metrics and plugins are open: an entry defined outside dmattack (here, in this
file or a temporary installed package) works through the library and the CLI."""

from __future__ import annotations

import json
import signal
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import cli
import dmattack.core.registry as registry
from dmattack.core.errors import ConfigError
from dmattack.core.registry import METRICS, SAMPLERS
from dmattack.diffusion.gaussian import GaussianDiffusion
from dmattack.diffusion.sampling import Sampler, SamplerConfig, sample
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
        ddim = sample(eps, diffusion, (3,), SEEDS, SamplerConfig("ddim", 8, eta=0.0))
    assert torch.equal(mine, ddim)  # the same steps on the same strided chain
    assert SamplerConfig("ddim0", 8).describe(40) == "ddim0-8"
    with pytest.raises(ConfigError, match=r"eta \(--eta\) = 0.5 is not used by sampler 'ddim0' "
                       r"\(it reads no options of its own\); --eta is read by: ddim$"):
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


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """``install(entry, source)``: a distribution on sys.path whose entry point ``entry`` (group
    dmattack) names a module with ``source``; plugin loading is reset and undone afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(registry, "PLUGINS", {})
    modules = []

    def install(entry: str, source: str) -> None:
        module = f"dmattack_test_plugin_{len(modules)}"
        modules.append(module)
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{module}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[dmattack]\n{entry} = {module}\n")

    yield install
    for module in modules:
        sys.modules.pop(module, None)


def test_entry_point_plugin_is_loaded_and_listed(installed):
    installed("test-plugin", '''
        from dmattack.core.registry import SAMPLERS
        from dmattack.diffusion.sampling import Sampler, ancestral_step

        SAMPLERS.register("plugin-ancestral", Sampler("a plugin's sampler", ancestral_step))
    ''')
    try:
        result = CliRunner().invoke(cli.main, ["plugins"], terminal_width=200)
        assert result.exit_code == 0, result.output
        assert registry.PLUGINS["test-plugin"] == "ok"
        assert "plugin-ancestral" in result.output and "dmattack_test_plugin_0" in result.output
        assert "test-plugin" in result.output
        assert SamplerConfig("plugin-ancestral", 4).num_steps(10) == 4
        # an option's help lists the registry's names when shown: the plugin's entry too
        help_text = CliRunner().invoke(cli.main, ["sample", "--help"], terminal_width=200)
        assert "[ddpm | respaced | ddim | plugin-ancestral]" in help_text.output
    finally:
        SAMPLERS.unregister("plugin-ancestral")


@pytest.mark.parametrize("raises", ["SystemExit(3)", "KeyboardInterrupt()", "GeneratorExit()",
                                    "ImportError('no module named torchvision2')"])
def test_anything_a_plugin_raises_is_one_warning(installed, caplog, raises):
    installed("broken", f"raise {raises}\n")
    installed("fine", "from dmattack.core.registry import METRICS\n")
    assert "ddpm" in SAMPLERS  # the first lookup loads both; the toolkit goes on
    why = type(eval(raises)).__name__ + ("" if raises.endswith("()") else ": " + str(
        eval(raises)))
    assert registry.PLUGINS == {"broken": why, "fine": "ok"}
    assert [r.getMessage() for r in caplog.records] == [
        f"plugin 'broken' (dmattack_test_plugin_0) failed to load: {why}"]
    with pytest.raises(ConfigError, match=rf"unknown --method 'mine'; allowed: .*; plugins that "
                       rf"failed to load: broken \({why}\)$"):
        registry.ATTACKS.get("mine", "--method")


def test_the_users_ctrl_c_while_a_plugin_loads_propagates(installed):
    installed("slow", """
        import os, signal, time
        os.kill(os.getpid(), signal.SIGINT)  # as the user's Ctrl-C
        time.sleep(30)
    """)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        with pytest.raises(KeyboardInterrupt):
            registry.load_plugins()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("disposition", ["default", "ignored"])
def test_a_plugins_keyboard_interrupt_is_its_failure(installed, caplog, disposition):
    """Raised by the plugin itself (no SIGINT arrived), also where SIGINT is ignored, as in a
    background job (``nohup … &``), where no user's Ctrl-C can arrive."""
    installed("broken", "raise KeyboardInterrupt\n")
    handler = signal.default_int_handler if disposition == "default" else signal.SIG_IGN
    previous = signal.signal(signal.SIGINT, handler)
    try:
        assert "ddpm" in SAMPLERS
        assert registry.PLUGINS == {"broken": "KeyboardInterrupt"}
        assert signal.getsignal(signal.SIGINT) is handler  # left as it was
    finally:
        signal.signal(signal.SIGINT, previous)


def test_no_plugin_loads_while_a_toolkit_module_is_imported(installed):
    installed("marker", "from dmattack.core.registry import PLUGINS\n")
    body = "seen = (importing_toolkit(), 'ddpm' in SAMPLERS, dict(PLUGINS))"
    for name, loads in (("dmattack.half_imported", False), ("evaluators.x", False),
                        ("cli", False), ("users_module", True)):
        space = {"__name__": name, "importing_toolkit": registry.importing_toolkit,
                 "SAMPLERS": SAMPLERS, "PLUGINS": registry.PLUGINS}
        exec(compile(body, f"<{name}>", "exec"), space)  # a module body, as during its import
        assert space["seen"] == (None if loads else name, True,
                                 {"marker": "ok"} if loads else {})
    assert registry.importing_toolkit() is None


def test_a_plugin_looking_up_a_registry_while_loading_is_not_reentered(installed):
    installed("first", """
        from dmattack.core.registry import PLUGINS, SAMPLERS
        SEEN = (SAMPLERS.names(), dict(PLUGINS))
    """)
    installed("second", "from dmattack.core.registry import PLUGINS\n")
    registry.load_plugins()
    names, plugins = sys.modules["dmattack_test_plugin_0"].SEEN
    assert "ddpm" in names and "first" not in plugins  # the lookup inside did not load again
    assert registry.PLUGINS == {"first": "ok", "second": "ok"}


def test_unknown_registry_names_list_the_plugins_that_failed(monkeypatch):
    monkeypatch.setattr(registry, "PLUGINS", {"good": "ok", "bad": "SystemExit: 3"})
    note = "; plugins that failed to load: bad (SystemExit: 3)"
    with pytest.raises(ConfigError) as err:
        SamplerConfig("heun")
    assert str(err.value).endswith(note) and str(err.value).startswith("name (--sampler)")
    for args in (["attack", "--method", "mine"], ["curve", "--method", "pgd,mine"]):
        result = CliRunner().invoke(cli.main, [*args, "--run", DIGITS])
        assert result.exit_code == 2 and result.output.strip().endswith(note), result.output
    monkeypatch.setattr(registry, "PLUGINS", {"good": "ok"})
    with pytest.raises(ConfigError, match=r"allowed: ddpm, respaced, ddim$"):
        SamplerConfig("heun")
