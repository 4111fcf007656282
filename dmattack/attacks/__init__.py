"""Attacks: training-time perturbations (docs/method.md §3) and reverse-chain attacks
(docs/method.md §6).

Reverse-chain attacks are registered in :data:`dmattack.core.registry.ATTACKS` (the per-step
``fgsm``, ``pgd``, ``random`` and the whole-chain ``trajectory``, ``lookahead``
(docs/method.md §12), registered by :mod:`~dmattack.attacks.builtin`, plus plugins); each
entry (:class:`AttackEntry`) owns a config dataclass of its options. :class:`AttackSpec` names
one with its settings, and :class:`AttackPlan` runs a spec, a user's per-step attack factory or
a whole-chain attack through :func:`dmattack.evaluation.attack_eval.run_attack` / ``run_curve``.
"""

from ..core.text import format_number
from ..diffusion.perturbation import RayConfig, fgsm_perturbation, random_perturbation, ray
from . import builtin  # noqa: F401  (registers the built-in attacks)
from .base import PerStepFactory, WholeChainAttack
from .chain import ChainAttack, ChainFGSM, ChainPGD, ChainRandom
from .configs import FGSMConfig, LookaheadConfig, PGDConfig, RandomConfig, TrajectoryConfig
from .distances import DISTANCES, Distance
from .lookahead import LookaheadPGD
from .losses import LOSSES, LossFn, PredictionGap, StepLoss, make_loss
from .plan import AttackPlan, make_hook_factory
from .schedule import WINDOWS, AttackEntry, AttackSpec, NoOptions, attacked_steps
from .trajectory import TrajectoryPGD

__all__ = [
    "AttackEntry", "NoOptions", "PerStepFactory", "WholeChainAttack", "format_number",
    "ChainAttack", "ChainFGSM", "ChainPGD", "ChainRandom",
    "FGSMConfig", "PGDConfig", "RandomConfig",
    "TrajectoryPGD", "TrajectoryConfig", "LookaheadPGD", "LookaheadConfig", "DISTANCES",
    "Distance",
    "LOSSES", "LossFn", "PredictionGap", "StepLoss", "make_loss",
    "RayConfig", "fgsm_perturbation", "random_perturbation", "ray",
    "AttackPlan", "make_hook_factory", "WINDOWS", "AttackSpec", "attacked_steps",
]
