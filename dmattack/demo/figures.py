"""Matplotlib figures of the demo (Agg backend, PNG, written atomically)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..core.io import write_atomic  # noqa: E402
from ..data import ObliquePlane  # noqa: E402

Cloud = tuple[str, torch.Tensor]


def _save(fig: Any, path: Path) -> Path:
    write_atomic(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return path


def _grid(x: torch.Tensor, per_row: int = 8) -> torch.Tensor:
    """(N, 64) digit vectors → one (8·rows, 8·per_row) image in [0, 1], N ≤ per_row²."""
    x = x[: per_row * per_row].reshape(-1, 8, 8).clamp(-1, 1).nan_to_num(0.0)
    rows = math.ceil(len(x) / per_row)
    canvas = torch.full((rows * 9 - 1, per_row * 9 - 1), -1.0)
    for i, img in enumerate(x):
        r, c = divmod(i, per_row)
        canvas[r * 9:r * 9 + 8, c * 9:c * 9 + 8] = img
    return (canvas + 1) / 2


def digit_grids(panels: Sequence[Cloud], path: Path, title: str) -> Path:
    """One 8×8 grid of 64 samples (64-D vectors shown as 8×8 digits) per panel."""
    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.8), squeeze=False)
    for ax, (name, x) in zip(axes[0], panels, strict=True):
        ax.imshow(_grid(x.float()), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _project(dataset: str, x: torch.Tensor) -> torch.Tensor:
    """2-D view of (…, 3) points: the plane seen edge-on (in-plane u, normal n) so distance to
    it is visible; the mixture on its first two coordinates (two of the three means overlap,
    as in the paper's figure)."""
    x = x.double()
    if dataset == "oblique-plane":
        plane = ObliquePlane()
        return torch.stack([x @ plane.basis[:, 0], x @ plane.normal], dim=-1)
    return x[..., :2]


AXES = {"oblique-plane": ("in-plane u", "normal n"), "3-gaussians": ("x0", "x1")}


def toy_scatter(dataset: str, clean: torch.Tensor, train: torch.Tensor,
                clouds: Sequence[Cloud], paths: Sequence[Cloud], path: Path,
                title: str) -> Path:
    """Top row: training data, then each method's generations; bottom row: the clean data,
    then each method's trajectories (x_T ○ → x_0 ×, a few chains). Clean data in grey under
    every panel; top-row axes fixed to the training data's range (points outside are
    counted), bottom-row axes widened to the paths."""
    c2, t2 = _project(dataset, clean), _project(dataset, train)
    lo, hi = t2.min(0).values, t2.max(0).values
    pad = 0.15 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    ncol = 1 + len(clouds)
    fig, axes = plt.subplots(2, ncol, figsize=(3.2 * ncol, 6.4), squeeze=False)

    def base(ax: Any, name: str) -> None:
        ax.scatter(c2[:, 0], c2[:, 1], s=1, c="0.8")
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(AXES[dataset][0], fontsize=8)
        ax.set_ylabel(AXES[dataset][1], fontsize=8)
        ax.tick_params(labelsize=7)

    base(axes[0, 0], "training data")
    axes[0, 0].scatter(t2[:, 0], t2[:, 1], s=1, c="tab:red")
    base(axes[1, 0], "clean data")
    for j, (name, x) in enumerate(clouds, start=1):
        p = _project(dataset, x)
        finite = torch.isfinite(p).all(dim=1)
        inside = finite & ((p >= lo) & (p <= hi)).all(dim=1)
        base(axes[0, j], f"{name}: {int((~inside).sum())}/{len(p)} off-view")
        axes[0, j].scatter(p[inside, 0], p[inside, 1], s=1, c="tab:blue")
    for j, (name, traj) in enumerate(paths, start=1):
        ax = axes[1, j]
        p = _project(dataset, traj)  # (K + 1, k, 2), x_T first
        finite = p[torch.isfinite(p).all(dim=-1)]
        base(ax, f"{name}: {p.shape[1]} trajectories")
        if len(finite):  # the view: clean data and the central 98% of the path points
            q_lo, q_hi = torch.quantile(finite, 0.01, dim=0), torch.quantile(finite, 0.99, dim=0)
            ax.set_xlim(min(lo[0], q_lo[0]), max(hi[0], q_hi[0]))
            ax.set_ylim(min(lo[1], q_lo[1]), max(hi[1], q_hi[1]))
        for i in range(p.shape[1]):
            line = ax.plot(p[:, i, 0], p[:, i, 1], lw=0.6, alpha=0.7)[0]
            ax.scatter(p[0, i, 0], p[0, i, 1], s=12, color=line.get_color(), marker="o")
            ax.scatter(p[-1, i, 0], p[-1, i, 1], s=16, c="k", marker="x", zorder=3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def steps_plot(rows: Sequence[dict[str, Any]], steps: Sequence[int], path: Path) -> Path:
    """FD (exact) and subspace error against the number of sampling steps, one line per
    (data, method)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault((r["data"], r["method"]), []).append(r)
    for ax, metric in zip(axes, ("FD (exact)", "subspace error"), strict=True):
        for (data, method), rs in series.items():
            pts = [(r["steps"], r[metric]) for r in rs if r.get(metric) is not None]
            if pts:
                ax.plot(*zip(*sorted(pts), strict=True), marker="o",
                        linestyle="-" if data == "clean" else "--",
                        label=f"{method} ({data} data)")
        ax.set_xticks(list(steps))
        ax.set_xlabel("sampling steps (respaced ancestral)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


LINESTYLES = {"fgsm": "-", "pgd": "-.", "random": "--"}
METHOD_MARKERS = {"fgsm": "o", "pgd": "s", "random": "^"}
"""Marker of each attack method's curve (PGD often lies on FGSM: keep both visible)."""


LOG_RANGE = 10.0
"""A y axis is logarithmic only when its positive values span more than this factor: a narrow
range (e.g. variance ratios 0.7–1.05) reads better on a linear axis."""


def _y_scale(ax: Any, values: Sequence[float | None]) -> None:
    """Log y axis when the finite positive ``values`` span more than :data:`LOG_RANGE`."""
    v = [x for x in values if x is not None and math.isfinite(x) and x > 0]
    if v and max(v) / min(v) > LOG_RANGE:
        ax.set_yscale("log")


def attack_plot(table: dict[str, Any], path: Path, title: str) -> Path:
    """The main metric and the variance ratio against % of steps attacked, one line per
    (model, attack); colour = model, line style and marker = attack (random control dashed,
    PGD hollow squares)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    models = sorted({r["model"] for r in table["rows"]})
    colours = dict(zip(models, ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=False))
    for ax, key, label in ((axes[0], "values", table["metric"]),
                           (axes[1], "variance_ratio", "variance ratio")):
        for r in table["rows"]:
            pts = [(q, v) for q, v in zip(r["percents"], r[key], strict=True) if v is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=METHOD_MARKERS.get(r["method"], "o"),
                        mfc="none" if r["method"] == "pgd" else colours[r["model"]],
                        ms=7 if r["method"] == "pgd" else 5, color=colours[r["model"]],
                        linestyle=LINESTYLES.get(r["method"], "-"),
                        label=f"{r['model']} · {r['series']}")
        counts = table.get("steps_attacked") or [None] * len(table["percents"])
        ax.set_xlabel("% of reverse steps attacked (attacked / total steps)")
        ax.set_ylabel(label)
        ax.set_xticks(table["percents"])
        ax.set_xticklabels([f"{p:g}%" + (f"\n{n.replace(' of ', '/')}" if n else "")
                            for p, n in zip(table["percents"], counts, strict=True)],
                           fontsize=8)
        ax.grid(alpha=0.3)
    axes[1].axhline(1.0, color="0.5", lw=0.8)
    _y_scale(axes[1], [v for r in table["rows"] for v in r["variance_ratio"]])
    axes[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def sweep_heatmap(cells: Sequence[dict[str, Any]], fractions: Sequence[float],
                  sigmas: Sequence[float], path: Path, title: str) -> Path:
    """Heatmap of ``FD difference`` over corruption fraction (x) × σ (y), diverging colours
    centred at 0 (red: Robust_adv better); each cell annotated with the value and, when the
    cell has a ``std`` of it, ± that std. Missing values are grey."""
    grid = torch.full((len(sigmas), len(fractions)), float("nan"))
    text = [["n/a"] * len(fractions) for _ in sigmas]
    for c in cells:
        i, j = list(sigmas).index(c["sigma"]), list(fractions).index(c["fraction"])
        v = c.get("FD difference")
        if v is None:
            continue
        grid[i, j] = v
        std = c.get("std", {}).get("FD difference")
        text[i][j] = f"{v:+.3g}" + (f"\n± {std:.2g}" if std is not None else "")
    finite = grid[torch.isfinite(grid)]
    lim = (float(finite.abs().max()) if len(finite) else 0.0) or 1.0
    fig, ax = plt.subplots(figsize=(1.6 * len(fractions) + 2.2, 1.0 * len(sigmas) + 1.6))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.85")
    im = ax.imshow(grid.numpy(), cmap=cmap, vmin=-lim, vmax=lim, origin="lower",
                   aspect="auto")
    for i in range(len(sigmas)):
        for j in range(len(fractions)):
            dark = bool(abs(grid[i, j]) > 0.6 * lim)  # NaN compares False
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    ax.set_xticks(range(len(fractions)), [f"{p:g}" for p in fractions])
    ax.set_yticks(range(len(sigmas)), [f"{s:g}" for s in sigmas])
    ax.set_xlabel("corrupted fraction p of the training samples")
    ax.set_ylabel("noise σ")
    fig.colorbar(im, ax=ax, label="FD(DDPM) − FD(Robust_adv)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


MODEL_COLOURS = {"ddpm": "tab:blue", "robust-adv": "tab:orange"}


def _grouped_bars(ax: Any, groups: Sequence[str], series: dict[str, list[float | None]]) -> None:
    """Bars of each series (colour by name) side by side in every group; None = no bar."""
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(groups))]
        ax.bar(xs, [math.nan if v is None else v for v in values], width,
               color=MODEL_COLOURS.get(name), label=name)
    ax.set_xticks(range(len(groups)), groups, fontsize=8, rotation=20)
    ax.grid(alpha=0.3, axis="y")


def adaptive_bars(rows: Sequence[dict[str, Any]], metrics: dict[str, str], path: Path,
                  title: str) -> Path:
    """Per data kind (row of panels): the paired pixel deviation (mean over samples, log scale)
    and the main metric (clean first) of each attack, DDPM and Robust_adv side by side."""
    kinds = list(metrics)
    fig, axes = plt.subplots(len(kinds), 2, figsize=(11, 3.4 * len(kinds)), squeeze=False)
    for ax_row, kind in zip(axes, kinds, strict=True):
        mine = [r for r in rows if r["data"] == kind]
        models = list(dict.fromkeys(r["model"] for r in mine))
        at = {(r["model"], r["method"]): r for r in mine}
        for ax, key, methods, label in (
                (ax_row[0], "pixel deviation mean",
                 [m for m in dict.fromkeys(r["method"] for r in mine) if m != "clean"],
                 "pixel deviation (mean squared, model space)"),
                (ax_row[1], "value", list(dict.fromkeys(r["method"] for r in mine)),
                 metrics[kind])):
            _grouped_bars(ax, methods, {m: [at.get((m, x), {}).get(key) for x in methods]
                                        for m in models})
            ax.set_ylabel(label, fontsize=8)
            ax.set_title(kind, fontsize=9)
        _y_scale(ax_row[0], [r.get("pixel deviation mean") for r in mine])
        ax_row[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def purification_bars(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Clean and robust accuracy per (purifier, t*) and attack."""
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    groups = list(dict.fromkeys((r["purifier"], r["t_star"]) for r in rows))
    at = {(r["purifier"], r["t_star"], r["attack"]): r for r in rows}
    fig, ax = plt.subplots(figsize=(1.6 * len(groups) + 3, 3.6))
    series = {"clean": [at[(*g, attacks[0])]["clean_accuracy"] for g in groups]}
    series.update({f"robust, {a}": [at.get((*g, a), {}).get("robust_accuracy") for g in groups]
                   for a in attacks})
    names = [p if t is None else f"{p}\nt*={t:g}" for p, t in groups]
    _grouped_bars(ax, names, series)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
