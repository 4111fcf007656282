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

from collections.abc import Sequence
from typing import Any

from ..core.entry_options import EntryOption, entry_click_option, entry_option_table
from ..core.errors import ConfigError
from ..core.registry import ATTACKS
from ..core.settings import (
    click_options,
    option_values,
    param_name,
    shown,
)
from .schedule import COMMON, AttackSpec

COMMAND_OPTIONS = frozenset((
    "run", "runs", "pipeline", "pipelines", "ema", "device", "sampler", "sampler_steps", "steps",
    "eta", "clip_denoised", "num_samples", "batch_size", "seed", "first_sample", "metrics",
    "metric", "inception_weights", "data_dir", "dataset", "allow_small_fid", "out", "threads",
    "steps_attacked", "windows", "help"))
"""Names of the other options of ``dmattack attack`` and ``curve`` (their spellings without
``--``, dashes as underscores); tests/test_attack_options.py keeps the list complete."""


def option_table() -> list[EntryOption]:
    """The attack options of every registered attack (plugins included), in registration
    order: shared by name and type, else spelled ``--<attack>-<field>``."""
    return entry_option_table(((m, ATTACKS[m].config) for m in ATTACKS.names()),
                              taken=COMMAND_OPTIONS, skip=COMMON)


def attack_options(exclude: tuple[str, ...] = (), prefix: str = "") -> list[Any]:
    """The click options of an attack command: the shared settings of :class:`AttackSpec`
    (less ``exclude``) and every registered attack's own (:func:`option_table`)."""
    if prefix:
        raise ValueError("attack options take no prefix")
    holder = click_options(AttackSpec, exclude=exclude)(lambda: None)
    return [*reversed(holder.__click_params__), *map(entry_click_option, option_table())]


def _not_read(opt: EntryOption, value: Any, methods: Sequence[str]) -> ConfigError:
    which = f"attack {methods[0]!r}" if len(methods) == 1 else \
        f"any of the attacks {', '.join(methods)}"
    return ConfigError(f"{opt.field} ({opt.spelling}) = {shown(value)} is not used by {which}; "
                       f"it is read by: {', '.join(opt.entries)}", field=opt.field)


def given_options(opts: dict[str, Any], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per method, the attack options given on the command line (not None) that it reads;
    ConfigError for one that none of ``methods`` reads."""
    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for opt in option_table():
        value = opts.get(opt.param)
        if value is None:
            continue
        readers = [m for m in methods if m in opt.entries]
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
