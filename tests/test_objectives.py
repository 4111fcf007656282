"""Training objectives (docs/method.md §4–§5): configs, hand-checked losses, regulariser
properties and forward-pass counts."""

import json
import math

import pytest
import torch
from torch import nn

from dmattack.diffusion import GaussianDiffusion
from dmattack.models import build_model
from dmattack.objectives import (
    STAT_KEYS,
    ObjectiveConfig,
    lambda_weight,
    training_loss,
)
from dmattack.perturbation import RayConfig, ray
from dmattack.registry import OBJECTIVES

VARIANTS = [
    dict(method="ddpm"),
    dict(method="ddpm-ip"),
    dict(method="robust-rand"),
    dict(method="robust-adv"),
    dict(method="robust-adv", stop_gradient=True, fgsm_step="wong", fgsm_cost="equivariance"),
    dict(method="invariance"),
    dict(method="invariance", invariance_form="madry"),
]


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion.from_schedule("linear", 1000)


class Recorder(nn.Module):
    """Wraps a model; records (batch size, grad enabled) and the output of every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[tuple[int, bool]] = []
        self.outputs: list[torch.Tensor] = []

    def forward(self, x, t):
        self.calls.append((x.shape[0], torch.is_grad_enabled()))
        out = self.model(x, t)
        self.outputs.append(out)
        return out


class EquivariantEps(nn.Module):
    """ε_θ(x, t) = w·x/√(1−ᾱ_t). At w = 1, ε_θ(x_t + √(1−ᾱ_t)δ) = ε_θ(x_t) + δ exactly."""

    def __init__(self, diffusion: GaussianDiffusion) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones((), dtype=torch.float64))
        self.s = torch.from_numpy(diffusion.sqrt_one_minus_alphas_cumprod)

    def forward(self, x, t):
        return self.w * x / self.s[t].reshape(-1, *[1] * (x.dim() - 1))


def _data(n=64, d=3, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 0.5


def test_config_defaults_and_round_trip():
    cfg = ObjectiveConfig()
    assert cfg.method == "robust-adv"  # the training default
    assert (cfg.lam, cfg.lambda_scaling, cfg.stop_gradient) == (0.3, "var", False)
    assert (cfg.fgsm_step, cfg.fgsm_cost, cfg.invariance_form) == ("std", "discrepancy", "trades")
    assert cfg.ray == RayConfig() and cfg.ip_gamma == 0.1
    custom = ObjectiveConfig(method="robust-rand", lam=0.1, fgsm_step=0.8,
                             ray=RayConfig(base="var", xi_range=(1.0, 1.5)))
    d = json.loads(json.dumps(custom.to_dict()))
    assert ObjectiveConfig.from_dict(d) == custom
    with pytest.raises(ValueError, match="unknown objective config keys"):
        ObjectiveConfig.from_dict({**d, "lr": 1e-3})


@pytest.mark.parametrize(
    "kwargs, field",
    [(dict(method="adv"), "method"), (dict(lambda_scaling="sq"), "lambda_scaling"),
     (dict(lam=-1.0), "lam"), (dict(stop_gradient=1), "stop_gradient"),
     (dict(fgsm_step="big"), "fgsm_step"), (dict(fgsm_cost="l1"), "fgsm_cost"),
     (dict(invariance_form="x"), "invariance_form"), (dict(ip_gamma=-0.1), "ip_gamma"),
     (dict(ray={"rho": 2}), "ray")],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field) as info:
        ObjectiveConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_lambda_scalings():
    r = torch.tensor([0.35, 1.0, 3.15])
    sigma = r / math.sqrt(3)
    torch.testing.assert_close(lambda_weight(r, 0.3, "var"), 0.3 / sigma**2)
    torch.testing.assert_close(lambda_weight(r, 0.3, "std"), 0.3 / sigma)
    torch.testing.assert_close(lambda_weight(r, 0.3, "mul"), 0.3 * sigma)
    torch.testing.assert_close(lambda_weight(r, 0.3, "const"), torch.full_like(r, 0.3))


def test_ddpm_loss_matches_hand_computation(diffusion):
    model = build_model("mlp-small", (3,))
    x0 = _data()
    torch.manual_seed(7)
    loss, stats = training_loss(model, diffusion, x0, ObjectiveConfig("ddpm"))

    torch.manual_seed(7)
    t = torch.randint(0, 1000, (64,))
    eps = torch.randn_like(x0)
    abar = torch.from_numpy(diffusion.alphas_cumprod)[t].float()[:, None]
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    expected = ((eps - model(x_t, t)) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    assert set(stats) == set(STAT_KEYS) and all(isinstance(v, float) for v in stats.values())
    assert stats["loss"] == pytest.approx(expected.item()) and stats["reg"] == 0.0


def test_ddpm_ip_perturbs_input_not_target(diffusion):
    model = build_model("mlp-small", (3,))
    x0 = _data()
    torch.manual_seed(8)
    loss, _ = training_loss(model, diffusion, x0, ObjectiveConfig(method="ddpm-ip", ip_gamma=0.3))

    torch.manual_seed(8)
    t = torch.randint(0, 1000, (64,))
    eps = torch.randn_like(x0)
    x_t = diffusion.q_sample(x0, t, eps + 0.3 * torch.randn_like(x0))
    torch.testing.assert_close(loss, ((eps - model(x_t, t)) ** 2).mean())


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_each_method_trains(diffusion, kwargs):
    torch.manual_seed(0)
    model = build_model("mlp-small", (3,), dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x0 = _data(n=128)
    cfg = ObjectiveConfig(**kwargs)
    for _ in range(4):
        loss, stats = training_loss(model, diffusion, x0, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert math.isfinite(loss.item()) and all(math.isfinite(v) for v in stats.values())
        assert stats["loss"] == pytest.approx(stats["mse"] + stats["reg"], rel=1e-5)
        assert all(p.grad is not None for p in model.parameters())
    has_reg = cfg.method.startswith("robust") or (
        cfg.method == "invariance" and cfg.invariance_form == "trades"
    )
    assert (stats["reg"] > 0) == has_reg


@pytest.mark.parametrize("method", ["robust-adv", "robust-rand"])
def test_regulariser_zero_for_equivariant_model(diffusion, method):
    model = EquivariantEps(diffusion)
    torch.manual_seed(3)
    _, stats = training_loss(model, diffusion, _data().double(), ObjectiveConfig(method=method))
    assert stats["residual"] < 1e-20 and stats["reg"] < 1e-18
    assert stats["r"] > 0 and stats["lam_t"] > 0


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_stop_gradient_blocks_clean_output_in_reg(diffusion, stop_gradient):
    model = Recorder(build_model("mlp-small", (3,)))
    x0 = _data()
    cfg = ObjectiveConfig(method="robust-adv", stop_gradient=stop_gradient)
    torch.manual_seed(5)
    loss, _ = training_loss(model, diffusion, x0, cfg)
    e = model.outputs[0]  # the clean forward (with gradients) comes first
    (grad_e,) = torch.autograd.grad(loss, e)

    torch.manual_seed(5)
    torch.randint(0, 1000, (64,))
    eps = torch.randn_like(x0)
    mse_grad = -2 * (eps - e.detach()) / e.numel()  # ∂ mean((ε − e)²)/∂e
    if stop_gradient:
        torch.testing.assert_close(grad_e, mse_grad)
    else:
        assert (grad_e - mse_grad).abs().max() > 1e-3


def test_rand_ray_uses_batch_xi(diffusion):
    model = build_model("mlp-small", (3,))
    cfg = ObjectiveConfig(method="robust-rand", ray=RayConfig(xi_range=(1.0, 2.0)))
    torch.manual_seed(6)
    _, stats = training_loss(model, diffusion, _data(), cfg)
    torch.manual_seed(6)
    t = torch.randint(0, 1000, (64,))
    lo, hi = (ray(diffusion, t, cfg.ray, xi).mean().item() for xi in (1.0, 2.0))
    assert lo < stats["r"] < hi


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(method="ddpm"), [(1, True)]),
        (dict(method="ddpm-ip"), [(1, True)]),
        (dict(method="robust-rand"), [(2, True)]),
        (dict(method="robust-adv"), [(1, True)] * 3),
        (dict(method="invariance"), [(1, True)] * 3),
        (dict(method="invariance", invariance_form="madry"), [(1, False), (1, True), (1, True)]),
    ],
)
def test_forward_counts(diffusion, kwargs, expected):
    B = 32
    model = Recorder(build_model("mlp-small", (3,)))
    training_loss(model, diffusion, _data(n=B), ObjectiveConfig(**kwargs))
    assert model.calls == [(k * B, grad) for k, grad in expected]
    assert all(p.grad is None for p in model.parameters())  # FGSM leaves no .grad


def test_all_methods_covered():
    assert {v["method"] for v in VARIANTS} == set(OBJECTIVES.names())
