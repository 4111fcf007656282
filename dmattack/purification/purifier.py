"""Diffusion purification P(x) as an ``nn.Module`` (docs/method.md §13).

For an image x ∈ [0, 1]^d (the classifier's input space)::

    x′ = 2x − 1;   x_n = √ᾱ_n x′ + √(1−ᾱ_n) ε;   reverse chain n → 0;   P(x) = (x_0 + 1)/2 ∈ [0, 1]

where n = t* is the number of forward steps (0 ≤ n ≤ T; DiffPure's CIFAR-10 setting is n = 0.1·T)
and ᾱ_n is the product of the first n of the T forward factors (our 0-indexed table at n − 1).
The reverse chain walks the first n timesteps of the model's diffusion, respaced to K steps
(ancestral) or with DDIM. n = 0 is the identity.

Gradient modes: ``full`` (exact ∂P/∂x; each reverse step is checkpointed so memory grows with K
inputs, not K networks' activations), ``bpda`` (forward P(x), backward the identity; Athalye et
al. 2018) and ``none`` (no graph, for evaluation).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..core.entry_options import option_defaults
from ..core.errors import ConfigError, RunFolderError, first_line
from ..core.registry import SAMPLERS
from ..core.seeding import randn_per_sample
from ..core.settings import check_settings, shown
from ..diffusion.gaussian import GaussianDiffusion
from ..diffusion.samplers import (
    SAMPLER_RECORD_DEFAULTS,
    Sampler,
    sampler_spelling,
)
from ..diffusion.sampling import SamplerConfig, SamplingChain, clip_default
from ..runs.checkpoints import LoadedModel

GRADIENTS = ("full", "bpda", "none")


def _purify_names() -> dict[str, str]:
    """Purifier chain name → registered sampler, for every registered strided sampler the
    chain can differentiate, in registry order; a sampler's ``purify_name`` (e.g.
    ``ancestral`` for ``respaced``) replaces its registered name."""
    return {SAMPLERS[n].purify_name or n: n for n in SAMPLERS.names()
            if SAMPLERS[n].strided and SAMPLERS[n].differentiable}


def purify_samplers() -> tuple[str, ...]:
    """The purifier's reverse chains (built in: ``ancestral``, ``ddim``)."""
    return tuple(_purify_names())


def purify_sampler_name(sampler: str) -> str:
    """The registered sampler behind a purifier chain name (``ancestral`` → ``respaced``)."""
    return _purify_names().get(sampler, sampler)


def purify_entry(sampler: str) -> Sampler:
    """The registered :class:`~dmattack.diffusion.samplers.Sampler` of purifier chain
    ``sampler`` (one of :func:`purify_samplers`; else a one-line :class:`ConfigError`)."""
    if sampler not in purify_samplers():
        raise ConfigError(f"purify_sampler (--purify-sampler) = {sampler!r} is invalid; "
                          f"allowed: {', '.join(purify_samplers())}", field="purify_sampler")
    return SAMPLERS[purify_sampler_name(sampler)]


def unread_option(key: str, value: Any, sampler: str, spelling: str | None = None
                  ) -> ConfigError:
    """The one-line error for own option ``key`` (spelled ``spelling`` on the command line)
    given with purifier chain ``sampler``, whose sampler's config has no such field."""
    spelling = spelling or sampler_spelling(key)
    reads = ", ".join(sampler_spelling(r) for r in purify_entry(sampler).options())
    by = [n for n in purify_samplers() if key in purify_entry(n).options()]
    allowed = (f"allowed: {spelling} only with --purify-sampler {', '.join(by)}" if by
               else f"no purify sampler reads {spelling}")
    return ConfigError(f"{key} ({spelling}) = {shown(value)} is ignored by --purify-sampler "
                       f"{sampler} (it reads {reads or 'no options of its own'}); {allowed}",
                       field=key)


def set_options(options: Mapping[str, Any] | Any) -> dict[str, Any]:
    """``{option: value}`` of a mapping, or of a sampler config instance its fields off their
    defaults (None: none)."""
    if options is None:
        return {}
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        defaults = option_defaults(options)
        return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)
                if getattr(options, f.name) != defaults[f.name]}
    if not isinstance(options, Mapping):
        raise ConfigError(f"sampler_options = {shown(options)} is invalid; allowed: a mapping "
                          "{option: value} or a sampler config", field="sampler_options")
    return dict(options)


def purify_sampler_options(sampler: str, options: Mapping[str, Any] | Any = None) -> Any:
    """The own options of purifier chain ``sampler`` as an instance of its entry's
    :attr:`~dmattack.diffusion.samplers.Sampler.config` (DDIM: ``DDIMConfig``), from a mapping
    or a config (:func:`set_options`); unset options at the config's defaults. An option the
    config has no field for, or a bad value, is a one-line :class:`ConfigError`."""
    entry = purify_entry(sampler)
    if isinstance(options, entry.config):
        check_settings(options)
        return options
    own = set_options(options)
    for key, value in own.items():
        if key not in entry.options():
            raise unread_option(key, value, sampler)
    made = entry.config(**own)
    check_settings(made)
    return made


def options_record(options: Any) -> dict[str, Any]:
    """The record of a purifier's own options: each built-in record slot
    (:data:`~dmattack.diffusion.samplers.SAMPLER_RECORD`: ``eta``; its default where the
    sampler does not read it), then ``sampler_options``: the sampler's other own options,
    only where it has some (a plugin's), so built-in records and keys are as before."""
    own = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    record = {k: own.get(k, default) for k, default in SAMPLER_RECORD_DEFAULTS.items()}
    extra = {k: v for k, v in own.items() if k not in record}
    return {**record, **({"sampler_options": extra} if extra else {})}


def forward_steps(t_star: float, num_timesteps: int) -> int:
    """The number of forward steps n of a t* setting: a fraction of T when t* < 1 (rounded,
    ``0.1`` → 0.1·T), else an integer timestep in 1..T. Raises :class:`ConfigError`."""
    if isinstance(t_star, bool) or not isinstance(t_star, (int, float)) \
            or not math.isfinite(t_star) or t_star < 0:
        raise ConfigError(f"t_star (--t-star) = {t_star!r} is invalid; allowed: a fraction of T "
                          f"in [0, 1) or an integer timestep 1..{num_timesteps}", field="t_star")
    if t_star < 1:
        return round(t_star * num_timesteps)
    if t_star != int(t_star) or t_star > num_timesteps:
        raise ConfigError(f"t_star (--t-star) = {t_star!r} is outside the chain; allowed: a "
                          f"fraction of T in [0, 1) or an integer timestep 1..{num_timesteps}",
                          field="t_star")
    return int(t_star)


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> LoadedModel:
    """A dmattack run folder (EMA weights) or a diffusers DDPM pipeline folder, in eval mode.
    Raises :class:`RunFolderError` (one line) for anything else."""
    from ..runs.checkpoints import load_run
    from ..runs.pipeline import load_pipeline

    folder = Path(path)
    try:
        if (folder / "model_index.json").is_file() or (folder / "unet").is_dir():
            return load_pipeline(folder, device)
        return load_run(folder, device=device)
    except (RunFolderError, ValueError, OSError) as e:
        raise RunFolderError(first_line(e)) from None


class Purifier(nn.Module):
    """P: (B, *data_shape) images in [0, 1] → purified images in [0, 1], same shape.

    Args:
        model: noise predictor ``eps = model(x_t, t)`` (frozen and put in eval mode here).
        diffusion: the model's training diffusion (T timesteps).
        data_shape: per-sample shape in model space, e.g. (1, 8, 8).
        t_star: forward steps: a fraction of T (< 1) or a timestep 1..T; 0 is the identity.
        steps: reverse steps K over [0, t*] (None: every one of the n timesteps).
        sampler: ``ancestral`` (DDPM steps on the respaced chain), ``ddim`` or another
            registered strided sampler (:func:`purify_samplers`).
        gradient: ``full``, ``bpda`` or ``none`` (see the module docstring).
        seed: None draws fresh noise from torch's global generator on every call (the stochastic
            defence); an int redraws the same noise on every call (a deterministic defence).
        checkpoint_steps: recompute each reverse step in the backward pass (``full`` only).
        clip_denoised: clamp each predicted x̂_0 to [−1, 1] inside the chain (None: as
            sampling does, on for images, off for vectors).
        sampler_options, **own: the sampler's own options (fields of its entry's config), a
            mapping or a config, and/or keywords: ``Purifier(..., sampler="ddim", eta=0.3)``;
            one the sampler does not read is refused (:func:`purify_sampler_options`).

    ``sampler_options`` (attribute): the options as the entry's config instance; ``chain``
    (n > 0): the reverse chain as a :class:`~dmattack.diffusion.sampling.SamplingChain` of the
    first n timesteps, resolved once here.
    """

    def __init__(self, model: nn.Module, diffusion: GaussianDiffusion,
                 data_shape: Sequence[int], t_star: float = 0.1, steps: int | None = None,
                 sampler: str = "ancestral", *, gradient: str = "full",
                 seed: int | None = None, checkpoint_steps: bool = True,
                 clip_denoised: bool | None = None,
                 sampler_options: Mapping[str, Any] | Any = None, **own: Any) -> None:
        super().__init__()
        if gradient not in GRADIENTS:
            raise ConfigError(f"gradient = {gradient!r} is invalid; allowed: "
                              f"{', '.join(GRADIENTS)}", field="gradient")
        options = purify_sampler_options(sampler, {**set_options(sampler_options), **own})
        n = forward_steps(t_star, diffusion.num_timesteps)
        if steps is not None and not (isinstance(steps, int) and 1 <= steps <= max(n, 1)):
            raise ConfigError(f"purify_steps (--purify-steps) = {steps!r} is outside 1..{n} "
                              f"(the t* = {t_star} chain has {n} timesteps)",
                              field="purify_steps")
        self.model = model.eval().requires_grad_(False)
        self.diffusion = diffusion
        self.data_shape = tuple(data_shape)
        self.t_star, self.n, self.steps, self.sampler = t_star, n, steps, sampler
        self.sampler_options, self.gradient, self.seed = options, gradient, seed
        if clip_denoised is None:
            clip_denoised = clip_default(self.data_shape)
        self.checkpoint_steps, self.clip_denoised = checkpoint_steps, bool(clip_denoised)
        if n > 0:
            # the first n timesteps as a diffusion of their own, then respaced to K steps: its
            # last index has ᾱ_n exactly and its timestep_map points into the trained schedule
            head = GaussianDiffusion(diffusion.betas[:n], diffusion.variance_type,
                                     diffusion.timestep_map[:n])
            self.config = SamplerConfig(purify_sampler_name(sampler), steps or n,
                                        clip_denoised=self.clip_denoised, options=options)
            self.chain = SamplingChain(head, self.config)

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, **kwargs) -> Purifier:
        """A purifier around a model from :func:`dmattack.runs.checkpoints.load_run` /
        :func:`dmattack.runs.pipeline.load_pipeline` (keyword arguments as the constructor's)."""
        if loaded.config.get("clip_sample") is not None:  # a pipeline's scheduler setting
            kwargs.setdefault("clip_denoised", bool(loaded.config["clip_sample"]))
        return cls(loaded.model, loaded.diffusion, loaded.data_shape, **kwargs)

    @classmethod
    def from_folder(cls, path: str | os.PathLike, device: torch.device | str = "cpu",
                    **kwargs) -> Purifier:
        """A purifier from a dmattack run folder or a diffusers DDPM pipeline folder."""
        return cls.from_loaded(load_model(path, device), **kwargs)

    def own(self) -> dict[str, Any]:
        """The sampler's own options, ``{field: value}`` (DDIM: ``{"eta": η}``)."""
        return {f.name: getattr(self.sampler_options, f.name)
                for f in dataclasses.fields(self.sampler_options)}

    def replace(self, **changes) -> Purifier:
        """The same purifier (sharing the network) with some settings changed, e.g.
        ``purifier.replace(gradient="bpda")``. Under another ``sampler`` it keeps the own
        options that sampler reads (a surrogate chain inherits the defence's η), unless
        ``sampler_options`` is given."""
        sampler = changes.pop("sampler", self.sampler)
        reads = purify_entry(sampler).options() if sampler in purify_samplers() else ()
        kept = {} if "sampler_options" in changes else {
            k: v for k, v in self.own().items() if k in reads}
        kwargs = dict(t_star=self.t_star, steps=self.steps, gradient=self.gradient,
                      seed=self.seed, checkpoint_steps=self.checkpoint_steps,
                      clip_denoised=self.clip_denoised)
        return Purifier(self.model, self.diffusion, self.data_shape, sampler=sampler,
                        **{**kwargs, **kept, **changes})

    @property
    def num_reverse_steps(self) -> int:
        """K, the number of network evaluations per purification (0 for the identity)."""
        return self.chain.num_steps if self.n > 0 else 0

    @property
    def deterministic(self) -> bool:
        """True when every call returns the same output for the same input."""
        return self.n == 0 or self.seed is not None

    def describe(self) -> dict:
        """The settings that determine P (for result files and unit keys): the sampler's own
        options as :func:`options_record` lists them (``eta`` after ``sampler``; a plugin's
        other options last, under ``sampler_options``)."""
        own = options_record(self.sampler_options)
        extra = {k: own.pop(k) for k in ("sampler_options",) if k in own}
        return {"t_star": self.t_star, "forward_steps": self.n, "num_timesteps":
                self.diffusion.num_timesteps, "reverse_steps": self.num_reverse_steps,
                "sampler": self.sampler, **own, "clip_denoised": self.clip_denoised,
                "gradient": self.gradient, "seed": self.seed, **extra}

    # ------------------------------------------------------------------------- the chain
    def _noise(self, batch: int, like: torch.Tensor,
               generators: Sequence[torch.Generator] | None) -> list[torch.Tensor]:
        """1 + K standard normal tensors (B, *data_shape): ε of the forward jump, then z of
        each reverse step (the last step's z is drawn and unused)."""
        count = 1 + self.num_reverse_steps
        if generators is not None:
            if len(generators) != batch:
                raise ValueError(f"{len(generators)} generators for a batch of {batch}")
            return [randn_per_sample(self.data_shape, generators, like.device, like.dtype)
                    for _ in range(count)]
        gen = None
        if self.seed is not None:
            gen = torch.Generator(like.device).manual_seed(self.seed)
        return [torch.randn((batch, *self.data_shape), generator=gen, device=like.device,
                            dtype=like.dtype) for _ in range(count)]

    def _step(self, x: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
        t = torch.full((len(x),), index, device=x.device, dtype=torch.long)
        return self.chain.step(self.model, x, t, noise)

    def purify(self, x: torch.Tensor,
               generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """P(x) with exact gradients (checkpointed per step when ``checkpoint_steps``).

        ``generators``: one per sample for reproducible noise independent of batching
        (:func:`dmattack.core.seeding.generators`); otherwise see ``seed``.
        """
        if self.n == 0:
            return x
        noise = self._noise(len(x), x, generators)
        t = torch.full((len(x),), self.n - 1, device=x.device, dtype=torch.long)
        x_t = self.diffusion.q_sample(2 * x - 1, t, noise[0])
        for k, index in enumerate(reversed(range(self.chain.num_steps))):
            if self.checkpoint_steps and torch.is_grad_enabled() and x_t.requires_grad:
                # the noise is an input, so the recomputation needs no RNG replay
                x_t = checkpoint(self._step, x_t, noise[1 + k], index, use_reentrant=False,
                                 preserve_rng_state=False)
            else:
                x_t = self._step(x_t, noise[1 + k], index)
        return ((x_t + 1) / 2).clamp(0, 1)

    def forward(self, x: torch.Tensor,
                generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """(B, *data_shape) in [0, 1] → (B, *data_shape) in [0, 1], with the gradient mode's
        backward pass."""
        if tuple(x.shape[1:]) != self.data_shape:
            raise ConfigError(f"input shape {tuple(x.shape[1:])} does not match the purifier's "
                              f"data shape {self.data_shape}")
        if self.gradient == "full":
            return self.purify(x, generators)
        with torch.no_grad():
            purified = self.purify(x.detach(), generators)
        if self.gradient == "none":
            return purified
        return x + (purified - x).detach()  # BPDA: value P(x), gradient of the identity
