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
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core import distributed
from ..core.entry_options import option_defaults, option_label, own_option
from ..core.errors import ConfigError
from ..core.registry import SAMPLERS
from ..core.seeding import CHAIN_NOISE, generators, randn_steps
from ..core.settings import check_settings, setting, shown
from .gaussian import EpsModel, GaussianDiffusion
from .samplers import (
    SAMPLER_RECORD_DEFAULTS,
    SHARED_SAMPLER_SETTINGS,
    DDIMConfig,
    NoSamplerOptions,
    Sampler,
    SamplerStep,
    ancestral_step,
    ddim_step,
    sampler_spelling,
    samplers_reading,
)

__all__ = ["DDIMConfig", "NoSamplerOptions", "Sampler", "SamplerConfig", "SamplerStep",
           "SamplingChain", "StepHook", "ancestral_step", "clip_default", "ddim_step", "frozen",
           "sample", "sample_batched", "sample_sharded"]
"""The sampling API; the sampler entries and their configs are defined in
:mod:`dmattack.diffusion.samplers` and importable from here."""

StepHook = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""``hook(x_t, t, step) -> x_t'`` runs before each reverse step; ``t`` (B,) are indices into the
sampler's diffusion, ``step`` counts reverse steps from 0 (at x_T) to K−1. It may perturb x_t."""


@dataclass(frozen=True, init=False)
class SamplerConfig:
    """Which reverse process to run: the settings every sampler shares and the sampler's own
    options (``options``, an instance of its entry's :attr:`Sampler.config`).

    ``name`` is a registered :class:`Sampler`: ``ddpm``: ancestral on all T steps;
    ``respaced``: ancestral on ``steps`` evenly strided timesteps (docs/method.md §8); ``ddim``:
    DDIM with its option ``eta`` on ``steps`` strided timesteps; or a plugin's.
    ``clip_denoised`` None (the default) means "by the data" (:func:`clip_default`): x̂_0 is
    clipped to [-1, 1] for images, as Ho et al. and improved-diffusion sample, and not for
    vectors; :meth:`for_shape` resolves it, and every sampling function does so first. On the
    command line, name, steps and clip_denoised default to the model's protocol.

    Built from keywords: ``SamplerConfig("ddim", 50, eta=0.5)`` routes ``eta`` to DDIM's
    config; an option the sampler does not read is refused (one line naming it and what the
    sampler reads), as is a bad value. ``options=`` passes a whole config instead;
    ``cfg.eta`` reads the option. :meth:`to_dict` is the record (results, store keys).
    """

    name: str = setting("ddpm", "Reverse sampler.", choices=SAMPLERS.names, option="--sampler",
                        auto="the model's preset")
    steps: int | None = setting(None, "Steps of a strided sampler (respaced, ddim, a "
                                "plugin's; ddpm: all T).", low=1,
                                option="--sampler-steps", deprecated=("--steps",),
                                auto="the model's preset; 100 for a strided sampler")
    clip_denoised: bool | None = setting(
        None, "Clip x̂_0 to [-1, 1] inside each step.",
        auto="the data: on for images, off for vectors; a pipeline: its scheduler's clip_sample")
    options: Any = setting(None, "The sampler's own options: an instance of its entry's "
                           "config (built from the keyword options when not given).", cli=False)

    def __init__(self, name: str = "ddpm", steps: int | None = None, *,
                 clip_denoised: bool | None = None, options: Any = None, **own: Any) -> None:
        for key, value in (("name", name), ("steps", steps), ("clip_denoised", clip_denoised),
                           ("options", None)):
            object.__setattr__(self, key, value)
        check_settings(self)
        object.__setattr__(self, "options", self._options(options, own))

    def _options(self, given: Any, own: dict[str, Any]) -> Any:
        """The entry's config with ``own`` (each checked to be an option of the sampler)."""
        entry = self.entry
        if given is not None and not isinstance(given, entry.config):
            raise ConfigError(f"options of sampler {self.name!r} must be a "
                              f"{entry.config.__name__}, got {type(given).__name__}",
                              field="options")
        reads = entry.options()
        for key, value in own.items():
            if key not in reads:
                which = ", ".join(sampler_spelling(r) for r in reads) or "no options of its own"
                by = ", ".join(samplers_reading(key))
                raise ConfigError(
                    f"{key} ({sampler_spelling(key)}) = {shown(value)} is not used by sampler "
                    f"{self.name!r} (it reads {which})"
                    + (f"; {sampler_spelling(key)} is read by: {by}" if by else ""), field=key)
        made = entry.config(**own) if given is None else replace(given, **own) if own else given
        check_settings(made)
        return made

    def __getattr__(self, name: str) -> Any:
        """An option of the sampler's own config, e.g. ``cfg.eta`` of DDIM."""
        return own_option(self.__dict__.get("options"), name,
                          f"{type(self).__name__} of sampler {self.__dict__.get('name')!r}")

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> SamplerConfig:
        """The config of a record (:meth:`to_dict`, or :meth:`SamplingChain.to_dict` whose
        ``num_steps`` and ``label`` are left aside); a :data:`~.samplers.SAMPLER_RECORD`
        option that the sampler does not read must be at its default."""
        entry = SAMPLERS.get(record["name"], "--sampler")
        aside = (*SHARED_SAMPLER_SETTINGS, "num_steps", "label")
        own = {k: v for k, v in record.items() if k not in aside
               and (k in entry.options() or k not in SAMPLER_RECORD_DEFAULTS
                    or v != SAMPLER_RECORD_DEFAULTS[k])}
        return cls(record["name"], record.get("steps"),
                   clip_denoised=record.get("clip_denoised"), **own)

    @property
    def entry(self) -> Sampler:
        """The registered :class:`Sampler` this config runs."""
        return SAMPLERS.get(self.name, "--sampler")

    def own(self) -> dict[str, Any]:
        """The sampler's own options, ``{field: value}`` (none for ``ddpm``, ``respaced``)."""
        return {f.name: getattr(self.options, f.name) for f in fields(self.options)}

    def to_dict(self) -> dict[str, Any]:
        """The record (results, store keys): ``name``, ``steps``, each
        :data:`~.samplers.SAMPLER_RECORD` option (``eta``; its default where the sampler does
        not read it), ``clip_denoised``, then the sampler's other own options. For the built-in
        samplers this is the former flat config's dict, key for key, so store keys made from
        it are unchanged."""
        own = self.own()
        out: dict[str, Any] = {"name": self.name, "steps": self.steps}
        out.update({k: own.get(k, default) for k, default in SAMPLER_RECORD_DEFAULTS.items()})
        out["clip_denoised"] = self.clip_denoised
        out.update({k: v for k, v in own.items() if k not in out})
        return out

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
        """E.g. ``respaced-25``, ``ddim-100-eta0.5``, ``ddpm-1000-clip`` (x̂_0 clipped): each
        own option off its default is appended as ``<field><value>``."""
        label = f"{self.name}-{self.num_steps(num_timesteps)}"
        defaults = option_defaults(self.options)
        for key, value in self.own().items():
            if value != defaults[key]:
                label += f"-{key}{option_label(value)}"
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
        """η of a sampler that reads it (DDIM), else 0."""
        return self.sampler.options.eta if "eta" in self.entry.options() else 0.0

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
        return {**self.sampler.to_dict(), "num_steps": self.num_steps, "label": self.describe()}


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
