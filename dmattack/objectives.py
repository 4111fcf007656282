"""Training objectives (docs/method.md §4–§5): DDPM, Robust_adv / Robust_rand, the invariance
baseline, and DDPM-IP.

All squared norms are per-sample means over dimensions, then averaged over the batch (as in
improved-diffusion). δ is in ε units and x_t^adv = x_t + √(1−ᾱ_t)·δ (see
:mod:`dmattack.perturbation`). Timesteps are 0-indexed.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from .diffusion import EpsModel, GaussianDiffusion
from .errors import ConfigError
from .perturbation import (
    FGSM_COSTS,
    FGSM_STEPS,
    RayConfig,
    fgsm_perturbation,
    mean_flat,
    perturb,
    ray,
)
from .registry import OBJECTIVES
from .settings import check_settings, iter_settings, option_name, setting
from .tensors import per_sample

LAMBDA_SCALINGS = ("var", "std", "mul", "const")
INVARIANCE_FORMS = ("trades", "madry")
STAT_KEYS = ("loss", "mse", "reg", "residual", "r", "lam_t")
DRAWS = ("ip_noise", "xi", "u")
REGULARISER = ("lam", "lambda_scaling", "stop_gradient")
RAY = ("ray.rho", "ray.bias", "ray.base")
FGSM = ("fgsm_step", "fgsm_cost")


@dataclass(frozen=True)
class ObjectiveConfig:
    """Which training loss to minimise (an :data:`~dmattack.registry.OBJECTIVES` entry) and
    its hyper-parameters; fields a method does not use are ignored by it. σ_δ = r(t)/√3."""

    method: str = setting("robust-adv", "Training objective (docs/method.md §4).",
                          choices=OBJECTIVES.names)
    lam: float = setting(0.3, "Regulariser weight λ (docs/method.md §4).", low=0,
                         option="--lambda")
    lambda_scaling: str = setting("var", "λ_t = λ/σ_δ² (var), λ/σ_δ (std), λ·σ_δ (mul) or λ "
                                  "(const).", choices=LAMBDA_SCALINGS)
    stop_gradient: bool = setting(False, "Stop-grad on ε_θ(x_t) inside the regulariser (the "
                                  "DDPM term keeps its gradient).")
    ray: RayConfig = field(default_factory=RayConfig)
    fgsm_step: str | float = setting("std", "FGSM training step α: std (r/√3), wong (1.25·r) or "
                                     "a number (× r).", choices=FGSM_STEPS, low=0,
                                     low_open=True)
    fgsm_cost: str = setting("discrepancy", "Cost the training FGSM ascends: discrepancy "
                             "(Eq. 6) or equivariance.", choices=FGSM_COSTS)
    invariance_form: str = setting("trades", "Invariance baseline: trades ‖ε − e‖² + "
                                   "λ_t‖e − e_adv‖² or madry ‖ε − e_adv‖² (Eq. 8 readings).",
                                   choices=INVARIANCE_FORMS)
    ip_gamma: float = setting(0.1, "DDPM-IP input-perturbation strength γ (x_t built with "
                              "ε + γε', target ε).", low=0)

    def __post_init__(self) -> None:
        check_settings(self)

    def reads(self) -> tuple[str, ...] | None:
        """The fields (dotted paths, e.g. ``ray.rho``) this config's method reads besides
        ``method``; None when its registry entry does not say. The madry invariance form has
        no regulariser, so no λ (docs/method.md §4)."""
        options = OBJECTIVES.get(self.method, "--method").options
        if options is not None and self.method == "invariance" and self.invariance_form == "madry":
            options = tuple(o for o in options if o not in REGULARISER)
        return options

    def refuse_unread(self, given: Iterable[str]) -> None:
        """Raise :class:`ConfigError` for a setting in ``given`` (dotted paths, e.g.
        ``ray.rho``, as set by the user) that this config's method does not read: a value that
        would be recorded but change nothing."""
        reads = self.reads()
        if reads is None:
            return
        for path, f, _ in iter_settings(type(self)):
            if path in given and path != "method" and path not in reads:
                names = [option_name(g) for p, g, _ in iter_settings(type(self)) if p in reads]
                raise ConfigError(f"{option_name(f)} is not read by training method "
                                  f"{self.method}; it reads: {', '.join(names) or 'none'}",
                                  field=path)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ray nested as a dict)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["ray"] = self.ray.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectiveConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown objective config keys {sorted(unknown)}")
        d = dict(d)
        if isinstance(d.get("ray"), dict):
            d["ray"] = RayConfig.from_dict(d["ray"])
        return cls(**d)


LossFn = Callable[[EpsModel, GaussianDiffusion, torch.Tensor, ObjectiveConfig, "StepDraws"],
                  tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class Objective:
    """A training objective as registered in :data:`~dmattack.registry.OBJECTIVES`.

    ``loss(model, diffusion, x0, cfg, draws) -> (scalar loss, stats over STAT_KEYS)``;
    ``draws``: which optional random draws of :class:`StepDraws` it needs (among
    :data:`DRAWS`); ``label``: one line for listings; ``options``: the
    :class:`ObjectiveConfig` fields it reads besides ``method`` (dotted for the ray, e.g.
    ``ray.rho``), or None (a plugin that does not say: none is refused)."""

    loss: LossFn
    draws: tuple[str, ...]
    label: str
    options: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        unknown = set(self.draws) - set(DRAWS)
        if unknown:
            raise ValueError(f"unknown draws {sorted(unknown)}; allowed: {', '.join(DRAWS)}")


def lambda_weight(r: torch.Tensor, lam: float, scaling: str = "var") -> torch.Tensor:
    """λ_t per sample (B,) from the ray r (B,) in ε units, with σ_δ = r/√3 (docs/method.md §4)."""
    sigma = r / math.sqrt(3)
    if scaling == "var":
        return lam / sigma**2
    if scaling == "std":
        return lam / sigma
    if scaling == "mul":
        return lam * sigma
    if scaling == "const":
        return torch.full_like(r, lam)
    raise ConfigError(f"lambda scaling {scaling!r} unknown; allowed: "
                      f"{', '.join(LAMBDA_SCALINGS)}")


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
    then those the objective needs: ε' (ddpm-ip), ξ (robust-rand), u (methods with a
    perturbation); from ``generator`` or the global RNG of ``device``. ε, ε' and u have
    ``dtype``."""
    needs = OBJECTIVES.get(cfg.method, "--method").draws
    kw = dict(generator=generator, device=device)
    t = torch.randint(0, diffusion.num_timesteps, shape[:1], **kw)
    noise = torch.randn(shape, dtype=dtype, **kw)
    ip_noise = torch.randn(shape, dtype=dtype, **kw) if "ip_noise" in needs else None
    xi = None
    if "xi" in needs:
        lo, hi = cfg.ray.xi_range
        xi = torch.empty((), device=device, dtype=torch.float64).uniform_(lo, hi,
                                                                            generator=generator)
    u = torch.rand(shape, dtype=dtype, **kw) if "u" in needs else None
    return StepDraws(t, noise, ip_noise, xi, u)


def _start(u: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """δ_0 = (2u − 1)·r: U(−r, r) per sample from u (B, …) and r (B,)."""
    return (2 * u - 1) * per_sample(r, u)


def training_loss(
    model: EpsModel, diffusion: GaussianDiffusion, x0: torch.Tensor, cfg: ObjectiveConfig,
    draws: StepDraws | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One stochastic estimate of the objective on a batch x0 (B, …) (the paper's Algorithm 1,
    docs/method.md §5).

    ``draws`` holds t ~ U{0..T−1} per sample, ε ~ N(0, I), ξ (robust-rand) and the random start
    of δ for these B rows; by default they are drawn by :func:`draw_step` from the global torch
    RNG of x0's device (dropout draws follow, in the forward passes). Returns the scalar loss
    (with gradients w.r.t. θ) and ``stats`` over :data:`STAT_KEYS`: ``loss``; ``mse`` (the
    regression term); ``reg`` (the weighted regulariser, loss = mse + reg); ``residual`` (the
    unweighted regulariser, batch mean); ``r`` and ``lam_t`` (batch means). Terms a method lacks
    are 0. The stats cost one device sync.
    """
    objective = OBJECTIVES.get(cfg.method, "--method")
    if draws is None:
        draws = draw_step(diffusion, cfg, tuple(x0.shape), x0.device, x0.dtype)
    return objective.loss(model, diffusion, x0, cfg, draws)


def ddpm_loss(model: EpsModel, diffusion: GaussianDiffusion, x0: torch.Tensor,
              cfg: ObjectiveConfig, draws: StepDraws) -> tuple[torch.Tensor, dict[str, float]]:
    """‖ε − ε_θ(x_t, t)‖² (Eq. 3); for ddpm-ip x_t is built with ε + γε' (Ning et al. 2023)."""
    zero = x0.new_zeros(())
    input_noise = draws.noise
    if draws.ip_noise is not None:
        input_noise = draws.noise + cfg.ip_gamma * draws.ip_noise
    e = diffusion.predict_eps(model, diffusion.q_sample(x0, draws.t, input_noise), draws.t)
    mse = mean_flat((draws.noise - e) ** 2).mean()
    return mse, _stats(mse, mse, zero, zero, zero, zero)


def robust_rand_loss(model: EpsModel, diffusion: GaussianDiffusion, x0: torch.Tensor,
                     cfg: ObjectiveConfig, draws: StepDraws
                     ) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 9 with a random δ ~ U(−ξr, ξr) (batch-wise ξ), one forward of 2B."""
    t = draws.t
    x_t = diffusion.q_sample(x0, t, draws.noise)
    r = ray(diffusion, t, cfg.ray, draws.xi, dtype=x0.dtype)
    delta = _start(draws.u, r)
    both = diffusion.predict_eps(model, torch.cat([x_t, perturb(diffusion, x_t, t, delta)]),
                                 t.repeat(2))
    e, e_adv = both.chunk(2)
    return _regularised(cfg, x0, draws, r, delta, e, e_adv)


def robust_adv_loss(model: EpsModel, diffusion: GaussianDiffusion, x0: torch.Tensor,
                    cfg: ObjectiveConfig, draws: StepDraws
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 9 with δ from one FGSM step (Eqs. 6–7); also the trades invariance baseline (Eq. 8,
    ``cfg.method == "invariance"``). Three forwards of B."""
    t = draws.t
    x_t = diffusion.q_sample(x0, t, draws.noise)
    r = ray(diffusion, t, cfg.ray, dtype=x0.dtype)
    e = diffusion.predict_eps(model, x_t, t)
    delta = fgsm_perturbation(model, diffusion, x_t, t, r, step=cfg.fgsm_step,
                              cost=cfg.fgsm_cost, eps_clean=e, delta0=_start(draws.u, r))
    e_adv = diffusion.predict_eps(model, perturb(diffusion, x_t, t, delta), t)
    return _regularised(cfg, x0, draws, r, delta, e, e_adv)


def invariance_loss(model: EpsModel, diffusion: GaussianDiffusion, x0: torch.Tensor,
                    cfg: ObjectiveConfig, draws: StepDraws
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """The invariance baseline (Eq. 8): trades (as robust-adv, target ε_θ(x_t)) or madry
    ‖ε − ε_θ(x_t^adv)‖²."""
    if cfg.invariance_form != "madry":
        return robust_adv_loss(model, diffusion, x0, cfg, draws)
    t, noise, zero = draws.t, draws.noise, x0.new_zeros(())
    x_t = diffusion.q_sample(x0, t, noise)
    r = ray(diffusion, t, cfg.ray, dtype=x0.dtype)
    delta = fgsm_perturbation(model, diffusion, x_t, t, r, step=cfg.fgsm_step,
                              cost=cfg.fgsm_cost, delta0=_start(draws.u, r))
    e_adv = diffusion.predict_eps(model, perturb(diffusion, x_t, t, delta), t)
    mse = mean_flat((noise - e_adv) ** 2).mean()
    return mse, _stats(mse, mse, zero, zero, r.mean(), zero)


def _regularised(cfg: ObjectiveConfig, x0: torch.Tensor, draws: StepDraws, r: torch.Tensor,
                 delta: torch.Tensor, e: torch.Tensor, e_adv: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """‖ε − e‖² + λ_t‖target − e_adv‖² with target e + δ (robust) or e (invariance)."""
    lam_t = lambda_weight(r, cfg.lam, cfg.lambda_scaling)
    e_reg = e.detach() if cfg.stop_gradient else e
    target = e_reg if cfg.method == "invariance" else e_reg + delta
    residual = mean_flat((target - e_adv) ** 2)
    mse = mean_flat((draws.noise - e) ** 2).mean()
    reg = (lam_t * residual).mean()
    loss = mse + reg
    return loss, _stats(loss, mse, reg, residual.mean(), r.mean(), lam_t.mean())


def _stats(*values: torch.Tensor) -> dict[str, float]:
    """Scalar tensors in :data:`STAT_KEYS` order → floats, with a single device sync."""
    floats = torch.stack([v.detach().float() for v in values]).tolist()
    return dict(zip(STAT_KEYS, floats, strict=True))


OBJECTIVES.register("ddpm", Objective(ddpm_loss, (), "DDPM ‖ε − ε_θ(x_t)‖² (Eq. 3)", ()))
OBJECTIVES.register("robust-adv", Objective(
    robust_adv_loss, ("u",), "Robust_adv: Eq. 9 with an FGSM δ inside the ray",
    (*REGULARISER, *RAY, *FGSM)))
OBJECTIVES.register("robust-rand", Objective(
    robust_rand_loss, ("xi", "u"), "Robust_rand: Eq. 9 with a uniform δ, batch-wise ξ",
    (*REGULARISER, *RAY, "ray.xi_range")))
OBJECTIVES.register("invariance", Objective(
    invariance_loss, ("u",), "invariance baseline (Eq. 8, trades or madry)",
    (*REGULARISER, *RAY, *FGSM, "invariance_form")))
OBJECTIVES.register("ddpm-ip", Objective(
    ddpm_loss, ("ip_noise",), "DDPM-IP input perturbation (Ning et al. 2023)", ("ip_gamma",)))


__all__ = [
    "INVARIANCE_FORMS",
    "LAMBDA_SCALINGS",
    "STAT_KEYS",
    "Objective",
    "ObjectiveConfig",
    "StepDraws",
    "draw_step",
    "lambda_weight",
    "training_loss",
]
