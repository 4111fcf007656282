"""Evaluation-protocol defaults: how many samples, which sampler, which batch size and which
label a model's attack numbers are reported under (docs/method.md §8)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ...core.registry import PRESETS
from ...diffusion.sampling import SamplerConfig, clip_default
from ...runs.checkpoints import LoadedModel


@dataclass(frozen=True)
class EvalDefaults:
    """Default evaluation settings for a model: how many samples, which sampler, batch size,
    and the label its numbers are reported under (e.g. ``FID-10k``)."""

    num_samples: int
    sampler: SamplerConfig
    batch_size: int
    label: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sampler": self.sampler.to_dict()}


def default_protocol(loaded: LoadedModel) -> EvalDefaults:
    """A preset's own protocol (its entry's ``evaluation``; the CPU presets: ``tiny`` 256
    samples on 25 respaced steps, ``mlp*`` 2000 samples on 50 respaced steps).
    Anything else (``ddpm-cifar10``, ``ddpm-64``, a diffusers pipeline): our default protocol,
    the paper's sampler (all 1000 ancestral steps) with 10,000 samples (FID-10k; the paper
    uses 50,000, docs/method.md §8). x̂_0 is clipped to [-1, 1] for
    images, not for vectors (:func:`~dmattack.diffusion.sampling.clip_default`); a pipeline's
    ``clip_sample`` wins."""
    clip = loaded.config.get("clip_sample")
    clip = clip_default(loaded.data_shape) if clip is None else bool(clip)
    own = PRESETS[loaded.preset].evaluation if loaded.preset in PRESETS else None
    if own is not None:
        return EvalDefaults(own.num_samples, SamplerConfig(own.sampler, own.sampler_steps,
                                                           clip_denoised=clip),
                            own.batch_size, own.label)
    pixels = math.prod(loaded.data_shape[1:])
    return EvalDefaults(10_000, SamplerConfig("ddpm", clip_denoised=clip),
                        256 if pixels <= 32 * 32 else 64, "FID-10k")
