"""The two kinds of reverse-chain attack, and what a registered attack declares.

* **Per-step** (:class:`~dmattack.attacks.chain.ChainAttack`): perturbs one state x_t before a
  reverse step; the sampler calls it at every attacked step. It is built per batch by a
  :data:`PerStepFactory` ``factory(model, diffusion, generator=...) -> ChainAttack``; a
  ChainAttack subclass whose ``__init__`` takes ``(model, diffusion, ..., generator=None)`` is
  such a factory.
* **Whole-chain** (:class:`WholeChainAttack`): needs the whole reverse chain of a batch at once
  (e.g. perturbations of all attacked steps optimised jointly through the chain), so it samples
  the attacked chain itself.

Both run through :func:`dmattack.evaluation.attack_eval.run_attack` / ``run_curve`` with the same
paired
seeds, batching, sharding and resume (see :class:`dmattack.attacks.plan.AttackPlan`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..diffusion.gaussian import GaussianDiffusion
from .chain import ChainAttack, GeneratorArg

if TYPE_CHECKING:
    from ..diffusion.sampling import SamplerConfig

PerStepFactory = Callable[..., ChainAttack]
"""``factory(model, diffusion, generator=generator) -> ChainAttack``: builds the per-step attack
of one batch. ``diffusion`` is the one the sampler walks (respaced or not); ``generator`` is one
ATTACK-stream generator per sample of the batch (:mod:`dmattack.core.seeding`), to draw random
starts
from."""


@runtime_checkable
class WholeChainAttack(Protocol):
    """An attack that samples the attacked reverse chain of a whole batch itself.

    Implement ``label``, :meth:`settings` and :meth:`sample_attacked`; then pass the object to
    ``AttackPlan(attack, percent, window)`` (or register it, see
    :class:`~dmattack.attacks.schedule.AttackEntry`) and
    ``run_attack`` / ``run_curve`` give it the same per-sample seeds, batches, torchrun shards and
    resumable records as the per-step attacks. One object serves every percent of a curve: the
    attacked steps are passed in.

    Optional: ``validate(diffusion, sampler, shape)`` raising
    :class:`~dmattack.core.errors.ConfigError` for a run the attack cannot do; ``run_attack`` and
    ``run_curve`` call it before any sampling.
    """

    label: str
    """Short series name without window or percent, e.g. ``"trajectory-pgd20-pixel"``; used in
    file names and plot legends."""

    def settings(self) -> dict[str, Any]:
        """Every setting that determines the attacked samples (JSON-serialisable, full
        precision); recorded in results and part of a curve point's key."""
        ...

    def sample_attacked(
        self,
        model: nn.Module,
        diffusion: GaussianDiffusion,
        sampler: SamplerConfig,
        shape: Sequence[int],
        seeds: Sequence[int],
        steps: Sequence[int],
        device: torch.device | str,
    ) -> torch.Tensor:
        """The attacked final samples x_0 of one batch, (len(seeds), *shape) float32, model space.

        Args:
            model: the ε-model, ``eps = model(x, timesteps)``, in eval mode with parameters not
                requiring gradients. The call runs inside ``torch.no_grad()``: enable gradients
                yourself (``torch.enable_grad()``) where the attack needs them.
            diffusion: the diffusion the sampler walks (``SamplingChain(full, sampler).walk``):
                K = ``diffusion.num_timesteps`` reverse steps, indices K−1 … 0.
            sampler: ``name`` (``ddpm`` / ``respaced``: ``diffusion.p_sample``; ``ddim``:
                ``diffusion.ddim_step`` with ``sampler.eta``) and ``clip_denoised`` (already
                resolved to a bool, the clean run's setting).
            shape: per-sample shape, e.g. (1, 8, 8).
            seeds: one seed per sample of this batch.
            steps: sorted reverse-step numbers to attack (0 = the first step, at x_T, …, K−1),
                from ``attacked_steps(K, percent, window)``; never empty. Steps outside it must
                be the clean steps, and the last step (K−1, budget √β̃ = 0) is unattackable.
            device: where to compute.

        Paired randomness (so clean and attacked differ by the attack alone): draw x_T and the
        noise z of every step exactly as :func:`dmattack.diffusion.sampling.sample` does, from
        ``generators(seeds, CHAIN_NOISE, device)`` with ``randn_per_sample`` (x_T first, then one
        z per step before it is used, in step order), and draw the attack's own randomness from
        ``generators(seeds, ATTACK, device)``. Sample i must depend on ``seeds[i]`` only, not on
        the rest of the batch.
        """
        ...


def build_per_step(factory: PerStepFactory, model: nn.Module, diffusion: GaussianDiffusion,
                   generator: GeneratorArg) -> ChainAttack:
    """``factory(model, diffusion, generator=generator)``, checked to be a ChainAttack."""
    atk = factory(model, diffusion, generator=generator)
    if not isinstance(atk, ChainAttack):
        raise TypeError(f"attack factory {getattr(factory, '__name__', factory)!r} returned "
                        f"{type(atk).__name__}, not a ChainAttack")
    return atk
