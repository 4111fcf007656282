"""APGD (Croce & Hein 2020) for ℓ∞ with its EOT draws stacked into the batch (docs/method.md
§13): the algorithm of torchattacks 3.5.1's ``APGD.attack_single_run`` (itself the reference
auto-attack code), step for step: the momentum step, the step-size halving on oscillation or
no improvement at the checkpoints, the highest-loss point and the last misclassified point,
with the loss and prediction of each iteration read off the *last* EOT draw as there. What
changes: the ``eot`` noisy forward/backward passes of an iteration are one batched call
(:func:`dmattack.purification.draws.eot_logits`, the same noise as the loop), the random start
is passed in (so a caller can attack a subset of a batch with the starts the whole batch
would have had: every image's run is independent of the others'), and the purification noise
comes from per-image generators.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core import progress
from .draws import eot_logits

RHO = 0.75  # torchattacks' thr_decr: oscillation threshold of the step-size rule


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, classes), (B,) → (B,) the DLR loss as torchattacks computes it."""
    srt, ind = logits.sort(dim=1)
    top_is_y = (ind[:, -1] == y).float()
    true = logits[torch.arange(len(y)), y]
    return -(true - srt[:, -2] * top_is_y - srt[:, -1] * (1.0 - top_is_y)) / (
        srt[:, -1] - srt[:, -3] + 1e-12)


def _loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none") if loss == "ce" else dlr_loss(logits, y)


def apgd_gradient(model, x_adv: torch.Tensor, y: torch.Tensor,
                  gens: Sequence[torch.Generator], eot: int, loss: str
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean over ``eot`` draws of ∇ loss (B, …), the last draw's logits (B, classes) and
    per-image loss (B,))."""
    x_adv = x_adv.detach().requires_grad_(True)
    grad = torch.zeros_like(x_adv)
    with torch.enable_grad():
        for logits in eot_logits(model, x_adv, gens, eot):
            per = _loss(logits.flatten(0, 1), y.repeat(len(logits)), loss)
            grad += torch.autograd.grad(per.sum(), x_adv)[0].detach()
    return grad / eot, logits[-1].detach(), per.view(len(logits), -1)[-1].detach()


def _momentum_step(x: torch.Tensor, x_adv: torch.Tensor, x_old: torch.Tensor,
                   grad: torch.Tensor, step: torch.Tensor, eps: float, a: float
                   ) -> torch.Tensor:
    """APGD's ℓ∞ step: a signed-gradient step, projected, then momentum ``a``, projected."""
    z = torch.clamp(torch.min(torch.max(x_adv + step * torch.sign(grad), x - eps), x + eps),
                    0.0, 1.0)
    return torch.clamp(torch.min(torch.max(x_adv + (z - x_adv) * a + (x_adv - x_old) * (1 - a),
                                           x - eps), x + eps), 0.0, 1.0)


def apgd(model, x: torch.Tensor, y: torch.Tensor, gens: Sequence[torch.Generator],
         eps: float, steps: int, eot: int, loss: str, start: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run: ``(x_best (highest last-draw loss), x_best_adv (last point the last draw
    misclassified, else the start))``, both (B, …) in the ε-ball ∩ [0, 1]. ``start`` (B, …)
    uniform in [−1, 1) (torchattacks: ``2·rand − 1``), scaled by its per-image max."""
    steps_2, steps_min, size_decr = (max(int(f * steps), 1) for f in (0.22, 0.06, 0.03))
    scale = start.reshape(len(start), -1).abs().max(dim=1, keepdim=True)[0]
    x_adv = (x + eps * torch.ones(len(x), 1, 1, 1, device=x.device) * start
             / scale.reshape(-1, 1, 1, 1)).clamp(0.0, 1.0)
    x_best, x_best_adv = x_adv.clone(), x_adv.clone()
    loss_steps = torch.zeros(steps, len(x))
    grad, logits, loss_best = apgd_gradient(model, x_adv, y, gens, eot, loss)
    grad_best = grad.clone()
    step = 2.0 * eps * torch.ones(len(x), 1, 1, 1, device=x.device)
    x_old, k, counter = x_adv.clone(), steps_2, 0
    last_check, reduced = loss_best.clone(), np.ones(len(x), dtype=bool)
    for i in range(steps):
        progress.inner(i + 1, steps, f"APGD-{loss.upper()} iteration")
        with torch.no_grad():
            x_adv, x_old = _momentum_step(x, x_adv, x_old, grad, step, eps,
                                          0.75 if i > 0 else 1.0), x_adv
        grad, logits, now = apgd_gradient(model, x_adv, y, gens, eot, loss)
        fooled = logits.argmax(1) != y
        x_best_adv[fooled] = x_adv[fooled]
        loss_steps[i] = now.cpu()
        better = now > loss_best
        x_best[better], grad_best[better], loss_best[better] = (
            x_adv[better], grad[better], now[better])
        counter += 1
        if counter == k:
            cut = _oscillating(loss_steps.numpy(), i, k)
            cut = cut | (~reduced & (last_check.cpu().numpy() >= loss_best.cpu().numpy()))
            reduced, last_check = cut.copy(), loss_best.clone()
            if cut.any():
                idx = torch.from_numpy(np.where(cut)[0]).to(x.device)
                step[idx] /= 2.0
                x_adv[idx], grad[idx] = x_best[idx].clone(), grad_best[idx].clone()
            counter, k = 0, max(k - size_decr, steps_min)
    return x_best.detach(), x_best_adv.detach()


def _oscillating(losses: np.ndarray, j: int, k: int) -> np.ndarray:
    """(steps, B) per-iteration losses → (B,) whether the loss rose in at most RHO·k of the
    last k iterations (torchattacks' ``check_oscillation``)."""
    t = np.zeros(losses.shape[1])
    for c in range(k):
        t += losses[j - c] > losses[j - c - 1]
    return t <= k * RHO * np.ones(t.shape)
