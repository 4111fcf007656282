"""The resolved chain (SamplingChain): one object per (model, sampler), checked against closed
forms and the sampling loop; the purifier's chain names come from the sampler entries."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dmattack.core.errors import ConfigError
from dmattack.core.registry import SAMPLERS
from dmattack.core.seeding import sample_seeds
from dmattack.diffusion.gaussian import GaussianDiffusion
from dmattack.diffusion.sampling import (
    Sampler,
    SamplerConfig,
    SamplingChain,
    ancestral_step,
    sample,
    sample_batched,
)
from dmattack.models import build_model
from dmattack.purification.purifier import purify_sampler_name, purify_samplers

T = 40


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion.from_schedule(num_timesteps=T)


def test_full_length_walks_the_model_diffusion_itself(diffusion):
    for sampler in (SamplerConfig("ddpm"), SamplerConfig("respaced", T)):
        chain = SamplingChain(diffusion, sampler)
        assert chain.walk is diffusion and chain.num_steps == T


@pytest.mark.parametrize("k", [1, 7, 10])
def test_respaced_chain_matches_the_closed_form(diffusion, k):
    """Strided timesteps τ_i, β_i = 1 − ᾱ_{τ_i}/ᾱ_{τ_{i−1}}, budgets √β̃ in step order."""
    chain = SamplingChain(diffusion, SamplerConfig("ddim", k, eta=0.5))
    tau = chain.timestep_map
    assert chain.num_steps == k == len(tau) and tau[0] == 0 and list(tau) == sorted(set(tau))
    abar = diffusion.alphas_cumprod[tau]
    np.testing.assert_allclose(chain.walk.alphas_cumprod, abar, rtol=1e-12)
    prev = np.append(1.0, abar[:-1])
    beta = 1 - abar / prev
    beta_tilde = beta * (1 - prev) / (1 - abar)
    np.testing.assert_allclose(chain.budgets, np.sqrt(beta_tilde)[::-1], rtol=1e-9, atol=0)
    assert chain.attackable_steps == list(range(k - 1))  # all but the last (β̃_0 = 0)
    assert chain.eta == 0.5 and chain.describe() == f"ddim-{k}-eta0.5"
    like = torch.zeros(3, 2)
    for step in range(k):
        assert torch.equal(chain.budget(step, like),
                           torch.full((3, 1), float(chain.budgets[step]), dtype=torch.float32))


def test_chain_records_the_sampler_and_its_steps(diffusion):
    chain = SamplingChain(diffusion, SamplerConfig("respaced", 8, clip_denoised=True))
    assert chain.to_dict() == {**chain.sampler.to_dict(), "num_steps": 8,
                               "label": "respaced-8-clip"}
    assert SamplingChain(diffusion, SamplerConfig("respaced", 8)).eta == 0.0


def test_for_shape_resolves_clipping_and_shares_the_walk(diffusion):
    chain = SamplingChain(diffusion, SamplerConfig("respaced", 5))
    image, vector = chain.for_shape((1, 4, 4)), chain.for_shape((3,))
    assert image.clip_denoised is True and vector.clip_denoised is False
    assert image.walk is chain.walk is vector.walk and chain.clip_denoised is None
    assert image.for_shape((1, 4, 4)) is image


def test_of_passes_a_chain_through_and_refuses_another_sampler(diffusion):
    chain = SamplingChain(diffusion, SamplerConfig("respaced", 5))
    assert SamplingChain.of(chain) is chain
    assert SamplingChain.of(chain, SamplerConfig("respaced", 5)) is chain
    resolved = chain.for_shape((3,))
    assert SamplingChain.of(resolved, SamplerConfig("respaced", 5)) is resolved
    with pytest.raises(ValueError, match="differs from the chain"):
        SamplingChain.of(chain, SamplerConfig("respaced", 6))
    assert SamplingChain.of(diffusion).sampler == SamplerConfig()


def test_a_sampler_longer_than_the_model_is_refused(diffusion):
    with pytest.raises(ConfigError, match=rf"steps \(--sampler-steps\) = {T + 1} is invalid"):
        SamplingChain(diffusion, SamplerConfig("respaced", T + 1))


@pytest.mark.parametrize("sampler", [SamplerConfig("ddpm"), SamplerConfig("respaced", 6),
                                     SamplerConfig("ddim", 6, eta=1.0)], ids=lambda s: s.name)
def test_sampling_a_chain_is_sampling_its_settings(diffusion, sampler):
    torch.manual_seed(0)
    model = build_model("mlp-small", (3,)).eval()
    seeds = sample_seeds(2, 5)
    chain = SamplingChain(diffusion, sampler)
    with torch.no_grad():
        a = sample(model, diffusion, (3,), seeds, sampler)
        b = sample(model, chain, (3,), seeds)
        c = sample_batched(model, diffusion, (3,), seeds, 2, sampler)
        d = sample_batched(model, chain, (3,), seeds, 2)
    assert torch.equal(a, b) and torch.equal(c, d)


def test_the_chain_is_resolved_in_one_place():
    """Only SamplingChain's constructor asks a sampler entry for the diffusion it walks."""
    package = Path(__file__).resolve().parents[1] / "dmattack"
    calls = [(p.name, n) for p in package.rglob("*.py")
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\.entry\.chain\(|sampling_diffusion", line)]
    assert [name for name, _ in calls] == ["sampling.py"], calls


def test_purifier_chain_names_come_from_the_sampler_entries():
    assert purify_samplers() == ("ancestral", "ddim")
    assert purify_sampler_name("ancestral") == "respaced"
    assert purify_sampler_name("ddim") == "ddim"
    SAMPLERS.register("leap", Sampler("a plugin chain", ancestral_step, purify_name="jump"))
    try:
        assert purify_samplers() == ("ancestral", "ddim", "jump")
        assert purify_sampler_name("jump") == "leap"
    finally:
        SAMPLERS.unregister("leap")
    assert purify_samplers() == ("ancestral", "ddim")
