"""KID from features, computed as torch-fidelity computes it, and its bootstrap interval
(docs/method.md §8).

KID is the unbiased MMD² with the polynomial kernel k(x, y) = (x·y / d + 1)³, averaged over
``subsets`` pairs of random subsets of ``subset_size`` rows (drawn without replacement by
``numpy.random.RandomState(seed)``, samples first, then reference, per subset), in the dtype of
the features (torch-fidelity: float32). :func:`kid` reproduces ``torch_fidelity.metric_kid``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dmattack.core import stats

KID_SUBSETS = 100  # torch-fidelity's default kid_subsets
KID_SEED = 2020  # torch-fidelity's default rng_seed
KID_RESAMPLES = 200  # bootstrap resamples of the samples' rows
BOOTSTRAP_FLOPS = 1.5e11
"""Kernel flops allowed for one interval before the subsets per resample are cut (≈ 6 s at
25 GFLOP/s, float32 on one CPU core): a subset pair costs three m × d by d × m matrix
products, 6·m²·d flops (docs/method.md §8)."""
BOOTSTRAP_PAIRS = 2000
"""Subset pairs allowed for one interval (each costs ≈ 0.1 ms of Python besides its flops):
10 per resample, so a small digits KID's interval takes about a second."""


def _mmd2_poly(x: np.ndarray, y: np.ndarray, ids: np.ndarray | None = None) -> float:
    """Unbiased MMD² of two (m, d) blocks with the cubic polynomial kernel (γ = 1/d, c = 1).
    ``ids`` (m,): the source row of each row of ``x`` in a bootstrap resample; pairs of
    copies of one row are then left out of the x-x mean like the diagonal (docs/method.md §8)."""
    m, d = x.shape
    gamma = 1.0 / d

    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (np.matmul(a, b.T) * gamma + 1) ** 3

    k_xx, k_yy, k_xy = k(x, x), k(y, y), k(x, y)
    yy = (k_yy.sum(axis=1) - np.diagonal(k_yy)).sum()
    xy = 2 * k_xy.sum(axis=0).sum() / (m * m)
    if ids is None:  # torch-fidelity's order of operations, float32 included
        xx = (k_xx.sum(axis=1) - np.diagonal(k_xx)).sum()
        return float((xx + yy) / (m * (m - 1)) - xy)
    distinct = ids[:, None] != ids[None, :]
    xx = k_xx[distinct].sum(dtype=np.float64) / max(int(distinct.sum()), 1)
    return float(xx + yy / (m * (m - 1)) - xy)


def kid_subset_values(f: np.ndarray, g: np.ndarray, *, subsets: int = KID_SUBSETS,
                      subset_size: int, seed: int = KID_SEED,
                      ids: np.ndarray | None = None) -> np.ndarray:
    """(subsets,) MMD² of the random subset pairs of samples ``f`` (N, d) and reference ``g``
    (N_ref, d); ``subset_size`` ≤ min(N, N_ref); ``ids`` (N,) as in :func:`_mmd2_poly`."""
    if f.ndim != 2 or g.ndim != 2 or f.shape[1] != g.shape[1]:
        raise ValueError(f"features must be (N, d) and (N_ref, d), got {f.shape} and {g.shape}")
    if not 2 <= subset_size <= min(len(f), len(g)):
        raise ValueError(f"KID subset size {subset_size} must be in [2, min(N, N_ref) = "
                         f"{min(len(f), len(g))}]")
    rng = np.random.RandomState(seed)
    out = np.zeros(subsets)
    for i in range(subsets):
        rows = rng.choice(len(f), subset_size, replace=False)
        b = g[rng.choice(len(g), subset_size, replace=False)]
        out[i] = _mmd2_poly(f[rows], b, None if ids is None else ids[rows])
    return out


def kid(f: np.ndarray, g: np.ndarray, *, subsets: int = KID_SUBSETS, subset_size: int,
        seed: int = KID_SEED, ids: np.ndarray | None = None) -> tuple[float, float]:
    """(KID, std over subsets) as torch-fidelity's ``kernel_inception_distance_mean/_std``
    (``ids`` None; else as :func:`_mmd2_poly`)."""
    v = kid_subset_values(f, g, subsets=subsets, subset_size=subset_size, seed=seed, ids=ids)
    return float(v.mean()), float(v.std())


@dataclass(frozen=True)
class BootstrapPlan:
    """How a KID interval is computed: ``resamples`` resamples of the samples' rows, each
    scored with ``subsets`` subset pairs (fewer than the point estimate's when capped)."""

    resamples: int
    subsets: int
    capped: bool


def bootstrap_plan(subset_size: int, dim: int, subsets: int = KID_SUBSETS) -> BootstrapPlan:
    """The documented cap (docs/method.md §8): always :data:`KID_RESAMPLES` resamples, each
    with as many subset pairs as :data:`BOOTSTRAP_FLOPS` and :data:`BOOTSTRAP_PAIRS` allow,
    between 1 and ``subsets``."""
    by_flops = int(BOOTSTRAP_FLOPS // (KID_RESAMPLES * 6.0 * subset_size ** 2 * dim))
    n = max(1, min(subsets, by_flops, BOOTSTRAP_PAIRS // KID_RESAMPLES))
    return BootstrapPlan(KID_RESAMPLES, n, n < subsets)


def kid_interval(f: np.ndarray, g: np.ndarray, *, subset_size: int, plan: BootstrapPlan,
                 seed: int = stats.SEED, level: float = stats.LEVEL) -> tuple[float, float]:
    """Percentile ``level`` interval of KID over ``plan.resamples`` resamples (with
    replacement, :func:`dmattack.core.stats.set_metric_ci`, seeded) of the rows of ``f`` (N, d);
    the reference ``g`` is fixed. Each resample's KID uses ``plan.subsets`` subset pairs
    drawn with torch-fidelity's seed, and leaves pairs of copies of one sample out of its x-x
    mean (a copy paired with itself would count k(x, x), the diagonal the unbiased estimator
    drops, and shift every resample upwards)."""

    def metric(idx: np.ndarray) -> float:
        return kid(f[idx], g, subsets=plan.subsets, subset_size=subset_size, ids=idx)[0]

    return stats.set_metric_ci(metric, len(f), seed=seed, level=level,
                               n_resamples=plan.resamples)
