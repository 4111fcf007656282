"""The sampling loop: per-sample seeds, samplers, hook."""

import pytest
import torch

from dmattack.core.errors import ConfigError
from dmattack.core.seeding import (
    CHAIN_NOISE,
    _block_draw_is_exact,
    generators,
    randn_per_sample,
    randn_steps,
    sample_seeds,
)
from dmattack.diffusion.gaussian import GaussianDiffusion, respace
from dmattack.diffusion.sampling import SamplerConfig, SamplingChain, sample, sample_batched
from dmattack.models import build_model


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model("mlp-small", (3,)).eval()
    return model, GaussianDiffusion.from_schedule("linear", 1000)


@pytest.mark.parametrize("sampler", [SamplerConfig("respaced", 20),
                                     SamplerConfig("ddim", 10, eta=0.5)])
def test_samples_do_not_depend_on_batch_size(setup, sampler):
    model, diffusion = setup
    seeds = sample_seeds(3, 10)
    with torch.no_grad():
        whole = sample(model, diffusion, (3,), seeds, sampler)
        parts = sample_batched(model, diffusion, (3,), seeds, 3, sampler)
        reordered = sample(model, diffusion, (3,), seeds[::-1], sampler).flip(0)
    # equal up to float32 round-off of differently sized matmuls (random draws are identical)
    torch.testing.assert_close(whole, parts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(whole, reordered, rtol=1e-5, atol=1e-5)


def test_seed_changes_samples(setup):
    model, diffusion = setup
    with torch.no_grad():
        a = sample(model, diffusion, (3,), sample_seeds(0, 4), SamplerConfig("respaced", 5))
        b = sample(model, diffusion, (3,), sample_seeds(1, 4), SamplerConfig("respaced", 5))
    assert not torch.allclose(a, b)


def test_hook_sees_every_step_and_can_perturb(setup):
    model, diffusion = setup
    calls = []

    def hook(x, t, step):
        calls.append((step, int(t[0])))
        return x + 1.0 if step == 0 else x

    seeds = sample_seeds(0, 2)
    cfg = SamplerConfig("respaced", 8)
    with torch.no_grad():
        clean = sample(model, diffusion, (3,), seeds, cfg)
        hooked = sample(model, diffusion, (3,), seeds, cfg, hook=hook)
    assert calls == [(k, 7 - k) for k in range(8)]
    assert not torch.allclose(clean, hooked)


def test_identity_hook_is_bit_identical(setup):
    model, diffusion = setup
    seeds = sample_seeds(5, 3)
    cfg = SamplerConfig("respaced", 10)
    with torch.no_grad():
        a = sample(model, diffusion, (3,), seeds, cfg)
        b = sample(model, diffusion, (3,), seeds, cfg, hook=lambda x, t, s: x)
    assert torch.equal(a, b)


def test_ddim_eta0_is_deterministic_given_x_T(setup):
    model, diffusion = setup
    seeds = sample_seeds(0, 2)
    with torch.no_grad():
        a = sample(model, diffusion, (3,), seeds, SamplerConfig("ddim", 10, eta=0.0))
    # the per-step noise draws are multiplied by σ = 0 and cannot matter
    sd = respace(diffusion, 10)
    x = torch.stack([torch.randn(3, generator=g) for g in generators(seeds, CHAIN_NOISE)])
    with torch.no_grad():
        for i in reversed(range(10)):
            x = sd.ddim_step(model, x, torch.full((2,), i), torch.zeros_like(x), 0.0)
    torch.testing.assert_close(a, x, rtol=0, atol=1e-6)


def test_sampler_config_validation():
    with pytest.raises(ConfigError, match=r"name \(--sampler\) = 'euler' is invalid; allowed: "
                       "ddpm, respaced, ddim"):
        SamplerConfig("euler")
    with pytest.raises(ConfigError, match=r"--sampler-steps\) = 0 is invalid; allowed: an "
                       "integer >= 1"):
        SamplerConfig("respaced", 0)
    with pytest.raises(ConfigError, match=r"= 1001 is invalid; allowed: 1..1000"):
        SamplerConfig("respaced", 1001).validate(1000)
    with pytest.raises(ConfigError, match=r"eta \(--eta\) = 1.5"):
        SamplerConfig("ddim", 10, eta=1.5)
    assert SamplerConfig("ddpm", 50).num_steps(1000) == 1000
    assert SamplerConfig("respaced", 50).describe(1000) == "respaced-50"
    assert SamplerConfig("respaced", 50, clip_denoised=True).describe(1000) == "respaced-50-clip"


def test_clip_denoised_follows_the_data_unless_set():
    assert SamplerConfig().clip_denoised is None
    assert SamplerConfig().for_shape((1, 8, 8)).clip_denoised is True
    assert SamplerConfig().for_shape((3, 32, 32)).clip_denoised is True
    assert SamplerConfig().for_shape((64,)).clip_denoised is False
    assert SamplerConfig(clip_denoised=False).for_shape((1, 8, 8)).clip_denoised is False
    assert SamplerConfig(clip_denoised=True).for_shape((64,)).clip_denoised is True


def test_default_sampling_clips_images_and_not_vectors():
    # ε_θ = 0 makes x̂_0 = x_t/√ᾱ_t, far outside [-1, 1] early in the chain: clipping matters
    def zero_eps(x, t):
        return torch.zeros_like(x)

    diffusion = GaussianDiffusion.from_schedule("linear", 1000)
    seeds = sample_seeds(0, 3)
    for shape, clipped in (((1, 4, 4), True), ((16,), False)):
        default, on, off = (sample(zero_eps, diffusion, shape, seeds,
                                   SamplerConfig("respaced", 5, clip_denoised=clip))
                            for clip in (None, True, False))
        assert not torch.allclose(on, off)
        assert torch.equal(default, on if clipped else off), shape
    # x̂_0 clipped, one reverse step from x_1 lands in the posterior mean of a clipped x̂_0
    x = torch.full((2, 1, 4, 4), 3.0)
    t = torch.zeros(2, dtype=torch.long)
    step = diffusion.p_sample(zero_eps, x, t, torch.zeros_like(x), clip_denoised=True)
    assert torch.allclose(step, diffusion.q_posterior_mean(torch.ones_like(x), x, t))


def test_sampling_is_gradient_transparent(setup):
    model, diffusion = setup
    seen = []

    def hook(x, t, step):
        with torch.enable_grad():
            x = x.clone().requires_grad_(True)
            y = diffusion.p_mean(model, x, t).sum()
            seen.append(torch.autograd.grad(y, x)[0].abs().sum().item())
        return x.detach()

    with torch.no_grad():
        sample(model, diffusion, (3,), sample_seeds(0, 2), SamplerConfig("respaced", 3),
               hook=hook)
    assert len(seen) == 3 and all(s > 0 for s in seen)


# --- block-drawn chain noise ----------------------------------------------------------------

def _sample_step_by_step(model, diffusion, shape, seeds, sampler):
    """The sampling loop as it was: x_T, then one randn_per_sample call per step."""
    sd = SamplingChain(diffusion, sampler).walk
    gens = generators(seeds, CHAIN_NOISE)
    x = randn_per_sample(shape, gens, "cpu")
    for i in reversed(range(sd.num_timesteps)):
        t = torch.full((len(seeds),), i, dtype=torch.long)
        noise = randn_per_sample(shape, gens, "cpu")
        if sampler.name == "ddim":
            x = sd.ddim_step(model, x, t, noise, sampler.eta, sampler.clip_denoised)
        else:
            x = sd.p_sample(model, x, t, noise, sampler.clip_denoised)
    return x


@pytest.mark.parametrize("dim", [64, 3])  # 64: block draws; 3: per-step fallback
@pytest.mark.parametrize("sampler", [SamplerConfig("respaced", 12),
                                     SamplerConfig("ddim", 7, eta=1.0)])
def test_sampling_is_bit_identical_to_step_by_step_draws(dim, sampler):
    torch.manual_seed(0)
    model = build_model("mlp-small", (dim,)).eval()
    diffusion = GaussianDiffusion.from_schedule("linear", 1000)
    seeds = sample_seeds(7, 5)
    with torch.no_grad():
        new = sample(model, diffusion, (dim,), seeds, sampler)
        old = _sample_step_by_step(model, diffusion, (dim,), seeds, sampler)
    assert torch.equal(new, old)


def test_block_draws_are_taken_for_sizes_that_are_multiples_of_16():
    # the speed-up relies on this property of torch's CPU generator
    assert _block_draw_is_exact(64, 11, torch.float32, "cpu")
    assert _block_draw_is_exact(3 * 32 * 32, 26, torch.float32, "cpu")


@pytest.mark.parametrize("shape", [(1, 8, 8), (5,), (16,)])
@pytest.mark.parametrize("block_elements", [1, 100, 1 << 24])  # several blocks + a remainder
def test_randn_steps_equals_successive_per_sample_draws(shape, block_elements):
    seeds = sample_seeds(3, 3)
    got = list(randn_steps(shape, generators(seeds, CHAIN_NOISE), 9, "cpu",
                           block_elements=block_elements * 3 * 64))
    gens = generators(seeds, CHAIN_NOISE)
    want = [randn_per_sample(shape, gens, "cpu") for _ in range(9)]
    assert len(got) == 9
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_block_drawn_samples_do_not_depend_on_batch():
    torch.manual_seed(0)
    model = build_model("mlp-small", (64,)).eval()
    diffusion = GaussianDiffusion.from_schedule("linear", 1000)
    seeds, cfg = sample_seeds(11, 6), SamplerConfig("respaced", 10)
    with torch.no_grad():
        whole = sample(model, diffusion, (64,), seeds, cfg)
        parts = sample_batched(model, diffusion, (64,), seeds, 4, cfg)
        alone = torch.cat([sample(model, diffusion, (64,), [s], cfg) for s in seeds])
    # equal up to float32 round-off of differently sized matmuls over 10 steps
    torch.testing.assert_close(whole, parts, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(whole, alone, rtol=1e-4, atol=1e-4)
