"""The reverse sampling loop shared by clean sampling and attacked sampling.

Every random draw of sample ``i`` (its x_T and each per-step z) comes from a generator seeded
by ``seeds[i]`` alone, so a sample never depends on the batch it runs in, nor on whether other
samples are attacked. The loop is gradient-transparent: wrap it in ``torch.no_grad()`` yourself
for clean sampling; a hook may enable gradients for its own computation. While the loop runs,
the parameters of an ``nn.Module`` model do not require gradients, so an attack's backward
pass computes the gradient with respect to its input only. Under torchrun,
:func:`sample_sharded` splits the seeds across processes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core import distributed
from ..core.errors import ConfigError
from ..core.registry import SAMPLERS
from ..core.seeding import CHAIN_NOISE, generators, randn_steps
from ..core.settings import check_settings, setting
from .gaussian import EpsModel, GaussianDiffusion, respace

StepHook = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""``hook(x_t, t, step) -> x_t'`` runs before each reverse step; ``t`` (B,) are indices into the
sampler's diffusion, ``step`` counts reverse steps from 0 (at x_T) to K−1. It may perturb x_t."""


SamplerStep = Callable[[GaussianDiffusion, EpsModel, torch.Tensor, torch.Tensor, torch.Tensor,
                        "SamplerConfig"], torch.Tensor]
"""``step(sd, model, x_t, t, noise, cfg) -> x_prev``: one reverse step on the sampler's chain
``sd``; ``x_t`` (B, *shape) model space, ``t`` (B,) indices into ``sd``, ``noise`` (B, *shape)
standard normal (one is drawn for every step; a deterministic step ignores it), ``cfg`` the
sampler settings with ``clip_denoised`` resolved to a bool."""


@dataclass(frozen=True)
class Sampler:
    """A reverse sampler as registered in :data:`~dmattack.core.registry.SAMPLERS`.

    ``step`` makes one reverse step (:data:`SamplerStep`); :meth:`chain` is the diffusion it
    walks (:class:`SamplingChain` calls it, the one place a chain is resolved). ``strided``: it
    runs ``steps`` evenly strided timesteps (False: always all T);
    ``uses_eta``: it reads ``SamplerConfig.eta`` (a nonzero η is refused elsewhere);
    ``differentiable``: the adaptive attacks may backpropagate through ``step``;
    ``purify_name``: the purifier's name for this chain (``--purify-sampler``) where it has
    another (``respaced`` is the purifier's ``ancestral``), else None: its registered name.
    """

    description: str
    step: SamplerStep
    strided: bool = True
    uses_eta: bool = False
    differentiable: bool = True
    purify_name: str | None = None

    def chain(self, diffusion: GaussianDiffusion, cfg: SamplerConfig) -> GaussianDiffusion:
        """The diffusion whose indices the sampler walks: ``diffusion`` itself at full length,
        else respaced to ``cfg.num_steps`` timesteps (docs/method.md §8)."""
        k = cfg.num_steps(diffusion.num_timesteps)
        return diffusion if k == diffusion.num_timesteps else respace(diffusion, k)


def ancestral_step(sd: GaussianDiffusion, model: EpsModel, x: torch.Tensor, t: torch.Tensor,
                   noise: torch.Tensor, cfg: SamplerConfig) -> torch.Tensor:
    """One ancestral step x_t → x_{t−1} ~ p_θ (Ho et al. 2020, Algorithm 2)."""
    return sd.p_sample(model, x, t, noise, cfg.clip_denoised)


def ddim_step(sd: GaussianDiffusion, model: EpsModel, x: torch.Tensor, t: torch.Tensor,
              noise: torch.Tensor, cfg: SamplerConfig) -> torch.Tensor:
    """One DDIM step with ``cfg.eta`` (Song et al. 2021, Eq. 12)."""
    return sd.ddim_step(model, x, t, noise, cfg.eta, cfg.clip_denoised)


SAMPLERS.register("ddpm", Sampler("ancestral sampling on all T steps (Ho et al. 2020)",
                                  ancestral_step, strided=False))
SAMPLERS.register("respaced", Sampler("ancestral sampling on `steps` evenly strided timesteps",
                                      ancestral_step, purify_name="ancestral"))
SAMPLERS.register("ddim", Sampler("DDIM with η on `steps` strided timesteps (Song et al. 2021)",
                                  ddim_step, uses_eta=True))


@dataclass(frozen=True)
class SamplerConfig:
    """Which reverse process to run.

    ``name`` is a registered :class:`Sampler`: ``ddpm``: ancestral on all T steps;
    ``respaced``: ancestral on ``steps`` evenly strided timesteps (docs/method.md §8); ``ddim``:
    DDIM with ``eta`` on ``steps`` strided timesteps; or a plugin's.
    ``clip_denoised`` None (the default) means "by the data" (:func:`clip_default`): x̂_0 is
    clipped to [-1, 1] for images, as Ho et al. and improved-diffusion sample, and not for
    vectors; :meth:`for_shape` resolves it, and every sampling function does so first. On the
    command line, name, steps and clip_denoised default to the model's protocol.
    """

    name: str = setting("ddpm", "Reverse sampler.", choices=SAMPLERS.names, option="--sampler",
                        auto="the model's preset")
    steps: int | None = setting(None, "Steps of a strided sampler (respaced, ddim, a "
                                "plugin's; ddpm: all T).", low=1,
                                option="--sampler-steps", deprecated=("--steps",),
                                auto="the model's preset; 100 for a strided sampler")
    eta: float = setting(0.0, "DDIM η (0: deterministic DDIM, 1: ancestral-like).", low=0,
                         high=1)
    clip_denoised: bool | None = setting(
        None, "Clip x̂_0 to [-1, 1] inside each step.",
        auto="the data: on for images, off for vectors; a pipeline: its scheduler's clip_sample")

    def __post_init__(self) -> None:
        check_settings(self)
        if self.eta != 0 and not self.entry.uses_eta:  # a setting the sampler would ignore
            with_eta = ", ".join(n for n in SAMPLERS.names() if SAMPLERS[n].uses_eta)
            raise ConfigError(f"eta (--eta) = {self.eta!r} is ignored by sampler {self.name}; "
                              f"allowed: a nonzero --eta only with --sampler {with_eta}",
                              field="eta")

    @property
    def entry(self) -> Sampler:
        """The registered :class:`Sampler` this config runs."""
        return SAMPLERS.get(self.name, "--sampler")

    def validate(self, num_timesteps: int) -> None:
        """Check the sampler fits a diffusion of ``num_timesteps`` steps."""
        if self.steps is not None and self.steps > num_timesteps:
            raise ConfigError(f"steps (--sampler-steps) = {self.steps} is invalid; allowed: "
                              f"1..{num_timesteps} (the model's T)", field="steps")

    def num_steps(self, num_timesteps: int) -> int:
        if not self.entry.strided or self.steps is None:
            return num_timesteps
        return self.steps

    def for_shape(self, shape: Sequence[int]) -> SamplerConfig:
        """This sampler with ``clip_denoised`` resolved for per-sample ``shape`` (unset:
        :func:`clip_default`)."""
        if self.clip_denoised is not None:
            return self
        return replace(self, clip_denoised=clip_default(shape))

    def describe(self, num_timesteps: int) -> str:
        """E.g. ``respaced-25``, ``ddim-100-eta0.5``, ``ddpm-1000-clip`` (x̂_0 clipped)."""
        label = f"{self.name}-{self.num_steps(num_timesteps)}"
        if self.entry.uses_eta and self.eta:
            label += f"-eta{self.eta:g}"
        return label + ("-clip" if self.clip_denoised else "")


def clip_default(shape: Sequence[int]) -> bool:
    """Whether x̂_0 is clipped to [-1, 1] by default for per-sample ``shape``: yes for images
    (C, H, W), whose pixels live in [-1, 1] (Ho et al. 2020, improved-diffusion); no for
    vectors, which have no such box."""
    return len(shape) == 3


@dataclass(frozen=True, eq=False)
class SamplingChain:
    """A sampler resolved against a model's diffusion: what every sampling function, attack,
    damage record and the purifier walk (docs/method.md §6, §8).

    Built once per (model, sampler): the constructor checks ``sampler`` against the model's T
    and resolves the diffusion the sampler walks (:meth:`Sampler.chain`: the model's own at
    full length, else respaced to K steps). Reverse step k = 0 … K−1 runs at index K−1−k of
    :attr:`walk`; the model is called at ``timestep_map[index]`` (the trained timestep).

    Args:
        diffusion: the model's (training) diffusion, T timesteps.
        sampler: the sampler settings; ``clip_denoised`` may be unset (:meth:`for_shape`
            resolves it for the data, sharing :attr:`walk`).
    """

    diffusion: GaussianDiffusion
    sampler: SamplerConfig
    walk: GaussianDiffusion = field(init=False)
    """The diffusion whose indices the sampler walks (K = ``walk.num_timesteps`` steps)."""

    def __post_init__(self) -> None:
        self.sampler.validate(self.diffusion.num_timesteps)
        object.__setattr__(self, "walk", self.sampler.entry.chain(self.diffusion, self.sampler))

    @classmethod
    def of(cls, diffusion: GaussianDiffusion | SamplingChain,
           sampler: SamplerConfig | None = None) -> SamplingChain:
        """``diffusion`` itself when it is a chain (``sampler`` None, or the chain's settings
        with ``clip_denoised`` unset or equal), else the chain of ``sampler`` (default
        :class:`SamplerConfig`) on the model's ``diffusion``."""
        if not isinstance(diffusion, SamplingChain):
            return cls(diffusion, SamplerConfig() if sampler is None else sampler)
        if sampler is not None and sampler != diffusion.sampler and not (
                sampler.clip_denoised is None
                and replace(diffusion.sampler, clip_denoised=None) == sampler):
            raise ValueError(f"sampler {sampler} differs from the chain's {diffusion.sampler}")
        return diffusion

    def for_shape(self, shape: Sequence[int]) -> SamplingChain:
        """This chain with ``clip_denoised`` resolved for per-sample ``shape``
        (:meth:`SamplerConfig.for_shape`); the walked diffusion is shared, not rebuilt."""
        resolved = self.sampler.for_shape(shape)
        if resolved is self.sampler:
            return self
        out = copy.copy(self)
        object.__setattr__(out, "sampler", resolved)
        return out

    @property
    def entry(self) -> Sampler:
        """The registered :class:`Sampler` that makes each step."""
        return self.sampler.entry

    @property
    def num_steps(self) -> int:
        """K, the number of reverse steps (network evaluations) of one sample."""
        return self.walk.num_timesteps

    @property
    def timestep_map(self) -> np.ndarray:
        """(K,) int64: the trained timestep of each index of :attr:`walk`."""
        return self.walk.timestep_map

    @property
    def clip_denoised(self) -> bool | None:
        """Whether x̂_0 is clipped to [-1, 1] in each step (None: not yet resolved)."""
        return self.sampler.clip_denoised

    @property
    def eta(self) -> float:
        """DDIM η of a sampler that reads it, else 0."""
        return self.sampler.eta if self.entry.uses_eta else 0.0

    def index(self, step: int, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Indices (B,) into :attr:`walk` of reverse step ``step`` (0 = at x_T)."""
        return torch.full((batch,), self.num_steps - 1 - step, device=device, dtype=torch.long)

    def step(self, model: EpsModel, x: torch.Tensor, t: torch.Tensor,
             noise: torch.Tensor) -> torch.Tensor:
        """One reverse step (:data:`SamplerStep`) at indices ``t`` (B,) of :attr:`walk`;
        resolve ``clip_denoised`` first (:meth:`for_shape`)."""
        return self.entry.step(self.walk, model, x, t, noise, self.sampler)

    def budget(self, step: int, like: torch.Tensor) -> torch.Tensor:
        """σ_t = √β̃_t (B, 1, …) at reverse step ``step``: the ℓ∞ attack budget per unit
        ``eps_scale`` (model space, docs/method.md §6); 0 at the last step."""
        return self.walk.attack_std(self.index(step, len(like), like.device), like)

    @property
    def budgets(self) -> np.ndarray:
        """(K,) float64: σ_t = √β̃_t of every reverse step, in step order."""
        return self.walk.attack_std_table[::-1].copy()

    @property
    def attackable_steps(self) -> list[int]:
        """The reverse steps with a positive budget: all but the last (at t = 0, β̃_0 = 0;
        docs/method.md §10.8)."""
        return [k for k, sigma in enumerate(self.budgets) if sigma > 0]

    def describe(self) -> str:
        """The sampler's label on this chain, e.g. ``respaced-25-clip``."""
        return self.sampler.describe(self.diffusion.num_timesteps)

    def to_dict(self) -> dict[str, Any]:
        """The sampler's settings, K (``num_steps``) and ``label``, JSON-ready (results)."""
        return {**asdict(self.sampler), "num_steps": self.num_steps, "label": self.describe()}


@contextmanager
def frozen(model: EpsModel) -> Iterator[None]:
    """Parameters of an ``nn.Module`` ``model`` stop requiring gradients inside the block
    (restored afterwards): attack gradients then flow to the input only."""
    params = list(model.parameters()) if isinstance(model, nn.Module) else []
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def sample(
    model: EpsModel,
    diffusion: GaussianDiffusion | SamplingChain,
    shape: Sequence[int],
    seeds: Sequence[int],
    sampler: SamplerConfig | None = None,
    hook: StepHook | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Draw ``len(seeds)`` samples of per-sample ``shape`` (model space).

    ``diffusion``: a :class:`SamplingChain`, or the model's diffusion with ``sampler``
    (default :class:`SamplerConfig`) resolved against it (:meth:`SamplingChain.of`).
    Returns a float32 tensor (B, *shape). ``progress(step)`` is called after every step.
    An unset ``clip_denoised`` follows the data (:meth:`SamplingChain.for_shape`).
    """
    chain = SamplingChain.of(diffusion, sampler).for_shape(shape)
    gens = generators(seeds, CHAIN_NOISE, device)
    draws = randn_steps(shape, gens, chain.num_steps + 1, device)  # x_T, then one z per step
    x = next(draws)
    with frozen(model):
        for step, i in enumerate(reversed(range(chain.num_steps))):
            t = torch.full((len(seeds),), i, device=device, dtype=torch.long)
            if hook is not None:
                x = hook(x, t, step)
            noise = next(draws)
            x = chain.step(model, x, t, noise).detach()
            if progress is not None:
                progress(step)
    return x


def sample_batched(
    model: EpsModel,
    diffusion: GaussianDiffusion | SamplingChain,
    shape: Sequence[int],
    seeds: Sequence[int],
    batch_size: int,
    sampler: SamplerConfig | None = None,
    hook_factory: Callable[[Sequence[int]], StepHook | None] | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """:func:`sample` over ``seeds`` in chunks of ``batch_size``; returns (N, *shape) on CPU.

    ``diffusion`` and ``sampler`` as in :func:`sample` (the chain is resolved once).
    ``hook_factory(chunk_seeds)`` builds the hook of each chunk (attacks seed their random
    starts from the same per-sample seeds). ``progress(n)`` gets the number of finished steps.
    """
    chain = SamplingChain.of(diffusion, sampler).for_shape(shape)
    out = []
    for start in range(0, len(seeds), batch_size):
        chunk = list(seeds[start : start + batch_size])
        hook = hook_factory(chunk) if hook_factory is not None else None
        out.append(sample(model, chain, shape, chunk, None, hook, device, progress).cpu())
    return torch.cat(out) if out else torch.empty(0, *shape)


def sample_sharded(
    model: EpsModel,
    diffusion: GaussianDiffusion | SamplingChain,
    shape: Sequence[int],
    seeds: Sequence[int],
    batch_size: int,
    sampler: SamplerConfig | None = None,
    hook_factory: Callable[[Sequence[int]], StepHook | None] | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor | None:
    """:func:`sample_batched` with the seeds split across torchrun's processes.

    Each process samples a contiguous slice of whole batches of ``seeds``
    (:func:`dmattack.core.distributed.shard`); rank 0 gets all N samples (N, *shape) on CPU, in seed
    order, the other ranks None. Per-sample seeds and unchanged batches make the result the
    single-process one (bit for bit on the same hardware). Without torchrun this is
    :func:`sample_batched`.
    """
    x = sample_batched(model, diffusion, shape, distributed.shard(seeds, batch_size),
                       batch_size, sampler, hook_factory, device, progress)
    return distributed.gather_rows(x)
