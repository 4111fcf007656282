"""Effects, 95% intervals and verdicts of the demo's claims (docs/demo.md "How a verdict is
made"; the statistics are :mod:`dmattack.core.stats`, docs/method.md §11.1).

Every claim is one or more *checks*; a check is an effect with its interval, the claimed
direction, a minimum effect m and a verdict (:func:`dmattack.core.stats.verdict`: ``held`` when the
interval lies beyond m in the claimed direction, ``did not hold`` beyond m the other way,
``inconclusive`` otherwise). Two kinds of effect:

- per-sample quantities (the paired damage of an attack): a paired BCa bootstrap over the
  seeds (:func:`paired_check`; the same seed gives the same x_T and chain noise in every arm);
- set metrics (FD, subspace error, variance ratio, …): recomputed on the same resampled rows of
  every arm's samples (:func:`set_effects`; percentile interval; the arms are paired by seed).

A claim's verdict combines its checks (:func:`combine`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats as sps

from ..core import stats
from ..evaluation.damage import MIN_EFFECT_SHARE

Row = dict[str, Any]
"""One JSON-ready record (a check, a claim, a table row) of the demo's sections."""
SHARE = MIN_EFFECT_SHARE
"""Default minimum effect of a comparison, as a share of the reference arm's value (5%)."""
SET_RESAMPLES = 200
"""Bootstrap resamples of a set metric (each recomputes the metric on every arm)."""
CLAIM_VERDICTS = ("held", "partly", "did not hold", "inconclusive", "n/a")
"""Every verdict a claim can get (:func:`combine`), strongest first; a check's are
:data:`dmattack.core.stats.VERDICTS`."""

Contrast = tuple[str, Sequence[tuple[float, Any]], float]
"""``(metric label, ((weight, arm key), …), constant)``: the effect Σ weight·metric(arm) +
constant, e.g. ``("FD (exact)", ((1, a), (-1, b)), 0.0)`` for FD(a) − FD(b)."""


def _combine_values(scores: Mapping[Any, Mapping[str, Any]], contrast: Contrast) -> float:
    metric, terms, const = contrast
    total = const
    for w, arm in terms:
        v = scores[arm].get(metric)
        total += w * (math.nan if v is None else float(v))
    return total


def set_effects(score_fn: Callable[[Any, torch.Tensor], Mapping[str, Any]],
                arms: Mapping[Any, torch.Tensor], contrasts: Mapping[str, Contrast], *,
                seed: int = stats.SEED, n_resamples: int = SET_RESAMPLES) -> dict[str, Row]:
    """Each contrast's value on the full samples and its percentile 95% interval over
    ``n_resamples`` resamples of the rows, the same rows in every arm (arms are (N, *shape),
    row i from the same seed). ``score_fn(arm key, x) -> {metric label: value}`` runs once per
    arm and resample. A contrast whose arm is missing is left out; one with fewer than 2 finite
    resampled values has ``ci95`` None."""
    keys = list(arms)
    if not keys:
        return {}
    n = len(arms[keys[0]])
    if any(len(arms[k]) != n for k in keys):
        raise ValueError(f"paired arms differ in size: {[len(arms[k]) for k in keys]}")
    usable = {label: c for label, c in contrasts.items() if all(a in arms for _, a in c[1])}
    needed = list(dict.fromkeys(a for c in usable.values() for _, a in c[1]))
    full = {k: score_fn(k, arms[k]) for k in needed}
    rng = np.random.default_rng(seed)
    boot: dict[str, list[float]] = {label: [] for label in usable}
    for _ in range(n_resamples):
        idx = torch.from_numpy(rng.integers(0, n, size=n))
        scores = {k: score_fn(k, arms[k][idx]) for k in needed}
        for label, c in usable.items():
            boot[label].append(_combine_values(scores, c))
    out = {}
    for label, c in usable.items():
        values = np.array(boot[label])
        values = values[np.isfinite(values)]
        ci = (list(np.quantile(values, [0.025, 0.975]).astype(float))
              if len(values) >= 2 else None)
        value = _combine_values(full, c)
        out[label] = {"value": value if math.isfinite(value) else None, "ci95": ci, "n": n,
                      "what": _what(c), "interval": f"percentile bootstrap over paired "
                      f"samples, metric recomputed ({n_resamples} resamples)"}
    return out


LABEL_METRIC = {"subspace error": "subspace", "subspace PSNR (dB)": "subspace",
                "FD (exact)": "fd-exact", "variance ratio": "variance-ratio",
                "plane distance": "plane", "loglik (nats)": "loglik"}
"""The evaluator metric (``make_metric_fn`` name) behind each result label."""


def metric_scorer(refs: Mapping[Any, Any], contrasts: Mapping[str, Contrast]
                  ) -> Callable[[Any, torch.Tensor], Mapping[str, Any]]:
    """A ``score_fn`` for :func:`set_effects`: per arm, one metric function (built once,
    against that arm's :class:`~dmattack.evaluation.metrics.Reference` in ``refs``) of only the
    metrics its contrasts use."""
    from ..evaluation.metrics import make_metric_fn

    needed: dict[Any, set[str]] = {}
    for metric, terms, _ in contrasts.values():
        for _, arm in terms:
            needed.setdefault(arm, set()).add(LABEL_METRIC[metric])
    fns = {arm: make_metric_fn(refs[arm], tuple(sorted(ms)))
           for arm, ms in needed.items() if arm in refs}

    def score_fn(arm: Any, x: torch.Tensor) -> Mapping[str, Any]:
        return fns[arm](x)

    return score_fn


def _what(contrast: Contrast) -> str:
    metric, terms, const = contrast
    text = " ".join(f"{'+' if w > 0 else '−'} {'' if abs(w) == 1 else f'{abs(w):g}·'}"
                    f"{metric}[{a}]" for w, a in terms).removeprefix("+ ")
    return text + (f" {'+' if const > 0 else '−'} {abs(const):g}" if const else "")


def check(label: str, eff: Mapping[str, Any] | None, *, direction: stats.Direction,
          min_effect: float, null: float = 0.0) -> Row:
    """One check of a claim: the effect ``eff`` (``{"value", "ci95", "n", …}``) against
    ``null`` in ``direction`` with minimum effect ``min_effect``; ``inconclusive`` (with a
    note) when the effect or its interval is missing."""
    row: Row = {"label": label, "value": None, "ci95": None, "n": None, "direction": direction,
                "min_effect": float(min_effect), "null": null}
    if eff is not None:
        row.update({k: eff.get(k) for k in ("value", "ci95", "n", "what", "interval")
                    if k in eff})
    ci = row["ci95"]
    if ci is None or not all(math.isfinite(v) for v in ci):
        return {**row, "verdict": "inconclusive",
                "note": (eff or {}).get("note") or "no interval (a value is missing)"}
    shifted = (ci[0] - null, ci[1] - null)
    return {**row, "verdict": stats.verdict(shifted, direction=direction,
                                            min_effect=abs(min_effect))}


def fixed_check(label: str, verdict: str, note: str) -> Row:
    """A check decided without an interval (e.g. a model whose training diverged)."""
    return {"label": label, "value": None, "ci95": None, "n": None, "direction": None,
            "min_effect": None, "null": None, "verdict": verdict, "note": note}


def paired_check(label: str, fn: Callable[..., stats.Effect], arrays: Sequence[Any], *,
                 direction: stats.Direction, min_effect: float, null: float = 0.0) -> Row:
    """:func:`check` of ``fn(*arrays)`` (a paired :mod:`dmattack.core.stats` effect: BCa bootstrap
    over seeds); an effect the bootstrap cannot give is an inconclusive check with the
    reason."""
    try:
        with np.errstate(all="ignore"):
            eff: Row | None = fn(*arrays).to_dict()
        eff["interval"] = "BCa bootstrap over paired seeds"
        if not math.isfinite(eff["value"]):
            eff = {"note": "the effect is not finite (a zero mean in a denominator)"}
    except ValueError as e:
        eff = {"note": str(e)}
    return check(label, eff, direction=direction, min_effect=min_effect, null=null)


def combine(checks: Sequence[Row]) -> str:
    """A claim's verdict from its checks: ``n/a`` with none; ``held`` when every check held;
    ``inconclusive`` when every check was inconclusive; ``did not hold`` when none held and at
    least one did not hold; ``partly`` when some held and some did not (did not hold or
    inconclusive)."""
    verdicts = [c["verdict"] for c in checks]
    if not verdicts:
        return "n/a"
    if all(v == "held" for v in verdicts):
        return "held"
    if all(v == "inconclusive" for v in verdicts):
        return "inconclusive"
    if "held" not in verdicts:
        return "did not hold"
    return "partly"


def claim(cid: str, text: str, source: str, checks: Sequence[Row], evidence: str) -> Row:
    """A claim row: verdict (:func:`combine`), the count of checks per verdict, every check
    (``comparisons``) and the measured numbers (``evidence``)."""
    verdicts = [c["verdict"] for c in checks]
    return {"id": cid, "claim": text, "source": source, "verdict": combine(checks),
            "checks_passed": verdicts.count("held"), "checks": len(checks),
            "checks_failed": verdicts.count("did not hold"),
            "checks_inconclusive": verdicts.count("inconclusive"),
            "comparisons": list(checks), "evidence": evidence}


def fmt(v: float | None) -> str:
    """3 significant digits (scientific above 1e4)."""
    if v is None:
        return "n/a"
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def pm(row: Row | None, key: str) -> str:
    """``row[key]``, with ``± std`` over the seeds when the row has one."""
    if row is None:
        return "n/a"
    std = row.get("std", {}).get(key)
    return fmt(row.get(key)) + (f" ± {std:.2g}" if std is not None else "")


def describe_check(c: Row) -> str:
    """``label: value [lo, hi], m = …, n = … → verdict`` of one check."""
    if c.get("ci95") is None:
        return f"{c['label']}: {fmt(c.get('value'))} ({c.get('note', 'no interval')}) → " \
               f"{c['verdict']}"
    lo, hi = c["ci95"]
    null = f" vs {fmt(c['null'])}" if c.get("null") else ""
    same = (f" (identical samples: {', '.join(c['same_samples_as'])})"
            if c.get("same_samples_as") else "")
    sign = "<" if c["direction"] == "less" else ">"
    return (f"{c['label']}: {fmt(c['value'])} [{fmt(lo)}, {fmt(hi)}]{null}, claimed "
            f"{sign} {fmt(c['null'] or 0.0)}, m = {fmt(c['min_effect'])}, n = {c['n']} → "
            f"{c['verdict']}{same}")


def over_seeds(label: str, per_seed: Sequence[Row]) -> Row:
    """One check from the same check of several demo seeds: the mean of the per-seed effects
    with a Student-t 95% interval over the seeds (the spread over demo seeds, n = seeds), the
    mean minimum effect, and its verdict; inconclusive with fewer than 2 seeds with a value."""
    first = per_seed[0]
    values = [c["value"] for c in per_seed if c.get("value") is not None]
    if first.get("direction") is None or len(values) < 2:
        verdicts = {c["verdict"] for c in per_seed}
        verdict = verdicts.pop() if len(verdicts) == 1 else "inconclusive"
        return {**first, "verdict": verdict, "note": "fewer than 2 seeds with a value; "
                f"per-seed verdicts {[c['verdict'] for c in per_seed]}"}
    x = np.asarray(values, dtype=float)
    mean, sem = float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))
    half = float(sps.t.ppf(0.975, len(x) - 1)) * sem
    m = float(np.mean([c["min_effect"] for c in per_seed if c.get("min_effect") is not None]))
    eff = {"value": mean, "ci95": [mean - half, mean + half], "n": len(x),
           "what": first.get("what"), "interval": "Student-t over demo seeds"}
    return check(label, eff, direction=first["direction"], min_effect=m, null=first["null"])
