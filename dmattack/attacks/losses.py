"""Attack losses for the reverse chain (docs/method.md §6, §11).

A loss maps a perturbed state to one value per sample, (B,); the attacks ascend it. ``x_adv``
and ``x_t`` are (B, …) states in model space and ``t`` (B,) are indices into the diffusion the
sampler walks. Two forms: a :class:`StepLoss` (``reference(x_t, t)`` computed once per attacked
step, then ``loss(x_adv, t, ref)`` per iteration), or a plain ``loss_fn(x_adv, x_t, t)``.

The built-in losses compare one prediction of the network at the perturbed and the clean state,
‖f(x') − f(x_t)‖² with the per-sample mean over dimensions (docs/method.md §1):

* ``mean``: f = μ_θ, the reverse-step mean (the paper's J_att, model-space units). Weak on
  long chains: μ_θ(x') − μ_θ(x_t) = (1/√α_t)[(x' − x_t) − β_t/√(1−ᾱ_t) (ε_θ(x') − ε_θ(x_t))],
  and ∂ε_θ/∂x can grow like 1/√(1−ᾱ_t), so against the identity term the network enters with a
  weight of about β_t/(1−ᾱ_t) (docs/method.md §6.1): 1 at the last step, ≈ 0.15 at t = 10,
  median ≈ 0.013 on the 1000-step linear chain, 0.25 / 0.44 on 50 / 25 respaced steps. On the
  long chain ∂μ_θ/∂x ≈ (1/√α_t) I and the loss is dominated by ‖x' − x_t‖²: its gradient at a
  random start x_t + u points along u, the FGSM step is ≈ the sign of the random start (99.9%
  of coordinates in docs/method.md §11), i.e. a model-free random-sign step, and PGD is no
  stronger than FGSM. On short respaced chains the network matters more.
* ``eps``: f = ε_θ (noise units); it sees the network only, so it is the strongest of the three.
* ``x0``: f = x̂_0 = (x − √(1−ᾱ_t) ε_θ)/√ᾱ_t (model space); the network term is weighted
  √(1−ᾱ_t) against the identity term, so it matters at high noise and fades at low noise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

from ..core.errors import ConfigError
from ..diffusion.gaussian import EpsModel, GaussianDiffusion

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(x_adv, x_t, t) -> (B,)`` per-sample attack loss (higher = stronger attack)."""

LOSSES = ("mean", "eps", "x0")


class StepLoss(ABC):
    """A per-sample attack loss whose clean reference is computed once per attacked step.

    The attacks call ``ref = loss.reference(x_t, t)`` once per step (under ``no_grad``), then
    ``loss(x_adv, t, ref) -> (B,)`` per FGSM step / PGD iteration with gradients enabled on
    ``x_adv``. Subclass it and implement :meth:`__call__` (and :meth:`reference` for anything
    that depends on the clean state only; the default reference is ``x_t`` itself).
    """

    def reference(self, x_t: torch.Tensor, t: torch.Tensor) -> Any:
        """What the loss compares against, computed once per step (default: ``x_t``)."""
        return x_t

    @abstractmethod
    def __call__(self, x_adv: torch.Tensor, t: torch.Tensor, ref: Any) -> torch.Tensor:
        """Per-sample loss (B,) of the perturbed state ``x_adv`` (B, …)."""

    def evaluate(self, x_adv: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                 ) -> torch.Tensor:
        """The loss with a freshly computed reference: ``self(x_adv, t, reference(x_t, t))``."""
        with torch.no_grad():
            ref = self.reference(x_t, t)
        return self(x_adv, t, ref)

    def __repr__(self) -> str:
        return type(self).__name__


class PredictionGap(StepLoss):
    """Built-in loss ‖f(x_adv) − f(x_t)‖² (per-sample mean over dims) with f named by ``target``
    (``mean`` = μ_θ, ``eps`` = ε_θ, ``x0`` = x̂_0; see the module docstring); the reference is
    f(x_t)."""

    def __init__(self, target: str, model: EpsModel, diffusion: GaussianDiffusion) -> None:
        if target not in LOSSES:
            raise ConfigError(f"unknown attack loss {target!r}; allowed: {', '.join(LOSSES)}",
                              field="loss")
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
        """The clean term f(x_t, t)."""
        return self.predict(x_t, t)

    def __call__(self, x_adv: torch.Tensor, t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Per-sample mean of (f(x_adv) − ref)², shape (B,)."""
        return (self.predict(x_adv, t) - ref).flatten(1).pow(2).mean(1)

    def __repr__(self) -> str:
        return self.target


class _PlainLoss(StepLoss):
    """A plain ``loss_fn(x_adv, x_t, t)`` as a StepLoss (its reference is ``x_t``)."""

    def __init__(self, fn: LossFn) -> None:
        self.fn = fn

    def __call__(self, x_adv: torch.Tensor, t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return self.fn(x_adv, ref, t)


def make_loss(loss: str | LossFn | StepLoss, model: EpsModel, diffusion: GaussianDiffusion
              ) -> StepLoss:
    """The loss named ``loss`` (one of :data:`LOSSES`), a :class:`StepLoss` as is, or a plain
    callable ``loss_fn(x_adv, x_t, t)`` wrapped as one."""
    if isinstance(loss, StepLoss):
        return loss
    if callable(loss):
        return _PlainLoss(loss)
    return PredictionGap(loss, model, diffusion)
