"""Training objectives (docs/method.md §4–§5): configs, hand-checked losses, regulariser
properties and forward-pass counts."""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from dmattack.core.errors import ConfigError
from dmattack.core.registry import OBJECTIVES
from dmattack.core.settings import setting
from dmattack.diffusion.gaussian import GaussianDiffusion
from dmattack.diffusion.perturbation import RayConfig, ray
from dmattack.models import build_model
from dmattack.training.objective_options import FGSMOptions, ObjectiveOptions, RegularisedOptions
from dmattack.training.objectives import (
    BUILTIN_STATS,
    ObjectiveConfig,
    draw_step,
    lambda_weight,
    training_loss,
)

ROOT = Path(__file__).resolve().parents[1]

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
    assert cfg.method == "robust-adv" and cfg.options == FGSMOptions()  # the training default
    o = cfg.options
    assert (o.lam, o.lambda_scaling, o.stop_gradient) == (0.3, "var", False)
    assert (o.fgsm_step, o.fgsm_cost) == ("std", "discrepancy") and o.ray == RayConfig()
    assert ObjectiveConfig("ddpm-ip").options.ip_gamma == 0.1
    custom = ObjectiveConfig(method="robust-rand", lam=0.1,
                             ray=RayConfig(base="var", xi_range=(1.0, 1.5)))
    assert custom == ObjectiveConfig("robust-rand", RegularisedOptions(
        lam=0.1, ray=RayConfig(base="var", xi_range=(1.0, 1.5))))
    d = json.loads(json.dumps(custom.to_dict()))
    assert d == {"method": "robust-rand", "lam": 0.1, "lambda_scaling": "var",
                 "stop_gradient": False, "ray": {"rho": 2.0, "bias": 8 / 255, "base": "var",
                                                 "xi_range": [1.0, 1.5]}}
    assert ObjectiveConfig.from_dict(d) == custom
    with pytest.raises(ValueError, match="unknown objective option 'lr'"):
        ObjectiveConfig.from_dict({**d, "lr": 1e-3})


def test_a_record_of_every_objective_setting_still_loads():
    """dmattack 0.1 recorded every built-in objective's settings whatever the method (e.g.
    checkpoints/digits-ddpm): those its method has no option for are dropped."""
    old = json.loads((ROOT / "checkpoints" / "digits-ddpm" / "config.json").read_text())
    objective = old["train"]["objective"]
    assert objective["method"] == "ddpm" and "lam" in objective and "ip_gamma" in objective
    assert ObjectiveConfig.from_dict(objective) == ObjectiveConfig("ddpm")
    assert ObjectiveConfig.from_dict({**objective, "method": "ddpm-ip", "ip_gamma": 0.2}) \
        == ObjectiveConfig("ddpm-ip", ip_gamma=0.2)


@pytest.mark.parametrize("method, kwargs", [("ddpm", dict(lam=0.5)),
                                            ("robust-rand", dict(fgsm_step=0.8)),
                                            ("robust-adv", dict(ip_gamma=0.2))])
def test_an_option_the_method_lacks_is_refused(method, kwargs):
    (name,) = kwargs
    with pytest.raises(ConfigError, match=f"^{name} is not an option of training method "
                                          f"{method}; its options: "):
        ObjectiveConfig(method, **kwargs)
    with pytest.raises(ConfigError, match="options = .* is invalid for training method"):
        ObjectiveConfig("ddpm", options=FGSMOptions())


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
    assert set(stats) == set(BUILTIN_STATS) and all(isinstance(v, float) for v in stats.values())
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
        cfg.method == "invariance" and cfg.options.invariance_form == "trades"
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
    lo, hi = (ray(diffusion, t, cfg.options.ray, xi).mean().item() for xi in (1.0, 2.0))
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


@pytest.mark.parametrize("method, draws, shared", [
    ("ddpm", [], set()), ("ddpm-ip", ["ip_noise"], set()), ("robust-rand", ["xi", "u"], {"xi"}),
    ("robust-adv", ["u"], set()), ("invariance", ["u"], set())])
def test_each_entry_declares_its_draws(diffusion, method, draws, shared):
    """The draws of a step are the entry's, in its order, after t and ε; per-sample ones are
    cut by rows(), batch-wise ones (ξ) shared; the same generator state gives the same t, ε."""
    cfg = ObjectiveConfig(method)
    step = draw_step(diffusion, cfg, (6, 3), "cpu", generator=torch.Generator().manual_seed(2))
    assert list(step.extra) == draws and step.shared == shared
    g = torch.Generator().manual_seed(2)
    torch.testing.assert_close(step.t, torch.randint(0, 1000, (6,), generator=g))
    torch.testing.assert_close(step.noise, torch.randn((6, 3), generator=g))
    part = step.rows(2, 5)
    for name in draws:
        want = step[name] if name in shared else step[name][2:5]
        torch.testing.assert_close(part[name], want)
    if "xi" in draws:
        lo, hi = cfg.options.ray.xi_range
        assert step["xi"].dtype == torch.float64 and lo <= step["xi"].item() <= hi
    assert OBJECTIVES[method].stats == BUILTIN_STATS


@dataclass(frozen=True)
class MomentumOptions(RegularisedOptions):
    decay: float = setting(0.5, "Decay.", low=0, high=1)


@dataclass(frozen=True)
class OwnLambdaOptions(ObjectiveOptions):
    lam: float = setting(1.0, "Another λ.", low=0)


@pytest.fixture
def two_plugins():
    from dmattack.training.objectives import Objective, ddpm_loss

    OBJECTIVES.register("mine", Objective(ddpm_loss, "shares the regulariser", MomentumOptions))
    OBJECTIVES.register("other", Objective(ddpm_loss, "its own lam", OwnLambdaOptions))
    yield
    OBJECTIVES.unregister("mine")
    OBJECTIVES.unregister("other")


def test_train_options_share_identical_declarations_and_prefix_clashes(two_plugins):
    """`dmattack train`'s objective options: a field declared like a built-in one shares its
    option (--lambda), a new one is added (--decay), one declared otherwise under a taken name
    is spelled --<method>-<option>; each says which methods read it."""
    from dmattack.core.settings import iter_settings, setting_of
    from dmattack.training.objective_cli import from_train_options, objective_option_table

    table = objective_option_table()
    assert table.params["mine"]["objective__lam"] == "lam" == \
        table.params["robust-rand"]["objective__lam"]
    assert table.params["other"] == {"objective__other__lam": "lam"}
    assert table.spelling["objective__other__lam"] == "--other-lam"
    assert table.spelling["objective__decay"] == "--decay"
    helps = {p: setting_of(f).help for p, f, _ in iter_settings(table.cls) if p != "method"}
    assert helps["lam"].endswith("[read by --method robust-adv, robust-rand, invariance, mine]")
    assert helps["other__lam"] == "Another λ. [read by --method other]"
    assert helps["ray.xi_range"].endswith("[read by --method robust-rand, mine]")

    def build(**given):
        opts = {"objective__" + k: v for k, v in given.items()}
        return from_train_options(opts, set(opts))

    assert build(method="other", other__lam=2.0) == ObjectiveConfig("other", lam=2.0)
    assert build(method="mine", decay=0.25, lam=0.1).options == MomentumOptions(lam=0.1,
                                                                                decay=0.25)
    assert build(method="robust-adv", lam=0.1) == ObjectiveConfig("robust-adv", lam=0.1)
    with pytest.raises(ConfigError, match="^--lambda is not read by training method other; "
                                          "it reads: --other-lam$"):
        build(method="other", lam=0.5)
    with pytest.raises(ConfigError, match="^--decay is not read by training method robust-adv"):
        build(method="robust-adv", decay=0.5)
    with pytest.raises(ConfigError, match="^--xi-range is not read by training method robust-adv"):
        build(method="robust-adv", ray__xi_range=(1.0, 1.5))
