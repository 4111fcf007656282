"""The attacks on a purified classifier f(P(x)) (ℓ∞, [0, 1] units; docs/method.md §13).

* ``pgd-eot``: PGD with EOT through the exact, checkpointed gradient of P (the adaptive attack
  of Lee & Kim, ICCV 2023; PGD-200 × EOT-20 in their protocol): a random start in the ε-ball,
  then per iteration x ← Π(x + α·sign(mean over EOT draws of ∇ loss)). Loss ``ce`` (cross
  entropy) or ``margin`` (the CW margin max_{j≠y} z_j − z_y). Every random number (start and
  purification noise) comes from per-image generators, so an image's adversarial example does
  not depend on the batch it was attacked in.
* ``bpda-eot``: the same with ∂P/∂x replaced by the identity (Athalye et al. 2018); known to
  overestimate a purifier's robustness.
* ``autoattack-rand``: AutoAttack's setting for randomised defences (Croce & Hein 2020): APGD-CE
  and APGD-DLR (:mod:`~dmattack.purification.apgd`, torchattacks 3.5.1's algorithm with the EOT
  draws stacked), 100 iterations with EOT-20 each; APGD-DLR runs only on images no APGD-CE
  candidate fooled on every selection draw (elsewhere it cannot change the choice). The lighter
  ``autoattack-rand-NxM`` (N iterations, EOT-M) is labelled so. Success is decided over several
  noisy forward passes (the selection draws below), never by a single one: stock AutoAttack
  keeps the clean image of every point whose one noisy forward pass happened to be wrong.

Restarts and candidates: every restart of PGD (and each APGD run's highest-loss and last
misclassifying point) is a candidate; per image the candidate that fools the most *selection*
draws (purifications seeded on their own stream, separate from the evaluation draws) is kept.
A trace of the success rate (fraction of EOT draws misclassified, averaged over images) per PGD
iteration gives a ``converged`` flag: the rise over the last fifth of the iterations is at
most :data:`CONVERGENCE_TOL`.

Speed: the EOT draws of an iteration and the selection draws of a candidate are stacked into
the batch dimension, one purifier call instead of a loop, with bit for bit the loop's noise
(:mod:`dmattack.purification.draws`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..core import progress
from ..core.errors import ConfigError
from ..core.seeding import derive_seed, rand_per_sample
from .apgd import apgd
from .draws import eot_logits, seeded_logits

PURIFY_ATTACKS = ("pgd-eot", "bpda-eot", "autoattack-rand")
PURIFY_LOSSES = ("ce", "margin")
AA_STANDARD = (100, 20)
"""AutoAttack-rand's standard APGD iterations and EOT draws (Croce & Hein 2020)."""
CONVERGENCE_TOL = 0.02
"""Largest rise of the PGD success rate over the last fifth of the iterations that still
counts as converged."""
ATTACK_STREAM = 1302  # seed purpose of the attack's own randomness (start, EOT noise)
SELECT_STREAM = 1303  # seed purpose of the selection draws (never the evaluation draws)


class Stochastic(Protocol):
    """A classifier ``model(x, generators) -> (B, classes)`` logits with ``deterministic``."""

    deterministic: bool

    def __call__(self, x: torch.Tensor, generators: Sequence[torch.Generator] | None = None
                 ) -> torch.Tensor: ...


@dataclass(frozen=True)
class PurifyAttackSpec:
    """One attack of a purify run: ``name`` (one of :data:`PURIFY_ATTACKS`), iterations, EOT
    draws."""

    name: str
    iterations: int
    eot: int

    @property
    def label(self) -> str:
        """Row label: ``pgd-eot``, ``bpda-eot`` or ``autoattack-rand-<iterations>x<eot>``."""
        if self.name == "autoattack-rand":
            return f"autoattack-rand-{self.iterations}x{self.eot}"
        return self.name

    @property
    def standard(self) -> bool:
        """False for an AutoAttack lighter than the standard 100 iterations × EOT-20."""
        return self.name != "autoattack-rand" or (self.iterations, self.eot) == AA_STANDARD


def parse_attack(text: str, iterations: int, eot: int) -> PurifyAttackSpec:
    """``pgd-eot`` / ``bpda-eot`` (with ``iterations`` and ``eot``), ``autoattack-rand`` (the
    standard 100 × 20) or ``autoattack-rand-NxM``. Raises :class:`ConfigError`."""
    name = text.strip()
    if name in ("pgd-eot", "bpda-eot"):
        return PurifyAttackSpec(name, iterations, eot)
    if name == "autoattack-rand":
        return PurifyAttackSpec(name, *AA_STANDARD)
    m = re.fullmatch(r"autoattack-rand-(\d+)x(\d+)", name)
    if m and int(m[1]) >= 1 and int(m[2]) >= 1:
        return PurifyAttackSpec("autoattack-rand", int(m[1]), int(m[2]))
    raise ConfigError(f"attacks (--method) entry {name!r} is unknown; allowed: pgd-eot, "
                      "bpda-eot, autoattack-rand (100 iterations × EOT-20) or "
                      "autoattack-rand-NxM (comma-separated)", field="attacks")


def default_step_size(eps: float) -> float:
    """PGD's step α when none is given: ε/4 (2/255 at ε = 8/255)."""
    return eps / 4


def attack_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """(B, classes) logits, (B,) labels → (B,) loss the attack ascends: ``ce`` or ``margin``
    (max_{j≠y} z_j − z_y, > 0 exactly when the image is misclassified)."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if loss != "margin":
        raise ConfigError(f"loss (--loss) = {loss!r} is invalid; allowed: "
                          f"{', '.join(PURIFY_LOSSES)}", field="loss")
    true = logits.gather(1, y[:, None])[:, 0]
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -math.inf)
    return others.amax(1) - true


def image_generators(seeds: Sequence[int], stream: int, key: int,
                     device: torch.device) -> list[torch.Generator]:
    """One generator per image, seeded ``derive_seed(image seed, stream, key)``."""
    return [torch.Generator(device).manual_seed(derive_seed(s, stream, key)) for s in seeds]


def _eot_gradient(model: Stochastic, x_adv: torch.Tensor, y: torch.Tensor,
                  gens: Sequence[torch.Generator], eot: int, loss: str
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over ``eot`` purifications of ∇ loss (B, …), fraction of them misclassified (B,)).
    The draws are stacked into the batch (:func:`~dmattack.purification.draws.eot_logits`:
    the noise of a loop over draws)."""
    x_adv = x_adv.detach().requires_grad_(True)
    grad, fooled = torch.zeros_like(x_adv), torch.zeros(len(x_adv))
    with torch.enable_grad():
        for logits in eot_logits(model, x_adv, gens, eot):  # (d, B, classes)
            per = attack_loss(logits.flatten(0, 1), y.repeat(len(logits)), loss)
            grad += torch.autograd.grad(per.sum(), x_adv)[0]
            fooled += (logits.detach().argmax(2) != y).float().sum(0).cpu()
    return grad / eot, fooled / eot


def pgd_eot(model: Stochastic, x: torch.Tensor, y: torch.Tensor,
            gens: Sequence[torch.Generator], eps: float, alpha: float, steps: int, eot: int,
            loss: str = "ce") -> tuple[torch.Tensor, list[float]]:
    """One PGD-EOT run from a random start: ``(x_adv (B, …) in [0, 1], trace)``; ``trace[k]``
    is the success rate (mean over images of the fraction of EOT draws misclassified) at
    iterate k = 0 (the start) … ``steps``. All randomness from ``gens`` (one per image)."""
    start = (2 * rand_per_sample(x.shape[1:], gens, x.device, x.dtype) - 1) * eps
    x_adv = (x + start).clamp(0, 1)
    trace = []
    for k in range(steps):
        progress.inner(k + 1, steps, "PGD-EOT iteration")
        grad, fooled = _eot_gradient(model, x_adv, y, gens, eot, loss)
        trace.append(float(fooled.mean()))
        x_adv = (x + (x_adv + alpha * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1).detach()
    with torch.no_grad():
        last = torch.cat([lg.argmax(2) != y for lg in eot_logits(model, x_adv, gens, eot)])
    trace.append(float(last.float().mean()))
    return x_adv, trace


def converged(trace: Sequence[float], tol: float = CONVERGENCE_TOL) -> bool | None:
    """True when the success rate rose by at most ``tol`` over the last fifth of the
    iterations (``trace`` as :func:`pgd_eot`'s); None for fewer than 2 iterations."""
    iterations = len(trace) - 1
    if iterations < 2:
        return None
    window = max(1, math.ceil(iterations / 5))
    return trace[-1] - trace[-1 - window] <= tol


def fooled_counts(evaluator: Stochastic, x: torch.Tensor, y: torch.Tensor,
                  seeds: Sequence[int], draws: int, stream: int = SELECT_STREAM
                  ) -> torch.Tensor:
    """(B,) how many of ``draws`` purifications (per-image seeds on ``stream``) misclassify
    each image (a deterministic evaluator is run once and its count scaled to ``draws``);
    the draws are stacked into few calls."""
    runs = 1 if evaluator.deterministic else draws
    gens = [image_generators(seeds, stream, j, x.device) for j in range(runs)]
    with torch.no_grad():
        wrong = seeded_logits(evaluator, x, gens).argmax(2) != y  # (runs, B)
    return wrong.long().sum(0).cpu() * (draws // runs)


def autoattack_candidates(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          gens: Sequence[torch.Generator], eps: float, iterations: int,
                          eot: int, seed: int, skip_dlr: Callable[[list[torch.Tensor]],
                                                                  torch.Tensor] | None = None
                          ) -> list[torch.Tensor]:
    """APGD-CE and APGD-DLR (:func:`~dmattack.purification.apgd.apgd`, torchattacks'
    algorithm) on the batch: for each, its highest-loss point and its last point that
    misclassified (4 candidates (B, …), all perturbed: never the clean image). Purification
    noise from ``gens``; the random starts from torch's global generator seeded ``seed``
    (drawn for the whole batch, as torchattacks draws them). ``skip_dlr(CE candidates)``:
    a (B,) mask of images APGD-DLR need not run on (their DLR candidates are CE's copies)."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        starts = [(2 * torch.rand(x.shape) - 1).to(x.device) for _ in range(2)]
    out = list(apgd(model, x, y, gens, eps, iterations, eot, "ce", starts[0]))
    skip = torch.zeros(len(x), dtype=torch.bool) if skip_dlr is None else skip_dlr(out)
    run = (~skip).nonzero()[:, 0].tolist()
    best, best_adv = out[0].clone(), out[1].clone()
    if run:
        idx = torch.tensor(run, device=x.device)
        b, a = apgd(model, x[idx], y[idx], [gens[i] for i in run], eps, iterations, eot,
                    "dlr", starts[1][idx])
        best[idx], best_adv[idx] = b, a
    return [*out, best, best_adv]


@dataclass(frozen=True)
class AttackSettings:
    """What every attack of a run shares: ε, step α (None: ε/4), PGD loss and restarts, and
    the number of selection draws that pick among candidates."""

    eps: float
    step_size: float | None = None
    loss: str = "ce"
    restarts: int = 1
    select_draws: int = 8


def run_purify_attack(spec: PurifyAttackSpec, attack_model: Stochastic, evaluator: Stochastic,
               x: torch.Tensor, y: torch.Tensor, seeds: Sequence[int],
               settings: AttackSettings, batch_seed: int = 0
               ) -> tuple[torch.Tensor, dict[str, Any]]:
    """``(x_adv (B, …) in [0, 1], info)`` for one batch. ``attack_model`` is what the attack
    differentiates (the defence or a surrogate; switched to BPDA for ``bpda-eot`` by the
    caller), ``evaluator`` the defence (no gradients) that judges candidates on selection
    draws. ``info``: per-restart ``traces``, ``converged`` (None for AutoAttack), and the
    ``chosen`` candidate and its ``fooled`` selection draws per image."""
    if settings.eps == 0:
        return x, {"traces": None, "converged": None, "chosen": None, "fooled": None}
    eot = 1 if attack_model.deterministic else spec.eot

    def judge(c: torch.Tensor) -> torch.Tensor:
        return fooled_counts(evaluator, c, y, seeds, settings.select_draws)

    traces: list[list[float]] | None = None
    if spec.name == "autoattack-rand":
        candidates, counts = _autoattack(spec, attack_model, x, y, seeds, settings, eot,
                                         batch_seed, judge)
    else:
        alpha = settings.step_size or default_step_size(settings.eps)
        candidates, traces = [], []
        for r in range(settings.restarts):
            gens = image_generators(seeds, ATTACK_STREAM, r, x.device)
            adv, trace = pgd_eot(attack_model, x, y, gens, settings.eps, alpha,
                                 spec.iterations, eot, settings.loss)
            candidates.append(adv)
            traces.append(trace)
        counts = torch.stack([judge(c) for c in candidates])  # (candidates, B)
    chosen = counts.argmax(0)  # the first candidate among ties
    x_adv = torch.stack(candidates)[chosen.to(x.device), torch.arange(len(x), device=x.device)]
    flags = None if traces is None else [converged(t) for t in traces]
    return x_adv.detach(), {
        "traces": traces,
        "converged": None if flags is None or None in flags else all(flags),
        "chosen": chosen.tolist(), "fooled": counts.max(0).values.tolist()}


def _autoattack(spec: PurifyAttackSpec, attack_model: Stochastic, x: torch.Tensor, y: torch.Tensor,
                seeds: Sequence[int], settings: AttackSettings, eot: int, batch_seed: int,
                judge: Callable[[torch.Tensor], torch.Tensor]
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """AutoAttack-rand's 4 candidates and their (4, B) selection counts. APGD-DLR runs only on
    images no APGD-CE candidate fooled on every selection draw: elsewhere a DLR candidate
    could at best tie, and ties go to the first (CE) candidate, so the choice is the same."""
    ce_counts: list[torch.Tensor] = []

    def skip(ce: list[torch.Tensor]) -> torch.Tensor:
        ce_counts.extend(judge(c) for c in ce)
        return torch.stack(ce_counts).max(0).values >= settings.select_draws

    gens = image_generators(seeds, ATTACK_STREAM, 0, x.device)
    candidates = autoattack_candidates(attack_model, x, y, gens, settings.eps,
                                       spec.iterations, eot, batch_seed % (1 << 31), skip)
    return candidates, torch.stack(ce_counts + [judge(c) for c in candidates[2:]])
