"""diffusers ``UNet2DModel`` presets behind the ``eps = model(x_t, t)`` interface."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from diffusers import UNet2DModel

# Ho et al. 2020 CIFAR-10 network (35.7M parameters): ch 128, mult (1, 2, 2, 2), 2 res blocks,
# attention at 16x16, dropout 0.1.
UNET_PRESETS: dict[str, dict[str, Any]] = {
    "ddpm-cifar10": dict(
        block_out_channels=(128, 256, 256, 256),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        dropout=0.1,
        norm_num_groups=32,
        attention_head_dim=None,
    ),
    # Ho et al. CelebA-HQ/LSUN layout at 64x64: mult (1, 1, 2, 2, 4), attention at 16x16.
    "ddpm-64": dict(
        block_out_channels=(128, 128, 256, 256, 512),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                          "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        dropout=0.1,
        norm_num_groups=32,
        attention_head_dim=None,
    ),
    # CPU-sized network for 8x8 / 16x16 images (~0.27M parameters).
    "tiny": dict(
        block_out_channels=(32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        dropout=0.0,
        norm_num_groups=8,
        attention_head_dim=None,
    ),
}


class UNetEps(nn.Module):
    """Wraps a ``UNet2DModel`` so that ``model(x_t, t)`` returns ε̂ (B, C, H, W)."""

    def __init__(self, unet: UNet2DModel) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def build_unet(preset: str, channels: int, resolution: int, dropout: float | None = None
               ) -> UNetEps:
    from diffusers import UNet2DModel  # slow import: only when a U-Net is built

    cfg = dict(UNET_PRESETS[preset])
    if dropout is not None:
        cfg["dropout"] = dropout
    unet = UNet2DModel(sample_size=resolution, in_channels=channels, out_channels=channels, **cfg)
    return UNetEps(unet)
