"""Evaluation-protocol defaults: how many samples, which sampler, which batch size and which
label a model's attack numbers are reported under (docs/method.md §8)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..runs import LoadedModel
from ..sampling import SamplerConfig, clip_default

CPU_PRESETS = ("tiny", "mlp", "mlp-small")


@dataclass(frozen=True)
class EvalDefaults:
    """Default evaluation settings for a model: how many samples, which sampler, batch size,
    and the label its numbers are reported under (e.g. ``FID-10k``)."""

    num_samples: int
    sampler: SamplerConfig
    batch_size: int
    label: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sampler": asdict(self.sampler)}


def default_protocol(loaded: LoadedModel) -> EvalDefaults:
    """CPU presets: ``tiny`` 256 samples on 25 respaced steps, ``mlp*`` 2000 samples on 50
    respaced steps, sized so that PGD-20 on 50% of the steps takes ≤ 3 minutes on 2 cores
    (measured: ≈ 70 s for a ``tiny`` 8×8 U-Net, ≈ 45 s for ``mlp`` on 64-D vectors).
    Anything else (``ddpm-cifar10``, ``ddpm-64``, a diffusers pipeline): our default protocol,
    the paper's sampler (all 1000 ancestral steps) with 10,000 samples (FID-10k; the paper
    uses 50,000, docs/method.md §8). x̂_0 is clipped to [-1, 1] for
    images, not for vectors (:func:`~dmattack.sampling.clip_default`); a pipeline's
    ``clip_sample`` wins."""
    clip = loaded.config.get("clip_sample")
    clip = clip_default(loaded.data_shape) if clip is None else bool(clip)
    if loaded.preset == "tiny":
        return EvalDefaults(256, SamplerConfig("respaced", 25, clip_denoised=clip), 256,
                            "FID-256")
    if loaded.preset in CPU_PRESETS:
        return EvalDefaults(2000, SamplerConfig("respaced", 50, clip_denoised=clip), 2000,
                            "FD-2k")
    pixels = math.prod(loaded.data_shape[1:])
    return EvalDefaults(10_000, SamplerConfig("ddpm", clip_denoised=clip),
                        256 if pixels <= 32 * 32 else 64, "FID-10k")
