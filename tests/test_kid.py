"""KID from features (evaluators/kid.py) against torch-fidelity, and its interval."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch_fidelity.metric_kid import kid_features_to_metric

from evaluators import evaluate, metric_labels
from evaluators.kid import (
    BOOTSTRAP_FLOPS,
    BOOTSTRAP_PAIRS,
    BootstrapPlan,
    bootstrap_plan,
    kid,
    kid_interval,
)


def _features(n: int, n_ref: int, d: int, shift: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) + shift, torch.randn(n_ref, d, generator=g))


@pytest.mark.parametrize("n,n_ref,m,shift", [(64, 80, 50, 0.3), (40, 40, 40, 0.0)])
def test_kid_equals_torch_fidelity(n, n_ref, m, shift):
    f, g = _features(n, n_ref, 16, shift)
    ref = kid_features_to_metric(f, g, kid_subsets=30, kid_subset_size=m, verbose=False,
                                 rng_seed=7, kid_kernel="poly", kid_kernel_poly_degree=3,
                                 kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1)
    mean, std = kid(f.numpy(), g.numpy(), subsets=30, subset_size=m, seed=7)
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-6, abs=1e-9)
    assert std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-6, abs=1e-9)


def test_kid_rejects_bad_subset_size():
    f, g = _features(10, 10, 4, 0.0)
    with pytest.raises(ValueError, match="subset size 11"):
        kid(f.numpy(), g.numpy(), subset_size=11)


def test_bootstrap_plan_cap_rule():
    assert bootstrap_plan(64, 64) == BootstrapPlan(200, 10, True)  # 2000 pairs at most
    assert bootstrap_plan(64, 64, subsets=5) == BootstrapPlan(200, 5, False)
    assert bootstrap_plan(500, 64) == BootstrapPlan(200, 7, True)  # floor(1.5e11 / 1.92e10)
    assert bootstrap_plan(1000, 2048) == BootstrapPlan(200, 1, True)  # Inception: one each
    for m, d in ((64, 64), (256, 64), (500, 64)):
        p = bootstrap_plan(m, d)
        assert p.resamples * p.subsets * 6 * m * m * d <= BOOTSTRAP_FLOPS
        assert p.resamples * p.subsets <= BOOTSTRAP_PAIRS


def test_kid_interval_covers_point_and_separates_distributions():
    f, g = _features(60, 60, 8, 0.5)
    plan = bootstrap_plan(60, 8)
    point = kid(f.numpy(), g.numpy(), subset_size=60)[0]
    lo, hi = kid_interval(f.numpy(), g.numpy(), subset_size=60, plan=plan)
    assert lo < hi and lo > 0  # a shift of 0.5 per coordinate is detected
    assert lo <= point * 1.5 and hi >= point * 0.5
    again = kid_interval(f.numpy(), g.numpy(), subset_size=60, plan=plan)
    assert again == (lo, hi)  # seeded


def test_evaluate_kid_reports_interval(tmp_path):
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images[:300], dtype=torch.float32)[:, None] / 8 - 1
    tic = time.perf_counter()
    res = evaluate(x[:64], x[64:300], ["kid"], cache_dir=tmp_path)
    labels = metric_labels("kid", feature_extractor="digits-cnn")
    assert sorted(labels + ["protocol"]) == sorted(res)
    lo, hi = res["KID ci95 lo (digits-cnn)"], res["KID ci95 hi (digits-cnn)"]
    assert lo < hi and np.isfinite(lo)
    p = res["protocol"]["kid_interval"]
    assert p["resamples"] == 200 and p["subsets_per_resample"] == 10 and p["capped"]
    assert not list(tmp_path.rglob("samples-*"))  # the one-use samples entry is gone
    assert time.perf_counter() - tic < 60


def test_printed_metrics_show_kid_with_its_interval():
    from dmattack.commands.output import metric_row

    row = metric_row({"KID (digits-cnn)": 0.0123, "KID std (digits-cnn)": 0.002,
                      "KID ci95 lo (digits-cnn)": 0.01, "KID ci95 hi (digits-cnn)": 0.015,
                      "KID": None, "KID ci95 lo": None, "KID ci95 hi": None,
                      "FID": 3.0, "protocol": {}})
    assert row == {"KID (digits-cnn)": "0.0123 [0.01, 0.015]", "KID std (digits-cnn)": 0.002,
                   "KID": None, "FID": 3.0}


def test_resample_without_copies_equals_plain_kid():
    f, g = _features(30, 40, 6, 0.2)
    perm = np.random.default_rng(0).permutation(30)  # a resample with no repeated row
    plain = kid(f.numpy()[perm], g.numpy(), subsets=5, subset_size=25)[0]
    with_ids = kid(f.numpy()[perm], g.numpy(), subsets=5, subset_size=25, ids=perm)[0]
    assert with_ids == pytest.approx(plain, rel=1e-5)


def test_curve_rows_and_csv_carry_the_kid_interval():
    """Issue 21: KID is reported with its interval in the curve table and curve.csv too."""
    import csv
    import io

    from dmattack.evaluation.attack_eval.render import curve_csv, marked_values, metric_interval

    metrics = {"KID (digits-cnn)": 0.0123, "KID ci95 lo (digits-cnn)": 0.01,
               "KID ci95 hi (digits-cnn)": 0.015}
    assert metric_interval(metrics, "KID (digits-cnn)") == [0.01, 0.015]
    assert metric_interval(metrics, "FID (digits-cnn)") is None
    row = {"series": "fgsm", "model": "m", "values": [0.0123, 0.02],
           "value_ci95": [[0.01, 0.015], [0.017, 0.024]], "last_step_attacked": [None, False],
           "improved_under_attack": [None, False], "damage": [None, None]}
    assert marked_values(row) == ["0.0123 [0.01, 0.015]", "0.02 [0.017, 0.024]"]
    curve = {"metric": "KID (digits-cnn)", "percents": [0.0, 50.0],
             "steps_attacked": [None, "5 of 10"], "rows": [row]}
    header, line = list(csv.reader(io.StringIO(curve_csv(curve))))
    cells = dict(zip(header, line, strict=True))
    assert cells["50% metric ci lo"] == "0.017" and cells["0% metric ci hi"] == "0.015"
