"""Diffusion purification attacked with torchattacks (docs/method.md §13).

``Purifier`` (x ∈ [0, 1] → noise to t* → reverse chain → [0, 1]), ``PurifiedClassifier``
(f(P(x)), a model every stock torchattacks attack accepts), the attack set and
``run_purification`` (clean and robust accuracy per purifier × t* × attack over repeated
evaluation draws); the labelled data and classifiers it reads are registry entries
(``LabelledSet``, ``ClassifierEntry``; :mod:`dmattack.core.registry`).
"""

from .attacks import (
           PURIFY_ATTACKS,
           AttackSettings,
           PurifyAttackSpec,
           parse_attack,
           pgd_eot,
           run_purify_attack,
)
from .classifier import ClassifierEntry, PurifiedClassifier, load_classifier
from .defended import NonFiniteError
from .evaluate import PurifyConfig, run_purification
from .labelled import LabelledSet, load_labeled_data
from .purifier import GRADIENTS, Purifier, forward_steps, load_model

__all__ = ["GRADIENTS", "PURIFY_ATTACKS", "AttackSettings", "ClassifierEntry", "LabelledSet",
           "PurifyAttackSpec", "NonFiniteError", "PurifiedClassifier", "Purifier", "PurifyConfig",
           "forward_steps", "load_classifier", "load_labeled_data", "load_model", "parse_attack",
           "pgd_eot", "run_purify_attack", "run_purification"]
