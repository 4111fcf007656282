"""Attack losses for the reverse chain (METHOD §6, §11).

A loss maps a perturbed state to one value per sample: ``loss_fn(x_adv, x_t, t) -> (B,)``, where
``x_adv`` and ``x_t`` are (B, …) states in model space and ``t`` (B,) are indices into the
diffusion the sampler walks. The attacks ascend it.

The built-in losses compare one prediction of the network at the perturbed and the clean state,
‖f(x') − f(x_t)‖² with the per-sample mean over dimensions (METHOD §1):

* ``mean``: f = μ_θ, the reverse-step mean (METHOD's J_att, model-space units). Weak by
  construction: μ_θ(x') − μ_θ(x_t) = (1/√α_t)[(x' − x_t) − β_t/√(1−ᾱ_t) (ε_θ(x') − ε_θ(x_t))],
  and β_t/√(1−ᾱ_t) ≤ 0.02 for t ≥ 100, so ∂μ_θ/∂x ≈ (1/√α_t) I and the loss is dominated by
  ‖x' − x_t‖². Its gradient at a random start x_t + u points along u: the FGSM step is ≈ the
  sign of the random start (99.9% of coordinates in METHOD §11), i.e. a model-free random-sign
  step, and PGD is no stronger than FGSM.
* ``eps``: f = ε_θ (noise units); it sees the network only, so it is the strongest of the three.
* ``x0``: f = x̂_0 = (x − √(1−ᾱ_t) ε_θ)/√ᾱ_t (model space); the network term is weighted
  √(1−ᾱ_t) against the identity term, so it matters at high noise and fades at low noise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..diffusion import EpsModel, GaussianDiffusion

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(x_adv, x_t, t) -> (B,)`` per-sample attack loss (higher = stronger attack)."""

LOSSES = ("mean", "eps", "x0")


class PredictionGap:
    """Built-in loss ‖f(x_adv) − f(x_t)‖² (per-sample mean over dims) with f named by ``target``
    (``mean`` = μ_θ, ``eps`` = ε_θ, ``x0`` = x̂_0; see the module docstring).

    Called as a :data:`LossFn`, it recomputes the clean term; the attacks call
    :meth:`reference` once per step (under ``no_grad``) and then :meth:`gap` per iteration.
    """

    def __init__(self, target: str, model: EpsModel, diffusion: GaussianDiffusion) -> None:
        if target not in LOSSES:
            raise ValueError(f"unknown attack loss {target!r}; allowed: {', '.join(LOSSES)}")
        self.target = target
        self.model = model
        self.diffusion = diffusion

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """f(x, t), differentiable with respect to ``x``; same shape as ``x``."""
        d = self.diffusion
        if self.target == "mean":
            return d.p_mean(self.model, x, t)
        eps = d.predict_eps(self.model, x, t)
        return eps if self.target == "eps" else d.predict_x0(x, t, eps)

    def reference(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean term f(x_t, t), without gradient."""
        with torch.no_grad():
            return self.predict(x_t, t)

    def gap(self, x_adv: torch.Tensor, t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Per-sample mean of (f(x_adv) − ref)², shape (B,)."""
        return (self.predict(x_adv, t) - ref).flatten(1).pow(2).mean(1)

    def __call__(self, x_adv: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.gap(x_adv, t, self.reference(x_t, t))

    def __repr__(self) -> str:
        return self.target


def make_loss(
    loss: str | LossFn, model: EpsModel, diffusion: GaussianDiffusion
) -> PredictionGap | LossFn:
    """The loss named ``loss`` (one of :data:`LOSSES`), or ``loss`` itself if it is callable."""
    if callable(loss):
        return loss
    return PredictionGap(loss, model, diffusion)
