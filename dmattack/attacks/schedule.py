"""Which reverse steps get attacked, and how (docs/method.md §6.1 "steps attacked", §10.8, §11):
a registered attack (:class:`AttackEntry`, its own options in a config dataclass) and the
settings every attack shares (:class:`AttackSpec`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from torch import nn

from ..core.entry_options import (
    check_entry_config,
    entry_spelling,
    field_default,
    option_label,
    own_option,
)
from ..core.errors import ConfigError
from ..core.registry import ATTACKS, registry_choices
from ..core.settings import check_settings, setting, shown
from ..core.text import format_number
from ..diffusion.gaussian import GaussianDiffusion
from .base import PerStepFactory, WholeChainAttack, build_per_step
from .chain import ChainAttack, GeneratorArg
from .configs import FGSMConfig, LookaheadConfig, PGDConfig, RandomConfig, TrajectoryConfig

WINDOWS = ("spread", "first", "last")
STEP_COUNTINGS = ("budget", "all")


def steps_with_budget(num_steps: int) -> list[int]:
    """Reverse steps whose attack budget √β̃_t is positive: all but the last (index K−1, at
    t = 0, where β̃_0 = 0 because ᾱ_{-1} = 1; docs/method.md §6)."""
    return list(range(max(num_steps - 1, 0)))


def attacked_steps(num_steps: int, percent: float, window: str = "spread",
                   counting: str = "budget") -> list[int]:
    """Sorted reverse-step indices to attack (0 = the first reverse step, at x_T).

    ``counting="budget"`` (the default, docs/method.md §10.8): the M = K−1 steps with a positive
    budget are counted and chosen from, count = round(percent/100·M) (halves round up), so the
    zero-budget last step is never spent. ``counting="all"`` (the former counting, for
    reproducing earlier numbers): all K steps, count = round(percent/100·K), and the last step
    may be among them. Over the M candidate steps c_0 < … < c_{M−1}: ``first`` takes the first
    (high-noise) ones, ``last`` the last (low-noise) ones, ``spread`` c_j with
    j = ⌊(i + ½)·M/count⌋ for i < count, evenly strided so every noise level is represented.
    """
    if not 0 <= percent <= 100:
        raise ValueError(f"percent of steps attacked must be in [0, 100], got {percent}")
    if window not in WINDOWS:
        raise ValueError(f"unknown attack window {window!r}; allowed: {', '.join(WINDOWS)}")
    if counting not in STEP_COUNTINGS:
        raise ValueError(f"unknown step counting {counting!r}; allowed: "
                         f"{', '.join(STEP_COUNTINGS)}")
    candidates = steps_with_budget(num_steps) if counting == "budget" else list(range(num_steps))
    m = len(candidates)
    count = math.floor(percent / 100 * m + 0.5)
    if count == 0:
        return []
    if window == "first":
        return candidates[:count]
    if window == "last":
        return candidates[m - count:]
    return [candidates[math.floor((i + 0.5) * m / count)] for i in range(count)]


COMMON = ("method", "percent", "window", "eps_scale", "step_counting")
"""The settings every attack shares (:class:`AttackSpec`'s own fields); the others are the
fields of the attack's config (:attr:`AttackEntry.config`)."""
RECORD = ("loss", "pgd_steps", "alpha_scale", "project", "random_dist", "eps_scale",
          "iterations", "distance", "feature_extractor", "eot", "horizon", "checkpoint", "keep",
          "restarts")
"""The built-in attacks' options, in the order an attack's record (:meth:`AttackSpec.to_dict`)
lists them: every record has them all (an option its attack does not read at the default of
the built-in attack that declares it), so records of different attacks share their columns
and the curve stores named by them (``runs/curves/<hash>``) keep their names."""
BUILTIN_CONFIGS = (FGSMConfig, PGDConfig, RandomConfig, TrajectoryConfig, LookaheadConfig)


@dataclass(frozen=True)
class NoOptions:
    """The config of an attack without options of its own."""


@dataclass(frozen=True)
class AttackEntry:
    """A registered attack (``ATTACKS.register(name, AttackEntry(...))``).

    Args:
        make: ``make(spec)`` → a :data:`~dmattack.attacks.base.PerStepFactory` or a
            :class:`~dmattack.attacks.base.WholeChainAttack`; ``spec.config`` is an instance of
            ``config``, ``spec.eps_scale`` the budget multiplier.
        config: a frozen dataclass whose fields, declared with
            :func:`~dmattack.core.settings.setting`, are the attack's own options (the command
            line's too, see :mod:`dmattack.attacks.options`); it checks itself in
            ``__post_init__``. A field named like a shared setting (``eps_scale``) is set from
            the :class:`AttackSpec`, not an option of its own. Default: :class:`NoOptions`.
        head: ``head(spec)`` → the label's leading part, e.g. ``"pgd20-mean"``; default: the
            attack's name.
        suffix: ``suffix(spec)`` → label parts after the percent; default: ``<field><value>``
            for each config field off its default (e.g. ``decay0.5``), so distinct settings
            get distinct labels.
        check: ``check(spec)`` raises :class:`~dmattack.core.errors.ConfigError` for a bad
            combination of settings; None = nothing beyond the fields' own checks.
        control: True for a model-free control (drawn dashed in curve plots).
    """

    make: Callable[[AttackSpec], PerStepFactory | WholeChainAttack]
    config: type = NoOptions
    head: Callable[[AttackSpec], str] | None = None
    suffix: Callable[[AttackSpec], Sequence[str]] | None = None
    check: Callable[[AttackSpec], None] | None = None
    control: bool = False

    def __post_init__(self) -> None:
        check_entry_config(self.config, "AttackEntry")

    def options(self) -> tuple[str, ...]:
        """The config fields that are options of this attack (all but the shared settings)."""
        return tuple(f.name for f in fields(self.config) if f.name not in COMMON)

    def label_head(self, spec: AttackSpec) -> str:
        return spec.method if self.head is None else self.head(spec)

    def label_suffix(self, spec: AttackSpec) -> list[str]:
        if self.suffix is not None:
            return list(self.suffix(spec))
        return [f"{f.name}{option_label(getattr(spec.config, f.name))}"
                for f in fields(self.config) if f.name not in COMMON
                and getattr(spec.config, f.name) != field_default(f)]


def _record_defaults() -> dict[str, Any]:
    """Each :data:`RECORD` option's default, from the built-in config that declares it."""
    out = {}
    for name in RECORD:
        f = next(f for c in BUILTIN_CONFIGS for f in fields(c) if f.name == name)
        out[name] = field_default(f)
    return out


RECORD_DEFAULTS = _record_defaults()


@dataclass(frozen=True, init=False)
class AttackSpec:
    """One attack setting of an evaluation: which registered attack, on which steps, and its
    own options (``config``, an instance of its entry's config dataclass). Budget
    ε_t = eps_scale·√β̃_t (model-space units).

    Built from keywords: ``AttackSpec("pgd", 50, pgd_steps=10, loss="eps")`` routes each
    option to the attack's config; an option the attack's config does not have is refused
    (one line naming it and what the attack reads), as is a bad value. ``config=`` passes a
    whole config instead. ``spec.pgd_steps`` reads the config's field.
    """

    method: str = setting("pgd", "Attack: a registered attack (dmattack plugins lists them).",
                          choices=registry_choices(ATTACKS))
    percent: float = setting(50.0, "Percent of the sampler's reverse steps attacked (0..100).",
                             low=0, high=100, option="--steps-attacked")
    window: str = setting("spread", "Which steps are attacked: spread (evenly strided), first "
                          "(high noise) or last (low noise).", choices=WINDOWS)
    eps_scale: float = setting(1.0, "Budget multiplier: ε_t = eps_scale·√β̃_t.", low=0,
                               high=100)
    step_counting: str = setting("budget", "What --steps-attacked counts: budget (the steps "
                                 "with a positive budget, i.e. all but the last) or all (every "
                                 "step, the former counting, to reproduce earlier numbers).",
                                 choices=STEP_COUNTINGS)
    config: Any = setting(None, "The attack's own options: an instance of its entry's config "
                          "(built from the keyword options when not given).", cli=False)

    def __init__(self, method: str = "pgd", percent: float = 50.0, window: str = "spread", *,
                 eps_scale: float = 1.0, step_counting: str = "budget", config: Any = None,
                 **options: Any) -> None:
        for name, value in (("method", method), ("percent", percent), ("window", window),
                            ("eps_scale", eps_scale), ("step_counting", step_counting),
                            ("config", None)):
            object.__setattr__(self, name, value)
        check_settings(self)
        entry = self.entry()
        object.__setattr__(self, "config", self._config(entry, config, options))
        if entry.check is not None:
            entry.check(self)

    def _config(self, entry: AttackEntry, given: Any, options: dict[str, Any]) -> Any:
        """The entry's config with ``options`` (and the shared settings it declares)."""
        if given is not None and not isinstance(given, entry.config):
            raise ConfigError(f"config of attack {self.method!r} must be a "
                              f"{entry.config.__name__}, got {type(given).__name__}",
                              field="config")
        own = entry.options()
        for name, value in options.items():
            if name not in own:
                reads = ", ".join((*COMMON[2:], *own))
                raise ConfigError(f"{name} ({_spelling(name)}) = {shown(value)} is not used by "
                                  f"attack {self.method!r}; it reads: {reads}", field=name)
        shared = {f.name: getattr(self, f.name) for f in fields(entry.config)
                  if f.name in COMMON}
        if given is None:
            return entry.config(**shared, **options)
        return dataclasses.replace(given, **shared, **options)

    def __getattr__(self, name: str) -> Any:
        """An option of the attack's config, e.g. ``spec.pgd_steps``."""
        return own_option(self.__dict__.get("config"), name,
                          f"{type(self).__name__} of attack {self.__dict__.get('method')!r}")

    def entry(self) -> AttackEntry:
        """The registered attack this spec names."""
        return ATTACKS.get(self.method, "--method")

    def describe(self, with_percent: bool = True) -> str:
        """Short label, e.g. ``pgd20-mean-spread-50%``; options off their defaults are appended
        (``-projend``, ``-alpha0.25``, ``-x2``, ``-countall``), so distinct specs get distinct
        labels. Numbers are exact (``5`` and ``4.9999999`` differ)."""
        entry = self.entry()
        parts = [entry.label_head(self), self.window]
        if with_percent:
            parts.append(f"{format_number(self.percent)}%")
        parts.extend(entry.label_suffix(self))
        if self.eps_scale != 1:
            parts.append(f"x{format_number(self.eps_scale)}")
        if self.step_counting != "budget":
            parts.append(f"count{self.step_counting}")
        return "-".join(parts)

    def _record(self) -> dict[str, Any]:
        own = asdict(self.config)
        out: dict[str, Any] = {"method": self.method, "percent": self.percent,
                               "window": self.window}
        for name, default in RECORD_DEFAULTS.items():
            out[name] = self.eps_scale if name == "eps_scale" else own.get(name, default)
        out["step_counting"] = self.step_counting
        out.update({k: v for k, v in own.items() if k not in out})
        return out

    def settings(self) -> dict[str, Any]:
        """What the attack is run with: eps_scale and its config's fields."""
        own = self.entry().options()
        return {k: v for k, v in self._record().items() if k == "eps_scale" or k in own}

    def to_dict(self) -> dict[str, Any]:
        """The spec's record: the shared settings, every :data:`RECORD` option (see there),
        the attack's other options, and its label."""
        return {**self._record(), "label": self.describe()}

    def make_attack(self, model: nn.Module, diffusion: GaussianDiffusion,
                    generator: GeneratorArg = None) -> ChainAttack:
        """The per-step attack this spec describes, on ``diffusion`` (the one sampled)."""
        made = self.entry().make(self)
        if isinstance(made, WholeChainAttack):
            raise ConfigError(f"attack {self.method!r} attacks the whole chain, not one step; "
                              "run it with dmattack.evaluation.attack_eval.run_attack / run_curve",
                              field="method")
        return build_per_step(made, model, diffusion, generator)


def _spelling(name: str) -> str:
    """The command-line spelling of attack option ``name`` (as the entry declaring it spells
    it; ``--name`` when none does)."""
    return entry_spelling((ATTACKS[m].config for m in ATTACKS.names()), name)


def spec_grid(methods: Sequence[str], percents: Sequence[float],
              windows: Sequence[str] = ("spread",), refuse_unused: bool = False,
              **options: Any) -> list[AttackSpec]:
    """methods × windows × percents as :class:`AttackSpec`. ``options`` are the shared
    settings (eps_scale, step_counting) and the attacks' own options; each method gets the
    ones it reads (``loss`` goes to fgsm and pgd, not to random, ``horizon`` to lookahead
    only). With ``refuse_unused`` (the CLI's ``curve``), an option none of the methods reads
    raises ConfigError instead of being ignored."""
    shared = {k: v for k, v in options.items() if k in COMMON}
    specs, read = [], set(shared)
    for m in methods:
        reads = set(ATTACKS.get(m, "--method").options())
        read |= reads
        own = {k: v for k, v in options.items() if k in reads}
        specs += [AttackSpec(m, p, w, **shared, **own) for w in windows for p in percents]
    unused = [k for k in options if k not in read] if refuse_unused else []
    if unused:
        k = unused[0]
        raise ConfigError(f"{k} ({_spelling(k)}) = {shown(options[k])} is not used by any of "
                          f"the attacks {', '.join(methods)}", field=k)
    return specs
