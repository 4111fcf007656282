"""docs/architecture.md "Adding an attack with its own option": the doc's plugin, installed as a
distribution (a dist-info naming it in entry-point group ``dmattack``, as pip writes it), runs
through ``dmattack attack`` in fresh processes with its own ``--decay`` and records it, as the
library computes it; ``--method pgd --decay 0.5`` is refused with one line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from functools import partial
from pathlib import Path

import doc_plugins
import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
DIGITS = str(ROOT / "checkpoints" / "digits-ddpm")
SMALL = ["--run", DIGITS, "--sampler", "respaced", "--sampler-steps", "5", "--num-samples", "4",
         "--metrics", "variance-ratio"]


TITLE = "## Adding an attack with its own option"


def doc_blocks() -> tuple[str, str, str]:
    """(entry-point name, module, module source) of the section's plugin."""
    ((name, module),) = doc_plugins.entry_points(TITLE)
    (source,) = doc_plugins.blocks(TITLE, "python")
    assert source.startswith(f"# {module}.py")
    return name, module, source


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, str]:
    """A site folder with the doc's plugin installed: (folder, attack name)."""
    site = tmp_path_factory.mktemp("site")
    ((name, _),) = doc_plugins.install(site, TITLE, "momentum-pgd-plugin")
    return site, name


def dmattack(site: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """``dmattack *args`` in a fresh process with ``site`` on its path."""
    return doc_plugins.dmattack(site, tmp, list(args))


@pytest.mark.slow
def test_plugin_option_runs_is_recorded_and_refused_for_pgd(site, tmp_path):
    folder, name = site
    out = tmp_path / "a"
    proc = dmattack(folder, tmp_path, "attack", "--method", name, "--decay", "0.5",
                    "--steps-attacked", "50", *SMALL, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["label"] == f"{name}-spread-50%-decay0.5"
    assert res["attack"]["decay"] == 0.5 and res["attack"]["pgd_steps"] == 10
    assert res["attack"]["method"] == name
    x = load_file(str(out / "samples.safetensors"))
    torch.testing.assert_close(x["attacked"], _library_attacked(folder, res, decay=0.5),
                               rtol=0, atol=1e-5)
    assert not torch.equal(x["attacked"], x["clean"])

    refused = dmattack(folder, tmp_path, "attack", "--method", "pgd", "--decay", "0.5", *SMALL)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.splitlines() == [
        f"Error: decay (--decay) = 0.5 is not used by attack 'pgd'; it is read by: {name}"]

    helped = dmattack(folder, tmp_path, "attack", "--help")
    flat = " ".join(helped.stdout.split())
    assert f"--decay NUMBER {name}: momentum decay" in flat
    assert f"pgd: PGD iterations per attacked step; {name}: momentum PGD iterations" in flat


def _library_attacked(site: Path, res: dict, decay: float) -> torch.Tensor:
    """The attacked samples of the doc's ChainMomentumPGD with ``decay``, computed by the
    library with the run's model, sampler and seeds (the plugin imported in this process)."""
    from dmattack.attacks import AttackPlan
    from dmattack.core.registry import ATTACKS
    from dmattack.core.seeding import sample_seeds
    from dmattack.diffusion.sampling import SamplerConfig, SamplingChain, sample_batched
    from dmattack.runs.checkpoints import load_run

    spec = importlib.util.spec_from_file_location("doc_plugin_copy",
                                                  site / "momentum_pgd_plugin.py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        ATTACKS.unregister("momentum-pgd")
    loaded = load_run(DIGITS)
    s = res["sampler"]
    sampler = SamplerConfig.from_dict(s)
    chain = SamplingChain(loaded.diffusion, sampler)
    plan = AttackPlan(partial(module.ChainMomentumPGD, steps=10, decay=decay), percent=50)
    with torch.no_grad():
        return sample_batched(loaded.model, loaded.diffusion, loaded.data_shape,
                              sample_seeds(0, 4), 4, sampler,
                              hook_factory=plan.hook_factory(loaded.model, chain))


def test_library_spec_routes_the_option_to_the_config(site):
    """In one process: keywords go to the config, the record has them, pgd refuses decay."""
    from dmattack.attacks import AttackSpec
    from dmattack.core.errors import ConfigError
    from dmattack.core.registry import ATTACKS

    folder, name = site
    spec = importlib.util.spec_from_file_location("doc_plugin_lib",
                                                  folder / "momentum_pgd_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        a = AttackSpec(name, 25, decay=0.5)
        assert a.config == module.MomentumPGDConfig(decay=0.5) and a.decay == 0.5
        assert a.settings() == {"eps_scale": 1.0, "pgd_steps": 10, "decay": 0.5}
        assert a.to_dict()["decay"] == 0.5 and a.describe() == f"{name}-spread-25%-decay0.5"
        with pytest.raises(ConfigError, match=r"decay \(--decay\) = 0.5 is not used by attack "
                           "'pgd'; it reads: "):
            AttackSpec("pgd", 25, decay=0.5)
        with pytest.raises(ConfigError, match=r"decay \(--decay\) = -1 is invalid"):
            AttackSpec(name, 25, decay=-1)
    finally:
        ATTACKS.unregister(name)
