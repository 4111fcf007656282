"""Training objectives (docs/method.md §4–§5): DDPM, Robust_adv / Robust_rand, the invariance
baseline, and DDPM-IP.

All squared norms are per-sample means over dimensions, then averaged over the batch (as in
improved-diffusion). δ is in ε units and x_t^adv = x_t + √(1−ᾱ_t)·δ (see
:mod:`dmattack.diffusion.perturbation`). Timesteps are 0-indexed.

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
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import torch

from ..core.errors import ConfigError
from ..core.registry import OBJECTIVES
from ..core.settings import check_field, iter_settings, setting
from ..core.tensors import per_sample
from ..diffusion.gaussian import EpsModel, GaussianDiffusion
from ..diffusion.perturbation import fgsm_perturbation, mean_flat, perturb, ray
from .objective_options import (
    INVARIANCE_FORMS,
    LAMBDA_SCALINGS,
    LEGACY_KEYS,
    FGSMOptions,
    InputPerturbationOptions,
    InvarianceOptions,
    ObjectiveOptions,
    RegularisedOptions,
)

BUILTIN_STATS = ("loss", "mse", "reg", "residual", "r", "lam_t")
"""The stats of every built-in objective (terms a method lacks are 0, so their logs compare)."""

DrawFn = Callable[[tuple[int, ...], ObjectiveOptions, "torch.device | str", torch.dtype,
                   "torch.Generator | None"], torch.Tensor]


@dataclass(frozen=True)
class Draw:
    """A random draw an objective needs besides t and ε, made up front for the whole batch
    (:func:`draw_step`): ``make(shape, options, device, dtype, generator)`` with ``shape`` =
    (B, …) the batch's. ``per_sample``: the draw is (B, …) and :meth:`StepDraws.rows` cuts it;
    otherwise it is batch-wise, shared by every row (e.g. robust-rand's ξ)."""

    name: str
    make: DrawFn
    per_sample: bool = True


def gaussian(name: str) -> Draw:
    """ε' ~ N(0, I) shaped like the batch."""
    return Draw(name, lambda shape, o, device, dtype, g: torch.randn(
        shape, dtype=dtype, generator=g, device=device))


def uniform(name: str) -> Draw:
    """u ~ U[0, 1) shaped like the batch."""
    return Draw(name, lambda shape, o, device, dtype, g: torch.rand(
        shape, dtype=dtype, generator=g, device=device))


def _xi(shape: tuple[int, ...], o: RegularisedOptions, device: torch.device | str,
        dtype: torch.dtype, g: torch.Generator | None) -> torch.Tensor:
    """Robust-rand's batch-wise ξ ~ U(a, b) (0-d, float64), (a, b) = ``o.ray.xi_range``."""
    lo, hi = o.ray.xi_range
    return torch.empty((), device=device, dtype=torch.float64).uniform_(lo, hi, generator=g)


ObjectiveLossFn = Callable[[EpsModel, GaussianDiffusion, torch.Tensor, ObjectiveOptions,
                            "StepDraws"], tuple[torch.Tensor, dict[str, float]]]
"""A training objective's ``loss(model, diffusion, x0, options, draws) -> (scalar loss,
{stat: float})`` (the attacks' per-sample loss is :data:`dmattack.attacks.losses.LossFn`)."""


@dataclass(frozen=True)
class Objective:
    """A training objective as registered in :data:`~dmattack.core.registry.OBJECTIVES`.

    ``loss(model, diffusion, x0, options, draws) -> (scalar loss, {stat: float})`` with
    ``options`` an instance of ``options`` (an :class:`ObjectiveOptions` subclass: its fields
    are the method's ``dmattack train`` options) and ``draws`` a :class:`StepDraws` holding
    t, ε and the entry's own ``draws`` (made in the order given); ``stats``: the keys its
    loss returns (logged in log.jsonl, averaged over the batch); ``label``: one line for
    listings."""

    loss: ObjectiveLossFn
    label: str
    options: type = ObjectiveOptions
    draws: tuple[Draw, ...] = ()
    stats: tuple[str, ...] = ("loss",)

    def __post_init__(self) -> None:
        if not (isinstance(self.options, type) and is_dataclass(self.options)
                and issubclass(self.options, ObjectiveOptions)):
            raise ValueError(f"options {self.options!r} must be a dataclass subclassing "
                             "ObjectiveOptions")
        names = [d.name for d in self.draws]
        if len(set(names)) < len(names) or {"t", "noise"} & set(names):
            raise ValueError(f"draw names {names} must be unique and not t or noise")
        if not self.stats or len(set(self.stats)) < len(self.stats):
            raise ValueError(f"stats {self.stats} must be unique names, at least one")


@dataclass(frozen=True)
class StepDraws:
    """The random draws of one training step for a batch of B rows (one device).

    ``t`` (B,) long timesteps; ``noise`` ε (B, …); ``extra``: the objective's own draws by
    name (``draws["u"]``), per-sample ones (B, …), batch-wise ones (named in ``shared``) as
    drawn."""

    t: torch.Tensor
    noise: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    shared: frozenset[str] = frozenset()

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.extra[name]

    def rows(self, start: int, stop: int,
             memory_format: torch.memory_format = torch.contiguous_format) -> StepDraws:
        """The draws of rows ``start … stop−1`` (batch-wise ones are shared), image tensors in
        ``memory_format``."""
        def cut(v: torch.Tensor) -> torch.Tensor:
            v = v[start:stop]
            return v.contiguous(memory_format=memory_format) if v.dim() == 4 else v

        extra = {k: v if k in self.shared else cut(v) for k, v in self.extra.items()}
        return StepDraws(self.t[start:stop], cut(self.noise), extra, self.shared)


def draw_step(diffusion: GaussianDiffusion, cfg: ObjectiveConfig, shape: tuple[int, ...],
              device: torch.device | str, dtype: torch.dtype = torch.float32,
              generator: torch.Generator | None = None) -> StepDraws:
    """Every random draw of one step for a batch of ``shape`` = (B, …), in the order t, ε,
    then the objective's own draws (e.g. ε' of ddpm-ip, ξ then u of robust-rand); from
    ``generator`` or the global RNG of ``device``. ε has ``dtype``."""
    entry = OBJECTIVES.get(cfg.method, "--method")
    kw = dict(generator=generator, device=device)
    t = torch.randint(0, diffusion.num_timesteps, shape[:1], **kw)
    noise = torch.randn(shape, dtype=dtype, **kw)
    extra = {d.name: d.make(shape, cfg.options, device, dtype, generator) for d in entry.draws}
    return StepDraws(t, noise, extra, frozenset(d.name for d in entry.draws if not d.per_sample))


def stat_keys(cfg: ObjectiveConfig) -> tuple[str, ...]:
    """The stats the loss of ``cfg``'s method returns."""
    return OBJECTIVES.get(cfg.method, "--method").stats


def training_loss(
    model: EpsModel, diffusion: GaussianDiffusion, x0: torch.Tensor, cfg: ObjectiveConfig,
    draws: StepDraws | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One stochastic estimate of the objective on a batch x0 (B, …) (the paper's Algorithm 1,
    docs/method.md §5).

    ``draws`` holds t ~ U{0..T−1} per sample, ε ~ N(0, I) and the objective's own draws for
    these B rows; by default they are drawn by :func:`draw_step` from the global torch RNG of
    x0's device (dropout draws follow, in the forward passes). Returns the scalar loss (with
    gradients w.r.t. θ) and its ``stats`` (the entry's ``stats``; the built-in objectives':
    :data:`BUILTIN_STATS`: ``loss``; ``mse`` (the regression term); ``reg`` (the weighted
    regulariser, loss = mse + reg); ``residual`` (the unweighted regulariser, batch mean);
    ``r`` and ``lam_t`` (batch means); terms a method lacks are 0). The stats cost one device
    sync.
    """
    objective = OBJECTIVES.get(cfg.method, "--method")
    if draws is None:
        draws = draw_step(diffusion, cfg, tuple(x0.shape), x0.device, x0.dtype)
    return objective.loss(model, diffusion, x0, cfg.options, draws)


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


def _start(u: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """δ_0 = (2u − 1)·r: U(−r, r) per sample from u (B, …) and r (B,)."""
    return (2 * u - 1) * per_sample(r, u)


def _denoising(model: EpsModel, diffusion: GaussianDiffusion, x0: torch.Tensor,
               draws: StepDraws, input_noise: torch.Tensor
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """‖ε − ε_θ(x_t, t)‖² with x_t built from ``input_noise``."""
    zero = x0.new_zeros(())
    e = diffusion.predict_eps(model, diffusion.q_sample(x0, draws.t, input_noise), draws.t)
    mse = mean_flat((draws.noise - e) ** 2).mean()
    return mse, _stats(mse, mse, zero, zero, zero, zero)


def ddpm_loss(model: EpsModel, diffusion: GaussianDiffusion, x0: torch.Tensor,
              o: ObjectiveOptions, draws: StepDraws) -> tuple[torch.Tensor, dict[str, float]]:
    """‖ε − ε_θ(x_t, t)‖² (Eq. 3)."""
    return _denoising(model, diffusion, x0, draws, draws.noise)


def ddpm_ip_loss(model: EpsModel, diffusion: GaussianDiffusion, x0: torch.Tensor,
                 o: InputPerturbationOptions, draws: StepDraws
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """DDPM-IP (Ning et al. 2023): x_t built with ε + γε', target ε."""
    return _denoising(model, diffusion, x0, draws, draws.noise + o.ip_gamma * draws["ip_noise"])


def robust_rand_loss(model: EpsModel, diffusion: GaussianDiffusion, x0: torch.Tensor,
                     o: RegularisedOptions, draws: StepDraws
                     ) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 9 with a random δ ~ U(−ξr, ξr) (batch-wise ξ), one forward of 2B."""
    t = draws.t
    x_t = diffusion.q_sample(x0, t, draws.noise)
    r = ray(diffusion, t, o.ray, draws["xi"], dtype=x0.dtype)
    delta = _start(draws["u"], r)
    both = diffusion.predict_eps(model, torch.cat([x_t, perturb(diffusion, x_t, t, delta)]),
                                 t.repeat(2))
    e, e_adv = both.chunk(2)
    return _regularised(o, x0, draws, r, delta, e, e_adv, robust=True)


def _fgsm_regularised(model: EpsModel, diffusion: GaussianDiffusion, x0: torch.Tensor,
                      o: FGSMOptions, draws: StepDraws, robust: bool
                      ) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 9 (``robust``) or the trades invariance baseline (Eq. 8) with δ from one FGSM step
    (Eqs. 6–7). Three forwards of B."""
    t = draws.t
    x_t = diffusion.q_sample(x0, t, draws.noise)
    r = ray(diffusion, t, o.ray, dtype=x0.dtype)
    e = diffusion.predict_eps(model, x_t, t)
    delta = fgsm_perturbation(model, diffusion, x_t, t, r, step=o.fgsm_step,
                              cost=o.fgsm_cost, eps_clean=e, delta0=_start(draws["u"], r))
    e_adv = diffusion.predict_eps(model, perturb(diffusion, x_t, t, delta), t)
    return _regularised(o, x0, draws, r, delta, e, e_adv, robust=robust)


def robust_adv_loss(model: EpsModel, diffusion: GaussianDiffusion, x0: torch.Tensor,
                    o: FGSMOptions, draws: StepDraws) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 9 with δ from one FGSM step (Eqs. 6–7). Three forwards of B."""
    return _fgsm_regularised(model, diffusion, x0, o, draws, robust=True)


def invariance_loss(model: EpsModel, diffusion: GaussianDiffusion, x0: torch.Tensor,
                    o: InvarianceOptions, draws: StepDraws
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """The invariance baseline (Eq. 8): trades (as robust-adv, target ε_θ(x_t)) or madry
    ‖ε − ε_θ(x_t^adv)‖²."""
    if o.invariance_form != "madry":
        return _fgsm_regularised(model, diffusion, x0, o, draws, robust=False)
    t, noise, zero = draws.t, draws.noise, x0.new_zeros(())
    x_t = diffusion.q_sample(x0, t, noise)
    r = ray(diffusion, t, o.ray, dtype=x0.dtype)
    delta = fgsm_perturbation(model, diffusion, x_t, t, r, step=o.fgsm_step,
                              cost=o.fgsm_cost, delta0=_start(draws["u"], r))
    e_adv = diffusion.predict_eps(model, perturb(diffusion, x_t, t, delta), t)
    mse = mean_flat((noise - e_adv) ** 2).mean()
    return mse, _stats(mse, mse, zero, zero, r.mean(), zero)


def _regularised(o: RegularisedOptions, x0: torch.Tensor, draws: StepDraws, r: torch.Tensor,
                 delta: torch.Tensor, e: torch.Tensor, e_adv: torch.Tensor, robust: bool
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """‖ε − e‖² + λ_t‖target − e_adv‖² with target e + δ (``robust``) or e (invariance)."""
    lam_t = lambda_weight(r, o.lam, o.lambda_scaling)
    e_reg = e.detach() if o.stop_gradient else e
    target = e_reg + delta if robust else e_reg
    residual = mean_flat((target - e_adv) ** 2)
    mse = mean_flat((draws.noise - e) ** 2).mean()
    reg = (lam_t * residual).mean()
    loss = mse + reg
    return loss, _stats(loss, mse, reg, residual.mean(), r.mean(), lam_t.mean())


def _stats(*values: torch.Tensor) -> dict[str, float]:
    """Scalar tensors in :data:`BUILTIN_STATS` order → floats, with a single device sync."""
    floats = torch.stack([v.detach().float() for v in values]).tolist()
    return dict(zip(BUILTIN_STATS, floats, strict=True))


XI = Draw("xi", _xi, per_sample=False)

def options_class(method: str) -> type:
    """The options dataclass of objective ``method`` (a one-line ConfigError if unknown)."""
    return OBJECTIVES.get(method, "--method").options


@dataclass(frozen=True, init=False)
class ObjectiveConfig:
    """Which training loss to minimise (an :data:`~dmattack.core.registry.OBJECTIVES` entry) and
    its options: ``ObjectiveConfig("robust-adv", lam=0.5)`` or
    ``ObjectiveConfig("robust-adv", options=FGSMOptions(lam=0.5))``. A value the method has
    no option for is refused (one line naming it and what the method reads)."""

    method: str = setting("robust-adv", "Training objective (docs/method.md §4).",
                          choices=OBJECTIVES.names)
    options: ObjectiveOptions = field(default_factory=ObjectiveOptions)

    def __init__(self, method: str = "robust-adv", options: ObjectiveOptions | None = None,
                 **values: Any) -> None:
        check_field(ObjectiveConfig, "method", method)
        cls = options_class(method)
        if options is None:
            known = [f.name for f in fields(cls)]
            for name in values:
                if name not in known:
                    raise ConfigError(f"{name} is not an option of training method {method}; "
                                      f"its options: {', '.join(known) or 'none'}", field=name)
            options = cls(**values)
        elif values or type(options) is not cls:
            raise ConfigError(f"options = {options!r} is invalid for training method {method}; "
                              f"allowed: a {cls.__name__}, or its fields as keywords",
                              field="options")
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "options", options)

    def reads(self) -> tuple[str, ...]:
        """The settings (dotted paths, e.g. ``ray.rho``) the method reads with these
        options."""
        unread = set(self.options.unread())
        return tuple(p for p, _, _ in iter_settings(type(self.options)) if p not in unread)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"method": …, **options}`` (the ray nested as a dict)."""
        return {"method": self.method, **self.options.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectiveConfig:
        """Rebuild from :meth:`to_dict` output (or a 0.1 record, see :data:`LEGACY_KEYS`)."""
        if not isinstance(d, dict):
            raise ConfigError(f"expected an object, got {d!r}")
        d = dict(d)
        method = d.pop("method", "robust-adv")
        check_field(ObjectiveConfig, "method", method)
        options = options_class(method)
        known = {f.name for f in fields(options)}
        d = {k: v for k, v in d.items() if k in known or k not in LEGACY_KEYS}
        return cls(method, options.from_dict(d))


# ------------------------------------------------------- the objective options of `dmattack train`


OBJECTIVES.register("ddpm", Objective(ddpm_loss, "DDPM ‖ε − ε_θ(x_t)‖² (Eq. 3)",
                                      stats=BUILTIN_STATS))
OBJECTIVES.register("robust-adv", Objective(
    robust_adv_loss, "Robust_adv: Eq. 9 with an FGSM δ inside the ray", FGSMOptions,
    (uniform("u"),), BUILTIN_STATS))
OBJECTIVES.register("robust-rand", Objective(
    robust_rand_loss, "Robust_rand: Eq. 9 with a uniform δ, batch-wise ξ", RegularisedOptions,
    (XI, uniform("u")), BUILTIN_STATS))
OBJECTIVES.register("invariance", Objective(
    invariance_loss, "invariance baseline (Eq. 8, trades or madry)", InvarianceOptions,
    (uniform("u"),), BUILTIN_STATS))
OBJECTIVES.register("ddpm-ip", Objective(
    ddpm_ip_loss, "DDPM-IP input perturbation (Ning et al. 2023)", InputPerturbationOptions,
    (gaussian("ip_noise"),), BUILTIN_STATS))


__all__ = [
    "BUILTIN_STATS",
    "INVARIANCE_FORMS",
    "LAMBDA_SCALINGS",
    "Draw",
    "Objective",
    "ObjectiveConfig",
    "ObjectiveLossFn",
    "ObjectiveOptions",
    "StepDraws",
    "draw_step",
    "gaussian",
    "lambda_weight",
    "stat_keys",
    "training_loss",
    "uniform",
]
