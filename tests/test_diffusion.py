"""Diffusion math against diffusers' DDPMScheduler and closed forms."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from dmattack.diffusion.gaussian import GaussianDiffusion, beta_schedule, respace


def _float64(sched):
    """Recompute a diffusers scheduler's tables in float64 (it keeps float32 by default), so
    that both implementations can be compared far below float32 round-off (the betas
    themselves still differ by ~1e-9)."""
    sched.betas = sched.betas.double()
    sched.alphas = 1.0 - sched.betas
    sched.alphas_cumprod = torch.cumprod(sched.alphas, dim=0)
    return sched


def _eps_model(x, t):
    """A deterministic nonlinear stand-in for ε_θ."""
    return torch.tanh(x * 0.7 + t.float().reshape(-1, *[1] * (x.dim() - 1)) / 1000)


@pytest.fixture
def diffusion():
    return GaussianDiffusion.from_schedule("linear", 1000)


def test_schedule_matches_diffusers(diffusion):
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    np.testing.assert_allclose(diffusion.betas, sched.betas.double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(diffusion.alphas_cumprod, sched.alphas_cumprod.double().numpy(),
                               rtol=1e-5)
    _float64(sched)
    # β̃_t from the scheduler's own variance (t ≥ 1; diffusers clamps t = 0 to 1e-20)
    for t in (1, 10, 500, 999):
        assert diffusion.posterior_variance[t] == pytest.approx(
            sched._get_variance(t).item(), rel=1e-5)


def test_cosine_schedule_matches_diffusers():
    ours = beta_schedule("cosine", 1000)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    np.testing.assert_allclose(ours, sched.betas.double().numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("t", [999, 500, 37, 1])
def test_ancestral_step_matches_diffusers(variance_type, t):
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, variance_type)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                          variance_type=variance_type, clip_sample=False)
    _float64(sched)
    sched.set_timesteps(1000)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    tt = torch.full((4,), t, dtype=torch.long)
    eps = _eps_model(x, tt)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = diffusion.p_sample(_eps_model, x, tt, noise)
    theirs = sched.step(eps, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-7)


def test_last_step_adds_no_noise(diffusion):
    x = torch.randn(3, 5, dtype=torch.float64)
    t = torch.zeros(3, dtype=torch.long)
    a = diffusion.p_sample(_eps_model, x, t, torch.randn(3, 5, dtype=torch.float64))
    b = diffusion.p_sample(_eps_model, x, t, torch.zeros(3, 5, dtype=torch.float64))
    torch.testing.assert_close(a, b)


def test_p_mean_closed_form(diffusion):
    """μ_θ = (1/√α_t)(x_t − β_t/√(1−ᾱ_t) ε_θ) (docs/method.md §2)."""
    x = torch.randn(6, 3, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 100, 500, 999])
    eps = _eps_model(x, t)
    a = torch.from_numpy(diffusion.alphas)[t][:, None]
    b = torch.from_numpy(diffusion.betas)[t][:, None]
    abar = torch.from_numpy(diffusion.alphas_cumprod)[t][:, None]
    expected = (x - b / (1 - abar).sqrt() * eps) / a.sqrt()
    torch.testing.assert_close(diffusion.p_mean(_eps_model, x, t), expected)


def test_q_sample_and_predict_x0_invert(diffusion):
    x0 = torch.randn(5, 4, dtype=torch.float64)
    noise = torch.randn(5, 4, dtype=torch.float64)
    t = torch.tensor([0, 3, 300, 700, 999])
    x_t = diffusion.q_sample(x0, t, noise)
    torch.testing.assert_close(diffusion.predict_x0(x_t, t, noise), x0)
    # posterior mean at the true x0 equals the model mean with the true noise
    torch.testing.assert_close(
        diffusion.q_posterior_mean(x0, x_t, t), diffusion.mean_from_eps(x_t, t, noise))


def test_p_mean_is_differentiable(diffusion):
    x = torch.randn(2, 3, requires_grad=True)
    diffusion.p_mean(_eps_model, x, torch.tensor([5, 50])).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_respace_matches_improved_diffusion(diffusion):
    """β_i = 1 − ᾱ_{τ_i}/ᾱ_{τ_{i−1}} keeps ᾱ at the kept timesteps."""
    for k in (300, 500, 50):
        sd = respace(diffusion, k)
        assert sd.num_timesteps == k
        np.testing.assert_allclose(sd.alphas_cumprod,
                                   diffusion.alphas_cumprod[sd.timestep_map], rtol=1e-12)
        assert sd.timestep_map[0] == 0 and sd.timestep_map[-1] == 999
        assert len(set(sd.timestep_map.tolist())) == k
    assert respace(diffusion, 1000).timestep_map.tolist() == list(range(1000))


def test_respaced_model_gets_original_timesteps(diffusion):
    seen = []

    def model(x, t):
        seen.append(t.clone())
        return torch.zeros_like(x)

    sd = respace(diffusion, 10)
    sd.p_sample(model, torch.zeros(2, 3), torch.tensor([9, 4]), torch.zeros(2, 3))
    assert seen[0].tolist() == [999, int(sd.timestep_map[4])]


def test_ddim_step_matches_diffusers(diffusion):
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                          set_alpha_to_one=True, timestep_spacing="leading")
    _float64(sched)
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    sched.set_timesteps(10)
    use = sorted(sched.timesteps.tolist())
    sd = GaussianDiffusion(1 - diffusion.alphas_cumprod[use] / np.append(
        1.0, diffusion.alphas_cumprod[use][:-1]), timestep_map=use)
    x = torch.randn(3, 4, dtype=torch.float64)
    for i in (9, 5, 0):
        t_orig = use[i]
        eps = _eps_model(x, torch.full((3,), t_orig))
        theirs = sched.step(eps, t_orig, x, eta=0.0).prev_sample
        ours = sd.ddim_step(_eps_model, x, torch.full((3,), i), torch.zeros_like(x), eta=0.0)
        torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-7)


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown beta schedule 'quad'"):
        beta_schedule("quad")
    with pytest.raises(ValueError, match="variance type"):
        GaussianDiffusion(beta_schedule("linear", 10), variance_type="learned")
    with pytest.raises(ValueError, match="outside 1..1000"):
        respace(GaussianDiffusion.from_schedule(), 0)
