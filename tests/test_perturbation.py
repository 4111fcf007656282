"""Training-time perturbations (docs/method.md §3): the ray, the random start and the FGSM step."""

import math

import pytest
import torch
from torch import nn

from dmattack.diffusion.gaussian import GaussianDiffusion
from dmattack.diffusion.perturbation import (
    RayConfig,
    fgsm_cost,
    fgsm_perturbation,
    fgsm_step_size,
    perturb,
    random_perturbation,
    ray,
)
from dmattack.models import build_model


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion.from_schedule("linear", 1000)


class LinearEps(nn.Module):
    """ε_θ(x, t) = A x, time-independent."""

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, x, t):
        return x @ self.A.T


# the paper's 1-indexed t → r(t), linear schedule, "std" base, ξ = 1
WORKED = {1: 3.15, 10: 0.76, 50: 0.36, 200: 0.64, 500: 0.99, 1000: 1.03}


def test_ray_worked_values(diffusion):
    t = torch.tensor([k - 1 for k in WORKED])
    r = ray(diffusion, t, RayConfig())
    assert r.shape == (len(WORKED),) and r.dtype == torch.float32
    for got, want in zip(r.tolist(), WORKED.values(), strict=True):
        assert got == pytest.approx(want, abs=0.01)


def test_ray_pixel_space_bound(diffusion):
    cfg = RayConfig()
    t = torch.arange(1000)
    s = torch.from_numpy(diffusion.sqrt_one_minus_alphas_cumprod)
    pixel = ray(diffusion, t, cfg, dtype=torch.float64) * s
    torch.testing.assert_close(pixel, s**2 + cfg.bias)
    assert pixel[0].item() == pytest.approx(cfg.bias, abs=1e-3)
    assert pixel[-1].item() == pytest.approx(1.0, abs=0.05)
    # ξ raises the floor; the var base shrinks the ray (1−ᾱ < 1) but keeps the same floor
    assert (ray(diffusion, t, cfg, xi=2.0) > ray(diffusion, t, cfg)).all()
    std, var = ray(diffusion, t, cfg), ray(diffusion, t, RayConfig(base="var"))
    assert (var <= std).all() and (var[100:900] < std[100:900]).all()
    assert (var * s.float())[0].item() == pytest.approx(cfg.bias, abs=1e-3)


@pytest.mark.parametrize(
    "kwargs",
    [dict(rho=0.0), dict(rho=float("nan")), dict(bias=-0.1), dict(base="log"),
     dict(xi_range=(2.0, 1.0)), dict(xi_range=(1.0,)), dict(xi_range=(-1.0, 1.0))],
)
def test_ray_config_validation(kwargs):
    with pytest.raises(ValueError, match=r"(rho|bias|base|xi_range) \(--"):
        RayConfig(**kwargs)


def test_ray_config_round_trip():
    cfg = RayConfig(rho=1.5, base="var", xi_range=(1.0, 3.0))
    assert RayConfig.from_dict(cfg.to_dict()) == cfg
    assert RayConfig.from_dict({"xi_range": [1, 2]}).xi_range == (1.0, 2.0)
    with pytest.raises(ValueError, match="unknown"):
        RayConfig.from_dict({"radius": 1})


def test_random_perturbation_range_and_std():
    torch.manual_seed(0)
    r = torch.tensor([0.05, 0.5, 1.0, 3.0])
    delta = random_perturbation(torch.empty(4, 50_000), r)
    assert (delta.abs() <= r[:, None]).all()
    torch.testing.assert_close(delta.std(dim=1), r / math.sqrt(3), rtol=0.02, atol=0)
    torch.testing.assert_close(delta.mean(dim=1), torch.zeros(4), atol=0.02 * 3, rtol=0)
    gen = [torch.Generator().manual_seed(3) for _ in range(2)]
    like = torch.empty(4, 2, 3)
    torch.testing.assert_close(
        random_perturbation(like, r, gen[0]), random_perturbation(like, r, gen[1])
    )


def test_perturb_is_eq5(diffusion):
    x0, eps, delta = torch.randn(3, 5, dtype=torch.float64).unbind(0)
    x0, eps, delta = x0.reshape(1, 5), eps.reshape(1, 5), delta.reshape(1, 5)
    t = torch.tensor([321])
    torch.testing.assert_close(
        perturb(diffusion, diffusion.q_sample(x0, t, eps), t, delta),
        diffusion.q_sample(x0, t, eps + delta),
    )


def test_fgsm_step_sizes():
    r = torch.tensor([0.3, 3.0])
    torch.testing.assert_close(fgsm_step_size(r), r / math.sqrt(3))
    torch.testing.assert_close(fgsm_step_size(r, "wong"), 1.25 * r)
    torch.testing.assert_close(fgsm_step_size(r, 0.5), 0.5 * r)
    for bad in ("big", 0.0, -1.0, True):
        with pytest.raises(ValueError, match="fgsm step"):
            fgsm_step_size(r, bad)


def _batch(diffusion, n=256, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 1000, (n,), generator=g)
    x_t = diffusion.q_sample(torch.randn(n, d, generator=g), t, torch.randn(n, d, generator=g))
    return x_t, t, ray(diffusion, t, RayConfig())


@pytest.mark.parametrize("cost", ["discrepancy", "equivariance"])
@pytest.mark.parametrize("train", [True, False])
def test_fgsm_increases_cost_within_ray(diffusion, cost, train):
    torch.manual_seed(1)
    model = build_model("mlp-small", (3,), dropout=0.0).train(train)
    x_t, t, r = _batch(diffusion)
    delta0 = random_perturbation(x_t, r)
    delta = fgsm_perturbation(model, diffusion, x_t, t, r, cost=cost, delta0=delta0)

    assert model.training is train
    assert all(p.grad is None for p in model.parameters())
    assert not delta.requires_grad
    assert (delta.abs() <= r[:, None] + 1e-6).all()
    with torch.no_grad():
        e = model(x_t, t)

        def J(dl):
            return fgsm_cost(e, model(perturb(diffusion, x_t, t, dl), t), dl, cost)

        j0, j1 = J(delta0), J(delta)
    assert j1.mean() > j0.mean()
    assert (j1 > j0).float().mean() > 0.7


def test_fgsm_works_under_no_grad_and_draws_its_start(diffusion):
    torch.manual_seed(2)
    model = build_model("mlp-small", (3,))
    x_t, t, r = _batch(diffusion, n=16)
    with torch.no_grad():
        delta = fgsm_perturbation(model, diffusion, x_t, t, r, step="wong")
    assert delta.shape == x_t.shape and (delta.abs() <= r[:, None] + 1e-6).all()
    # α = 1.25 r moves every coordinate at least 0.25 r away from 0 (before the clip at ±r)
    assert (delta.abs() >= 0.25 * r[:, None] - 1e-6).all()


@pytest.mark.parametrize("cost", ["discrepancy", "equivariance"])
def test_fgsm_linear_model_closed_form(diffusion, cost):
    g = torch.Generator().manual_seed(4)
    d = 4
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    model = LinearEps(A).double()
    t = torch.randint(0, 1000, (64,), generator=g)
    x_t = torch.randn(64, d, generator=g, dtype=torch.float64)
    r = ray(diffusion, t, RayConfig(), dtype=torch.float64)
    delta0 = random_perturbation(x_t, r, generator=g)
    delta = fgsm_perturbation(model, diffusion, x_t, t, r, cost=cost, delta0=delta0)

    # J = mean_dims ‖M δ‖² with M = s A (discrepancy) or I − s A (equivariance); ∇J ∝ MᵀM δ
    s = diffusion.noise_std(t, x_t)[:, :, None]  # (B, 1, 1)
    M = s * A if cost == "discrepancy" else torch.eye(d, dtype=torch.float64) - s * A
    grad = torch.einsum("bji,bjk,bk->bi", M, M, delta0)
    alpha = (r / math.sqrt(3))[:, None]
    expected = torch.minimum(torch.maximum(delta0 + alpha * grad.sign(), -r[:, None]), r[:, None])
    torch.testing.assert_close(delta, expected)
