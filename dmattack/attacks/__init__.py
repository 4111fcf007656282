"""Attacks: training-time perturbations (docs/method.md §3) and reverse-chain attacks
(docs/method.md §6).

Reverse-chain attacks are registered in :data:`dmattack.registry.ATTACKS` (the per-step
``fgsm``, ``pgd``, ``random`` and the whole-chain ``trajectory``, ``lookahead``
(docs/method.md §12), plus plugins); :class:`AttackSpec` names one with its settings, and
:class:`AttackPlan` runs a spec, a user's per-step attack factory or a whole-chain attack
through :func:`dmattack.attack_eval.run_attack` / ``run_curve``.
"""

from ..perturbation import RayConfig, fgsm_perturbation, random_perturbation, ray
from .base import AttackEntry, PerStepFactory, WholeChainAttack, format_number
from .chain import ChainAttack, ChainFGSM, ChainPGD, ChainRandom
from .distances import DISTANCES, Distance
from .lookahead import LookaheadConfig, LookaheadPGD
from .losses import LOSSES, LossFn, PredictionGap, StepLoss, make_loss
from .plan import AttackPlan, make_hook_factory
from .schedule import PROJECTS, WINDOWS, AttackSpec, attacked_steps
from .trajectory import TrajectoryConfig, TrajectoryPGD

__all__ = [
    "AttackEntry", "PerStepFactory", "WholeChainAttack", "format_number",
    "ChainAttack", "ChainFGSM", "ChainPGD", "ChainRandom",
    "TrajectoryPGD", "TrajectoryConfig", "LookaheadPGD", "LookaheadConfig", "DISTANCES",
    "Distance",
    "LOSSES", "LossFn", "PredictionGap", "StepLoss", "make_loss",
    "RayConfig", "fgsm_perturbation", "random_perturbation", "ray",
    "AttackPlan", "make_hook_factory", "PROJECTS", "WINDOWS", "AttackSpec", "attacked_steps",
]
