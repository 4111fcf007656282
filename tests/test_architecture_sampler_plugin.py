"""docs/architecture.md "Adding a sampler as a plugin": the doc's sampler module and entry
point, read from the doc, installed as a distribution (a dist-info naming it in entry-point
group ``dmattack``, as pip writes it) and run through the documented ``dmattack sample`` and
``dmattack attack`` in fresh processes; the samples are checked against a plain loop of
posterior means (Ho et al. 2020, Eq. 7 with x̂_0 from ε_θ) written here from the model's ᾱ,
those with the plugin's own option ``--noise-scale`` against the library's sampling, and the
option is refused for a sampler that does not read it."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import doc_plugins
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
TITLE = "## Adding a sampler as a plugin"


def blocks(language: str) -> list[str]:
    return doc_plugins.blocks(TITLE, language)


def documented(verb: str, tmp: Path, which: int = 0, of: int = 1) -> list[str]:
    """The arguments of the ``which``-th of the ``of`` documented ``dmattack <verb>`` commands
    (paths made absolute)."""
    (bash,) = blocks("bash")
    lines = [shlex.split(line) for line in bash.replace("\\\n", " ").splitlines() if line]
    found = [c[2:] for c in lines if c[:2] == ["dmattack", verb]]
    assert len(found) == of, found
    return [str(ROOT / a) if a.startswith("checkpoints/") else
            str(tmp / a) if a.startswith("runs/") else a for a in found[which]]


def plugin() -> tuple[str, str, str]:
    """(entry-point name, module, module source) of the section's plugin."""
    (source,) = blocks("python")
    (toml,) = blocks("toml")
    assert toml.startswith("[project.entry-points.dmattack]\n")
    ((name, module),) = re.findall(r'^([\w.-]+) = "([\w.]+)"$', toml, re.M)
    assert source.startswith(f"# {module}.py")
    return name, module, source


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A site folder holding one distribution: the doc's module and its entry point."""
    site = tmp_path_factory.mktemp("site")
    doc_plugins.install(site, TITLE, "posterior-mean-plugin")
    return site


def dmattack(site: Path, tmp: Path, args: list[str]) -> subprocess.CompletedProcess:
    """``dmattack *args`` in a fresh process with ``site`` on its path (run in ``tmp``)."""
    return doc_plugins.dmattack(site, tmp, args, cwd=tmp)


def posterior_mean_loop(model, alphas_cumprod: np.ndarray, steps: int, x: torch.Tensor
                        ) -> torch.Tensor:
    """x_T (B, C, H, W) → x_0 by K = ``steps`` posterior means on the evenly strided timesteps
    τ of the trained ᾱ (float64), x̂_0 clipped to [-1, 1]: x ← c1·clip(x̂_0) + c2·x."""
    T = len(alphas_cumprod)
    tau = sorted({round(v) for v in np.linspace(0, T - 1, steps)})
    abar = alphas_cumprod[tau]
    for k in reversed(range(len(tau))):
        a, a_prev = abar[k], (abar[k - 1] if k else 1.0)
        beta = 1 - a / a_prev
        eps = model(x, torch.full((len(x),), tau[k], dtype=torch.long))
        x0 = ((x - np.sqrt(1 - a) * eps) / np.sqrt(a)).clamp(-1, 1)
        x = (beta * np.sqrt(a_prev) / (1 - a)) * x0 + ((1 - a_prev) * np.sqrt(1 - beta)
                                                       / (1 - a)) * x
    return x


def x_T(seed: int, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The first draw of each sample's chain-noise stream (dmattack.core.seeding)."""
    from dmattack.core.seeding import CHAIN_NOISE, derive_seed, sample_seeds

    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(
        derive_seed(s, CHAIN_NOISE))) for s in sample_seeds(seed, n)])


@pytest.mark.slow
def test_plugin_sampler_samples_posterior_means_and_can_be_attacked(site, tmp_path):
    """The documented sample run records the plugin sampler and its samples are the plain
    posterior-mean loop from the same x_T; the documented attack runs on it, records it, and
    its clean samples are the first of those."""
    from dmattack.runs.checkpoints import load_run

    name, module, _ = plugin()
    listed = dmattack(site, tmp_path, ["plugins", *documented("plugins", tmp_path)])
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"samplers\s*│\s*{name}\s*│\s*{module}\s", listed.stdout), listed.stdout
    args = documented("sample", tmp_path, 0, 3)
    done = dmattack(site, tmp_path, ["sample", *args])
    assert done.returncode == 0, done.stderr
    out = Path(args[args.index("--out") + 1])
    record = json.loads((out / "samples.json").read_text())
    assert record["sampler"] == {"name": name, "steps": 10, "eta": 0.0, "clip_denoised": True,
                                 "noise_scale": 0.0}
    assert record["sampler_label"] == f"{name}-10-clip"
    samples = load_file(str(out / "samples.safetensors"))["samples"]

    loaded = load_run(ROOT / "checkpoints" / "digits-ddpm")
    with torch.no_grad():
        want = posterior_mean_loop(loaded.model, loaded.diffusion.alphas_cumprod, 10,
                                   x_T(record["seed"], len(samples), loaded.data_shape))
    assert samples.shape == want.shape == (8, *loaded.data_shape)
    torch.testing.assert_close(samples, want, rtol=0, atol=1e-5)

    args = documented("attack", tmp_path)
    done = dmattack(site, tmp_path, ["attack", *args])
    assert done.returncode == 0, done.stderr
    out = Path(args[args.index("--out") + 1])
    result = json.loads((out / "results.json").read_text())
    assert result["sampler"]["name"] == name and result["sampler"]["num_steps"] == 10
    pairs = load_file(str(out / "samples.safetensors"))
    torch.testing.assert_close(pairs["clean"], samples[:4], rtol=0, atol=0)
    assert result["damage"]["pixel deviation"]["mean"] > 0.01  # the attack changed the samples


@pytest.mark.slow
def test_plugin_option_is_recorded_matches_the_library_and_is_refused_elsewhere(
        site, tmp_path, posterior_mean):
    """``--noise-scale 0.5`` (the plugin's own option, offered because the plugin is installed)
    is recorded, and the samples are the library's with the plugin's sampler at s = 0.5 (this
    process registers the doc's module); ``--sampler ddpm --noise-scale 0.5`` is refused in
    one line, exit code 2."""
    from dmattack.core.seeding import sample_seeds
    from dmattack.diffusion.sampling import SamplerConfig, sample_batched
    from dmattack.runs.checkpoints import load_run

    args = documented("sample", tmp_path, 1, 3)
    done = dmattack(site, tmp_path, ["sample", *args])
    assert done.returncode == 0, done.stderr
    out = Path(args[args.index("--out") + 1])
    record = json.loads((out / "samples.json").read_text())
    assert record["sampler"] == {"name": posterior_mean, "steps": 10, "eta": 0.0,
                                 "clip_denoised": True, "noise_scale": 0.5}
    assert record["sampler_label"] == f"{posterior_mean}-10-noise_scale0.5-clip"
    samples = load_file(str(out / "samples.safetensors"))["samples"]
    loaded = load_run(ROOT / "checkpoints" / "digits-ddpm")
    sampler = SamplerConfig(posterior_mean, 10, noise_scale=0.5)
    assert SamplerConfig.from_dict(record["sampler"]) == sampler.for_shape(loaded.data_shape)
    with torch.no_grad():
        want = sample_batched(loaded.model, loaded.diffusion, loaded.data_shape,
                              sample_seeds(record["seed"], 8), 8, sampler)
    torch.testing.assert_close(samples, want, rtol=0, atol=1e-5)
    with torch.no_grad():  # the noise made a difference: not the posterior means
        means = posterior_mean_loop(loaded.model, loaded.diffusion.alphas_cumprod, 10,
                                    x_T(record["seed"], 8, loaded.data_shape))
    assert (samples - means).abs().max() > 0.1

    refused = dmattack(site, tmp_path, ["sample", *documented("sample", tmp_path, 2, 3)])
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.splitlines() == [
        f"Error: noise_scale (--noise-scale) = 0.5 is not used by sampler 'ddpm' (it reads no "
        f"options of its own); --noise-scale is read by: {posterior_mean}"]


@pytest.fixture
def posterior_mean():
    """The doc's sampler registered in this process (removed afterwards)."""
    from dmattack.core.registry import SAMPLERS

    name, module_name, source = plugin()
    module = types.ModuleType(module_name)
    sys.modules[module_name] = module
    try:
        exec(compile(source, f"{module_name}.py", "exec"), module.__dict__)
        yield name
    finally:
        SAMPLERS.unregister(name)
        del sys.modules[module_name]


def test_plugin_step_is_the_ancestral_step_with_scaled_noise(posterior_mean):
    """On the chain SamplingChain resolves (the respaced one, K steps), the plugin's step at its
    default s = 0 is the respaced ancestral step with z = 0 whatever noise it is handed, and
    the ancestral step itself at the last step (t = 0); at s = 1 it is the ancestral step, and
    at s = 0.5 the ancestral step handed z/2."""
    from dmattack.diffusion.gaussian import GaussianDiffusion
    from dmattack.diffusion.sampling import SamplerConfig, SamplingChain
    from dmattack.models import build_model

    diffusion = GaussianDiffusion.from_schedule("linear", 1000)
    model = build_model("tiny", (1, 8, 8)).eval()
    chain = SamplingChain(diffusion, SamplerConfig(posterior_mean, steps=7)).for_shape((1, 8, 8))
    ancestral = SamplingChain(diffusion, SamplerConfig("respaced", steps=7)).for_shape((1, 8, 8))
    one, half = (SamplingChain(diffusion, SamplerConfig(posterior_mean, steps=7, noise_scale=s))
                 .for_shape((1, 8, 8)) for s in (1.0, 0.5))
    assert chain.num_steps == 7 and chain.describe() == f"{posterior_mean}-7-clip"
    assert half.describe() == f"{posterior_mean}-7-noise_scale0.5-clip"
    np.testing.assert_array_equal(chain.timestep_map, ancestral.timestep_map)
    gen = torch.Generator().manual_seed(0)
    x, noise = (torch.randn(3, 1, 8, 8, generator=gen) for _ in range(2))
    with torch.no_grad():
        for i in (6, 3, 0):
            t = torch.full((3,), i, dtype=torch.long)
            got = chain.step(model, x, t, noise)
            torch.testing.assert_close(got, chain.step(model, x, t, torch.zeros_like(x)))
            torch.testing.assert_close(got, ancestral.step(model, x, t, torch.zeros_like(x)))
            if i == 0:
                torch.testing.assert_close(got, ancestral.step(model, x, t, noise))
            else:
                assert not torch.allclose(got, ancestral.step(model, x, t, noise))
            assert torch.equal(one.step(model, x, t, noise), ancestral.step(model, x, t, noise))
            torch.testing.assert_close(half.step(model, x, t, noise),
                                       ancestral.step(model, x, t, noise / 2))


def test_plugin_sampler_is_a_choice_of_sampler_in_help(site, tmp_path):
    """`dmattack sample --help`, in a fresh process with the doc's distribution installed, lists
    the plugin among --sampler's choices (options are built from the registries once per
    process, after the entry points load)."""
    name, _, _ = plugin()
    helped = dmattack(site, tmp_path, ["sample", "--help"])
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert re.search(rf"--sampler TEXT\s+Reverse sampler\. \[ddpm \| respaced \| ddim \|\s+"
                     rf"{name}\]", helped.stdout), helped.stdout
    words = (f"--noise-scale NUMBER {name}: scale s of the ancestral noise (0: the posterior "
             "mean, 1: the ancestral step) [default: 0]").split()  # the plugin's own option
    assert re.search(r"\s+".join(map(re.escape, words)), helped.stdout), helped.stdout
