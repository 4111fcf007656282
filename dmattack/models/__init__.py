"""Noise predictors with one interface: ``eps = model(x_t, t)``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .mlp import MLPEps
from .unet import UNET_PRESETS, UNetEps, build_unet

MLP_PRESETS = {
    "mlp": dict(hidden=256, depth=4, time_dim=128),
    "mlp-small": dict(hidden=128, depth=3, time_dim=64),
}
PRESETS = (*UNET_PRESETS, *MLP_PRESETS)


def build_model(preset: str, data_shape: Sequence[int], dropout: float | None = None
                ) -> nn.Module:
    """A fresh noise predictor for samples of ``data_shape`` ((C, H, W) images or (d,) vectors)."""
    if preset in UNET_PRESETS:
        if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
            raise ValueError(
                f"preset {preset!r} needs square images (C, H, W); data shape is "
                f"{tuple(data_shape)}; use an mlp preset for vector data"
            )
        return build_unet(preset, data_shape[0], data_shape[1], dropout)
    if preset in MLP_PRESETS:
        if len(data_shape) != 1:
            raise ValueError(
                f"preset {preset!r} needs vector data (d,); data shape is {tuple(data_shape)}"
            )
        return MLPEps(data_shape[0], dropout=dropout or 0.0, **MLP_PRESETS[preset])
    raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")


__all__ = ["MLPEps", "UNetEps", "build_model", "build_unet", "PRESETS", "UNET_PRESETS",
           "MLP_PRESETS"]
