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

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn

from . import distributed
from .diffusion import EpsModel, GaussianDiffusion, respace
from .errors import ConfigError
from .registry import SAMPLERS
from .seeding import CHAIN_NOISE, generators, randn_steps
from .settings import check_settings, setting

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
    """A reverse sampler as registered in :data:`~dmattack.registry.SAMPLERS`.

    ``step`` makes one reverse step (:data:`SamplerStep`); :meth:`chain` is the diffusion it
    walks. ``strided``: it runs ``steps`` evenly strided timesteps (False: always all T);
    ``uses_eta``: it reads ``SamplerConfig.eta`` (a nonzero η is refused elsewhere);
    ``differentiable``: the adaptive attacks may backpropagate through ``step``.
    """

    description: str
    step: SamplerStep
    strided: bool = True
    uses_eta: bool = False
    differentiable: bool = True

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
                                      ancestral_step))
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
    steps: int | None = setting(None, "Steps of ddim/respaced (ddpm uses all T).", low=1,
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


def sampling_diffusion(diffusion: GaussianDiffusion, cfg: SamplerConfig) -> GaussianDiffusion:
    """The diffusion whose indices the sampler walks (:meth:`Sampler.chain`)."""
    cfg.validate(diffusion.num_timesteps)
    return cfg.entry.chain(diffusion, cfg)


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
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    seeds: Sequence[int],
    sampler: SamplerConfig = SamplerConfig(),
    hook: StepHook | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Draw ``len(seeds)`` samples of per-sample ``shape`` (model space).

    Returns a float32 tensor (B, *shape). ``progress(step)`` is called after every step.
    An unset ``sampler.clip_denoised`` follows the data (:meth:`SamplerConfig.for_shape`).
    """
    sampler = sampler.for_shape(shape)
    sd = sampling_diffusion(diffusion, sampler)
    gens = generators(seeds, CHAIN_NOISE, device)
    draws = randn_steps(shape, gens, sd.num_timesteps + 1, device)  # x_T, then one z per step
    x = next(draws)
    step_fn = sampler.entry.step
    with frozen(model):
        for step, i in enumerate(reversed(range(sd.num_timesteps))):
            t = torch.full((len(seeds),), i, device=device, dtype=torch.long)
            if hook is not None:
                x = hook(x, t, step)
            noise = next(draws)
            x = step_fn(sd, model, x, t, noise, sampler).detach()
            if progress is not None:
                progress(step)
    return x


def sample_batched(
    model: EpsModel,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    seeds: Sequence[int],
    batch_size: int,
    sampler: SamplerConfig = SamplerConfig(),
    hook_factory: Callable[[Sequence[int]], StepHook | None] | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """:func:`sample` over ``seeds`` in chunks of ``batch_size``; returns (N, *shape) on CPU.

    ``hook_factory(chunk_seeds)`` builds the hook of each chunk (attacks seed their random
    starts from the same per-sample seeds). ``progress(n)`` gets the number of finished steps.
    """
    out = []
    for start in range(0, len(seeds), batch_size):
        chunk = list(seeds[start : start + batch_size])
        hook = hook_factory(chunk) if hook_factory is not None else None
        out.append(sample(model, diffusion, shape, chunk, sampler, hook, device, progress).cpu())
    return torch.cat(out) if out else torch.empty(0, *shape)


def sample_sharded(
    model: EpsModel,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    seeds: Sequence[int],
    batch_size: int,
    sampler: SamplerConfig = SamplerConfig(),
    hook_factory: Callable[[Sequence[int]], StepHook | None] | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor | None:
    """:func:`sample_batched` with the seeds split across torchrun's processes.

    Each process samples a contiguous slice of whole batches of ``seeds``
    (:func:`dmattack.distributed.shard`); rank 0 gets all N samples (N, *shape) on CPU, in seed
    order, the other ranks None. Per-sample seeds and unchanged batches make the result the
    single-process one (bit for bit on the same hardware). Without torchrun this is
    :func:`sample_batched`.
    """
    x = sample_batched(model, diffusion, shape, distributed.shard(seeds, batch_size),
                       batch_size, sampler, hook_factory, device, progress)
    return distributed.gather_rows(x)
