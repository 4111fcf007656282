"""Training objectives (METHOD §4–§5): DDPM, Robust_adv / Robust_rand, the invariance
baseline, and DDPM-IP.

All squared norms are per-sample means over dimensions, then averaged over the batch (as in
improved-diffusion). δ is in ε units and x_t^adv = x_t + √(1−ᾱ_t)·δ (see
:mod:`dmattack.attacks.perturbation`). Timesteps are 0-indexed.

Forward passes per call (B = batch size):

* ``ddpm``, ``ddpm-ip``: one forward of B.
* ``robust-rand``: one forward of 2B on ``cat([x_t, x_t^adv])``.
* ``robust-adv`` and ``invariance`` (trades): three forwards of B and one backward w.r.t. δ:
  e = ε_θ(x_t) with gradients, then the FGSM forward at the random start (reusing
  ``e.detach()`` as the constant ε_θ(x_t, t) inside J), then e_adv = ε_θ(x_t^adv). This is one
  forward of B fewer than a no-grad clean forward + FGSM forward + a 2B final forward, and the
  FGSM backward runs over B rows, not 2B. With dropout, J and the loss then see the very same
  clean output.
* ``invariance`` (madry): a no-grad forward of B inside FGSM, the FGSM forward of B and one
  backward w.r.t. δ, then the forward of B at x_t^adv.

Why robust-adv does not batch its clean and perturbed forwards into one 2B forward: the FGSM
step needs ε_θ(x_t) (inside J) before x_t^adv exists, so a 2B forward on [x_t, x_t^adv] needs an
extra clean forward first (4B rows instead of 3B), and a 2B forward on [x_t, x_t + δ_0] makes
the input backward and the parameter backward run over 2B rows each. Both were measured slower
than the three forwards of B (docs/performance.md).

Randomness: all draws of a step (:class:`StepDraws`) are made up front for the whole batch, so
a trainer can draw them once for a global batch and hand each process or micro-batch its rows
(:meth:`StepDraws.rows`); the loss is then the same function of (x0, draws) however the batch
is split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from .attacks.perturbation import (
    FGSM_COSTS,
    RayConfig,
    fgsm_perturbation,
    fgsm_step_size,
    is_number,
    mean_flat,
    perturb,
    ray,
)
from .diffusion import EpsModel, GaussianDiffusion

METHODS = ("ddpm", "robust-adv", "robust-rand", "invariance", "ddpm-ip")
LAMBDA_SCALINGS = ("var", "std", "mul", "const")
INVARIANCE_FORMS = ("trades", "madry")
STAT_KEYS = ("loss", "mse", "reg", "residual", "r", "lam_t")


@dataclass(frozen=True)
class ObjectiveConfig:
    """Which training loss to minimise and its hyper-parameters.

    Attributes:
        method: ``ddpm`` (Eq. 3), ``robust-adv`` / ``robust-rand`` (Eq. 9 with an FGSM or a
            random δ), ``invariance`` (Eq. 8), ``ddpm-ip`` (Ning et al. 2023).
        lam: λ of the regulariser weight λ_t.
        lambda_scaling: λ_t = λ/σ_δ² (``var``), λ/σ_δ (``std``), λ·σ_δ (``mul``) or λ
            (``const``), with σ_δ = r(t)/√3.
        stop_gradient: detach ε_θ(x_t, t) inside the regulariser (the loss's DDPM term keeps
            its gradient either way).
        ray: the ray r(t) (ξ = 1 for adv and invariance, ξ ~ U(ray.xi_range) per batch for rand).
        fgsm_step: α of the training FGSM step: ``std`` (r/√3), ``wong`` (1.25·r) or a float
            multiple of r.
        fgsm_cost: J maximised by FGSM: ``discrepancy`` (Eq. 6) or ``equivariance``.
        invariance_form: ``trades`` ‖ε − e‖² + λ_t‖e − e_adv‖² (Eq. 15) or ``madry``
            ‖ε − e_adv‖².
        ip_gamma: DDPM-IP input perturbation γ: x_t is built with ε + γε', the target stays ε.
    """

    method: str = "ddpm"
    lam: float = 0.3
    lambda_scaling: str = "var"
    stop_gradient: bool = False
    ray: RayConfig = field(default_factory=RayConfig)
    fgsm_step: str | float = "std"
    fgsm_cost: str = "discrepancy"
    invariance_form: str = "trades"
    ip_gamma: float = 0.1

    def __post_init__(self) -> None:
        def allowed(name: str, options: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in options:
                raise ValueError(
                    f"objective {name} {value!r} unknown; allowed: {', '.join(options)}"
                )

        allowed("method", METHODS)
        allowed("lambda_scaling", LAMBDA_SCALINGS)
        allowed("fgsm_cost", FGSM_COSTS)
        allowed("invariance_form", INVARIANCE_FORMS)
        if not (is_number(self.lam) and self.lam >= 0):
            raise ValueError(f"objective lam {self.lam!r} invalid; allowed: a finite number >= 0")
        if not isinstance(self.stop_gradient, bool):
            raise ValueError(
                f"objective stop_gradient {self.stop_gradient!r} invalid; allowed: true, false"
            )
        if not isinstance(self.ray, RayConfig):
            raise ValueError(f"objective ray {self.ray!r} invalid; allowed: a RayConfig")
        fgsm_step_size(torch.ones(1), self.fgsm_step)  # raises a one-line ValueError if bad
        if not (is_number(self.ip_gamma) and self.ip_gamma >= 0):
            raise ValueError(
                f"objective ip_gamma {self.ip_gamma!r} invalid; allowed: a finite number >= 0"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ray nested as a dict)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["ray"] = self.ray.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectiveConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown objective config keys {sorted(unknown)}")
        d = dict(d)
        if isinstance(d.get("ray"), dict):
            d["ray"] = RayConfig.from_dict(d["ray"])
        return cls(**d)


def lambda_weight(r: torch.Tensor, lam: float, scaling: str = "var") -> torch.Tensor:
    """λ_t per sample (B,) from the ray r (B,) in ε units, with σ_δ = r/√3 (METHOD §4)."""
    sigma = r / math.sqrt(3)
    if scaling == "var":
        return lam / sigma**2
    if scaling == "std":
        return lam / sigma
    if scaling == "mul":
        return lam * sigma
    if scaling == "const":
        return torch.full_like(r, lam)
    raise ValueError(f"lambda scaling {scaling!r} unknown; allowed: {', '.join(LAMBDA_SCALINGS)}")


@dataclass(frozen=True)
class StepDraws:
    """The random draws of one training step for a batch of B rows (one device).

    ``t`` (B,) long timesteps; ``noise`` ε (B, …); ``ip_noise`` ε' of ddpm-ip (B, …);
    ``xi`` the batch-wise ξ of robust-rand (0-d, float64); ``u`` (B, …) U[0, 1) draws of the
    random start δ_0 = (2u − 1)·r of robust-adv, robust-rand and invariance. Unused ones are
    None.
    """

    t: torch.Tensor
    noise: torch.Tensor
    ip_noise: torch.Tensor | None = None
    xi: torch.Tensor | None = None
    u: torch.Tensor | None = None

    def rows(self, start: int, stop: int,
             memory_format: torch.memory_format = torch.contiguous_format) -> StepDraws:
        """The draws of rows ``start … stop−1`` (ξ is shared), image tensors in
        ``memory_format``."""
        def cut(v: torch.Tensor | None) -> torch.Tensor | None:
            if v is None:
                return None
            v = v[start:stop]
            return v.contiguous(memory_format=memory_format) if v.dim() == 4 else v

        return StepDraws(self.t[start:stop], cut(self.noise), cut(self.ip_noise), self.xi,
                         cut(self.u))


def draw_step(diffusion: GaussianDiffusion, cfg: ObjectiveConfig, shape: tuple[int, ...],
              device: torch.device | str, dtype: torch.dtype = torch.float32,
              generator: torch.Generator | None = None) -> StepDraws:
    """Every random draw of one step for a batch of ``shape`` = (B, …), in the order t, ε,
    ε' (ddpm-ip), ξ (robust-rand), u (methods with a perturbation); from ``generator`` or the
    global RNG of ``device``. ε, ε' and u have ``dtype``."""
    kw = dict(generator=generator, device=device)
    t = torch.randint(0, diffusion.num_timesteps, shape[:1], **kw)
    noise = torch.randn(shape, dtype=dtype, **kw)
    ip_noise = torch.randn(shape, dtype=dtype, **kw) if cfg.method == "ddpm-ip" else None
    xi = None
    if cfg.method == "robust-rand":
        lo, hi = cfg.ray.xi_range
        xi = torch.empty((), device=device, dtype=torch.float64).uniform_(lo, hi,
                                                                            generator=generator)
    u = None if cfg.method in ("ddpm", "ddpm-ip") else torch.rand(shape, dtype=dtype, **kw)
    return StepDraws(t, noise, ip_noise, xi, u)


def _start(u: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """δ_0 = (2u − 1)·r: U(−r, r) per sample from u (B, …) and r (B,)."""
    return (2 * u - 1) * r.reshape(-1, *([1] * (u.dim() - 1))).to(u.dtype)


def training_loss(
    model: EpsModel, diffusion: GaussianDiffusion, x0: torch.Tensor, cfg: ObjectiveConfig,
    draws: StepDraws | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One stochastic estimate of the objective on a batch x0 (B, …) (Algorithm 1, METHOD §5).

    ``draws`` holds t ~ U{0..T−1} per sample, ε ~ N(0, I), ξ (robust-rand) and the random start
    of δ for these B rows; by default they are drawn by :func:`draw_step` from the global torch
    RNG of x0's device (dropout draws follow, in the forward passes). Returns the scalar loss
    (with gradients w.r.t. θ) and ``stats`` over :data:`STAT_KEYS`: ``loss``; ``mse`` (the
    regression term); ``reg`` (the weighted regulariser, loss = mse + reg); ``residual`` (the
    unweighted regulariser, batch mean); ``r`` and ``lam_t`` (batch means). Terms a method lacks
    are 0. The stats cost one device sync.
    """
    if draws is None:
        draws = draw_step(diffusion, cfg, tuple(x0.shape), x0.device, x0.dtype)
    predict = diffusion.predict_eps
    t, noise = draws.t, draws.noise
    zero = x0.new_zeros(())

    if cfg.method in ("ddpm", "ddpm-ip"):
        input_noise = noise
        if cfg.method == "ddpm-ip":
            input_noise = noise + cfg.ip_gamma * draws.ip_noise
        e = predict(model, diffusion.q_sample(x0, t, input_noise), t)
        mse = mean_flat((noise - e) ** 2).mean()
        return mse, _stats(mse, mse, zero, zero, zero, zero)

    x_t = diffusion.q_sample(x0, t, noise)
    if cfg.method == "robust-rand":
        r = ray(diffusion, t, cfg.ray, draws.xi, dtype=x0.dtype)
        delta = _start(draws.u, r)
        both = predict(model, torch.cat([x_t, perturb(diffusion, x_t, t, delta)]), t.repeat(2))
        e, e_adv = both.chunk(2)
    elif cfg.method == "invariance" and cfg.invariance_form == "madry":
        r = ray(diffusion, t, cfg.ray, dtype=x0.dtype)
        delta = fgsm_perturbation(model, diffusion, x_t, t, r, step=cfg.fgsm_step,
                                  cost=cfg.fgsm_cost, delta0=_start(draws.u, r))
        e_adv = predict(model, perturb(diffusion, x_t, t, delta), t)
        mse = mean_flat((noise - e_adv) ** 2).mean()
        return mse, _stats(mse, mse, zero, zero, r.mean(), zero)
    else:  # robust-adv, invariance (trades)
        r = ray(diffusion, t, cfg.ray, dtype=x0.dtype)
        e = predict(model, x_t, t)
        delta = fgsm_perturbation(model, diffusion, x_t, t, r, step=cfg.fgsm_step,
                                  cost=cfg.fgsm_cost, eps_clean=e, delta0=_start(draws.u, r))
        e_adv = predict(model, perturb(diffusion, x_t, t, delta), t)

    lam_t = lambda_weight(r, cfg.lam, cfg.lambda_scaling)
    e_reg = e.detach() if cfg.stop_gradient else e
    target = e_reg if cfg.method == "invariance" else e_reg + delta
    residual = mean_flat((target - e_adv) ** 2)
    mse = mean_flat((noise - e) ** 2).mean()
    reg = (lam_t * residual).mean()
    loss = mse + reg
    return loss, _stats(loss, mse, reg, residual.mean(), r.mean(), lam_t.mean())


def _stats(*values: torch.Tensor) -> dict[str, float]:
    """Scalar tensors in :data:`STAT_KEYS` order → floats, with a single device sync."""
    floats = torch.stack([v.detach().float() for v in values]).tolist()
    return dict(zip(STAT_KEYS, floats, strict=True))


__all__ = [
    "INVARIANCE_FORMS",
    "LAMBDA_SCALINGS",
    "METHODS",
    "STAT_KEYS",
    "ObjectiveConfig",
    "StepDraws",
    "draw_step",
    "lambda_weight",
    "training_loss",
]
