"""White-box attacks on one reverse step of a diffusion chain (docs/method.md §6),
torchattacks-style.

``x_adv = atk(x_t, t)`` perturbs the current state x_t (B, …), model space) before the reverse
step at indices ``t`` (B,) of the diffusion the sampler walks. The ℓ∞ budget is the chain's own
noise scale, ε_t = ``eps_scale``·σ_t with σ_t = √β̃_t (:meth:`GaussianDiffusion.attack_std`),
in model-space units; where ε_t = 0 (the last step) the input is returned unchanged.

Unlike classifier attacks there are no labels and no [0, 1] box: the state is unbounded, so
torchattacks' input checks, clamp and normalisation hooks are bypassed, and its classifier-only
surface (``get_logits``, ``MultiAttack``, targeted modes, normalisation, ``save``) raises a
TypeError saying what to use instead. What is kept: the model runs in eval mode during the
attack (see ``set_model_training_mode``) and every module's mode is restored afterwards;
``repr``; ``device``. The call enables gradients itself and freezes the parameters, so an attack
works inside a caller's ``torch.no_grad()`` (e.g. the sampling loop) and gradients flow to the
input only; parameters never receive ``.grad``.

Randomness (``generator``): None uses the global RNG, one ``torch.Generator`` draws the whole
batch, a list of per-sample generators draws row i from generator i only, so a sample's attack
does not depend on its batch (see :mod:`dmattack.core.seeding`).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import torch
from torch import nn
from torchattacks.attack import Attack

from ..core.errors import ConfigError
from ..core.seeding import rand_per_sample
from ..core.settings import is_number
from ..core.tensors import restored_modes
from ..diffusion.gaussian import GaussianDiffusion
from ..diffusion.sampling import frozen
from .configs import RANDOM_DISTS
from .losses import LossFn, StepLoss, make_loss

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None
# torchattacks' classifier-only state, meaningless for chain attacks: left out of repr.
_REPR_HIDDEN = ("model", "attack", "supported_mode", "attack_mode", "targeted",
                "normalization_used", "diffusion", "generator", "loss")


_CLASSIFIER_ONLY = ("a chain attack's model is an ε-model, eps = model(x_t, t), not a "
                    "classifier, so torchattacks' classifier API (get_logits, MultiAttack, "
                    "targeted modes, normalisation, save) does not apply; call the attack as "
                    "x_adv = atk(x_t, t), and compare several with "
                    "dmattack.evaluation.attack_eval.run_curve")


class _EpsModel(nn.Module):
    """The ε-model as a chain attack holds it: ``model(x, t)`` passes through; a call without
    ``t`` (torchattacks' classifier code, e.g. ``MultiAttack``) raises a clear TypeError."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.eps_model = model
        self.training = model.training

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, *args: object,
                **kwargs: object) -> torch.Tensor:
        if t is None:
            raise TypeError(_CLASSIFIER_ONLY)
        return self.eps_model(x, t, *args, **kwargs)

    @classmethod
    def of(cls, model: nn.Module) -> _EpsModel:
        """The one view of ``model`` (shared by its attacks, as torchattacks' wrappers expect);
        kept in the model's ``__dict__`` without registering it as a submodule."""
        view = model.__dict__.get("_dmattack_eps_view")
        if view is None:
            view = cls(model)
            object.__setattr__(model, "_dmattack_eps_view", view)
        return view


class ChainAttack(Attack, metaclass=ABCMeta):
    """Base class: budget, random draws, gradients, mode handling, settings and ``repr`` shared
    by the chain attacks. A subclass implements :meth:`perturb`; see docs/library.md.

    Args:
        name: attack name shown by ``repr`` and used as its label.
        model: the ε-model, ``eps = model(x, timesteps)`` (noise units); ``self.model(x, t)``
            calls it.
        diffusion: the :class:`GaussianDiffusion` the sampler walks (respaced or not).
        eps_scale: budget multiplier, ε_t = eps_scale·σ_t.
        generator: None, one generator, or one generator per sample.
    """

    def __init__(self, name: str, model: nn.Module, diffusion: GaussianDiffusion,
                 eps_scale: float = 1.0, generator: GeneratorArg = None) -> None:
        super().__init__(name, model)
        if not (is_number(eps_scale) and eps_scale >= 0):
            raise ConfigError(f"eps_scale = {eps_scale!r} is invalid; allowed: a finite "
                              "number >= 0", field="eps_scale")
        self.model = _EpsModel.of(model)
        self.diffusion = diffusion
        self.eps_scale = eps_scale
        self.generator = generator

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Attack states ``x_t`` (B, …) at indices ``t`` (B,); returns x_adv on ``self.device``.
        Gradients are enabled inside (also under a caller's ``torch.no_grad()``) and flow to
        the input only."""
        inner = self.model.eps_model
        with restored_modes(self.model):
            self._change_model_mode(inner.training)
            device = self.device or x_t.device
            with torch.enable_grad(), frozen(inner):
                return self.forward(x_t.detach().to(device), t.to(device))

    def settings(self) -> dict[str, Any]:
        """What the attack is run with (JSON-serialisable), recorded with its results: its
        public attributes, a callable loss by name. Override to record more or less."""
        out: dict[str, Any] = {}
        for k, v in vars(self).items():
            if k.startswith("_") or k in _REPR_HIDDEN or k in ("device", "model_name"):
                continue
            out[k] = _jsonable(v)
        if hasattr(self, "loss"):
            out["loss"] = _loss_name(self.loss)
        return out

    def get_logits(self, inputs: torch.Tensor, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(_CLASSIFIER_ONLY)

    def set_normalization_used(self, mean: object, std: object) -> NoReturn:
        raise TypeError(_CLASSIFIER_ONLY)

    def set_mode_targeted_by_function(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(_CLASSIFIER_ONLY)

    set_mode_targeted_random = set_mode_targeted_least_likely = set_mode_targeted_by_label = \
        set_mode_targeted_by_function

    def save(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(_CLASSIFIER_ONLY)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        budget = self.budget(x_t, t)
        if not (budget > 0).any():  # e.g. the last step (σ_0 = 0): nothing to compute
            return x_t
        x_adv = self.perturb(x_t, t, budget)
        return torch.where(budget > 0, x_adv, x_t).detach()

    @abstractmethod
    def perturb(self, x_t: torch.Tensor, t: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        """The attacked state for budget ε_t (B, 1, …); defined by each attack."""

    def budget(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε_t = eps_scale·√β̃_t per sample, shaped (B, 1, …) to broadcast against ``x_t``."""
        return self.eps_scale * self.diffusion.attack_std(t, x_t)

    def uniform(self, like: torch.Tensor) -> torch.Tensor:
        """U[0, 1) noise shaped like ``like``, drawn from ``self.generator``."""
        g = self.generator
        if g is None or isinstance(g, torch.Generator):
            return torch.rand(like.shape, generator=g, device=like.device, dtype=like.dtype)
        if len(g) != len(like):
            raise ValueError(f"got {len(g)} per-sample generators for a batch of {len(like)}")
        return rand_per_sample(like.shape[1:], g, like.device, like.dtype)

    def __repr__(self) -> str:
        info = {k: v for k, v in vars(self).items()
                if not k.startswith("_") and k not in _REPR_HIDDEN}
        if hasattr(self, "loss"):
            info["loss"] = _loss_name(self.loss)
        info["T"] = self.diffusion.num_timesteps
        g = self.generator
        info["generator"] = ("global" if g is None else "shared"
                             if isinstance(g, torch.Generator) else f"per-sample[{len(g)}]")
        return f"{self.attack}({', '.join(f'{k}={v}' for k, v in info.items())})"


def _loss_name(loss: object) -> str:
    return loss if isinstance(loss, str) else getattr(loss, "__name__", None) or repr(loss)


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return getattr(v, "__name__", None) or type(v).__name__


class _GradientChainAttack(ChainAttack):
    """A chain attack that ascends a loss (:mod:`dmattack.attacks.losses`) by its gradient."""

    def __init__(self, name: str, model: nn.Module, diffusion: GaussianDiffusion,
                 loss: str | LossFn | StepLoss, eps_scale: float, generator: GeneratorArg
                 ) -> None:
        super().__init__(name, model, diffusion, eps_scale, generator)
        self.loss = loss
        self._loss_fn = make_loss(loss, model, diffusion)

    def bound_loss(self, x_t: torch.Tensor, t: torch.Tensor
                   ) -> Callable[[torch.Tensor], torch.Tensor]:
        """``x_adv -> (B,)`` loss at this step; its clean reference is computed once."""
        fn = self._loss_fn
        with torch.no_grad():
            ref = fn.reference(x_t, t)
        return lambda x: fn(x, t, ref)

    @staticmethod
    def grad_sign(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
                  ) -> torch.Tensor:
        """sign(∇_x Σ_i loss(x)_i); gradients flow to ``x`` only."""
        return _GradientChainAttack.value_and_grad_sign(loss, x)[1]

    @staticmethod
    def value_and_grad_sign(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """loss(x) (B,), detached, and sign(∇_x Σ_i loss(x)_i)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            value = loss(x)
            (g,) = torch.autograd.grad(value.sum(), x)
        return value.detach(), g.sign()


class ChainFGSM(_GradientChainAttack):
    r"""FGSM with random start on one reverse step (the paper's Algorithm 2, docs/method.md §6.1).

    u ~ U(−ε_t, ε_t); g = ∇_{x'} J(x') at x' = x_t + u; x_adv = x_t + ε_t·sign(g).

    No projection by default (``project=False``; ``--project auto`` or ``off``): the random start
    only chooses where the gradient is evaluated, and the step of size ε_t from x_t lands on the
    surface of the ε_t-ball, so there is nothing to project; the paper's appendix A.3 projects
    in the iterative attack only (docs/method.md §6.1). ``project=True`` (``--project on``) is
    the usual FGSM-RS reading, which keeps the random start and projects:
    x_adv = x_t + clip(u + ε_t·sign(g), ±ε_t).
    With ``loss="mean"`` the gradient points along u (∂μ_θ/∂x ≈ (1/√α_t) I), so the step is
    ≈ ε_t·sign(u): no stronger than :class:`ChainRandom` (docs/method.md §11).

    Args:
        model: the ε-model. diffusion: the diffusion the sampler walks.
        loss: ``"mean"`` (the paper's J_att; weak, see :mod:`~dmattack.attacks.losses`),
            ``"eps"``, ``"x0"``, a :class:`~dmattack.attacks.losses.StepLoss` (clean reference
            computed once per step) or ``loss_fn(x_adv, x_t, t) -> (B,)``.
        eps_scale: ε_t = eps_scale·√β̃_t. project: see above. generator: see module docstring.

    Shape: x_t (B, …) model space, t (B,) long → x_adv like x_t.

    Examples::
        >>> atk = ChainFGSM(model, diffusion, loss="eps")
        >>> x_adv = atk(x_t, t)
    """

    def __init__(self, model: nn.Module, diffusion: GaussianDiffusion,
                 loss: str | LossFn | StepLoss = "mean", eps_scale: float = 1.0,
                 project: bool = False, generator: GeneratorArg = None) -> None:
        super().__init__("ChainFGSM", model, diffusion, loss, eps_scale, generator)
        self.project = bool(project)

    def perturb(self, x_t: torch.Tensor, t: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        u = (2 * self.uniform(x_t) - 1) * budget
        delta = budget * self.grad_sign(self.bound_loss(x_t, t), x_t + u)
        if self.project:
            delta = torch.clamp(u + delta, -budget, budget)
        return x_t + delta


class ChainPGD(_GradientChainAttack):
    r"""PGD with random start on one reverse step (the paper's Algorithm 3, docs/method.md §6.2;
    PGD-20 by default).

    δ ~ U(−ε_t, ε_t); ``steps`` times δ ← δ + α·sign(∇_δ J(x_t + δ)) with α = alpha_scale·ε_t,
    projected onto the ℓ∞ ball ‖δ‖∞ ≤ ε_t after every iteration (``project=True``, the default)
    or once at the end (``project="end"``, the paper's wording, docs/method.md §6.2). The last
    iterate is returned.

    ``restarts`` = R > 1 reruns the PGD from new random starts (the next draws of
    ``generator``; restart 0 is the run without restarts, bit for bit) and returns, per sample,
    the restart whose last iterate has the highest loss J. Progress (:meth:`pop_progress`),
    one entry per attacked step: the best J so far after each iterate, per restart and sample
    (the last iterate is scored with one more loss forward); the trace of a run is its mean over
    attacked steps and samples (docs/method.md §12 "convergence"). With ``project="end"`` the
    iterates before the last may lie outside the ball, and so may their scores.

    Args:
        model, diffusion, loss, eps_scale, generator: as :class:`ChainFGSM`.
        steps: iterations (20). alpha_scale: step size in units of ε_t (1/8 = 2.5/20, Madry).
        project: ``True`` (every iteration) or ``"end"``. restarts: PGD runs (>= 1).

    Shape: x_t (B, …) model space, t (B,) long → x_adv like x_t.

    Examples::
        >>> atk = ChainPGD(model, diffusion, loss="eps", steps=20)
        >>> x_adv = atk(x_t, t)
    """

    def __init__(self, model: nn.Module, diffusion: GaussianDiffusion,
                 loss: str | LossFn | StepLoss = "mean", eps_scale: float = 1.0, steps: int = 20,
                 alpha_scale: float = 1 / 8, project: bool | str = True,
                 generator: GeneratorArg = None, restarts: int = 1) -> None:
        super().__init__("ChainPGD", model, diffusion, loss, eps_scale, generator)
        if project is not True and project != "end":
            raise ConfigError(f"PGD project must be True (every iteration) or 'end', "
                              f"got {project!r}", field="project")
        if steps < 1 or alpha_scale <= 0:
            raise ConfigError(f"PGD needs steps >= 1 and alpha_scale > 0, got {steps}, "
                              f"{alpha_scale}")
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
            raise ConfigError(f"PGD restarts = {restarts!r} is invalid; allowed: an integer "
                              ">= 1", field="restarts")
        self.steps = steps
        self.alpha_scale = alpha_scale
        self.project = project
        self.restarts = restarts
        self._progress: list[torch.Tensor] = []

    def perturb(self, x_t: torch.Tensor, t: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        loss = self.bound_loss(x_t, t)
        chosen = chosen_value = None
        runs = []
        for _ in range(self.restarts):
            delta, value, so_far = self._run(loss, x_t, budget)
            runs.append(so_far)
            if chosen is None:
                chosen, chosen_value = delta, value
                continue
            better = value > chosen_value
            chosen_value[better] = value[better]
            chosen[better] = delta[better]
        self._progress.append(torch.stack(runs))
        return x_t + chosen

    def _run(self, loss: Callable[[torch.Tensor], torch.Tensor], x_t: torch.Tensor,
             budget: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One PGD run from a random start: the last δ (B, …), its loss (B,) and the best
        loss so far after each iterate (steps + 1, B)."""
        alpha = self.alpha_scale * budget
        delta = (2 * self.uniform(x_t) - 1) * budget
        so_far = []
        for _ in range(self.steps):
            value, sign = self.value_and_grad_sign(loss, x_t + delta)
            so_far.append(value if not so_far else torch.maximum(so_far[-1], value))
            delta = delta + alpha * sign
            if self.project is True:
                delta = torch.clamp(delta, -budget, budget)
        if self.project == "end":
            delta = torch.clamp(delta, -budget, budget)
        with torch.no_grad():
            last = loss(x_t + delta)
        so_far.append(torch.maximum(so_far[-1], last))
        return delta, last, torch.stack(so_far)

    def pop_progress(self) -> list[torch.Tensor]:
        """The progress of every attacked step since the last call, oldest first, and forget
        it: per call, (restarts, steps + 1, B) best loss so far after each iterate (0: the
        random start) of each restart (docs/method.md §12 "convergence")."""
        out, self._progress = self._progress, []
        return out


class ChainRandom(ChainAttack):
    """The model-free control at the same budget (no gradient).

    ``dist="sign"``: δ = ε_t·(random ±1 per coordinate), the step FGSM with the ``mean`` loss
    reduces to (docs/method.md §11); ``dist="uniform"``: δ ~ U(−ε_t, ε_t). x_adv = x_t + δ.

    Shape: x_t (B, …) model space, t (B,) long → x_adv like x_t.
    """

    def __init__(self, model: nn.Module, diffusion: GaussianDiffusion, dist: str = "sign",
                 eps_scale: float = 1.0, generator: GeneratorArg = None) -> None:
        super().__init__("ChainRandom", model, diffusion, eps_scale, generator)
        if dist not in RANDOM_DISTS:
            raise ConfigError(f"unknown random dist {dist!r}; allowed: "
                              f"{', '.join(RANDOM_DISTS)}", field="random_dist")
        self.dist = dist

    def perturb(self, x_t: torch.Tensor, t: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        u = self.uniform(x_t)
        unit = torch.where(u < 0.5, -1.0, 1.0).to(u.dtype) if self.dist == "sign" else 2 * u - 1
        return x_t + budget * unit
