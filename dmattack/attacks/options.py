"""The attack options of the command line, generated from the registered attacks' configs
(:attr:`~dmattack.attacks.schedule.AttackEntry.config`), so a plugin's entry brings its own.

Every field of every registered attack's config is one option (``--pgd-steps``,
``--decay``); attacks declaring a field of the same name and type share it, and its ``--help``
says which attacks read it (``pgd, trajectory, lookahead: PGD step size …``). A field whose
name another attack declares with a different type, or named like another option of the attack
commands (:data:`COMMAND_OPTIONS`, e.g. ``steps``, ``seed``), is spelled ``--<attack>-<field>``. The
options default to unset: an attack reads its own default then, and an option given that the
chosen attack does not read is refused (one line, exit code 2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from ..core.errors import ConfigError
from ..core.registry import ATTACKS
from ..core.settings import (
    FieldType,
    click_options,
    click_type,
    field_types,
    option_name,
    option_values,
    param_name,
    setting_of,
    shown,
)
from .base import format_number
from .schedule import COMMON, AttackSpec

COMMAND_OPTIONS = frozenset((
    "run", "runs", "pipeline", "pipelines", "ema", "device", "sampler", "sampler_steps", "steps",
    "eta", "clip_denoised", "num_samples", "batch_size", "seed", "first_sample", "metrics",
    "metric", "inception_weights", "data_dir", "dataset", "allow_small_fid", "out", "threads",
    "steps_attacked", "windows", "help"))
"""Names of the other options of ``dmattack attack`` and ``curve`` (their spellings without
``--``, dashes as underscores); tests/test_attack_options.py keeps the list complete."""


@dataclass
class AttackOption:
    """One command-line option standing for config field ``field`` of the attacks in
    ``readers`` ((method, dataclass field) pairs, in registration order)."""

    field: str
    param: str
    spelling: str
    type: FieldType
    readers: list[tuple[str, dataclasses.Field]]

    @property
    def methods(self) -> list[str]:
        return [m for m, _ in self.readers]


def option_table() -> list[AttackOption]:
    """The attack options of every registered attack (plugins included), in registration
    order: shared by name and type, else spelled ``--<attack>-<field>``."""
    table: dict[str, AttackOption] = {}
    for method in ATTACKS.names():
        config = ATTACKS[method].config
        types_ = field_types(config)
        for f in fields(config):
            s = setting_of(f)
            if f.name in COMMON or s is None or not s.cli:
                continue
            ft, spelling = types_[f.name], option_name(f)
            shared = table.get(f.name)
            if shared is not None and shared.type == ft and shared.spelling == spelling:
                shared.readers.append((method, f))
                continue
            taken = {f.name, spelling[2:].replace("-", "_")} & COMMAND_OPTIONS
            key = f.name if shared is None and not taken else f"{method}.{f.name}"
            if key != f.name:
                spelling = f"--{method}-{f.name.replace('_', '-')}"
            table[key] = AttackOption(f.name, param_name(key).replace("-", "_"), spelling, ft,
                                      [(method, f)])
    return list(table.values())


def _default_text(opt: AttackOption, v: Any) -> str:
    """A default as click shows it (a flag by its spelling, ``checkpoint`` / ``no-checkpoint``)."""
    if isinstance(v, bool):
        return opt.spelling[2:] if v else f"no-{opt.spelling[2:]}"
    if v is None:
        return "none"
    return format_number(v) if isinstance(v, (int, float)) else str(v)


def _sentence(text: str) -> str:
    """``text`` to follow ``"pgd: "``: its first word in lower case unless an acronym."""
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def _help(opt: AttackOption) -> str:
    """``"pgd, trajectory: <help> [choices]; lookahead: <help>"`` and the default(s)."""
    groups: dict[str, list[str]] = {}
    for method, f in opt.readers:
        s = setting_of(f)
        choices = s.allowed_choices()
        text = _sentence(s.help).rstrip(".") + (f" [{' | '.join(choices)}]" if choices else "")
        groups.setdefault(text, []).append(method)
    help_text = "; ".join(f"{', '.join(ms)}: {text}" for text, ms in groups.items())
    if "[default:" in help_text:  # the help says what picks it
        return help_text
    defaults = {m: _default_text(opt, f.default) for m, f in opt.readers}
    if len(set(defaults.values())) == 1:
        return f"{help_text} [default: {next(iter(defaults.values()))}]"
    per = ", ".join(f"{m} {d}" for m, d in defaults.items())
    return f"{help_text} [default: {per}]"


def _click_option(opt: AttackOption) -> Any:
    """The option: unset by default (each attack then reads its own default); a setting's
    ``aliases`` are accepted spellings too (its ``deprecated`` ones are not offered here)."""
    import click

    if opt.type.kinds == (bool,):
        decls = [f"{opt.spelling}/--no-{opt.spelling[2:]}", opt.param]
        return click.Option(decls, default=None, help=_help(opt))
    aliases = dict.fromkeys(a for _, f in opt.readers for a in setting_of(f).aliases)
    return click.Option([opt.spelling, *aliases, opt.param], type=click_type(opt.type),
                        default=None, help=_help(opt))


def attack_options(exclude: tuple[str, ...] = (), prefix: str = "") -> list[Any]:
    """The click options of an attack command: the shared settings of :class:`AttackSpec`
    (less ``exclude``) and every registered attack's own (:func:`option_table`)."""
    if prefix:
        raise ValueError("attack options take no prefix")
    holder = click_options(AttackSpec, exclude=exclude)(lambda: None)
    return [*reversed(holder.__click_params__), *map(_click_option, option_table())]


def _not_read(opt: AttackOption, value: Any, methods: Sequence[str]) -> ConfigError:
    which = f"attack {methods[0]!r}" if len(methods) == 1 else \
        f"any of the attacks {', '.join(methods)}"
    return ConfigError(f"{opt.field} ({opt.spelling}) = {shown(value)} is not used by {which}; "
                       f"it is read by: {', '.join(opt.methods)}", field=opt.field)


def given_options(opts: dict[str, Any], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per method, the attack options given on the command line (not None) that it reads;
    ConfigError for one that none of ``methods`` reads."""
    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for opt in option_table():
        value = opts.get(opt.param)
        if value is None:
            continue
        readers = [m for m in methods if m in opt.methods]
        if not readers:
            raise _not_read(opt, value, methods)
        for m in readers:
            out[m][opt.field] = tuple(value) if isinstance(value, list) else value
    return out


def spec_from_options(opts: dict[str, Any]) -> AttackSpec:
    """The :class:`AttackSpec` of ``dmattack attack``'s options."""
    opts = option_values(opts)
    shared = {k: opts[param_name(k)] for k in COMMON if opts.get(param_name(k)) is not None}
    method = shared.pop("method", "pgd")
    AttackSpec(method)  # an unknown method is refused first
    return AttackSpec(method, **shared, **given_options(opts, [method])[method])


def curve_specs_from_options(opts: dict[str, Any], methods: Sequence[str],
                             percents: Sequence[float], windows: Sequence[str]
                             ) -> list[AttackSpec]:
    """methods × windows × percents of ``dmattack curve``: each method with the options it
    reads; an option none of them reads is refused."""
    opts = option_values(opts)
    shared = {k: opts[param_name(k)] for k in ("eps_scale", "step_counting")
              if opts.get(param_name(k)) is not None}
    own = given_options(opts, methods)
    return [AttackSpec(m, p, w, **shared, **own[m]) for m in methods for w in windows
            for p in percents]
