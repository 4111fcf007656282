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


def _x_axis(ax: Any, curve: dict[str, Any]) -> None:
    counts = curve.get("steps_attacked") or [None] * len(curve["percents"])
    ax.set_xticks(curve["percents"])
    ax.set_xticklabels([f"{p:g}%" + (f"\n{n.replace(' of ', '/')}" if n else "")
                        for p, n in zip(curve["percents"], counts, strict=True)], fontsize=8)
    ax.set_xlabel("% of reverse steps attacked (attacked / total steps)")
    ax.grid(alpha=0.3)


def _metric_panel(ax: Any, curve: dict[str, Any]) -> None:
    """The metric per row; rings where the attacked steps include the zero-budget last step,
    red triangles where a set metric is better than clean (docs/method.md §11.1)."""
    ring = dict(s=110, facecolors="none", edgecolors="black", linewidths=0.8, zorder=3)
    better = dict(s=40, marker="v", color="red", zorder=4)
    marked = {"ring": False, "better": False}
    for row in curve["rows"]:
        n = len(row["values"])
        pts = [(p, v, last, up) for p, v, last, up in zip(
            curve["percents"], row["values"], row.get("last_step_attacked") or [None] * n,
            row.get("improved_under_attack") or [None] * n, strict=True) if v is not None]
        if not pts:
            continue
        ax.plot([q[0] for q in pts], [q[1] for q in pts], marker="o",
                linestyle="--" if row["control"] else "-",
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
    for row in curve["rows"]:
        pts = [(p, d["pixel deviation"]) for p, d in zip(curve["percents"], row.get("damage")
                                                          or [], strict=False)
               if d and (d.get("pixel deviation") or {}).get("mean") is not None]
        if not pts:
            continue
        xs = [0.0, *(p for p, _ in pts)]
        ys = [0.0, *(s["mean"] for _, s in pts)]
        lo = [0.0, *(s["mean"] - (s["ci95"] or [s["mean"]] * 2)[0] for _, s in pts)]
        hi = [0.0, *((s["ci95"] or [s["mean"]] * 2)[1] - s["mean"] for _, s in pts)]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3,
                    linestyle="--" if row["control"] else "-",
                    label=f"{row['model']} · {row['series']}")
    ax.set_ylabel("pixel deviation (mean, 95% CI)")


def curve_png(curve: dict[str, Any], path: str | os.PathLike) -> None:
    """``curve.png`` of a :func:`~dmattack.attack_eval.run_curve` result: the metric against %
    of steps attacked (controls dashed) and, beside it, the paired pixel deviation with its
    95% interval."""
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
