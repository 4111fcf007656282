"""Noise predictors with one interface: ``eps = model(x_t, t)``; the model presets are entries
of :data:`~dmattack.core.registry.PRESETS`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from ..core.errors import ConfigError
from ..core.registry import PRESETS
from .mlp import MLPEps
from .unet import UNET_PRESETS, UNetEps, build_unet

MLP_PRESETS = {
    "mlp": dict(hidden=256, depth=4, time_dim=128),
    "mlp-small": dict(hidden=128, depth=3, time_dim=64),
}


@dataclass(frozen=True)
class EvalProtocol:
    """A preset's default attack-evaluation protocol (docs/method.md §8): ``num_samples``
    samples in batches of ``batch_size``, drawn with sampler ``sampler`` (a SAMPLERS name) on
    ``sampler_steps`` steps (None: the sampler's own, e.g. all T for ``ddpm``), reported under
    ``label`` (e.g. ``FID-256``)."""

    num_samples: int
    sampler: str
    sampler_steps: int | None
    batch_size: int
    label: str


@dataclass(frozen=True)
class ModelPreset:
    """A model preset as registered in :data:`~dmattack.core.registry.PRESETS`.

    ``build(data_shape, dropout)`` makes a fresh noise predictor; ``kind`` is the data it
    serves (``"image"`` or ``"vector"``); ``steps``, ``batch_size``, ``warmup`` are the
    training defaults of a run with this preset; ``label`` is one line for listings;
    ``architecture`` names the network class (recorded in a run's config.json);
    ``channels_last``: a convolutional image network, trained in the channels-last memory
    layout on CUDA (``--channels-last``); ``evaluation``: its default attack-evaluation
    protocol, sized for a CPU, or None for the paper's (10,000 samples on the full
    ancestral chain, FID-10k)."""

    build: Callable[[tuple[int, ...], float | None], nn.Module]
    kind: str
    steps: int
    batch_size: int
    warmup: int
    label: str
    architecture: str
    channels_last: bool = False
    evaluation: EvalProtocol | None = None


def _unet(preset: str) -> Callable[[tuple[int, ...], float | None], nn.Module]:
    def build(data_shape: tuple[int, ...], dropout: float | None) -> nn.Module:
        if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
            raise ConfigError(
                f"preset {preset!r} needs square images (C, H, W); data shape is "
                f"{tuple(data_shape)}; use an mlp preset for vector data", field="preset")
        return build_unet(preset, data_shape[0], data_shape[1], dropout)

    return build


def _mlp(preset: str) -> Callable[[tuple[int, ...], float | None], nn.Module]:
    def build(data_shape: tuple[int, ...], dropout: float | None) -> nn.Module:
        if len(data_shape) != 1:
            raise ConfigError(f"preset {preset!r} needs vector data (d,); data shape is "
                              f"{tuple(data_shape)}", field="preset")
        return MLPEps(data_shape[0], dropout=dropout or 0.0, **MLP_PRESETS[preset])

    return build


UNET = "diffusers.UNet2DModel"
MLP = "dmattack.MLPEps"
# Training defaults (steps, batch size, warm-up): the CPU presets fit the 5-minute budget of
# `dmattack train` on 2 cores; the GPU presets follow Ho et al. 2020. The CPU presets'
# evaluation protocols are sized so that PGD-20 on 50% of the steps takes ≤ 3 minutes on 2
# cores (measured: ≈ 70 s for a tiny 8×8 U-Net, ≈ 45 s for mlp on 64-D vectors).
TINY_EVAL = EvalProtocol(256, "respaced", 25, 256, "FID-256")
MLP_EVAL = EvalProtocol(2000, "respaced", 50, 2000, "FD-2k")
PRESETS.register("ddpm-cifar10", ModelPreset(
    _unet("ddpm-cifar10"), "image", 800_000, 128, 5000, "Ho et al. 2020 CIFAR-10 U-Net", UNET,
    channels_last=True))
PRESETS.register("ddpm-64", ModelPreset(
    _unet("ddpm-64"), "image", 500_000, 64, 5000, "Ho et al. 2020 U-Net for 64×64 images",
    UNET, channels_last=True))
PRESETS.register("tiny", ModelPreset(
    _unet("tiny"), "image", 800, 64, 100, "small U-Net for 8×8 digits on a CPU", UNET,
    channels_last=True, evaluation=TINY_EVAL))
PRESETS.register("mlp", ModelPreset(_mlp("mlp"), "vector", 3000, 256, 100,
                                    "MLP noise predictor for vector data", MLP,
                                    evaluation=MLP_EVAL))
PRESETS.register("mlp-small", ModelPreset(_mlp("mlp-small"), "vector", 3000, 256, 100,
                                          "smaller MLP for vector data", MLP,
                                          evaluation=MLP_EVAL))


def build_model(preset: str, data_shape: Sequence[int], dropout: float | None = None
                ) -> nn.Module:
    """A fresh noise predictor for samples of ``data_shape`` ((C, H, W) images or (d,) vectors)."""
    return PRESETS.get(preset, "preset").build(tuple(data_shape), dropout)


__all__ = ["EvalProtocol", "MLPEps", "ModelPreset", "UNetEps", "build_model", "build_unet",
           "PRESETS", "UNET_PRESETS", "MLP_PRESETS"]
