"""Diffusion purification attacked with torchattacks (docs/method.md §13).

``Purifier`` (x ∈ [0, 1] → noise to t* → reverse chain → [0, 1]), ``PurifiedClassifier``
(f(P(x)), a model every stock torchattacks attack accepts), the attack set and
``run_purification`` (clean and robust accuracy per purifier × t* × attack × eval mode).
"""

from .attacks import ATTACKS, build_attack
from .classifier import PurifiedClassifier, load_classifier, load_labeled_data
from .evaluate import EvalMode, PurifyConfig, run_purification
from .purifier import GRADIENTS, Purifier, forward_steps, load_model

__all__ = ["ATTACKS", "GRADIENTS", "EvalMode", "PurifiedClassifier", "Purifier",
           "PurifyConfig", "build_attack", "forward_steps", "load_classifier",
           "load_labeled_data", "load_model", "run_purification"]
