"""The objective options of ``dmattack train``: one option per setting of the registered
objectives' options dataclasses (plugins included), shared where entries declare a field alike
(docs/architecture.md)."""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, fields
from typing import Any

from ..core.errors import ConfigError
from ..core.registry import OBJECTIVES
from ..core.settings import (
    META_KEY,
    Setting,
    check_field,
    click_options,
    from_options,
    iter_settings,
    option_name,
    option_values,
    param_name,
    setting_of,
)
from .objectives import ObjectiveConfig, options_class

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


def objective_option_table() -> OptionTable:
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
    return objective_option_table().cls


def train_click_options(exclude: tuple[str, ...] = (), prefix: str = "") -> list[Any]:
    """The click options of :func:`train_options` (the CLI's lazy options target)."""
    holder = click_options(train_options(), exclude=exclude, prefix=prefix)(lambda: None)
    return list(reversed(holder.__click_params__))


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
    table = objective_option_table()
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


__all__ = ["from_train_options", "objective_option_table", "train_click_options",
           "train_options"]
