"""What a training objective is configured with (docs/method.md §4): :class:`ObjectiveConfig`,
the method (an :data:`~dmattack.registry.OBJECTIVES` entry) and its options, an instance of
the entry's own settings dataclass (a subclass of :class:`ObjectiveOptions`, every field
declared once with :func:`~dmattack.settings.setting`). The built-in objectives' options are
declared here; a plugin declares its own beside its loss (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError
from .perturbation import FGSM_COSTS, FGSM_STEPS, RayConfig
from .registry import OBJECTIVES
from .settings import (
    META_KEY,
    Setting,
    check_field,
    check_settings,
    field_types,
    from_options,
    iter_settings,
    option_name,
    option_values,
    param_name,
    setting,
    setting_of,
)

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
    :func:`~dmattack.settings.setting` (nested settings dataclasses allowed); each field is an
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


def options_class(method: str) -> type:
    """The options dataclass of objective ``method`` (a one-line ConfigError if unknown)."""
    from . import objectives  # noqa: F401 - registers the built-in objectives

    return OBJECTIVES.get(method, "--method").options


@dataclass(frozen=True, init=False)
class ObjectiveConfig:
    """Which training loss to minimise (an :data:`~dmattack.registry.OBJECTIVES` entry) and
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
METHOD_PARAM = "objective__method"
PARAM_PREFIX = "objective__"


@dataclass(frozen=True)
class OptionTable:
    """Every registered objective's options as the options of ``dmattack train``.

    ``cls``: a settings dataclass holding ``method`` and one field per objective field;
    entries declaring a field identically (type, default, setting) share it (``--lambda`` of
    robust-adv, robust-rand and invariance); a field whose name another entry declares
    differently is spelled ``--<method>-<option>``. Each option's help says which methods
    read it. ``params[method]``: click parameter name → the method's setting path;
    ``spelling``: click parameter name → option (e.g. ``--lambda``)."""

    cls: type
    params: dict[str, dict[str, str]]
    spelling: dict[str, str]


def option_table() -> OptionTable:
    """The :class:`OptionTable` of the objectives registered now (plugins included)."""
    slots: dict[str, dict[str, Any]] = {}  # union field → its declaration and readers
    params: dict[str, dict[str, str]] = {}
    for method in OBJECTIVES.names():
        cls = options_class(method)
        reads, hints = set(ObjectiveConfig(method).reads()), typing.get_type_hints(cls)
        default, ident = cls(), re.sub(r"\W", "_", method)
        params[method] = {}
        for f in fields(cls):
            key = (hints[f.name], getattr(default, f.name), setting_of(f))
            name = f.name
            if name in slots and slots[name]["key"] != key:  # declared otherwise: prefixed
                name = f"{ident}__{f.name}"
            slot = slots.setdefault(name, {"key": key, "hint": hints[f.name], "field": f,
                                           "default": getattr(default, f.name),
                                           "prefix": method if name != f.name else None,
                                           "readers": {}})
            for path, _, _ in iter_settings(cls):
                if path == f.name or path.startswith(f.name + "."):
                    slot["readers"].setdefault(path, [])
                    if path in reads:
                        slot["readers"][path].append(method)
                    union = name + path[len(f.name):]
                    params[method][PARAM_PREFIX + param_name(union)] = path
    method_field = ObjectiveConfig.__dataclass_fields__["method"]
    spec: list[tuple[str, Any, Any]] = [("method", str, field(default="robust-adv",
                                                              metadata=method_field.metadata))]
    for name, slot in slots.items():
        spec.append((name, *_union_field(slot)))
    cls = dataclasses.make_dataclass("TrainObjectiveOptions", spec, frozen=True)
    spelling = {PARAM_PREFIX + param_name(path): option_name(f)
                for path, f, _ in iter_settings(cls)}
    return OptionTable(cls, params, spelling)


def _union_field(slot: dict[str, Any]) -> tuple[Any, Any]:
    """(type, field) of one option-table field: the declaration with each leaf's help saying
    which methods read it, and the method's prefix on its option when it clashed."""
    def edit(path: str, s: Setting) -> Setting:
        readers = ", ".join(slot["readers"].get(path, ())) or "none"
        option = s.option or "--" + path.rsplit(".", 1)[-1].replace("_", "-")
        if slot["prefix"]:
            return dataclasses.replace(s, help=s.help + f" [read by --method {readers}]",
                                       option=f"--{slot['prefix']}-{option[2:]}",
                                       deprecated=(), aliases=())
        return dataclasses.replace(s, help=s.help + f" [read by --method {readers}]")

    value, f = slot["default"], slot["field"]
    if dataclasses.is_dataclass(value):
        sub = _copy_settings(type(value), value, edit, f.name + ".")
        return sub, field(default_factory=sub)
    s = setting_of(f)
    return slot["hint"], field(default=value,
                               metadata={} if s is None else {META_KEY: edit(f.name, s)})


def _copy_settings(cls: type, instance: Any, edit: Callable[[str, Setting], Setting],
                   prefix: str) -> type:
    """A dataclass like settings dataclass ``cls`` (nested ones too) with ``instance``'s
    values as defaults and each leaf's setting replaced by ``edit(path, setting)``."""
    hints, spec = typing.get_type_hints(cls), []
    for f in fields(cls):
        value, s = getattr(instance, f.name), setting_of(f)
        if dataclasses.is_dataclass(value):
            sub = _copy_settings(type(value), value, edit, prefix + f.name + ".")
            spec.append((f.name, sub, field(default_factory=sub)))
        else:
            meta = {} if s is None else {META_KEY: edit(prefix + f.name, s)}
            spec.append((f.name, hints[f.name], field(default=value, metadata=meta)))
    return dataclasses.make_dataclass(cls.__name__, spec, frozen=True)


def train_options() -> type:
    """The settings dataclass of ``dmattack train``'s objective options (see
    :class:`OptionTable`; the CLI builds its options from it with prefix ``objective.``)."""
    return option_table().cls


def from_train_options(opts: dict[str, Any], given: Collection[str],
                       base: ObjectiveConfig | None = None) -> ObjectiveConfig:
    """The objective of ``dmattack train``'s options: click's keyword arguments ``opts`` (the
    ``objective__…`` ones are read), of which those named in ``given`` were given. Settings
    not given keep ``base``'s values (the method's defaults when ``base`` is None or of
    another method). A given option the method does not read is refused with one line naming
    it and what the method reads."""
    opts = option_values(opts)
    given = {k.split("__deprecated_")[0] for k in given}
    method = opts[METHOD_PARAM] if METHOD_PARAM in given or base is None else base.method
    check_field(ObjectiveConfig, "method", method)
    table = option_table()
    params = table.params[method]
    start = (base.options if base is not None and base.method == method
             else options_class(method)())
    values = {param_name(params[k]): opts[k] for k in given if k in params}
    cfg = ObjectiveConfig(method, from_options(type(start), values, base=start))
    reads = set(cfg.reads())
    for k in sorted(given):
        if k.startswith(PARAM_PREFIX) and k != METHOD_PARAM and params.get(k) not in reads:
            names = [table.spelling[p] for p, path in params.items() if path in reads]
            raise ConfigError(f"{table.spelling[k]} is not read by training method {method}; "
                              f"it reads: {', '.join(names) or 'none'}",
                              field="objective." + params.get(k, k[len(PARAM_PREFIX):]))
    return cfg


__all__ = ["FGSMOptions", "INVARIANCE_FORMS", "InputPerturbationOptions", "InvarianceOptions",
           "LAMBDA_SCALINGS", "ObjectiveConfig", "ObjectiveOptions", "RegularisedOptions",
           "from_train_options", "option_table", "options_class", "train_options"]
