"""Pictures of samples: image grids for images (and 64-D digit vectors), scatter plots for 3-D."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import save_image  # noqa: E402

from .io import write_atomic  # noqa: E402


def as_images(samples: torch.Tensor) -> torch.Tensor | None:
    """(N, C, H, W) view of model-space samples, or None if they are not image-like.

    Vectors whose length is a square (e.g. 64-D digits-subspace) become 1×√d×√d images.
    """
    if samples.dim() == 4:
        return samples
    if samples.dim() == 2:
        side = math.isqrt(samples.shape[1])
        if side * side == samples.shape[1] and side >= 4:
            return samples.reshape(-1, 1, side, side)
    return None


def save_samples_png(samples: torch.Tensor, path: str | os.PathLike, title: str = "",
                     max_images: int = 64) -> None:
    """Write a PNG of model-space samples (N, *shape) atomically.

    Images ([-1, 1]) go into a grid; 2-D/3-D vectors into a scatter plot (first two
    coordinates, third as colour). Non-finite samples are dropped from scatter plots.
    """
    samples = samples.detach().float().cpu()
    images = as_images(samples)
    if images is not None:
        grid = ((images[:max_images].clamp(-1, 1) + 1) / 2).nan_to_num(0.0)
        nrow = max(1, math.isqrt(len(grid)))
        write_atomic(path, lambda p: save_image(grid, p, nrow=nrow, padding=1, format="png"))
        return
    scatter_png([samples], [title or "samples"], path)


def scatter_png(clouds: Sequence[torch.Tensor], titles: Sequence[str],
                path: str | os.PathLike, dims: tuple[int, int] = (0, 1)) -> None:
    """Side-by-side scatter plots of point clouds (N_i, d≥2), finite rows only."""
    fig, axes = plt.subplots(1, len(clouds), figsize=(4 * len(clouds), 4), squeeze=False)
    for ax, cloud, title in zip(axes[0], clouds, titles, strict=True):
        cloud = cloud[torch.isfinite(cloud).all(dim=1)]
        colour = {"c": cloud[:, 2], "cmap": "viridis"} if cloud.shape[1] > 2 else {}
        ax.scatter(cloud[:, dims[0]], cloud[:, dims[1]], s=2, **colour)
        ax.set_title(title)
        ax.set_xlabel(f"x{dims[0]}")
        ax.set_ylabel(f"x{dims[1]}")
    fig.tight_layout()
    write_atomic(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
