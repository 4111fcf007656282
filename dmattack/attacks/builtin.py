"""The built-in reverse-chain attacks' registry entries: per-step ``fgsm``, ``pgd``, ``random``
(docs/method.md §6, §11) and whole-chain ``trajectory``, ``lookahead`` (§12). Each entry
names its config (:mod:`dmattack.attacks.configs`), how the spec builds the attack, and its
label; a plugin registers its own the same way (docs/architecture.md)."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

from ..core.registry import ATTACKS
from ..core.text import format_number
from .adaptive import AdaptiveChainAttack
from .chain import ChainFGSM, ChainPGD, ChainRandom
from .configs import FGSMConfig, LookaheadConfig, PGDConfig, RandomConfig, TrajectoryConfig
from .lookahead import LookaheadPGD
from .schedule import AttackEntry, AttackSpec
from .trajectory import TrajectoryPGD


def _fgsm(s: AttackSpec) -> partial:
    c: FGSMConfig = s.config
    return partial(ChainFGSM, loss=c.loss, eps_scale=s.eps_scale, project=c.project == "on")


def _pgd(s: AttackSpec) -> partial:
    c: PGDConfig = s.config
    return partial(ChainPGD, loss=c.loss, eps_scale=s.eps_scale, steps=c.pgd_steps,
                   alpha_scale=c.alpha_scale, project="end" if c.project == "end" else True,
                   restarts=c.restarts)


def _pgd_suffix(s: AttackSpec) -> list[str]:
    c: PGDConfig = s.config
    return [*(["projend"] if c.project == "end" else []),
            *([f"alpha{format_number(c.alpha_scale)}"] if c.alpha_scale != 1 / 8 else []),
            *([f"r{c.restarts}"] if c.restarts != 1 else [])]


def _random(s: AttackSpec) -> partial:
    return partial(ChainRandom, dist=s.config.random_dist, eps_scale=s.eps_scale)


def adaptive_entry(attack: type[AdaptiveChainAttack], config: type) -> AttackEntry:
    """The entry of an adaptive attack whose settings are ``config`` (its ``eps_scale`` is the
    spec's): it builds ``attack.from_config(spec.config)``; its label is the attack's own."""

    def make(spec: AttackSpec) -> AdaptiveChainAttack:
        return attack.from_config(replace(spec.config, eps_scale=spec.eps_scale))

    def check(spec: AttackSpec) -> None:
        make(spec)

    return AttackEntry(config=config, make=make, head=lambda s: make(s).head(),
                       suffix=lambda s: make(s).suffix(), check=check)


def register_builtin() -> None:
    """Register the built-in attacks (done once, when this module is imported)."""
    entries: dict[str, Any] = {
        "fgsm": AttackEntry(config=FGSMConfig, make=_fgsm, head=lambda s: f"fgsm-{s.loss}",
                            suffix=lambda s: ["proj"] if s.project == "on" else []),
        "pgd": AttackEntry(config=PGDConfig, make=_pgd,
                           head=lambda s: f"pgd{s.pgd_steps}-{s.loss}", suffix=_pgd_suffix),
        "random": AttackEntry(config=RandomConfig, make=_random,
                              head=lambda s: f"random-{s.random_dist}", suffix=lambda s: [],
                              control=True),
        "trajectory": adaptive_entry(TrajectoryPGD, TrajectoryConfig),
        "lookahead": adaptive_entry(LookaheadPGD, LookaheadConfig),
    }
    for name, entry in entries.items():
        ATTACKS.register(name, entry)



register_builtin()
