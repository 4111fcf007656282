"""Noise predictors with one interface: ``eps = model(x_t, t)``; the model presets are entries
of :data:`~dmattack.registry.PRESETS`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from ..registry import PRESETS
from .mlp import MLPEps
from .unet import UNET_PRESETS, UNetEps, build_unet

MLP_PRESETS = {
    "mlp": dict(hidden=256, depth=4, time_dim=128),
    "mlp-small": dict(hidden=128, depth=3, time_dim=64),
}


@dataclass(frozen=True)
class ModelPreset:
    """A model preset as registered in :data:`~dmattack.registry.PRESETS`.

    ``build(data_shape, dropout)`` makes a fresh noise predictor; ``kind`` is the data it
    serves (``"image"`` or ``"vector"``); ``steps``, ``batch_size``, ``warmup`` are the
    training defaults of a run with this preset; ``label`` is one line for listings."""

    build: Callable[[tuple[int, ...], float | None], nn.Module]
    kind: str
    steps: int
    batch_size: int
    warmup: int
    label: str


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


# Training defaults (steps, batch size, warm-up): the CPU presets fit the 5-minute budget of
# `dmattack train` on 2 cores; the GPU presets follow Ho et al. 2020.
PRESETS.register("ddpm-cifar10", ModelPreset(_unet("ddpm-cifar10"), "image", 800_000, 128,
                                             5000, "Ho et al. 2020 CIFAR-10 U-Net"))
PRESETS.register("ddpm-64", ModelPreset(_unet("ddpm-64"), "image", 500_000, 64, 5000,
                                        "Ho et al. 2020 U-Net for 64×64 images"))
PRESETS.register("tiny", ModelPreset(_unet("tiny"), "image", 800, 64, 100,
                                     "small U-Net for 8×8 digits on a CPU"))
PRESETS.register("mlp", ModelPreset(_mlp("mlp"), "vector", 3000, 256, 100,
                                    "MLP noise predictor for vector data"))
PRESETS.register("mlp-small", ModelPreset(_mlp("mlp-small"), "vector", 3000, 256, 100,
                                          "smaller MLP for vector data"))


def build_model(preset: str, data_shape: Sequence[int], dropout: float | None = None
                ) -> nn.Module:
    """A fresh noise predictor for samples of ``data_shape`` ((C, H, W) images or (d,) vectors)."""
    return PRESETS.get(preset, "preset").build(tuple(data_shape), dropout)


__all__ = ["MLPEps", "ModelPreset", "UNetEps", "build_model", "build_unet", "PRESETS",
           "UNET_PRESETS", "MLP_PRESETS"]
