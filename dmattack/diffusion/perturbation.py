"""Training-time perturbations of the noisy sample (docs/method.md §3, Eqs. 5–7).

Units: δ is in noise (ε) units. It enters the noisy sample as x_t^adv = x_t + √(1−ᾱ_t)·δ
(Eq. 5), so the shift in model space ([−1, 1]) is √(1−ᾱ_t)·δ. The ray r(t) bounds |δ_i| in ε
units, per sample; σ_δ = r/√3 is the standard deviation of the uniform start δ_0 ~ U(−r, r).
Timesteps are 0-indexed (the paper's t is ours plus one).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..core.errors import ConfigError
from ..core.settings import check_settings, is_number, setting
from ..core.tensors import per_sample
from .gaussian import EpsModel, GaussianDiffusion

RAY_BASES = ("std", "var")
FGSM_STEPS = ("std", "wong")
FGSM_COSTS = ("discrepancy", "equivariance")


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions: (B, …) → (B,)."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


@dataclass(frozen=True)
class RayConfig:
    """Shape of the ray r(t) = (s^ρ + ξ·b)/s with s = √(1−ᾱ_t) (docs/method.md §3).

    ``base="std"`` uses s^ρ in the numerator, ``"var"`` uses (s²)^ρ = (1−ᾱ_t)^ρ. ``bias`` b is
    the floor of the model-space bound √(1−ᾱ_t)·r, in model units ([−1, 1]): the default 8/255
    is 4/255 of a [0, 1] pixel; ``--bias 16/255`` gives the pixel reading (docs/method.md
    §10.1). ``xi_range`` = (a, b) of Robust_rand's batch-wise ξ ~ U(a, b); Robust_adv uses ξ = 1.
    """

    rho: float = setting(2.0, "Ray exponent ρ.", low=0, low_open=True)
    bias: float = setting(8 / 255, "Ray floor b (model-space units).", low=0)
    base: str = setting("std", "Ray numerator: std (s^ρ) or var ((s²)^ρ).", choices=RAY_BASES,
                        option="--ray-base")
    xi_range: tuple[float, float] = setting((1.0, 2.0), "Robust-rand's batch-wise ξ ~ U(a, b).",
                                            low=0)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.xi_range[0] > self.xi_range[1]:
            raise ConfigError(f"xi_range (--xi-range) = {self.xi_range!r} is invalid; allowed: "
                              "(a, b) with 0 <= a <= b", field="xi_range")
        object.__setattr__(self, "xi_range", tuple(float(v) for v in self.xi_range))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["xi_range"] = list(self.xi_range)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RayConfig:
        unknown = set(d) - {"rho", "bias", "base", "xi_range"}
        if unknown:
            raise ConfigError(f"unknown ray config keys {sorted(unknown)}")
        d = dict(d)
        if isinstance(d.get("xi_range"), list):
            d["xi_range"] = tuple(d["xi_range"])
        return cls(**d)


def ray(
    diffusion: GaussianDiffusion,
    t: torch.Tensor,
    cfg: RayConfig,
    xi: float | torch.Tensor = 1.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """r(t) in ε units, shape (B,) for t (B,) (0-indexed), on ``t``'s device.

    The model-space bound is √(1−ᾱ_t)·r = (1−ᾱ_t)^{ρ/2} + ξb ("std" base): ≈ b as t → 0 and
    ≈ 1 + b at t = T−1. ``xi`` is a float or a tensor broadcastable to (B,).
    """
    s = diffusion.device_table("sqrt_one_minus_alphas_cumprod", t.device)[t]
    numerator = s**cfg.rho if cfg.base == "std" else (s * s) ** cfg.rho
    return ((numerator + xi * cfg.bias) / s).to(dtype)


def random_perturbation(
    like: torch.Tensor, r: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """δ_0 ~ U(−r, r) element-wise, shaped like ``like`` (B, …); r (B,) per sample.

    Draws from ``generator`` when given, else from the global torch RNG of ``like``'s device.
    Mean 0, std σ_δ = r/√3.
    """
    u = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    return (2 * u - 1) * per_sample(r, like)


def perturb(
    diffusion: GaussianDiffusion, x_t: torch.Tensor, t: torch.Tensor, delta: torch.Tensor
) -> torch.Tensor:
    """x_t^adv = x_t + √(1−ᾱ_t)·δ (Eq. 5): a shift of δ in ε units."""
    return x_t + diffusion.noise_std(t, x_t) * delta


def fgsm_step_size(r: torch.Tensor, step: str | float = "std") -> torch.Tensor:
    """Signed-step size α per sample (B,): σ_δ = r/√3 ("std", docs/method.md §3.2), 1.25·r ("wong",
    Wong et al. 2020), or ``step``·r for a positive float."""
    if step == "std":
        return r / math.sqrt(3)
    if step == "wong":
        return 1.25 * r
    if not (is_number(step) and step > 0):
        raise ValueError(
            f"fgsm step {step!r} invalid; allowed: {', '.join(FGSM_STEPS)} or a float > 0"
        )
    return step * r


def fgsm_cost(
    eps_clean: torch.Tensor, eps_pert: torch.Tensor, delta: torch.Tensor, cost: str
) -> torch.Tensor:
    """Per-sample cost J (B,) maximised by the training FGSM step.

    ``discrepancy`` (Eq. 6): mean_dims ‖ε_θ(x_t^adv) − ε_θ(x_t)‖²;
    ``equivariance`` (docs/method.md §10.6): mean_dims ‖ε_θ(x_t) + δ − ε_θ(x_t^adv)‖².
    """
    if cost == "discrepancy":
        return mean_flat((eps_pert - eps_clean) ** 2)
    if cost == "equivariance":
        return mean_flat((eps_clean + delta - eps_pert) ** 2)
    raise ValueError(f"fgsm cost {cost!r} unknown; allowed: {', '.join(FGSM_COSTS)}")


def fgsm_perturbation(
    model: EpsModel,
    diffusion: GaussianDiffusion,
    x_t: torch.Tensor,
    t: torch.Tensor,
    r: torch.Tensor,
    *,
    step: str | float = "std",
    cost: str = "discrepancy",
    eps_clean: torch.Tensor | None = None,
    delta0: torch.Tensor | None = None,
) -> torch.Tensor:
    """FGSM with random start (Eqs. 6–7): δ = clip(δ_0 + α·sign(∇_δ ΣJ(δ_0)), −r, r), detached.

    Args:
        x_t: noisy samples (B, …); t: (B,) 0-indexed timesteps; r: (B,) ray in ε units.
        eps_clean: ε_θ(x_t, t) if already computed (it is detached here); otherwise it is
            computed under ``torch.no_grad()`` (one extra forward of B).
        delta0: the random start; a fresh U(−r, r) draw from the global RNG if None.

    Cost: one forward of B with gradients (plus one no-grad forward of B without
    ``eps_clean``) and one backward with respect to δ only. Parameters get no ``.grad``; the
    model's train/eval mode is left as is, so dropout is active exactly when it is in the main
    pass. Returns δ (B, …) with |δ_i| ≤ r.
    """
    alpha = fgsm_step_size(r, step)
    if eps_clean is None:
        with torch.no_grad():
            eps_clean = diffusion.predict_eps(model, x_t, t)
    if delta0 is None:
        delta0 = random_perturbation(x_t, r)
    delta = delta0.detach().requires_grad_(True)
    with torch.enable_grad():
        eps_pert = diffusion.predict_eps(model, perturb(diffusion, x_t.detach(), t, delta), t)
        J = fgsm_cost(eps_clean.detach(), eps_pert, delta, cost)
        (grad,) = torch.autograd.grad(J.sum(), delta)
    bound = per_sample(r, x_t)
    return torch.clamp(delta0.detach() + per_sample(alpha, x_t) * grad.sign(), -bound, bound)


__all__ = [
    "FGSM_COSTS",
    "FGSM_STEPS",
    "RAY_BASES",
    "RayConfig",
    "fgsm_cost",
    "fgsm_perturbation",
    "fgsm_step_size",
    "mean_flat",
    "perturb",
    "random_perturbation",
    "ray",
]
