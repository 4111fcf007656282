"""Plugins installed as distributions, in fresh processes (docs/library.md §7).

The plugin is docs/library.md §7's first Python block, read from the doc, and its entry point is
the doc's pyproject.toml block: the documented example is the tested one. It imports
dmattack.attacks, dmattack.diffusion.sampling and dmattack.purification at its top. A second
installed
plugin calls ``sys.exit(3)`` when imported.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "library.md"
DIGITS = str(ROOT / "checkpoints" / "digits-ddpm")
EXIT_WARNING = "warning: plugin 'exits' (exits_plugin) failed to load: SystemExit: 3"
SMALL = ["--run", DIGITS, "--sampler", "respaced", "--sampler-steps", "5", "--num-samples", "4",
         "--metrics", "variance-ratio"]


def doc_plugin() -> tuple[str, str, str]:
    """(entry-point name, module name, module source) of docs/library.md §7's plugin."""
    text = DOC.read_text()
    section = text[text.index("## 7. "):text.index("## 8. ")]
    sources = [b for b in re.findall(r"^```python\n(.*?)^```", section, re.S | re.M)
               if b.startswith("# eps_ascent_plugin.py")]
    (toml,) = re.findall(r"^```toml\n(.*?)^```", section, re.S | re.M)
    assert toml.startswith("[project.entry-points.dmattack]\n")
    ((name, module),) = re.findall(r'^([\w.-]+) = "([\w.]+)"$', toml, re.M)
    assert len(sources) == 1 and module == "eps_ascent_plugin"
    return name, module, sources[0]


def install(site: Path, dist: str, entry_point: str, module: str, source: str) -> None:
    """An installed distribution ``dist``: ``module``.py and a dist-info whose
    entry_points.txt names it in group ``dmattack`` (what pip writes for a pyproject.toml's
    ``[project.entry-points.dmattack]``)."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[dmattack]\n{entry_point} = {module}\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A site folder holding the doc's plugin and one that calls sys.exit(3)."""
    site = tmp_path_factory.mktemp("site")
    name, module, source = doc_plugin()
    install(site, "eps-ascent-plugin", name, module, source)
    install(site, "exits-plugin", "exits", "exits_plugin", "import sys\n\nsys.exit(3)\n")
    return site


def fresh(site: Path, *args: str) -> subprocess.CompletedProcess:
    """A fresh Python process with ``site`` installed: ``python *args``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop("DMATTACK_DEBUG", None)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def dmattack(site: Path, *args: str) -> subprocess.CompletedProcess:
    """``dmattack *args`` in a fresh process, as the installed console script runs it."""
    return fresh(site, "-c", "import sys, cli; sys.argv[0] = 'dmattack'; cli.main()", *args)


PROBE = f"""
import sys
import dmattack, dmattack.attacks, dmattack.diffusion.sampling, dmattack.purification
import evaluators, cli
import dmattack.core.registry as r
print("on import:", r._plugins_loaded, dict(r.PLUGINS), "eps_ascent_plugin" in sys.modules)
print("first lookup:", "eps-ascent" in r.ATTACKS.names(), dict(r.PLUGINS))
print("origin:", r.ATTACKS.origin("eps-ascent"), r.SAMPLERS.origin("ddim0"))

import torch
import eps_ascent_plugin
from dmattack.purification import Purifier, load_model
loaded = load_model({DIGITS!r})
x = torch.rand(3, *loaded.data_shape, generator=torch.Generator().manual_seed(0))
torch.manual_seed(1)
mine = eps_ascent_plugin.ddim0_purifier(loaded, t_star=0.05)(x)
torch.manual_seed(1)
ddim = Purifier(loaded.model, loaded.diffusion, loaded.data_shape, 0.05, sampler="ddim")(x)
print("purifier equals ddim eta=0:", torch.equal(mine, ddim), bool((mine != x).any()))
"""


def test_importing_dmattack_loads_no_plugin_and_the_first_lookup_does(site):
    proc = fresh(site, "-c", PROBE)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "on import: False {} False"
    assert lines[1] == ("first lookup: True {'eps-ascent': 'ok', 'exits': 'SystemExit: 3'}")
    assert lines[2] == "origin: eps_ascent_plugin eps_ascent_plugin"
    assert lines[3] == "purifier equals ddim eta=0: True True"
    assert proc.stderr.strip() == EXIT_WARNING.removeprefix("warning: ")  # no logging set up


def test_plugins_command_lists_the_doc_plugin_despite_a_plugin_calling_sys_exit(site):
    proc = dmattack(site, "plugins")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == EXIT_WARNING  # one line
    rows = [r.split("│")[1:-1] for r in proc.stdout.splitlines() if r.count("│") >= 3]
    rows = [[c.strip() for c in r] for r in rows]
    assert ["attacks", "eps-ascent", "eps_ascent_plugin"] in rows
    assert ["samplers", "ddim0", "eps_ascent_plugin"] in rows
    assert ["eps-ascent", "ok"] in rows and ["exits", "SystemExit: 3"] in rows


def test_unknown_method_names_the_plugin_that_failed(site):
    proc = dmattack(site, "attack", "--method", "eps-ascnt", *SMALL)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        EXIT_WARNING,
        "Error: method (--method) = 'eps-ascnt' is invalid; allowed: fgsm, pgd, random, "
        "trajectory, lookahead, eps-ascent; plugins that failed to load: exits (SystemExit: 3)"]


@pytest.mark.slow
def test_plugin_attack_runs_through_the_cli_as_the_library_computes_it(site, tmp_path):
    out = tmp_path / "a"
    proc = dmattack(site, "attack", "--method", "eps-ascent", "--steps-attacked",
                 "50", *SMALL, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert EXIT_WARNING in proc.stderr.splitlines()
    res = json.loads((out / "results.json").read_text())
    assert res["label"] == "eps-ascent-spread-50%" and res["attack"]["method"] == "eps-ascent"
    x = load_file(str(out / "samples.safetensors"))
    assert not torch.equal(x["attacked"], x["clean"])
    torch.testing.assert_close(x["attacked"], _library_attacked(site, res), rtol=0, atol=1e-5)


def _library_attacked(site: Path, res: dict) -> torch.Tensor:
    """The attacked samples of the plugin's ChainEpsAscent (strength 0.5, as its entry makes
    it), computed by the library with the run's model, sampler and seeds."""
    from dmattack.attacks import AttackPlan
    from dmattack.core.seeding import sample_seeds
    from dmattack.diffusion.sampling import SamplerConfig, SamplingChain, sample_batched
    from dmattack.runs.checkpoints import load_run

    spec = importlib.util.spec_from_file_location("doc_plugin_copy", site / "eps_ascent_plugin.py")
    module = importlib.util.module_from_spec(spec)
    from dmattack.core.registry import ATTACKS, SAMPLERS

    try:
        spec.loader.exec_module(module)  # registers eps-ascent and ddim0 in this process
    finally:
        ATTACKS.unregister("eps-ascent"), SAMPLERS.unregister("ddim0")
    loaded = load_run(DIGITS)
    s = res["sampler"]
    sampler = SamplerConfig.from_dict(s)
    chain = SamplingChain(loaded.diffusion, sampler)
    plan = AttackPlan(partial(module.ChainEpsAscent, strength=0.5), percent=50)
    with torch.no_grad():
        return sample_batched(loaded.model, chain, loaded.data_shape, sample_seeds(0, 4), 4,
                              hook_factory=plan.hook_factory(loaded.model, chain))
