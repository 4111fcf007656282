"""Attacks: training-time perturbations (METHOD §3) and reverse-chain attacks (METHOD §6)."""

from .chain import ChainAttack, ChainFGSM, ChainPGD, ChainRandom
from .losses import LOSSES, LossFn, PredictionGap, make_loss
from .perturbation import RayConfig, fgsm_perturbation, random_perturbation, ray
from .schedule import METHODS, WINDOWS, AttackSpec, attacked_steps, make_hook_factory

__all__ = [
    "ChainAttack", "ChainFGSM", "ChainPGD", "ChainRandom",
    "LOSSES", "LossFn", "PredictionGap", "make_loss",
    "RayConfig", "fgsm_perturbation", "random_perturbation", "ray",
    "METHODS", "WINDOWS", "AttackSpec", "attacked_steps", "make_hook_factory",
]
