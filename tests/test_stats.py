"""dmattack.core.stats against independent truth: scipy.stats.bootstrap on known distributions, a
coverage simulation, closed forms of the verdict rule, and self-comparison."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from dmattack.core import stats


@pytest.mark.parametrize("method", ["bca", "percentile"])
@pytest.mark.parametrize("dist", ["normal", "exponential"])
def test_interval_matches_scipy_bootstrap(method: str, dist: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 1.0, 200) if dist == "normal" else rng.exponential(1.0, 200)
    lo, hi = stats.bootstrap_ci([x], lambda a: a.mean(-1), method=method, n_resamples=20000)
    ref = sps.bootstrap((x,), np.mean, method="BCa" if method == "bca" else "percentile",
                        n_resamples=20000, random_state=2).confidence_interval
    width = ref.high - ref.low
    # independent resamples: endpoints agree to a few percent of the width
    assert abs(lo - ref.low) < 0.05 * width
    assert abs(hi - ref.high) < 0.05 * width


def test_paired_difference_matches_scipy_paired() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(0, 1, 150)
    b = a + rng.normal(0.3, 0.2, 150)  # strongly paired: the paired interval is narrow
    eff = stats.paired_difference(b, a, n_resamples=20000)
    ref = sps.bootstrap((b, a), lambda x, y, axis=-1: (x - y).mean(axis), paired=True,
                        method="BCa", n_resamples=20000, random_state=4).confidence_interval
    width = ref.high - ref.low
    assert abs(eff.ci95[0] - ref.low) < 0.05 * width
    assert abs(eff.ci95[1] - ref.high) < 0.05 * width
    assert width < 0.1  # an unpaired interval would be ~0.45 wide


@pytest.mark.parametrize("method", ["bca", "percentile"])
def test_coverage_simulation(method: str) -> None:
    """The 95% interval of a mean covers the true mean in 93–97% of 600 synthetic trials."""
    rng = np.random.default_rng(5)
    trials, covered = 600, 0
    for k in range(trials):
        x = rng.normal(1.0, 2.0, 60)
        lo, hi = stats.bootstrap_ci([x], lambda a: a.mean(-1), method=method,
                                    n_resamples=1000, seed=k)
        covered += lo <= 1.0 <= hi
    assert 0.93 <= covered / trials <= 0.97, covered / trials


def test_ratio_coverage_simulation() -> None:
    """Paired ratio of means (attack over random control): true ratio 1.5 covered 93–97%."""
    rng = np.random.default_rng(6)
    trials, covered = 500, 0
    for k in range(trials):
        rand = rng.gamma(4.0, 0.25, 80)  # mean 1
        attack = 1.5 * rand * rng.gamma(20.0, 0.05, 80)  # mean 1.5, paired with rand
        eff = stats.ratio_of_means(attack, rand, n_resamples=1000, seed=k)
        covered += eff.ci95[0] <= 1.5 <= eff.ci95[1]
    assert 0.93 <= covered / trials <= 0.97, covered / trials


def test_self_comparison_is_inconclusive() -> None:
    """A model's per-sample damage against itself (or a byte-identical copy) is never held
    nor did-not-hold, whatever the minimum effect."""
    rng = np.random.default_rng(7)
    damage = rng.exponential(0.1, 64)
    copy = damage.copy()
    for direction in ("greater", "less"):
        for m in (0.0, 0.01):
            diff = stats.compare(stats.paired_difference(damage, copy), direction=direction,
                                 min_effect=m)
            assert diff.verdict == "inconclusive"
            assert diff.effect.ci95 == (0.0, 0.0)
            ratio = stats.compare(stats.ratio_of_means(damage, copy), direction=direction,
                                  min_effect=m, null=1.0)
            assert ratio.verdict == "inconclusive"
    rd = stats.ratio_difference(damage, damage * 0.5, copy, copy * 0.5)
    assert stats.compare(rd, direction="less").verdict == "inconclusive"


def test_verdict_rule() -> None:
    v = stats.verdict
    assert v((0.2, 0.5), direction="greater") == "held"
    assert v((0.2, 0.5), direction="greater", min_effect=0.3) == "inconclusive"
    assert v((-0.5, -0.2), direction="greater") == "did not hold"
    assert v((-0.5, -0.2), direction="less") == "held"
    assert v((-0.1, 0.3), direction="greater") == "inconclusive"
    assert v((-0.05, 0.05), direction="less", min_effect=0.1) == "inconclusive"
    with pytest.raises(ValueError, match="direction"):
        v((0, 1), direction="up")  # type: ignore[arg-type]


def test_known_effect_is_held_and_reversed_claim_did_not_hold() -> None:
    rng = np.random.default_rng(8)
    a = rng.exponential(1.0, 100)
    b = a * 0.5 + rng.normal(0, 0.01, 100)
    eff = stats.paired_difference(b, a)
    assert stats.compare(eff, direction="less").verdict == "held"
    assert stats.compare(eff, direction="greater").verdict == "did not hold"


def test_summarize_shape_and_seeded() -> None:
    x = np.arange(20.0)
    s = stats.summarize(x)
    assert set(s) == {"mean", "median", "ci95", "n"}
    assert s["mean"] == 9.5 and s["median"] == 9.5 and s["n"] == 20
    assert s["ci95"][0] < 9.5 < s["ci95"][1]
    assert stats.summarize(x) == s  # seeded: bit for bit
    assert stats.summarize([np.nan, 1.0, 3.0])["n"] == 2
    assert stats.summarize([1.0])["ci95"] is None
    assert stats.summarize([])["mean"] is None


def test_large_sample_is_chunked() -> None:
    x = np.random.default_rng(9).normal(size=30000)
    lo, hi = stats.bootstrap_ci([x], lambda a: a.mean(-1), n_resamples=400)
    assert lo < x.mean() < hi


def test_set_metric_interval() -> None:
    """Interval of a set statistic recomputed on resampled rows: the variance of N(0, 4)."""
    x = np.random.default_rng(10).normal(0, 2, 400)
    lo, hi = stats.set_metric_ci(lambda idx: float(x[idx].var()), len(x), n_resamples=400)
    assert lo < 4.0 < hi
    assert hi - lo < 2.0
