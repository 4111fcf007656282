"""Exact metrics against known distributions (no feature extractor).

Samples are (N, d) arrays or tensors, or (N, *shape) which are flattened to (N, d). Non-finite
policy, shared by every function here and by :func:`evaluators.evaluate`: rows containing any
NaN/±inf are dropped and the metric is computed on the finite rows; callers report the number
dropped (``num_nonfinite``). With fewer finite rows than a metric needs, a ValueError is raised.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import logsumexp

from .errors import ConfigError

PSNR_CAP_DB = 100.0

ArrayLike = np.ndarray | torch.Tensor


def _np(x: ArrayLike) -> np.ndarray:
    """Array or tensor → float64 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def as_rows(x: ArrayLike) -> np.ndarray:
    """(N, *shape) → float64 (N, d)."""
    x = _np(x)
    return x.reshape(len(x), -1)


def finite_rows(x: ArrayLike) -> tuple[np.ndarray, int]:
    """(N, *shape) → (finite rows as float64 (M, d), number of rows dropped N - M)."""
    rows = as_rows(x)
    keep = np.isfinite(rows).all(axis=1)
    return rows[keep], int((~keep).sum())


def _finite(x: ArrayLike, minimum: int = 1) -> np.ndarray:
    rows, _ = finite_rows(x)
    if len(rows) < minimum:
        raise ConfigError(f"need at least {minimum} finite samples, got {len(rows)}; draw more "
                          "(--num-samples)")
    return rows


def _vec(v: ArrayLike) -> np.ndarray:
    return _np(v).reshape(-1)


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root via eigh; negative round-off eigenvalues are clipped to 0."""
    w, v = np.linalg.eigh((c + c.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: ArrayLike, cov1: ArrayLike, mu2: ArrayLike, cov2: ArrayLike) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2).

    ‖mu1 − mu2‖² + tr(C1) + tr(C2) − 2 tr((√C1 C2 √C1)^½), computed with symmetric
    eigendecompositions (stable for singular covariances); clipped at 0 against round-off.
    Shapes: mu (d,), cov (d, d).
    """
    mu1, mu2, c1, c2 = _vec(mu1), _vec(mu2), _np(cov1), _np(cov2)
    d = len(mu1)
    if mu2.shape != (d,) or c1.shape != (d, d) or c2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu {mu1.shape}, {mu2.shape}; cov {c1.shape}, "
                         f"{c2.shape}")
    s1 = _psd_sqrt(c1)
    inner = s1 @ c2 @ s1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return max(0.0, float(diff @ diff + np.trace(c1) + np.trace(c2) - 2 * tr_sqrt))


def frechet_to_gaussian(samples: ArrayLike, mean: ArrayLike, cov: ArrayLike) -> float:
    """Fréchet distance between the Gaussian fit of ``samples`` (N, d) (mean, unbiased
    covariance) and the known N(mean, cov). Needs ≥ 2 finite samples."""
    x = _finite(samples, minimum=2)
    return frechet_distance(x.mean(0), np.atleast_2d(np.cov(x, rowvar=False)), mean, cov)


def _subspace_residual(samples: ArrayLike, mean: ArrayLike, basis: ArrayLike) -> np.ndarray:
    """(I − U Uᵀ)(x − μ) for every finite row; U (d, k) must have orthonormal columns."""
    x, mu, u = _finite(samples), _vec(mean), _np(basis)
    if u.ndim != 2 or u.shape[0] != x.shape[1] or mu.shape != (x.shape[1],):
        raise ValueError(f"need mean (d,) and basis (d, k) with d={x.shape[1]}, got "
                         f"{mu.shape}, {u.shape}")
    if not np.allclose(u.T @ u, np.eye(u.shape[1]), atol=1e-5):
        raise ValueError("basis columns must be orthonormal")
    centred = x - mu
    return centred - (centred @ u) @ u.T


def subspace_error(samples: ArrayLike, mean: ArrayLike, basis: ArrayLike) -> float:
    """Mean over samples of ‖(I − U Uᵀ)(x − μ)‖² (sum over the d dims; docs/method.md §8)."""
    r = _subspace_residual(samples, mean, basis)
    return float((r**2).sum(axis=1).mean())


def subspace_psnr(samples: ArrayLike, mean: ArrayLike, basis: ArrayLike,
                  data_range: float = 2.0) -> float:
    """Mean over samples of 10·log10(R² / mean_i (x_i − P(x)_i)²) in dB, P the projection.

    A sample on the subspace (zero error) would give +inf; each per-sample PSNR is capped at
    ``PSNR_CAP_DB`` = 100 dB so the mean stays finite.
    """
    mse = (_subspace_residual(samples, mean, basis) ** 2).mean(axis=1)
    with np.errstate(divide="ignore"):
        psnr = 10 * np.log10(data_range**2 / mse)
    return float(np.minimum(psnr, PSNR_CAP_DB).mean())


def plane_distance(samples: ArrayLike, normal: ArrayLike, offset: float = 0.0) -> float:
    """Mean |n̂·x − offset| over samples (N, d): distance to the plane {x : n̂·x = offset},
    n̂ = normal / ‖normal‖ (so ``offset`` is measured along the unit normal)."""
    x, n = _finite(samples), _vec(normal)
    if n.shape != (x.shape[1],):
        raise ValueError(f"normal has shape {n.shape}, samples have {x.shape[1]} dims")
    n = n / np.linalg.norm(n)
    return float(np.abs(x @ n - offset).mean())


def mixture_loglik(samples: ArrayLike, means: ArrayLike, std: float) -> float:
    """Mean exact log-density (nats per sample) of ``samples`` (N, d) under the equal-weight
    mixture of isotropic Gaussians N(means[k], std² I), ``means`` (K, d)."""
    x, m, std = _finite(samples), np.atleast_2d(_np(means)), float(std)
    d = x.shape[1]
    if m.shape[1] != d:
        raise ValueError(f"means are {m.shape}, samples have {d} dims")
    sq = ((x[:, None, :] - m[None]) ** 2).sum(-1)
    log_comp = -sq / (2 * std**2) - 0.5 * d * np.log(2 * np.pi * std**2)
    return float((logsumexp(log_comp, axis=1) - np.log(len(m))).mean())


def variance_ratio(samples: ArrayLike, reference: ArrayLike) -> float:
    """Total variance (trace of the covariance, ddof=1) of ``samples`` over that of
    ``reference``; both (N, *shape), flattened. < 1 means smoothing (docs/method.md §11)."""
    x, r = _finite(samples, minimum=2), _finite(reference, minimum=2)
    if x.shape[1] != r.shape[1]:
        raise ValueError(f"samples have {x.shape[1]} dims, reference {r.shape[1]}")
    total_ref = r.var(axis=0, ddof=1).sum()
    if total_ref == 0:
        raise ValueError("reference has zero variance")
    return float(x.var(axis=0, ddof=1).sum() / total_ref)
