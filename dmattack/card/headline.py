"""Headline numbers of a card and paired comparisons of two cards (docs/method.md §14).

Everything here works on per-sample values in seed order (row i of every array comes from
sample seed i of the protocol, the same in every model), so the numbers of two cards made
under one protocol are paired by seed:

- :func:`per_sample_auc`: each sample's area under its damage-versus-fraction-attacked curve
  (trapezoid over the protocol's percents, 0% = no damage, x from 0 to 1);
- :func:`headline_numbers`: ``clean_quality``, ``damage_auc_strongest``,
  ``damage_auc_relative_to_random`` and ``class_change_at_100`` with their intervals;
- :func:`compare_headlines`: the paired difference A − B of each headline number, its
  interval and the verdict (:func:`dmattack.core.stats.verdict`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core import stats
from .protocol import CardProtocol

CONTROL = "random"
LABELS = {
    "damage_auc_strongest": "damage AUC of the strongest attack (pixel deviation)",
    "damage_auc_relative_to_random": "damage AUC, strongest attack / random control",
    "class_change_at_100": "class-change rate at 100% (strongest attack)",
}


def as_array(values: Sequence[float | None]) -> np.ndarray:
    """(n,) float64 of JSON per-sample values; None (a non-finite sample) becomes NaN."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def as_json(values: np.ndarray) -> list[float | None]:
    """The inverse of :func:`as_array`: NaN becomes None (strict JSON)."""
    return [float(v) if np.isfinite(v) else None for v in values]


def per_sample_auc(percents: Sequence[float], damage: Sequence[np.ndarray]) -> np.ndarray:
    """(n,) area under each sample's damage curve: ``damage[k]`` (n,) is the per-sample damage
    at ``percents[k]`` (percents sorted; a 0% entry is ignored: 0% is no damage). The trapezoid
    runs over x = percent/100 from 0 to the last percent, so an attack whose damage is D at
    every percent up to 100% has area D."""
    pairs = [(0.0, None)] + [(p / 100.0, d) for p, d in zip(percents, damage, strict=True)
                             if p > 0]
    xs = np.array([x for x, _ in pairs])
    n = len(damage[-1])
    ys = np.stack([np.zeros(n) if d is None else np.asarray(d, dtype=np.float64)
                   for _, d in pairs])
    return ((ys[1:] + ys[:-1]) / 2 * np.diff(xs)[:, None]).sum(0)


def _interval(arrays: Sequence[np.ndarray], statistic: stats.Statistic, p: CardProtocol
              ) -> tuple[float, list[float], int]:
    """(value, [lo, hi], n) of ``statistic`` over the paired rows finite in every array, with
    the protocol's bootstrap settings."""
    ok = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    rows = [a[ok] for a in arrays]
    value = float(np.asarray(statistic(*(a[None, :] for a in rows))).reshape(-1)[0])
    b = p.bootstrap
    lo, hi = stats.bootstrap_ci(rows, statistic, level=b.level, n_resamples=b.resamples,
                                method=b.method, seed=b.seed)
    return value, [lo, hi], int(ok.sum())


def _mean(x: np.ndarray) -> np.ndarray:
    return x.mean(-1)


def mean_interval(values: np.ndarray, p: CardProtocol) -> dict[str, Any]:
    """``{"value", "ci95", "n"}`` of the mean of per-sample ``values`` (NaN left out), with
    the protocol's bootstrap settings."""
    value, ci, n = _interval([values], _mean, p)
    return {"value": value, "ci95": ci, "n": n}


def _ratio(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return x.mean(-1) / y.mean(-1)


def strongest_attack(aucs: dict[str, np.ndarray]) -> str:
    """The attack (not the random control) with the largest mean area, compared on the
    samples every attack ran on (the first ``min n``; the same seeds for all)."""
    attacks = {k: v for k, v in aucs.items() if k != CONTROL}
    if not attacks:
        raise ValueError("no attack besides the random control")
    m = min(len(v) for v in attacks.values())
    return max(attacks, key=lambda k: float(np.nanmean(attacks[k][:m])))


def entry(label: str, value: float, ci: Sequence[float], n: int, better: str) -> dict[str, Any]:
    """One ``headline`` entry of card.json (dmattack.card.schema)."""
    return {"label": label, "value": float(value), "ci95": [float(ci[0]), float(ci[1])],
            "n": int(n), "better": better}


def headline_numbers(p: CardProtocol, per_sample: dict[str, Any],
                     clean_quality: dict[str, Any] | None) -> dict[str, Any]:
    """The protocol's headline numbers from a card's ``per_sample`` block (``auc`` per attack,
    ``class_change_at_100`` per attack; seed order) and its clean-quality entry."""
    aucs = {k: as_array(v) for k, v in per_sample["auc"].items()}
    best = strongest_attack(aucs)
    a = aucs[best]
    out: dict[str, Any] = {}
    for key in p.headline:
        if key == "clean_quality":
            if clean_quality is None:
                raise ValueError("the protocol's headline needs clean_quality")
            out[key] = clean_quality
        elif key == "damage_auc_strongest":
            v, ci, n = _interval([a], _mean, p)
            out[key] = entry(f"{LABELS[key]}: {best}", v, ci, n, "lower")
        elif key == "damage_auc_relative_to_random":
            v, ci, n = _interval([a, aucs[CONTROL][:len(a)]], _ratio, p)
            out[key] = entry(f"{LABELS[key]}: {best} / {CONTROL}", v, ci, n, "lower")
        elif key == "class_change_at_100":
            changed = per_sample["class_change_at_100"].get(best)
            if changed is None:
                raise ValueError(f"no class-change values at 100% for {best}")
            v, ci, n = _interval([as_array(changed)], _mean, p)
            out[key] = entry(f"{LABELS[key]}: {best}", v, ci, n, "lower")
    return out


# --------------------------------------------------------------------------- comparisons
def _difference(key: str, a: dict[str, Any], b: dict[str, Any], p: CardProtocol
                ) -> tuple[float, list[float], int]:
    """Paired A − B of headline ``key`` from two cards' ``per_sample`` blocks, on the seeds
    both ran (the first min n)."""
    if key == "clean_quality":  # the same resample indices in both cards: paired replicates
        ra, rb = as_array(a["clean_quality_replicates"]), as_array(b["clean_quality_replicates"])
        n = min(len(ra), len(rb))
        d = ra[:n] - rb[:n]
        d = d[np.isfinite(d)]
        alpha = (1 - p.bootstrap.level) / 2
        lo, hi = np.quantile(d, [alpha, 1 - alpha])
        return float(a["clean_quality_value"] - b["clean_quality_value"]), [
            float(lo), float(hi)], int(a["num_samples"])
    sa, sb = a["strongest"], b["strongest"]
    xa, xb = as_array(a["auc"][sa]), as_array(b["auc"][sb])
    if key == "class_change_at_100":
        xa, xb = (as_array(a["class_change_at_100"][sa]),
                  as_array(b["class_change_at_100"][sb]))
    n = min(len(xa), len(xb))
    if key == "damage_auc_relative_to_random":
        ra, rb = as_array(a["auc"][CONTROL])[:n], as_array(b["auc"][CONTROL])[:n]

        def diff(w: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
            return _ratio(w, x) - _ratio(y, z)

        return _interval([xa[:n], ra, xb[:n], rb], diff, p)
    return _interval([xa[:n], xb[:n]], lambda x, y: (x - y).mean(-1), p)


def compare_headlines(p: CardProtocol, a: dict[str, Any], b: dict[str, Any],
                      better: dict[str, str]) -> list[dict[str, Any]]:
    """One row per headline key: A − B with its interval and the verdict on "A is better than
    B" (``held`` / ``did not hold`` / ``inconclusive``, minimum effect from the protocol)."""
    rows = []
    min_effect = dict(p.bootstrap.min_effect)
    for key in p.headline:
        value, ci, n = _difference(key, a, b, p)
        direction = "less" if better[key] == "lower" else "greater"
        m = float(min_effect.get(key, 0.0))
        rows.append({"headline": key, "difference": value, "ci95": ci, "n": n,
                     "claim": f"A has {'lower' if direction == 'less' else 'higher'} {key} "
                              "than B", "direction": direction, "min_effect": m,
                     "verdict": stats.verdict(ci, direction=direction, min_effect=m)})
    return rows
