"""Memorisation (Somepalli et al.): for each generated sample, the max cosine similarity to the
training set in a feature space, the fractions above 0.9 / 0.95, and the histogram
(docs/method.md §8).

Feature spaces:
- ``pixels``: flattened model-space values minus the training-set per-pixel mean (centring
  keeps a shared background from making every pair similar);
- ``digits-cnn``: the 64-D penultimate layer of the shipped digits CNN;
- ``inception``: torch-fidelity's Inception pool3 (2048-D); needs the weights file;
- ``dinov2``: DINOv2 ViT-B/14 CLS embedding from a local torch-hub copy (never downloaded);
  its ``hubconf.py`` is code: a cached copy nobody named is said on stderr, and a failure
  inside it is a one-line :class:`MetricError` (docs/reliability.md, inputs that run code).
A zero feature vector has similarity 0 to everything. Non-finite samples are dropped and counted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from dmattack.core.errors import first_line
from dmattack.core.io import atomic_path

from .errors import ConfigError, MetricError
from .extractors import extract_features, resolve_weights, weights_sha256
from .images import to_uint8

SPACES = ("pixels", "digits-cnn", "inception", "dinov2")
THRESHOLDS = (0.9, 0.95)
DINOV2_MODEL = "dinov2_vitb14"
DINOV2_URL = f"https://dl.fbaipublicfiles.com/dinov2/{DINOV2_MODEL}/{DINOV2_MODEL}_pretrain.pth"
log = logging.getLogger("dmattack")
_ANNOUNCED: set[Path] = set()
"""Cached checkouts already named on stderr in this process (once each)."""


def max_cosine_similarity(queries: torch.Tensor, keys: torch.Tensor, query_batch: int = 1024,
                          key_batch: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query row (N, D), the max cosine similarity to the key rows (M, D) (float64,
    computed in float32 on the GPU when present) and the index of that key. Works in blocks of
    query_batch × key_batch, never the full N × M matrix."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    k = torch.nn.functional.normalize(keys.float(), dim=1).to(device)
    best, index = [], []
    for qb in queries.split(query_batch):
        q = torch.nn.functional.normalize(qb.float(), dim=1).to(device)
        top = torch.full((len(q),), -torch.inf, device=device)
        arg = torch.zeros(len(q), dtype=torch.long, device=device)
        for ks in range(0, len(k), key_batch):
            sim, where = (q @ k[ks:ks + key_batch].T).max(dim=1)
            better = sim > top
            top = torch.where(better, sim, top)
            arg = torch.where(better, where + ks, arg)
        best.append(top.cpu().double())
        index.append(arg.cpu())
    return torch.cat(best), torch.cat(index)


def _dinov2_features(images: torch.Tensor, repo: str | os.PathLike | None) -> tuple[torch.Tensor,
                                                                                   Path]:
    """(N, C, H, W) model-space images → (N, 768) DINOv2 embeddings, and the weights file used.

    ``repo``: a local copy of facebookresearch/dinov2 (with hubconf.py); default the torch-hub
    cache copy. The weights must already be in torch-hub's checkpoints folder.
    """
    hub = Path(torch.hub.get_dir())
    named = repo is not None
    repo = Path(repo) if named else hub / "facebookresearch_dinov2_main"
    ckpt = hub / "checkpoints" / os.path.basename(DINOV2_URL)
    if not (repo / "hubconf.py").is_file() or not ckpt.is_file():
        raise MetricError(f"DINOv2 needs a local facebookresearch/dinov2 checkout (hubconf.py; "
                          f"looked in {repo}; pass it as dinov2_dir) and {DINOV2_URL} at {ckpt}")
    if not named and repo.resolve() not in _ANNOUNCED:  # its hubconf.py is code: say whose
        _ANNOUNCED.add(repo.resolve())
        log.warning("DINOv2: using the cached checkout %s, which no option named (its "
                    "hubconf.py runs as code; --dinov2-dir names one)", repo)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255
    chunks = []
    with _checkout_code(repo, "its hubconf.py failed"):
        model = torch.hub.load(str(repo), DINOV2_MODEL, source="local").eval().to(device)
    with torch.no_grad():
        for b in to_uint8(images).split(64):
            x = interpolate_bilinear_2d_like_tensorflow1x(b.to(device).float(), size=(224, 224),
                                                          align_corners=False)
            with _checkout_code(repo, f"its {DINOV2_MODEL} failed on the images"):
                y = model((x - mean) / std)
            chunks.append(y.float().cpu())
    return torch.cat(chunks), ckpt


@contextmanager
def _checkout_code(repo: Path, what: str) -> Iterator[None]:
    """Run code from a DINOv2 checkout: anything it raises (SystemExit too; not the user's
    Ctrl-C) becomes a one-line :class:`MetricError` naming the checkout."""
    try:
        yield
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        reason = first_line(e)
        reason = type(e).__name__ + ("" if reason == type(e).__name__ else f": {reason}")
        raise MetricError(f"DINOv2 checkout {repo}: {what} ({reason}); it is code from that "
                          "folder: check it or name another with --dinov2-dir") from e


def features(x: torch.Tensor, space: str, train_mean: torch.Tensor,
             weights: str | os.PathLike | None) -> tuple[torch.Tensor, Path | None]:
    """Rows of ``x`` (N, *shape) in ``space`` → ((N, D) features, weights file or None)."""
    if space == "pixels":
        return x.reshape(len(x), -1).double() - train_mean, None
    if space == "dinov2":
        return _dinov2_features(x, weights)
    path = resolve_weights(space, weights)
    return extract_features(x, space, path), path


def write_histogram(values: np.ndarray, path: str | os.PathLike, title: str) -> Path:
    """Histogram of max similarities in [-1, 1] with the thresholds marked; atomic PNG write."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.hist(values, bins=100, range=(min(0.0, float(values.min())), 1.0))
    for t in THRESHOLDS:
        ax.axvline(t, color="k", ls="--", lw=0.8)
    ax.set(xlabel="max cosine similarity to training set", ylabel="samples", title=title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)


def memorization(samples: torch.Tensor, train_set: torch.Tensor, *, space: str = "pixels",
                 weights: str | os.PathLike | None = None,
                 histogram_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Max cosine similarity of every finite sample to ``train_set`` in ``space``.

    Args:
        samples: (N, *shape) model-space samples; images (N, C, H, W) for the network spaces.
        train_set: (M, *shape) training data, same shape.
        weights: weights file (digits-cnn, inception) or local DINOv2 hub directory.
        histogram_path: where to write the PNG histogram (atomic); None writes nothing.
    Returns:
        ``max_similarity`` (N_finite,) float64, ``nearest_index`` (N_finite,) int64 into
        ``train_set``, ``frac_above_0.9``, ``frac_above_0.95`` (in [0, 1]), ``mean_max_similarity``,
        ``num_nonfinite``, ``space``, ``weights_sha256`` (None for pixels), ``histogram``.
    """
    if space not in SPACES:
        raise ConfigError(f"unknown memorization space {space!r}; allowed: {', '.join(SPACES)}")
    samples, train_set = torch.as_tensor(samples), torch.as_tensor(train_set)
    if samples.shape[1:] != train_set.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape[1:])} and training set "
                         f"{tuple(train_set.shape[1:])} shapes differ")
    good = samples[torch.isfinite(samples.reshape(len(samples), -1)).all(dim=1)]
    num_nonfinite = len(samples) - len(good)
    if len(good) == 0 or len(train_set) == 0:
        raise ConfigError(f"need at least 1 finite sample and 1 training item, got {len(good)} "
                         f"and {len(train_set)}")
    train_mean = train_set.reshape(len(train_set), -1).double().mean(0)
    q, path = features(good, space, train_mean, weights)
    k, _ = features(train_set, space, train_mean, weights)
    best, index = max_cosine_similarity(q, k)
    values = best.numpy()
    out: dict[str, Any] = {
        "max_similarity": values,
        "nearest_index": index.numpy(),
        **{f"frac_above_{t}": float((values > t).mean()) for t in THRESHOLDS},
        "mean_max_similarity": float(values.mean()),
        "num_nonfinite": num_nonfinite,
        "space": space,
        "weights_sha256": weights_sha256(path) if path is not None else None,
        "histogram": None,
    }
    if histogram_path is not None:
        out["histogram"] = str(write_histogram(values, histogram_path,
                                               f"memorization ({space}, N={len(values)})"))
    return out
