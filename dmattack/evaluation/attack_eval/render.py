"""Rendering a curve: its table, rows = attack series × model, columns = % of steps attacked,
with the marks († zero-budget last step attacked, ‡ set metric better under attack), the
metric's interval where it has one (KID), and the paired damage; written as ``curve.json``,
``curve.csv`` and ``curve.png`` (:func:`write_curve`) and printed as tables
(docs/method.md §6, §11.1)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...attacks.plan import AttackPlan
from ...core.io import provenance, write_json, write_text
from ...core.visualize import curve_png
from ...runs.checkpoints import LoadedModel
from ..damage import curve_comparisons, with_random_baselines
from .records import model_record

LAST_STEP_MARK = "†"
LAST_STEP_NOTE = (f"{LAST_STEP_MARK} the attacked steps include the last reverse step, whose "
                  "budget √β̃ = 0 leaves it unperturbed (one fewer step really perturbed)")
IMPROVED_MARK = "‡"
IMPROVED_NOTE = (f"{IMPROVED_MARK} the set metric is better under attack than clean: no sign "
                 "of robustness (the attack's noise can fill in a too-small variance); read "
                 "the paired damage (docs/method.md §11.1)")


def curve_table(records: list[dict[str, Any]], plans: Sequence[AttackPlan],
                 metric: str | None) -> dict[str, Any]:
    """Rows = series × model with the metric at each % attacked (0% = the model's clean point),
    and per cell how many steps that was (``steps_attacked``, e.g. "12 of 25"), whether the
    zero-budget last step was among them (``last_step_attacked``), whether the metric is better
    than clean (``improved_under_attack``), the paired ``damage`` summary and the
    ``relative_to_random`` ratios (None at 0%). The table's ``steps_attacked`` has one entry
    per percent (None where the models' chains differ)."""
    if metric is None:
        metric = next(iter(records[0]["metrics"]), None) if records else None
    percents = sorted({0.0, *(float(p.percent) for p in plans)})
    clean = {r["model"]: r for r in records if r["label"] == "clean"}
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def put(row: dict[str, Any], i: int, r: dict[str, Any]) -> None:
        row["values"][i] = r["metrics"].get(metric)
        row["value_ci95"][i] = metric_interval(r["metrics"], metric)
        row["steps_attacked"][i] = r.get("steps_attacked")
        row["last_step_attacked"][i] = r.get("last_step_attacked")
        row["improved_under_attack"][i] = (r.get("improved_under_attack") or {}).get(metric)
        if r["label"] != "clean":
            row["damage"][i] = r.get("damage")
            row["relative_to_random"][i] = r.get("relative_to_random")

    def new_row(series: str, method: str, control: bool, r: dict[str, Any], n: int
                ) -> dict[str, Any]:
        return {"series": series, "method": method, "control": control,
                "model": r["model_name"], "source": r["model"], "values": [None] * n,
                "value_ci95": [None] * n, "steps_attacked": [None] * n,
                "last_step_attacked": [None] * n,
                "improved_under_attack": [None] * n, "damage": [None] * n,
                "relative_to_random": [None] * n}

    for r in records:
        if r["label"] == "clean":
            continue
        row = rows.setdefault((r["series"], r["model"]), new_row(
            r["series"], r["method"], r["control"], r, len(percents)))
        put(row, percents.index(r["percent"]), r)
    for row in rows.values():
        put(row, 0, clean[row["source"]])
    if not plans:  # only clean points: one row per model
        rows = {("clean", src): new_row("clean", "clean", False, r, 1)
                for src, r in clean.items()}
        for (_, src), row in rows.items():
            put(row, 0, clean[src])
    columns = []
    for i in range(len(percents)):
        counts = {row["steps_attacked"][i] for row in rows.values()} - {None}
        columns.append(counts.pop() if len(counts) == 1 else None)
    return {"metric": metric, "percents": percents, "steps_attacked": columns,
            "rows": list(rows.values())}


def metric_interval(metrics: dict[str, Any], metric: str | None) -> list[float] | None:
    """``[lo, hi]`` of a set metric that is reported with its interval (KID:
    ``KID ci95 lo (…)`` / ``KID ci95 hi (…)`` beside ``KID (…)``), else None."""
    if not metric or metric.split(" ")[0] != "KID":
        return None
    lo, hi = (metrics.get(metric.replace("KID", f"KID ci95 {b}", 1)) for b in ("lo", "hi"))
    return None if lo is None or hi is None else [lo, hi]


def percent_headers(curve: dict[str, Any]) -> list[str]:
    """Column headers of a curve table: ``50% = 12 of 25 steps`` (``50%`` where the models'
    chains differ in length)."""
    counts = curve.get("steps_attacked") or [None] * len(curve["percents"])
    return [f"{p:g}%" + (f" = {n} steps" if n else "")
            for p, n in zip(curve["percents"], counts, strict=True)]


def marked_values(row: dict[str, Any]) -> list[Any]:
    """A curve row's values as text where marked: :data:`LAST_STEP_MARK` when the attacked
    steps include the last (zero-budget) step, :data:`IMPROVED_MARK` when the set metric is
    better than clean (e.g. ``"3.21†‡"``), with the metric's 95% interval where it has one
    (KID: ``"1.2e+04 [6160, 2.53e+04]"``); other values stay numbers."""
    n = len(row["values"])
    lasts = row.get("last_step_attacked") or [None] * n
    better = row.get("improved_under_attack") or [None] * n
    cis = row.get("value_ci95") or [None] * n
    out = []
    for v, last, up, ci in zip(row["values"], lasts, better, cis, strict=True):
        mark = (LAST_STEP_MARK if last else "") + (IMPROVED_MARK if up else "")
        interval = f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci and isinstance(v, float) else ""
        out.append(f"{v:.4g}{interval}{mark}" if (mark or interval) and isinstance(v, float)
                   else v)
    return out


def damage_measures(curve: dict[str, Any]) -> list[str]:
    """The damage measures of a curve's points, in first-seen order."""
    return list(dict.fromkeys(m for row in curve["rows"] for d in row.get("damage") or []
                              if d for m, v in d.items() if isinstance(v, dict)))


def curve_csv(curve: dict[str, Any]) -> str:
    """One row per series × model: the metric at each percent (header ``50% = 12 of 25
    steps``) and, for a metric with an interval (KID), its bounds (``50% metric ci lo``), the
    percents whose attacked steps include the last, zero-budget step, the
    percents where the metric improved under attack, then per damage measure and percent the
    mean and its 95% interval (``pixel deviation 50% mean``, ``… ci lo``, ``… ci hi``; empty
    at 0%)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    measures, percents = damage_measures(curve), curve["percents"]
    intervals = any(ci for row in curve["rows"] for ci in row.get("value_ci95") or [])
    w.writerow(["series", "model", "metric", *percent_headers(curve),
                *(f"{p:g}% metric ci {b}" for p in (percents if intervals else [])
                  for b in ("lo", "hi")),
                "last step attacked at", "improved under attack at",
                *(f"{m} {p:g}% {part}" for m in measures for p in percents
                  for part in ("mean", "ci lo", "ci hi"))])

    def at(flags: list[Any] | None) -> str:
        return " ".join(f"{p:g}%" for p, f in zip(percents, flags or [None] * len(percents),
                                                   strict=True) if f) or "none"

    for row in curve["rows"]:
        n = len(row["values"])
        cells = []
        for m in measures:
            for d in row.get("damage") or [None] * n:
                s = (d or {}).get(m) or {}
                ci = s.get("ci95") or [None, None]
                cells += ["" if v is None else repr(v) for v in (s.get("mean"), *ci)]
        bounds = [("" if ci is None else repr(ci[j])) for ci in
                  (row.get("value_ci95") or [None] * n) for j in (0, 1)] if intervals else []
        w.writerow([row["series"], row["model"], curve["metric"],
                    *("" if v is None else repr(v) for v in row["values"]), *bounds,
                    at(row.get("last_step_attacked")), at(row.get("improved_under_attack")),
                    *cells])
    return buf.getvalue()


def write_curve(out: Path, records: list[dict[str, Any]], plans: Sequence[AttackPlan],
                models: Sequence[LoadedModel], metric: str | None,
                protocol: dict[str, Any]) -> dict[str, Any]:
    """Rank 0's end of a curve: random-control baselines and model comparisons of the points
    (docs/method.md §11.1), then ``curve.json`` (the table, ``protocol``, the models and
    every point), ``curve.csv`` and ``curve.png`` in ``out``; returns the ``curve.json``
    content."""
    records = with_random_baselines(records)
    curve = curve_table(records, plans, metric)
    curve["comparisons"] = curve_comparisons(records)
    curve.update({
        "protocol": protocol,
        "models": [model_record(m) for m in models],
        "points": [{k: v for k, v in r.items() if k != "resumed"} for r in records],
        "provenance": provenance(),
    })
    write_json(out / "curve.json", curve)
    write_text(out / "curve.csv", curve_csv(curve))
    curve_png(curve, out / "curve.png")
    return curve
