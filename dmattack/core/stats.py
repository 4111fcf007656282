"""Uncertainty for every comparison dmattack prints (docs/method.md §11.1).

A number without an interval is not a result: every estimate here comes with a bootstrap 95%
interval, and every comparison ends in a verdict that can be ``inconclusive``.

- :func:`bootstrap_ci`: percentile or BCa interval of any statistic of one or several *paired*
  samples (row i of every array comes from the same seed, so rows are resampled together).
- :func:`summarize`: ``{"mean", "median", "ci95", "n"}`` of per-sample values (the interval is
  on the mean), the JSON shape of every ``damage.<measure>``.
- :func:`paired_difference`, :func:`ratio_of_means`, :func:`ratio_difference`: effects of
  paired per-sample quantities (the same seed gives the same x_T and chain noise in both arms).
- :func:`set_metric_ci`: an interval for a set metric (FID, KID) by recomputing it on
  resampled rows of features extracted once.
- :func:`verdict` / :func:`compare`: ``held`` when the interval lies beyond +m in the claimed
  direction, ``did not hold`` when it lies beyond −m (the opposite is shown), ``inconclusive``
  otherwise (including an interval inside ±m).

Everything is seeded: the same inputs and ``seed`` give the same interval bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.special import ndtr, ndtri

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0
Method = Literal["bca", "percentile"]
Direction = Literal["greater", "less"]
VERDICTS = ("held", "did not hold", "inconclusive")

Statistic = Callable[..., np.ndarray]
"""``statistic(*arrays) -> (R,)``: each array is (R, n) (R resamples of the n paired rows);
returns one value per resample. E.g. ``lambda x: x.mean(-1)``."""


def _as_arrays(samples: Sequence[Any]) -> list[np.ndarray]:
    arrays = [np.asarray(s, dtype=np.float64).reshape(-1) for s in samples]
    if not arrays:
        raise ValueError("bootstrap needs at least one sample")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"paired samples differ in length: {[len(a) for a in arrays]}")
    return arrays


CHUNK = 1 << 22
"""Elements per block when resampling, so n = 50,000 samples stays within a few hundred MB."""


def _blocks(total: int, n: int) -> list[slice]:
    step = max(1, CHUNK // max(n, 1))
    return [slice(i, min(i + step, total)) for i in range(0, total, step)]


def _jackknife(statistic: Statistic, arrays: list[np.ndarray]) -> np.ndarray:
    """The statistic with each row left out in turn, (n,)."""
    n = len(arrays[0])
    out = []
    for block in _blocks(n, n):
        rows = np.arange(n)[block]
        keep = np.ones((len(rows), n), dtype=bool)
        keep[np.arange(len(rows)), rows] = False
        out.append(np.asarray(statistic(*(np.broadcast_to(a, keep.shape)[keep]
                                          .reshape(len(rows), n - 1) for a in arrays))))
    return np.concatenate(out).astype(np.float64)


def bootstrap_ci(
    samples: Sequence[Any], statistic: Statistic, *, level: float = LEVEL,
    n_resamples: int = RESAMPLES, method: Method = "bca", seed: int = SEED,
) -> tuple[float, float]:
    """``level`` interval of ``statistic`` over paired ``samples`` (rows resampled together).

    ``method="bca"`` (bias-corrected and accelerated, Efron 1987; the default, as
    ``scipy.stats.bootstrap``) or ``"percentile"``. A bootstrap distribution with no spread
    (e.g. identical arms) gives the degenerate interval ``(v, v)``. Non-finite resampled values
    are an error: drop non-finite rows before calling."""
    if not 0 < level < 1:
        raise ValueError(f"level {level} is not in (0, 1)")
    arrays = _as_arrays(samples)
    n = len(arrays[0])
    if n < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 samples, got {n}")
    theta = float(np.asarray(statistic(*(a[None, :] for a in arrays))).reshape(-1)[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    boot = np.concatenate([np.asarray(statistic(*(a[idx[b]] for a in arrays)), dtype=np.float64)
                           for b in _blocks(n_resamples, n)])
    if not np.isfinite(boot).all() or not math.isfinite(theta):
        raise ValueError("the statistic is not finite on some resamples")
    alpha = (1 - level) / 2
    if np.ptp(boot) == 0:
        return float(boot[0]), float(boot[0])
    quantiles = np.array([alpha, 1 - alpha])
    if method == "bca":
        below = (boot < theta).mean() + (boot == theta).mean() / 2
        z0 = ndtri(np.clip(below, 1 / (2 * n_resamples), 1 - 1 / (2 * n_resamples)))
        jack = _jackknife(statistic, arrays)
        d = jack.mean() - jack
        denom = 6 * (d**2).sum() ** 1.5
        a = (d**3).sum() / denom if denom > 0 else 0.0
        z = ndtri(quantiles)
        quantiles = ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))
    elif method != "percentile":
        raise ValueError(f"unknown interval method {method!r}; allowed: bca, percentile")
    lo, hi = np.quantile(boot, quantiles)
    return float(lo), float(hi)


def _mean(x: np.ndarray) -> np.ndarray:
    return x.mean(-1)


def summarize(values: Any, *, seed: int = SEED, level: float = LEVEL,
              n_resamples: int = RESAMPLES) -> dict[str, Any]:
    """``{"mean", "median", "ci95": [lo, hi], "n"}`` of per-sample values; the interval is the
    BCa bootstrap interval of the mean. Non-finite values are left out (and ``n`` counts what
    is left); with fewer than 2 values ``ci95`` is None."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {"mean": None, "median": None, "ci95": None, "n": 0}
    ci = (list(bootstrap_ci([x], _mean, level=level, n_resamples=n_resamples, seed=seed))
          if len(x) > 1 else None)
    return {"mean": float(x.mean()), "median": float(np.median(x)), "ci95": ci, "n": len(x)}


@dataclass(frozen=True)
class Effect:
    """An estimated effect with its interval: ``value`` (the statistic on the full sample),
    ``ci95`` (lo, hi) at ``level``, ``n`` paired rows, and what it is."""

    value: float
    ci95: tuple[float, float]
    n: int
    what: str
    level: float = LEVEL

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci95": list(self.ci95), "n": self.n, "what": self.what,
                "level": self.level}


def _finite_rows(arrays: list[np.ndarray]) -> list[np.ndarray]:
    ok = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    return [a[ok] for a in arrays]


def effect(samples: Sequence[Any], statistic: Statistic, what: str, *, seed: int = SEED,
           level: float = LEVEL, n_resamples: int = RESAMPLES) -> Effect:
    """:class:`Effect` of ``statistic`` over paired ``samples``; rows with a non-finite value
    in any sample are left out first."""
    arrays = _finite_rows(_as_arrays(samples))
    value = float(np.asarray(statistic(*(a[None, :] for a in arrays))).reshape(-1)[0])
    ci = bootstrap_ci(arrays, statistic, level=level, n_resamples=n_resamples, seed=seed)
    return Effect(value, ci, len(arrays[0]), what, level)


def paired_difference(a: Any, b: Any, *, seed: int = SEED, **kw: Any) -> Effect:
    """mean(a) − mean(b) of paired per-sample values (row i of both from the same seed)."""
    return effect([a, b], lambda x, y: (x - y).mean(-1), "mean(a) - mean(b)", seed=seed, **kw)


def _ratio(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return x.mean(-1) / y.mean(-1)


def ratio_of_means(a: Any, b: Any, *, seed: int = SEED, **kw: Any) -> Effect:
    """mean(a) / mean(b) of paired per-sample values, e.g. a model's attack damage over its
    random-control damage at the same budget and steps (docs/method.md §11.1)."""
    return effect([a, b], _ratio, "mean(a) / mean(b)", seed=seed, **kw)


def ratio_difference(a: Any, a_ref: Any, b: Any, b_ref: Any, *, seed: int = SEED,
                     **kw: Any) -> Effect:
    """mean(a)/mean(a_ref) − mean(b)/mean(b_ref), all four paired by seed: model A's
    attack-over-random damage ratio minus model B's (the same seeds in every arm)."""

    def stat(w: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return _ratio(w, x) - _ratio(y, z)

    return effect([a, a_ref, b, b_ref], stat, "mean(a)/mean(a_ref) - mean(b)/mean(b_ref)",
                  seed=seed, **kw)


def set_metric_ci(
    metric: Callable[[np.ndarray], float], n: int, *, seed: int = SEED, level: float = LEVEL,
    n_resamples: int = 200,
) -> tuple[float, float]:
    """Percentile interval of a set metric (FID, KID, …) recomputed on ``n_resamples``
    resamples: ``metric(idx)`` gets an (n,) index array into the rows it scores (features
    extracted once) and returns the number. Set metrics are biased in the sample size, so the
    interval says how much the number moves with the samples drawn, not where the
    infinite-sample value lies."""
    rng = np.random.default_rng(seed)
    values = np.array([metric(rng.integers(0, n, size=n)) for _ in range(n_resamples)])
    values = values[np.isfinite(values)]
    if len(values) < 2:
        raise ValueError("the set metric is not finite on the resamples")
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def verdict(ci: Sequence[float], *, direction: Direction, min_effect: float = 0.0) -> str:
    """The verdict on a claim about an effect with interval ``ci``.

    ``direction="greater"`` claims effect > 0 (``"less"``: effect < 0). ``held``: the whole
    interval lies beyond ``+min_effect`` in the claimed direction; ``did not hold``: it lies
    beyond ``min_effect`` in the opposite direction (the opposite is shown); ``inconclusive``:
    anything else, including an interval inside ±min_effect."""
    if min_effect < 0:
        raise ValueError(f"min_effect {min_effect} is negative")
    lo, hi = float(ci[0]), float(ci[1])
    if direction == "less":
        lo, hi = -hi, -lo
    elif direction != "greater":
        raise ValueError(f"unknown direction {direction!r}; allowed: greater, less")
    if lo > min_effect:
        return "held"
    if hi < -min_effect:
        return "did not hold"
    return "inconclusive"


@dataclass(frozen=True)
class Comparison:
    """A claim about an effect: the effect with its interval, the claimed direction, the
    minimum effect m that counts, and the verdict."""

    effect: Effect
    direction: Direction
    min_effect: float
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.effect.to_dict(), "direction": self.direction,
                "min_effect": self.min_effect, "verdict": self.verdict}

    def describe(self, fmt: Callable[[float], str] = lambda v: f"{v:.3g}") -> str:
        lo, hi = self.effect.ci95
        return f"{fmt(self.effect.value)} [{fmt(lo)}, {fmt(hi)}]"


def compare(eff: Effect, *, direction: Direction, min_effect: float = 0.0,
            null: float = 0.0) -> Comparison:
    """The :class:`Comparison` of ``eff`` against ``null`` (0 for differences; 1 for ratios):
    the interval is shifted by ``null`` before :func:`verdict`."""
    lo, hi = eff.ci95
    v = verdict((lo - null, hi - null), direction=direction, min_effect=min_effect)
    return Comparison(eff, direction, min_effect, v)
