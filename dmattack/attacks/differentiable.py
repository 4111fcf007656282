"""The reverse chain as a differentiable function of per-step perturbations (docs/method.md §12).

:class:`DifferentiableChain` runs the same reverse steps as
:func:`dmattack.diffusion.sampling.sample`
(ancestral ``ddpm``/``respaced`` or ``ddim``), from states and noise given explicitly, adding a
perturbation δ_k to the state before reverse step k. Gradients flow from the output to every δ_k
and to the start state; model parameters never receive gradients.

Memory: with ``checkpoint=True`` each reverse step is one ``torch.utils.checkpoint`` segment
(non-reentrant), so a backward pass through K steps holds the K step inputs (states and noise)
plus one step's network activations, at the price of one extra network forward per step during
the backward pass. ``checkpoint=False`` keeps every step's activations (faster on short chains).

:func:`draw_chain_noise` reproduces the per-sample draws of ``sample()`` exactly (x_T, then one
z per reverse step, all from the CHAIN_NOISE stream of each sample's seed), so a chain run with
no perturbation equals the clean sample bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as checkpoint_segment

from ..core.errors import ConfigError
from ..core.registry import SAMPLERS
from ..core.seeding import CHAIN_NOISE, generators, randn_per_sample
from ..core.tensors import eval_mode
from ..diffusion.gaussian import EpsModel, GaussianDiffusion
from ..diffusion.sampling import SamplerConfig, SamplingChain, frozen


@dataclass
class ChainNoise:
    """The random draws of one batch's reverse chain: ``x_T`` (B, *shape) and ``z[k]``
    (B, *shape), the noise of reverse step k (k = 0 at x_T), standard normal."""

    x_T: torch.Tensor
    z: list[torch.Tensor]


def draw_chain_noise(shape: Sequence[int], seeds: Sequence[int], num_steps: int,
                     device: torch.device | str = "cpu") -> ChainNoise:
    """x_T and the ``num_steps`` per-step noises of ``sample()`` for ``seeds``, in its order."""
    gens = generators(seeds, CHAIN_NOISE, device)
    x_T = randn_per_sample(shape, gens, device)
    return ChainNoise(x_T, [randn_per_sample(shape, gens, device) for _ in range(num_steps)])


@contextmanager
def attack_mode(model: EpsModel) -> Iterator[None]:
    """Inside the block an ``nn.Module`` model is in eval mode with frozen parameters (no
    dropout, gradients to inputs only); every module's mode is restored afterwards."""
    with eval_mode(model) if isinstance(model, nn.Module) else nullcontext(), frozen(model):
        yield


class DifferentiableChain:
    """The reverse chain of ``sampler`` on ``diffusion`` as a differentiable function.

    Args:
        model: the ε-model, ``eps = model(x, timesteps)`` (noise units).
        diffusion: a :class:`~dmattack.diffusion.sampling.SamplingChain`, or the model's (full)
            diffusion with ``sampler`` resolved against it (:meth:`SamplingChain.of`).
        sampler: a registered sampler whose entry is ``differentiable`` (``ddpm``,
            ``respaced``, ``ddim``); any other raises ConfigError. None: the chain's own.
        checkpoint: checkpoint every reverse step (memory K states + one step's activations).

    Steps are counted like ``sample()``'s hooks: step k = 0 … K−1 is the reverse step from
    diffusion index K−1−k; the state before step 0 is x_T, the output of step K−1 is x_0.
    ``chain`` is the resolved chain, ``diffusion`` the diffusion it walks.
    """

    def __init__(self, model: EpsModel, diffusion: GaussianDiffusion | SamplingChain,
                 sampler: SamplerConfig | None = None, checkpoint: bool = True) -> None:
        self.chain = SamplingChain.of(diffusion, sampler)
        check_differentiable(self.chain.sampler)
        self.model = model
        self.sampler = self.chain.sampler
        self.diffusion = self.chain.walk
        self.num_steps = self.chain.num_steps
        self.checkpoint = checkpoint
        self._resolved: dict[tuple[int, ...], SamplingChain] = {}  # per data shape

    def index(self, step: int, batch: int, device: torch.device) -> torch.Tensor:
        """Diffusion indices (B,) of reverse step ``step``."""
        return self.chain.index(step, batch, device)

    def step(self, x: torch.Tensor, step: int, noise: torch.Tensor) -> torch.Tensor:
        """One reverse step from state ``x`` (B, *shape) with noise ``noise``, as ``sample()``."""
        t = self.index(step, len(x), x.device)
        shape = tuple(x.shape[1:])
        if shape not in self._resolved:  # clip unset: by the data, as sample() resolves it
            self._resolved[shape] = self.chain.for_shape(shape)
        return self._resolved[shape].step(self.model, x, t, noise)

    def _step(self, x: torch.Tensor, step: int, noise: torch.Tensor) -> torch.Tensor:
        if self.checkpoint and torch.is_grad_enabled() and x.requires_grad:
            # the step draws no random numbers (its noise is an input) and the model runs in
            # eval mode: the recomputation is the same deterministic computation, so it needs
            # neither RNG bookkeeping nor the per-tensor metadata check
            return checkpoint_segment(self.step, x, step, noise, use_reentrant=False,
                                      preserve_rng_state=False, determinism_check="none")
        return self.step(x, step, noise)

    def run(self, x: torch.Tensor, noise: Sequence[torch.Tensor], start: int = 0,
            stop: int | None = None, deltas: Mapping[int, torch.Tensor] | None = None
            ) -> torch.Tensor:
        """The state after steps ``start … stop−1`` from state ``x`` before step ``start``.

        ``noise[k − start]`` drives step k; ``deltas[k]`` (B, *shape), where given, is added to
        the state before step k. Differentiable with respect to ``x`` and every δ_k.
        """
        stop = self.num_steps if stop is None else stop
        if len(noise) < stop - start:
            raise ValueError(f"need {stop - start} noise tensors, got {len(noise)}")
        for k in range(start, stop):
            if deltas is not None and k in deltas:
                x = x + deltas[k]
            x = self._step(x, k, noise[k - start])
        return x

    def predict_x0(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """x̂_0 = (x − √(1−ᾱ) ε_θ(x))/√ᾱ at the index of reverse step ``step`` (before it runs);
        ``step == num_steps`` means x is already the chain's output x_0, returned as is."""
        if step == self.num_steps:
            return x
        t = self.index(step, len(x), x.device)
        d = self.diffusion
        return d.predict_x0(x, t, d.predict_eps(self.model, x, t))


def check_differentiable(sampler: SamplerConfig) -> None:
    """ConfigError unless the adaptive attacks can backpropagate through ``sampler``."""
    if not sampler.entry.differentiable:
        allowed = ", ".join(n for n in SAMPLERS.names() if SAMPLERS[n].differentiable)
        raise ConfigError(f"sampler {sampler.name!r} cannot be differentiated by the adaptive "
                          f"attacks; allowed: {allowed}", field="sampler")


def require_grad_path(out: torch.Tensor, what: str) -> None:
    """ConfigError when ``out`` carries no gradient (a model that detaches its output)."""
    if not out.requires_grad:
        raise ConfigError(f"{what} has no gradient with respect to the perturbation: the model "
                          "detaches its output, so it cannot be attacked by gradient",
                          field="model")
