"""The one conversion from model space to 8-bit images, and a Dataset over the result."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


def to_uint8(x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """(N, C, H, W) model-space images in [-1, 1], C in {1, 3} → (N, 3, H, W) uint8.

    Pixel = round((x + 1) * 127.5) clamped to [0, 255], in float64, ``chunk`` images at a time;
    grayscale is repeated to 3 channels (as a broadcast view, no copy). This is the only place
    where model space is turned into pixels. ±inf saturate; NaN raises.
    """
    x = torch.as_tensor(x).detach()
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, C, H, W) with C in {{1, 3}}, got "
                         f"{tuple(x.shape)}")
    if torch.isnan(x).any():
        raise ValueError("cannot convert NaN values to pixels; drop non-finite samples first")
    pixels = torch.empty(x.shape, dtype=torch.uint8)
    for i in range(0, len(x), chunk):
        block = x[i:i + chunk].cpu().double()
        pixels[i:i + chunk] = torch.round((block + 1.0) * 127.5).clamp(0, 255)
    return pixels.expand(-1, 3, -1, -1)


class UInt8Images(Dataset):
    """In-memory dataset over a (N, 3, H, W) uint8 tensor; item i is the (3, H, W) image i."""

    def __init__(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a (N, 3, H, W) uint8 tensor, got {images.dtype} "
                             f"{tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]
