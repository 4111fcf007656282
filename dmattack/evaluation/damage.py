"""The paired damage of an attack, its intervals, and model comparisons on it (docs/method.md
§11.1).

Clean and attacked samples of the same seed share x_T and every chain noise, so the damage of
sample i is the attack's effect on that sample alone. Every measure is kept per sample in seed
order (:func:`damage_per_sample`), summarised with a bootstrap 95% interval
(:func:`summarize_damage`), set against the random control of the same model, budget and steps
(:func:`with_random_baselines`), and compared between models paired by seed
(:func:`curve_comparisons`), all with :mod:`dmattack.core.stats`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core import stats

DIGITS_SHAPE = (1, 8, 8)


@functools.cache
def _digits_classifier() -> nn.Module | None:
    from evaluators.digits_model import DEFAULT_WEIGHTS, load_digits_cnn

    return load_digits_cnn().eval() if Path(DEFAULT_WEIGHTS).exists() else None


PIXEL = "pixel deviation"
CLASS_CHANGED = "class changed (digits-cnn)"
PerSample = dict[str, list[float | None]]
"""Per-sample damage ``{measure: [value | None, …]}`` in seed order (None: a non-finite row)."""


def feature_measure(extractor: str) -> str:
    """The damage measure's name for feature-space distances, e.g. ``feature distance
    (digits-cnn)``."""
    return f"feature distance ({extractor})"


def damage_per_sample(clean: torch.Tensor, attacked: torch.Tensor,
                      feature_extractor: str | None = None,
                      device: torch.device | str = "cpu", batch_size: int = 256) -> PerSample:
    """Per-sample damage of an attack, between the clean and the attacked sample of each seed
    (docs/method.md §11.1).

    ``clean`` and ``attacked`` are (N, *shape) in model space, row i from the same seed.
    Returns, in seed order, ``pixel deviation``: the mean squared difference over the
    sample's dimensions (model-space units²); for digits-shaped data (1×8×8, when the shipped
    digits-cnn weights exist) ``class changed (digits-cnn)``: 1.0 if the classifier's class
    differs, else 0.0; with ``feature_extractor`` (``digits-cnn`` or ``inception``: the one a
    feature-distance attack maximised) ``feature distance (<extractor>)``: ‖φ(attacked) −
    φ(clean)‖². A row with a non-finite value in either sample is None in every measure.
    """
    if clean.shape != attacked.shape:
        raise ValueError(f"clean {tuple(clean.shape)} and attacked {tuple(attacked.shape)} "
                         "samples differ in shape")
    c, a = clean.double().flatten(1), attacked.double().flatten(1)
    ok = torch.isfinite(c).all(1) & torch.isfinite(a).all(1)
    rows = ok.nonzero().flatten()

    def scatter(values: torch.Tensor) -> list[float | None]:
        out: list[float | None] = [None] * len(ok)
        for i, v in zip(rows.tolist(), values.double().cpu().tolist(), strict=True):
            out[i] = float(v)
        return out

    measures = {PIXEL: scatter((a[ok] - c[ok]).pow(2).mean(1))}
    net = _digits_classifier() if tuple(clean.shape[1:]) == DIGITS_SHAPE else None
    if net is not None:
        with torch.no_grad():
            before = net(clean[ok].float()).argmax(1)
            after = net(attacked[ok].float()).argmax(1)
        measures[CLASS_CHANGED] = scatter((before != after).double())
    if feature_extractor is not None:
        from ..attacks.distances import FeatureDistance

        dist = FeatureDistance(feature_extractor, tuple(clean.shape[1:]), device)
        with torch.no_grad():
            values = [dist(attacked[ok][i:i + batch_size].float().to(device),
                           clean[ok][i:i + batch_size].float().to(device)).cpu()
                      for i in range(0, len(rows), batch_size)]
        measures[feature_measure(feature_extractor)] = scatter(
            torch.cat(values) if values else torch.empty(0))
    return measures


def summarize_damage(per_sample: PerSample) -> dict[str, Any]:
    """``{measure: {"mean", "median", "ci95": [lo, hi], "n"}, "num_samples",
    "num_nonfinite"}`` of :func:`damage_per_sample`'s values: the 95% interval is the BCa
    bootstrap interval of the mean over seeds (:func:`dmattack.core.stats.summarize`; 2000
    resamples, seed 0). For the class-change measure the mean is the share of samples whose
    class changed."""
    pixel = per_sample[PIXEL]
    out: dict[str, Any] = {m: stats.summarize([np.nan if v is None else v for v in values])
                           for m, values in per_sample.items()}
    out["num_samples"] = sum(v is not None for v in pixel)
    out["num_nonfinite"] = sum(v is None for v in pixel)
    return out


def paired_damage(clean: torch.Tensor, attacked: torch.Tensor,
                  feature_extractor: str | None = None,
                  device: torch.device | str = "cpu") -> dict[str, Any]:
    """:func:`summarize_damage` of :func:`damage_per_sample`: per measure the mean and median
    over samples with the 95% interval of the mean, and the numbers of finite and non-finite
    rows (``num_samples``, ``num_nonfinite``)."""
    return summarize_damage(damage_per_sample(clean, attacked, feature_extractor, device))


def damage_feature_extractor(attack: dict[str, Any] | None, shape: Sequence[int]
                             ) -> str | None:
    """The extractor whose feature distance an attack maximised (its record says ``distance
    = "features"``; an unset extractor is the default for ``shape``), else None."""
    if not attack or attack.get("distance") != "features":
        return None
    from ..attacks.distances import default_extractor

    return attack.get("feature_extractor") or default_extractor(shape)


def set_metric_directions() -> dict[str, str]:
    """Set metrics by the first word of their result keys (``FID (digits-cnn)``, ``FD
    (exact)``, ``IS``) → ``"lower"`` or ``"higher"``: which way is better, as each registered
    metric declares it (:attr:`evaluators.Metric.better`; built-in: FID, KID, FD lower, IS
    higher). An attack that makes one *better* than clean is flagged (docs/method.md §11.1)."""
    import evaluators  # noqa: F401 - registers the built-in metrics

    from ..core.registry import METRICS

    out: dict[str, str] = {}
    for name in METRICS.names():
        entry = METRICS[name]
        if entry.better is not None:
            out.update({key.split()[0]: entry.better for key in entry.result_keys()})
    return out


def improved_under_attack(clean: dict[str, Any], attacked: dict[str, Any]) -> dict[str, bool]:
    """Per set metric (:func:`set_metric_directions`: FID, KID, FD lower is better; IS
    higher; their ``std`` and ``ci95`` entries left out), whether the attacked value is better
    than the clean one: such a fall of FID under attack is no sign of robustness (the attack's
    noise can fill in a too-small variance; docs/method.md §11)."""
    better = set_metric_directions()
    out = {}
    for k, c in clean.items():
        a = attacked.get(k)
        words = str(k).split()
        if not words or "std" in words or "ci95" in words or not all(isinstance(v, (int, float)) and
                                                  math.isfinite(v) for v in (a, c)):
            continue
        if better.get(words[0]) == "lower":
            out[k] = bool(a < c)
        elif better.get(words[0]) == "higher":
            out[k] = bool(a > c)
    return out


# --------------------------------------------------------------------------- random control
MIN_EFFECT_SHARE = 0.05
"""A model comparison's minimum effect m, as a share of model B's value: "A is more robust than
B" holds only when the interval of A − B lies below −0.05·|B| (docs/method.md §11.1)."""


def _values(per_sample: dict[str, Any] | None, measure: str) -> np.ndarray | None:
    values = (per_sample or {}).get(measure)
    if values is None:
        return None
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _effect_dict(compute: Any, *arrays: np.ndarray, **extra: Any) -> dict[str, Any]:
    """``compute(*arrays).to_dict()`` with ``extra``; an effect the bootstrap cannot give
    (fewer than 2 finite paired rows, a zero mean in a denominator) is ``value``/``ci95``
    None with the reason in ``note``."""
    n = int(np.logical_and.reduce([np.isfinite(a) for a in arrays]).sum())
    try:
        with np.errstate(all="ignore"):  # a resample with a zero denominator: reported below
            eff = compute(*arrays)
        if not math.isfinite(eff.value):
            raise ValueError("the effect is not finite (a zero mean in a denominator)")
        return {**eff.to_dict(), **extra}
    except ValueError as e:
        return {"value": None, "ci95": None, "n": n, "note": str(e), **extra}


def _same_budget(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two curve points of one model attack the same steps with the same budget."""
    return (a["model"] == b["model"] and a["percent"] == b["percent"]
            and a.get("attacked_steps") == b.get("attacked_steps")
            and (a.get("attack") or {}).get("eps_scale", 1.0)
            == (b.get("attack") or {}).get("eps_scale", 1.0))


def with_random_baselines(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Curve point records, each attack point (not a control, percent > 0) with
    ``relative_to_random = {measure: {"value", "ci95", "n", "what", "level", "random"}}``: its
    damage over the damage of the model's random-control point at the same percent, attacked
    steps and budget multiplier (``random``: that point's label), mean(attack)/mean(random),
    paired by seed (:func:`dmattack.core.stats.ratio_of_means`); None where no such control ran.
    The first matching control in the curve's order is used."""
    out = []
    controls = [r for r in records if r.get("control") and r.get("damage_per_sample")]
    for r in records:
        r = dict(r)
        if r["label"] != "clean" and not r.get("control") and r.get("damage_per_sample"):
            ref = next((c for c in controls if _same_budget(c, r)), None)
            r["relative_to_random"] = None if ref is None else {
                m: _effect_dict(stats.ratio_of_means, _values(r["damage_per_sample"], m),
                                _values(ref["damage_per_sample"], m), random=ref["label"])
                for m in r["damage_per_sample"] if m in ref["damage_per_sample"]}
        out.append(r)
    return out


def _mean(x: np.ndarray) -> float | None:
    finite = x[np.isfinite(x)]
    return float(finite.mean()) if len(finite) else None


def _control_of(records: Sequence[dict[str, Any]], r: dict[str, Any]) -> dict[str, Any] | None:
    label = next(iter((r.get("relative_to_random") or {}).values()), {}).get("random")
    return next((c for c in records if c["label"] == label and c["model"] == r["model"]), None)


def _comparison(eff_fn: Any, arrays: Sequence[np.ndarray], b_value: float | None,
                share: float) -> dict[str, Any]:
    """An effect A − B with the verdict on "A is more robust than B" (direction ``less``,
    minimum effect ``share``·|B's value|)."""
    try:
        with np.errstate(all="ignore"):  # a resample with a zero denominator: reported below
            eff = eff_fn(*arrays)
    except ValueError as e:
        return {"value": None, "ci95": None, "verdict": "inconclusive", "note": str(e)}
    m = share * abs(b_value) if b_value is not None and math.isfinite(b_value) else 0.0
    if not (math.isfinite(eff.value) and all(map(math.isfinite, eff.ci95))):
        return {**eff.to_dict(), "verdict": "inconclusive", "min_effect": m,
                "note": "the effect is not finite"}
    return stats.compare(eff, direction="less", min_effect=m).to_dict()


def curve_comparisons(records: Sequence[dict[str, Any]], share: float = MIN_EFFECT_SHARE
                      ) -> list[dict[str, Any]]:
    """Model A vs model B (every pair, in the curve's model order) for each attack series,
    percent > 0 and damage measure, paired by seed (both models use the same seeds): ``raw``,
    mean damage A − B (:func:`dmattack.core.stats.paired_difference`), and ``ratio``, A's
    attack/random ratio − B's (:func:`dmattack.core.stats.ratio_difference`; None without random
    controls), each ``{"value", "ci95", "n", "direction", "min_effect", "verdict", …}`` on the
    claim "A is more robust than B" (lower damage): ``held`` when the whole interval lies below
    −m, ``did not hold`` above +m, ``inconclusive`` otherwise, m = ``share``·|B's value|
    (docs/method.md §11.1). Empty with fewer than two models."""
    points = [r for r in records if r["label"] != "clean" and r.get("damage_per_sample")]
    models = list(dict.fromkeys(r["model"] for r in records))
    by = {(r["series"], r["percent"], r["model"]): r for r in points}
    out = []
    for series, percent in dict.fromkeys((r["series"], r["percent"]) for r in points):
        for i, a_model in enumerate(models):
            for b_model in models[i + 1:]:
                a, b = by.get((series, percent, a_model)), by.get((series, percent, b_model))
                if a is None or b is None:
                    continue
                for m in a["damage_per_sample"]:
                    if m in b["damage_per_sample"]:
                        out.append(_compare_pair(records, a, b, m, share))
    return out


def _compare_pair(records: Sequence[dict[str, Any]], a: dict[str, Any], b: dict[str, Any],
                  measure: str, share: float) -> dict[str, Any]:
    va, vb = _values(a["damage_per_sample"], measure), _values(b["damage_per_sample"], measure)
    row: dict[str, Any] = {
        "series": a["series"], "percent": a["percent"], "measure": measure,
        "model_a": a.get("model_name", a["model"]), "model_b": b.get("model_name", b["model"]),
        "claim": "A is more robust than B (lower damage)",
        "raw": _comparison(stats.paired_difference, [va, vb], _mean(vb), share),
        "ratio": None}
    ca, cb = _control_of(records, a), _control_of(records, b)
    if ca is not None and cb is not None:
        ra = _values(ca["damage_per_sample"], measure)
        rb = _values(cb["damage_per_sample"], measure)
        if ra is not None and rb is not None:
            b_ratio = (b["relative_to_random"].get(measure) or {}).get("value")
            row["ratio"] = _comparison(stats.ratio_difference, [va, ra, vb, rb], b_ratio, share)
    return row
