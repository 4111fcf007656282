"""Settings declared once: a config dataclass's fields carry their default, type, allowed values
and help text; validation and the command-line options are derived from them.

In the spirit of improved-diffusion's ``add_dict_to_argparser``, but typed::

    @dataclass(frozen=True)
    class MyConfig:
        eps_scale: float = setting(1.0, "Budget multiplier, ε_t = eps_scale·σ_t.", low=0)
        window: str = setting("spread", "Which steps.", choices=("spread", "first", "last"))

        def __post_init__(self) -> None:
            check_settings(self)

    @click.command()
    @click_options(MyConfig)
    def cmd(**opts):
        cfg = from_options(MyConfig, opts)

Supported field types: ``bool``, ``int``, ``float``, ``str``, unions of those with ``None``,
``str | float`` (a named choice or a number), fixed-length tuples of numbers, nested config
dataclasses (their options are flattened into the parent's) and ``Any`` (a library-only value,
``cli=False``, that its owner checks). Every float is checked finite.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import MISSING, dataclass
from typing import Any

from .errors import ConfigError

META_KEY = "dmattack"
Choices = tuple[str, ...] | Callable[[], tuple[str, ...]] | None


@dataclass(frozen=True)
class Setting:
    """What a config field declares besides its default (see :func:`setting`)."""

    help: str
    choices: Choices = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    option: str | None = None
    deprecated: tuple[str, ...] = ()
    cli: bool = True
    auto: str | None = None
    aliases: tuple[str, ...] = ()

    def allowed_choices(self) -> tuple[str, ...] | None:
        return self.choices() if callable(self.choices) else self.choices

    def range_text(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(parts)

    def in_range(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None
                    and (value >= self.high if self.high_open else value > self.high))


def setting(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING,
            choices: Choices = None, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False, option: str | None = None,
            deprecated: tuple[str, ...] = (), cli: bool = True, auto: str | None = None,
            aliases: tuple[str, ...] = ()) -> Any:
    """A dataclass field with its help text and allowed values.

    Args:
        default / default_factory: as :func:`dataclasses.field`.
        help: one line for ``--help`` and the docs.
        choices: allowed strings, or a callable returning them (e.g. a registry's ``names``).
        low, high: numeric bounds (inclusive unless ``low_open`` / ``high_open``).
        option: the command-line spelling (default ``--field-name``).
        deprecated: older spellings still accepted with a deprecation warning.
        cli: False for a library-only setting (no command-line option); say why in ``help``.
        auto: on the command line the option defaults to "unset" and this text says what
            picks the value then (e.g. ``"the model's preset"``); the command fills it in.
        aliases: other spellings accepted as equals (no warning).
    """
    meta = {META_KEY: Setting(help, choices, low, high, low_open, high_open, option,
                              tuple(deprecated), cli, auto, tuple(aliases))}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def is_number(v: Any) -> bool:
    """True for a finite int or float (bools excluded); any int is finite (``math.isfinite``
    would overflow on one beyond a float's range, e.g. ``--seed 1e400`` written out)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return isinstance(v, int) or math.isfinite(v)


def setting_of(field: dataclasses.Field) -> Setting | None:
    return field.metadata.get(META_KEY)


def option_name(field: dataclasses.Field) -> str:
    """The command-line spelling of a field, e.g. ``--eps-scale``."""
    s = setting_of(field)
    return s.option if s is not None and s.option else "--" + field.name.replace("_", "-")


@dataclass(frozen=True)
class FieldType:
    """A field's annotation, reduced to what validation and the CLI need."""

    kinds: tuple[type, ...]  # among bool, int, float, str, tuple, or one config dataclass
    optional: bool
    tuple_len: int = 0

    @property
    def config(self) -> type | None:
        return next((k for k in self.kinds if dataclasses.is_dataclass(k)), None)


def field_types(cls: type) -> dict[str, FieldType]:
    """Resolved annotations of a config dataclass's fields."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        out[f.name] = _reduce(hints[f.name])
    return out


def _reduce(tp: Any) -> FieldType:
    if tp is Any:  # a library-only value the owner checks itself (e.g. an attack's config)
        return FieldType((object,), True)
    args = typing.get_args(tp) if _is_union(tp) else (tp,)
    optional = type(None) in args
    kinds, tuple_len = [], 0
    for a in args:
        if a is type(None):
            continue
        origin = typing.get_origin(a)
        if origin is tuple:
            kinds.append(tuple)
            tuple_len = len(typing.get_args(a))
        elif a in (bool, int, float, str) or dataclasses.is_dataclass(a):
            kinds.append(a)
        else:
            raise TypeError(f"unsupported setting type {a!r}")
    return FieldType(tuple(kinds), optional, tuple_len)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _describe(ft: FieldType, s: Setting | None) -> str:
    names = []
    choices = s.allowed_choices() if s else None
    rng = s.range_text() if s else ""
    for k in ft.kinds:
        if k is str:
            names.append(", ".join(choices) if choices else "a non-empty string")
        elif k is bool:
            names.append("true or false")
        elif k in (int, float):
            noun = "an integer" if k is int else "a finite number"
            names.append(f"{noun} {rng}".strip())
        elif k is tuple:
            names.append(f"{ft.tuple_len} finite numbers {rng}".strip())
        elif dataclasses.is_dataclass(k):
            names.append(f"a {k.__name__}")
    if ft.optional:
        names.append("none")
    return " or ".join(dict.fromkeys(names))


def _number_ok(value: Any, kind: type, s: Setting | None) -> bool:
    if not is_number(value) or (kind is int and not isinstance(value, int)):
        return False
    return s is None or s.in_range(value)


def _value_ok(value: Any, ft: FieldType, s: Setting | None) -> bool:
    if value is None or object in ft.kinds:
        return ft.optional
    for k in ft.kinds:
        if k is bool and isinstance(value, bool):
            return True
        if k in (int, float) and _number_ok(value, k, s):
            return True
        if k is str and isinstance(value, str) and value.strip():
            choices = s.allowed_choices() if s else None
            if choices is None or value in choices:
                return True
        if k is tuple and isinstance(value, (tuple, list)) and len(value) == ft.tuple_len:
            if all(_number_ok(v, float, s) for v in value):
                return True
    return False


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` for an error line, shortened in the middle beyond ``limit`` characters
    (e.g. a 400-digit ``--seed``)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit // 2]}…{text[-8:]} ({len(text)} characters)"


def check_settings(obj: Any, prefix: str = "") -> None:
    """Check every field of config dataclass ``obj`` against its type and declared range.

    Raises :class:`ConfigError` on the first bad field: one line naming the field, its
    command-line option, the value and what is allowed. Nested configs are checked too.
    """
    types_ = field_types(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        ft = types_[f.name]
        if ft.config is not None and isinstance(value, ft.config):
            check_settings(value, prefix + f.name + ".")
            continue
        s = setting_of(f)
        if not _value_ok(value, ft, s):
            raise ConfigError(f"{prefix}{f.name} ({option_name(f)}) = {shown(value)} is invalid; "
                              f"allowed: {_describe(ft, s)}{_choices_note(s)}",
                              field=prefix + f.name)


def check_field(cls: type, name: str, value: Any, where: str = "") -> None:
    """Check one ``value`` against field ``name`` of config ``cls`` (e.g. a value read from a
    file that is not built into ``cls``); a :class:`ConfigError` names ``where`` (default: the
    field and its option)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    ft, s = field_types(cls)[name], setting_of(f)
    if not _value_ok(value, ft, s):
        raise ConfigError(f"{where or f'{name} ({option_name(f)})'} = {shown(value)} is invalid; "
                          f"allowed: {_describe(ft, s)}{_choices_note(s)}", field=name)


def check_value_for_any(readers: Sequence[tuple[type, str]], value: Any) -> None:
    """The first reader's ConfigError unless a reader (config class, field) allows value."""
    errors = []
    for cls, name in readers:
        try:
            return check_field(cls, name, value)
        except ConfigError as e:
            errors.append(e)
    if errors:
        raise errors[0]


def _choices_note(s: Setting | None) -> str:
    """For choices computed by a callable (a registry's names, which plugins extend): the
    plugins that failed to load, else ""."""
    if s is None or not callable(s.choices):
        return ""
    from .registry import failed_plugins_note

    return failed_plugins_note()


def iter_settings(cls: type, prefix: str = ""
                  ) -> Iterator[tuple[str, dataclasses.Field, FieldType]]:
    """``(dotted path, field, type)`` of every leaf setting of ``cls``, nested configs
    flattened (``objective.ray.rho``)."""
    types_ = field_types(cls)
    for f in dataclasses.fields(cls):
        ft = types_[f.name]
        if ft.config is not None:
            yield from iter_settings(ft.config, prefix + f.name + ".")
        else:
            yield prefix + f.name, f, ft


# ----------------------------------------------------------------------- command-line options
def param_name(path: str) -> str:
    """The click parameter name of a dotted setting path (``objective.ray.rho`` →
    ``objective__ray__rho``)."""
    return path.replace(".", "__")


def _leaf_default(instance: Any, path: str) -> Any:
    for part in path.split("."):
        instance = getattr(instance, part)
    return instance


def click_options(cls: type, *, exclude: tuple[str, ...] = (), instance: Any = None,
                  prefix: str = "") -> Callable[[Callable], Callable]:
    """A decorator adding one click option per command-line setting of ``cls``.

    Defaults come from ``instance`` (default: ``cls()``), so nested configs whose parent
    overrides their defaults show the parent's. Values are not checked here: building the
    config (:func:`from_options`) checks them, with one message for the library and the CLI.
    ``exclude`` lists dotted paths to leave out (the command sets them itself). ``prefix``
    (e.g. ``"sampler."``) goes before every parameter name, so two configs with a field of the
    same name can serve one command; pass the same prefix to :func:`from_options`.
    """
    import click

    base = cls() if instance is None else instance
    options = []
    for path, f, ft in iter_settings(cls):
        s = setting_of(f)
        if path in exclude or s is None or not s.cli:
            continue
        default = None if s.auto else _leaf_default(base, path)
        path = prefix + path
        name = option_name(f)
        kw: dict[str, Any] = {"default": default, "show_default": default is not None}
        option_cls = click.Option
        if callable(s.choices):  # a registry's names, listed when --help is shown: plugin
            option_cls = _lazy_help_option()  # entries count, and importing loads no plugin
            kw["help_text"] = functools.partial(_help_text, s, default)
        else:
            kw["help"] = _help_text(s, default)
        if ft.kinds == (bool,):
            decls = [f"{name}/--no-{name[2:]}", param_name(path)]
        else:
            decls = [name, *s.aliases, param_name(path)]
            kw["type"] = click_type(ft)
            if tuple in ft.kinds and default is not None:
                kw["default"] = tuple(default)
        options.append(option_cls(decls, **kw))
        for i, old in enumerate(s.deprecated):
            options.append(click.Option(
                [old, f"{param_name(path)}__deprecated_{i}"], type=kw.get("type"),
                hidden=True, expose_value=True, callback=_warn_deprecated(old, name)))

    def apply(fn: Callable) -> Callable:
        params = getattr(fn, "__click_params__", [])
        # click applies decorators bottom-up and reverses the list: append in reverse order
        params.extend(reversed(options))
        fn.__click_params__ = params
        return fn

    return apply


def _help_text(s: Setting, default: Any) -> str:
    """An option's help: the setting's help, its allowed names, and what its default is."""
    text = s.help
    choices = s.allowed_choices()
    if choices:
        text += f" [{' | '.join(choices)}]"
    if s.auto:
        text += f" [default: by {s.auto}]"
    elif default is None and "[default:" not in text:
        text += " [default: none]"
    return text


@functools.cache
def _lazy_help_option() -> type:
    """A click option class whose ``help`` is computed each time it is read
    (``help_text()``)."""
    import click

    class LazyHelpOption(click.Option):
        def __init__(self, *args: Any, help_text: Callable[[], str], **kwargs: Any) -> None:
            self.help_text = help_text
            super().__init__(*args, **kwargs)

        @property
        def help(self) -> str:
            return self.help_text()

        @help.setter
        def help(self, value: Any) -> None:  # click assigns None in __init__: nothing to keep
            pass

    return LazyHelpOption


def click_type(ft: FieldType) -> Any:
    import click

    from .option_types import INTEGER_OR_NAME, NUMBER_OR_NAME, number_type

    if tuple in ft.kinds:
        return tuple(number_type(float) for _ in range(ft.tuple_len))
    if str in ft.kinds and float in ft.kinds:
        return NUMBER_OR_NAME
    if str in ft.kinds and int in ft.kinds:
        return INTEGER_OR_NAME
    if int in ft.kinds:
        return number_type(int, ft.optional)
    if float in ft.kinds:
        return number_type(float, ft.optional)
    return click.STRING


def _warn_deprecated(old: str, new: str) -> Callable[..., Any]:
    """A click callback printing one warning line on stderr when the deprecated spelling
    ``old`` of option ``new`` is given (its value is then folded into ``new`` by
    :func:`option_values`)."""
    def callback(ctx: Any, param: Any, value: Any) -> Any:
        if value is not None:
            import click

            click.echo(f"warning: {old} is deprecated here; use {new}", err=True)
        return value

    return callback


def option_values(opts: dict[str, Any]) -> dict[str, Any]:
    """click's keyword arguments with deprecated spellings folded into their new names (and
    removed)."""
    out = {k: v for k, v in opts.items() if "__deprecated_" not in k}
    for k, v in opts.items():
        if "__deprecated_" in k and v is not None:
            out[k.split("__deprecated_")[0]] = v
    return out


def from_options(cls: type, opts: dict[str, Any], base: Any = None, prefix: str = "") -> Any:
    """Build config ``cls`` from click's keyword arguments (made by :func:`click_options` of
    ``cls``). Settings the command did not declare, and ``auto`` settings left unset (None),
    keep their value in ``base`` (default: ``cls()``). Raises :class:`ConfigError` for a bad
    value (the config checks itself)."""
    opts = option_values(opts)

    def build(instance: Any, prefix: str) -> Any:
        changes = {}
        types_ = field_types(type(instance))
        for f in dataclasses.fields(instance):
            path = prefix + f.name
            s = setting_of(f)
            if types_[f.name].config is not None:
                changes[f.name] = build(getattr(instance, f.name), path + ".")
            elif param_name(path) in opts:
                v = opts[param_name(path)]
                if v is None and s is not None and s.auto:
                    continue
                changes[f.name] = tuple(v) if isinstance(v, list) else v
        return dataclasses.replace(instance, **changes)

    return build(cls() if base is None else base, prefix)
