"""Which reverse steps get attacked, and how (docs/method.md §6.1 "steps attacked", §10.8, §11)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from torch import nn

from ..diffusion import GaussianDiffusion
from ..errors import ConfigError
from ..registry import ATTACKS, registry_choices
from ..settings import check_settings, option_name, same_as, setting
from .base import AttackEntry, WholeChainAttack, build_per_step, format_number
from .chain import RANDOM_DISTS, ChainAttack, GeneratorArg
from .lookahead import LookaheadConfig
from .losses import LOSSES
from .trajectory import TrajectoryConfig

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


PROJECTS = ("auto", "on", "off", "end")
COMMON_OPTIONS = ("method", "percent", "window", "eps_scale", "step_counting")
"""AttackSpec fields every attack reads; the others belong to the attacks that declare them."""


@dataclass(frozen=True)
class AttackSpec:
    """One attack setting of an evaluation: which registered attack, on which steps, with which
    options. Flat: each field is one command-line option; each attack reads the fields its
    registry entry lists (:class:`~dmattack.attacks.base.AttackEntry`), and a field it does not
    read must stay at its default. Budget ε_t = eps_scale·√β̃_t (model-space units).
    """

    method: str = setting("pgd", "Attack: a registered attack (dmattack plugins lists them).",
                          choices=registry_choices(ATTACKS))
    percent: float = setting(50.0, "Percent of the sampler's reverse steps attacked (0..100).",
                             low=0, high=100, option="--steps-attacked")
    window: str = setting("spread", "Which steps are attacked: spread (evenly strided), first "
                          "(high noise) or last (low noise).", choices=WINDOWS)
    loss: str = setting("mean", "Attack loss of fgsm/pgd: mean (‖Δμ_θ‖², the paper's), eps "
                        "(‖Δε_θ‖²) or x0 (‖Δx̂_0‖²).", choices=LOSSES)
    pgd_steps: int = setting(20, "pgd: PGD iterations per attacked step.", low=1)
    alpha_scale: float = same_as(TrajectoryConfig, "alpha_scale", help="pgd, trajectory, "
                                 "lookahead: PGD step size in units of ε_t.")
    project: str = setting("auto", "Projection onto the ℓ∞ ball: auto (fgsm: none, pgd: every "
                           "iteration), on, off (fgsm) or end (pgd, once at the end).",
                           choices=PROJECTS)
    random_dist: str = setting("sign", "Random control: sign (±ε_t) or uniform (U(−ε_t, ε_t)).",
                               choices=RANDOM_DISTS)
    eps_scale: float = setting(1.0, "Budget multiplier: ε_t = eps_scale·√β̃_t.", low=0,
                               high=100)
    # the adaptive attacks' settings, declared once in their configs (docs/method.md §12)
    iterations: int = same_as(TrajectoryConfig, "iterations", help="trajectory, lookahead: PGD "
                              "iterations (trajectory: one chain forward and backward each; "
                              "lookahead: per attacked step).")
    distance: str = same_as(TrajectoryConfig, "distance", help="trajectory, lookahead: what the "
                            "attack maximises between attacked and clean samples (lookahead: "
                            "between the two continuations).")
    feature_extractor: str | None = same_as(TrajectoryConfig, "feature_extractor",
                                            prefix="trajectory, lookahead: ")
    eot: int = same_as(LookaheadConfig, "eot", prefix="lookahead: ")
    horizon: int | str = same_as(LookaheadConfig, "horizon", prefix="lookahead: ")
    checkpoint: bool = same_as(TrajectoryConfig, "checkpoint", prefix="trajectory, lookahead: ")
    keep: str = same_as(TrajectoryConfig, "keep", prefix="trajectory, lookahead: ")
    restarts: int = same_as(TrajectoryConfig, "restarts", help="pgd, trajectory, lookahead: "
                            "PGD runs, each from a new random start (attack stream); per sample "
                            "the best is kept (docs/method.md §12).")
    step_counting: str = setting("budget", "What --steps-attacked counts: budget (the steps "
                                 "with a positive budget, i.e. all but the last) or all (every "
                                 "step, the former counting, to reproduce earlier numbers).",
                                 choices=STEP_COUNTINGS)

    def __post_init__(self) -> None:
        if self.project is None or isinstance(self.project, bool):  # the former spelling
            object.__setattr__(self, "project", {None: "auto", True: "on", False: "off"}[
                self.project])
        check_settings(self)
        entry = self.entry()
        if self.project not in entry.projects:
            raise ConfigError(f"project (--project) = {self.project!r} is invalid for "
                              f"{self.method}; allowed: {', '.join(entry.projects)}",
                              field="project")
        for f in fields(self):
            if f.name in COMMON_OPTIONS or f.name in entry.options or f.name == "project":
                continue
            if getattr(self, f.name) != f.default:
                used = ", ".join((*COMMON_OPTIONS[2:], *entry.options)) or "none"
                raise ConfigError(f"{f.name} ({option_name(f)}) = {getattr(self, f.name)!r} "
                                  f"is not used by attack {self.method!r}; it reads: {used}",
                                  field=f.name)
        if entry.check is not None:
            entry.check(self)

    def entry(self) -> AttackEntry:
        """The registered attack this spec names."""
        return ATTACKS.get(self.method, "--method")

    def describe(self, with_percent: bool = True) -> str:
        """Short label, e.g. ``pgd20-mean-spread-50%``; options off their defaults are appended
        (``-projend``, ``-alpha0.25``, ``-x2``, ``-countall``), so distinct specs get distinct
        labels. Numbers are exact (``5`` and ``4.9999999`` differ)."""
        entry = self.entry()
        parts = [entry.head(self), self.window]
        if with_percent:
            parts.append(f"{format_number(self.percent)}%")
        parts.extend(entry.suffix(self))
        if self.eps_scale != 1:
            parts.append(f"x{format_number(self.eps_scale)}")
        if self.step_counting != "budget":
            parts.append(f"count{self.step_counting}")
        return "-".join(parts)

    def settings(self) -> dict[str, Any]:
        """What the attack is run with: eps_scale and the options its entry reads."""
        reads = ("eps_scale", *self.entry().options)
        return {k: v for k, v in asdict(self).items() if k in reads}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.describe()}

    def make_attack(self, model: nn.Module, diffusion: GaussianDiffusion,
                    generator: GeneratorArg = None) -> ChainAttack:
        """The per-step attack this spec describes, on ``diffusion`` (the one sampled)."""
        made = self.entry().make(self)
        if isinstance(made, WholeChainAttack):
            raise ConfigError(f"attack {self.method!r} attacks the whole chain, not one step; "
                              "run it with dmattack.attack_eval.run_attack / run_curve",
                              field="method")
        return build_per_step(made, model, diffusion, generator)
