"""The attacks on a purified classifier f(P(x)), all stock torchattacks 3.5.1 (ℓ∞, [0, 1] units).

* ``pgd-eot``: ``torchattacks.EOTPGD`` through the exact, checkpointed gradient of P (the
  adaptive attack of Lee & Kim, ICCV 2023; PGD-200 × EOT-20 in their protocol).
* ``bpda-eot``: the same EOTPGD with ∂P/∂x replaced by the identity (Athalye et al. 2018);
  known to overestimate a purifier's robustness.
* ``autoattack-rand``: ``torchattacks.AutoAttack(version="rand")``: APGD-CE then APGD-DLR, each
  with EOT, on the exact gradient. Its two APGD runs get ``iterations`` steps and ``eot`` EOT
  draws (torchattacks' own defaults are 10 and 20; Croce & Hein use 100 and 20).

Each EOT iteration calls the model once, and the purifier draws fresh noise on every call, so
the gradient is averaged over purifications. For a deterministic model (no purifier, t* = 0 or
a fixed-seed purifier) every EOT draw is the same, so one is used.
"""

from __future__ import annotations

import torchattacks

from ..errors import ConfigError
from .classifier import PurifiedClassifier

ATTACKS = ("pgd-eot", "bpda-eot", "autoattack-rand")


def default_step_size(eps: float) -> float:
    """PGD's step α when none is given: ε/4 (2/255 at ε = 8/255)."""
    return eps / 4


def build_attack(name: str, model: PurifiedClassifier, eps: float, iterations: int, eot: int,
                 num_classes: int, step_size: float | None = None, seed: int = 0
                 ) -> torchattacks.Attack:
    """A torchattacks attack ``name`` (one of :data:`ATTACKS`) on ``model``.

    ``model``'s purifier should use ``gradient="full"``; ``bpda-eot`` switches a copy of it to
    BPDA. ``seed`` fixes AutoAttack's random starts (PGD's come from torch's global generator).
    """
    if name not in ATTACKS:
        raise ConfigError(f"attack {name!r} is unknown; allowed: {', '.join(ATTACKS)}",
                          field="attacks")
    eot = 1 if model.deterministic else eot
    alpha = default_step_size(eps) if step_size is None else step_size
    if name == "bpda-eot" and model.purifier is not None:
        model = PurifiedClassifier(model.purifier.replace(gradient="bpda"), model.classifier)
    if name in ("pgd-eot", "bpda-eot"):
        return torchattacks.EOTPGD(model, eps=eps, alpha=alpha, steps=iterations, eot_iter=eot,
                                   random_start=True)
    attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="rand",
                                     n_classes=num_classes, seed=seed)
    for apgd in attack._autoattack.attacks:  # APGD-CE and APGD-DLR
        apgd.steps, apgd.eot_iter = iterations, eot
    return attack
