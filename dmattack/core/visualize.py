"""Pictures of samples (image grids for images and 64-D digit vectors, scatter plots for 3-D)
and of attacked-steps curves (the metric and the paired damage)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

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


MIN_SIDE = 64
"""Images smaller than this many pixels a side are enlarged (nearest neighbour, an integer
factor) in the PNGs, so an 8×8 digit is readable (64×64) and a 32×32 image shows at 64×64."""


def upscale(images: torch.Tensor, min_side: int = MIN_SIDE) -> torch.Tensor:
    """(N, C, H, W) images enlarged by the integer factor ⌈min_side / min(H, W)⌉ (nearest
    neighbour: each pixel becomes a block, no new values); unchanged when large enough."""
    factor = max(1, -(-min_side // min(images.shape[-2:])))
    if factor == 1:
        return images
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def save_samples_png(samples: torch.Tensor, path: str | os.PathLike, title: str = "",
                     max_images: int = 64) -> None:
    """Write a PNG of model-space samples (N, *shape) atomically.

    Images ([-1, 1]) go into a grid, enlarged to at least :data:`MIN_SIDE` pixels a side
    (nearest neighbour); 2-D/3-D vectors into a scatter plot (first two coordinates, third as
    colour). Non-finite samples are dropped from scatter plots.
    """
    samples = samples.detach().float().cpu()
    images = as_images(samples)
    if images is not None:
        grid = upscale(((images[:max_images].clamp(-1, 1) + 1) / 2).nan_to_num(0.0))
        nrow = max(1, math.isqrt(len(grid)))
        write_atomic(path, lambda p: save_image(grid, p, nrow=nrow, padding=2, format="png"))
        return
    scatter_png([samples], [title or "samples"], path)


def save_pairs_png(clean: torch.Tensor, attacked: torch.Tensor, path: str | os.PathLike,
                   title: str = "", max_pairs: int = 16) -> bool:
    """Clean and attacked model-space images (N, *shape) side by side, pair i in column i
    (clean above, attacked below), the pair's damage ‖attacked − clean‖₂ (model space,
    [-1, 1] pixels) under it; nearest-neighbour pixels. Written atomically; returns False
    (nothing written) when the samples are not images."""
    a, b = as_images(clean.detach().float().cpu()), as_images(attacked.detach().float().cpu())
    if a is None or b is None:
        return False
    n = min(max_pairs, len(a))
    damage = (b[:n] - a[:n]).flatten(1).norm(dim=1)
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n + 0.6, 3.0), squeeze=False)
    for i in range(n):
        for row, x in enumerate((a[i], b[i])):
            ax = axes[row][i]
            img = ((x.clamp(-1, 1) + 1) / 2).nan_to_num(0.0).permute(1, 2, 0).squeeze(-1)
            ax.imshow(img.numpy(), cmap="gray" if img.dim() == 2 else None, vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[1][i].set_xlabel(f"{damage[i].item():.3g}", fontsize=9)
    axes[0][0].set_ylabel("clean")
    axes[1][0].set_ylabel("attacked")
    fig.suptitle(f"{title + ' · ' if title else ''}‖attacked − clean‖₂ under each pair",
                 fontsize=10)
    fig.tight_layout()
    write_atomic(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return True


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


def _x_axis(ax: Any, curve: dict[str, Any]) -> None:
    counts = curve.get("steps_attacked") or [None] * len(curve["percents"])
    ax.set_xticks(curve["percents"])
    ax.set_xticklabels([f"{p:g}%" + (f"\n{n.replace(' of ', '/')}" if n else "")
                        for p, n in zip(curve["percents"], counts, strict=True)], fontsize=8)
    ax.set_xlabel("% of reverse steps attacked (attacked / total steps)")
    ax.grid(alpha=0.3)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINES = ("-", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
CONTROL_LINES = ("--", ":", (0, (1, 3)), (0, (6, 3)))


def series_style(i: int, control: bool) -> dict[str, Any]:
    """Matplotlib style of series ``i`` of a curve: its own marker, line style (dashed or
    dotted for a control) and marker size, hollow on every other series, so that series with
    identical values stay visible on top of each other."""
    lines = CONTROL_LINES if control else LINES
    return {"marker": MARKERS[i % len(MARKERS)], "linestyle": lines[i % len(lines)],
            "markersize": 4 + 2 * (i % 3), "markerfacecolor": "none" if i % 2 else None,
            "alpha": 0.9}


def _metric_panel(ax: Any, curve: dict[str, Any]) -> None:
    """The metric per row; rings where the attacked steps include the zero-budget last step,
    red triangles where a set metric is better than clean (docs/method.md §11.1)."""
    ring = dict(s=110, facecolors="none", edgecolors="black", linewidths=0.8, zorder=3)
    better = dict(s=40, marker="v", color="red", zorder=4)
    marked = {"ring": False, "better": False}
    for i, row in enumerate(curve["rows"]):
        n = len(row["values"])
        pts = [(p, v, last, up) for p, v, last, up in zip(
            curve["percents"], row["values"], row.get("last_step_attacked") or [None] * n,
            row.get("improved_under_attack") or [None] * n, strict=True) if v is not None]
        if not pts:
            continue
        ax.plot([q[0] for q in pts], [q[1] for q in pts], **series_style(i, row["control"]),
                label=f"{row['model']} · {row['series']}")
        for key, style, idx in (("ring", ring, 2), ("better", better, 3)):
            chosen = [(q[0], q[1]) for q in pts if q[idx]]
            if chosen:
                ax.scatter(*zip(*chosen, strict=True), **style)
                marked[key] = True
    if marked["ring"]:  # one legend entry each, last
        ax.scatter([], [], label="attacked steps include the last (budget 0)", **ring)
    if marked["better"]:
        ax.scatter([], [], label="better than clean under attack (‡)", **better)
    ax.set_ylabel(curve["metric"] or "metric")


def _damage_panel(ax: Any, curve: dict[str, Any]) -> None:
    """Pixel deviation per row: mean over samples with its 95% interval (0 at 0%)."""
    for i, row in enumerate(curve["rows"]):
        pts = [(p, d["pixel deviation"]) for p, d in zip(curve["percents"], row.get("damage")
                                                          or [], strict=False)
               if d and (d.get("pixel deviation") or {}).get("mean") is not None]
        if not pts:
            continue
        xs = [0.0, *(p for p, _ in pts)]
        ys = [0.0, *(s["mean"] for _, s in pts)]
        lo = [0.0, *(s["mean"] - (s["ci95"] or [s["mean"]] * 2)[0] for _, s in pts)]
        hi = [0.0, *((s["ci95"] or [s["mean"]] * 2)[1] - s["mean"] for _, s in pts)]
        ax.errorbar(xs, ys, yerr=[lo, hi], capsize=3, **series_style(i, row["control"]),
                    label=f"{row['model']} · {row['series']}")
    ax.set_ylabel("pixel deviation (mean, 95% CI)")


def curve_png(curve: dict[str, Any], path: str | os.PathLike) -> None:
    """``curve.png`` of a :func:`~dmattack.evaluation.attack_eval.run_curve` result: the metric
    against %
    of steps attacked and, beside it, the paired pixel deviation with its 95% interval; each
    series with its own marker and line style (:func:`series_style`; controls dashed or
    dotted), linear axes."""
    fig, (metric_ax, damage_ax) = plt.subplots(1, 2, figsize=(11, 4))
    _metric_panel(metric_ax, curve)
    _damage_panel(damage_ax, curve)
    for ax in (metric_ax, damage_ax):
        _x_axis(ax, curve)
        if ax.get_legend_handles_labels()[0]:  # none when every value is None
            ax.legend(fontsize=7)
    fig.tight_layout()
    write_atomic(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)
