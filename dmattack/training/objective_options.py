"""The options of training objectives (docs/method.md §4): an objective's options are an
instance of the entry's own settings dataclass (a subclass of :class:`ObjectiveOptions`, every field
declared once with :func:`~dmattack.core.settings.setting`). The built-in objectives' options are
declared here; a plugin declares its own beside its loss (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from ..core.errors import ConfigError
from ..core.settings import (
    check_settings,
    field_types,
    setting,
)
from ..diffusion.perturbation import FGSM_COSTS, FGSM_STEPS, RayConfig

LAMBDA_SCALINGS = ("var", "std", "mul", "const")
INVARIANCE_FORMS = ("trades", "madry")
REGULARISER = ("lam", "lambda_scaling", "stop_gradient")
LEGACY_KEYS = ("lam", "lambda_scaling", "stop_gradient", "ray", "fgsm_step", "fgsm_cost",
               "invariance_form", "ip_gamma")
"""The keys of an objective record of dmattack 0.1, which listed every built-in objective's
settings whatever the method; :meth:`ObjectiveConfig.from_dict` drops those its method does not
read (they never changed a number)."""


@dataclass(frozen=True)
class ObjectiveOptions:
    """The options of an objective (none): the base of every objective's options dataclass.

    A subclass is a frozen dataclass whose fields are declared with
    :func:`~dmattack.core.settings.setting` (nested settings dataclasses allowed); each field is an
    option of ``dmattack train`` and is recorded in the run's config.json."""

    def __post_init__(self) -> None:
        check_settings(self)

    def unread(self) -> tuple[str, ...]:
        """Settings (dotted paths, e.g. ``ray.xi_range``) that the objective does not read
        with these values; ``dmattack train`` refuses them when given."""
        return ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (nested settings as dicts, tuples as lists)."""
        return _as_data(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectiveOptions:
        """Rebuild from :meth:`to_dict` output; a one-line ConfigError for an unknown key or a
        bad value."""
        return _from_data(cls, d)


def _as_data(obj: Any) -> dict[str, Any]:
    out = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            v = v.to_dict() if hasattr(v, "to_dict") else _as_data(v)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def _from_data(cls: type, d: dict[str, Any]) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"expected an object, got {d!r}")
    types_ = field_types(cls)
    unknown = sorted(set(d) - set(types_))
    if unknown:
        raise ConfigError(f"unknown objective option {unknown[0]!r}; allowed: "
                          f"{', '.join(types_) or 'none'}", field=unknown[0])
    values = {}
    for k, v in d.items():
        config = types_[k].config
        if config is not None and isinstance(v, dict):
            v = config.from_dict(v) if hasattr(config, "from_dict") else _from_data(config, v)
        values[k] = tuple(v) if tuple in types_[k].kinds and isinstance(v, list) else v
    return cls(**values)


@dataclass(frozen=True)
class RegularisedOptions(ObjectiveOptions):
    """Options of an objective with the regulariser λ_t‖target − ε_θ(x_t^adv)‖² over a ray
    (robust-rand, Eq. 9); σ_δ = r(t)/√3."""

    lam: float = setting(0.3, "Regulariser weight λ (docs/method.md §4).", low=0,
                         option="--lambda")
    lambda_scaling: str = setting("var", "λ_t = λ/σ_δ² (var), λ/σ_δ (std), λ·σ_δ (mul) or λ "
                                  "(const).", choices=LAMBDA_SCALINGS)
    stop_gradient: bool = setting(False, "Stop-grad on ε_θ(x_t) inside the regulariser (the "
                                  "DDPM term keeps its gradient).")
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass(frozen=True)
class FGSMOptions(RegularisedOptions):
    """Options of robust-adv (Eqs. 6, 7, 9): the regulariser with δ from one FGSM step (ξ = 1,
    so the ray's ``xi_range`` is not read)."""

    fgsm_step: str | float = setting("std", "FGSM training step α: std (r/√3), wong (1.25·r) or "
                                     "a number (× r).", choices=FGSM_STEPS, low=0,
                                     low_open=True)
    fgsm_cost: str = setting("discrepancy", "Cost the training FGSM ascends: discrepancy "
                             "(Eq. 6) or equivariance.", choices=FGSM_COSTS)

    def unread(self) -> tuple[str, ...]:
        return ("ray.xi_range",)


@dataclass(frozen=True)
class InvarianceOptions(FGSMOptions):
    """Options of the invariance baseline (Eq. 8); the madry form has no regulariser, so no λ
    (docs/method.md §4)."""

    invariance_form: str = setting("trades", "Invariance baseline: trades ‖ε − e‖² + "
                                   "λ_t‖e − e_adv‖² or madry ‖ε − e_adv‖² (Eq. 8 readings).",
                                   choices=INVARIANCE_FORMS)

    def unread(self) -> tuple[str, ...]:
        return ("ray.xi_range", *(REGULARISER if self.invariance_form == "madry" else ()))


@dataclass(frozen=True)
class InputPerturbationOptions(ObjectiveOptions):
    """Options of DDPM-IP (Ning et al. 2023)."""

    ip_gamma: float = setting(0.1, "DDPM-IP input-perturbation strength γ (x_t built with "
                              "ε + γε', target ε).", low=0)
