"""Numbers and verdicts over several seeds: each measured number becomes mean ± std (sample
standard deviation over the seeds); each check of a claim is combined over the seeds (mean
effect, Student-t 95% interval over the seeds) and each verdict says how many seeds agree."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .effects import CLAIM_VERDICTS, Row, claim, over_seeds

SECTION_ROW_LISTS = ("rows", "references", "differences")
"""Section keys holding lists of measured rows; everything else is settings or files."""
ID_KEYS = ("data", "dataset", "corruption", "model", "series", "method", "training", "steps",
           "fraction", "sigma", "purifier", "t_star", "attack")
"""Keys that name a row (matched across seeds), never averaged."""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std, count) of the values that are not None; std is None below two
    values, mean None with none."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None, None, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None), len(xs)


def _merge_numbers(values: Sequence[Any], n: int) -> tuple[Any, float | None, int]:
    """One column of numbers (None = missing in that seed): the value itself when every seed
    measured the same, else (mean, std, count)."""
    present = [v for v in values if v is not None]
    if len(present) == n and all(v == present[0] for v in present):
        return present[0], None, n
    return mean_std(values)


def _merge_field(values: Sequence[Any], n: int) -> tuple[Any, Any, Any]:
    """(merged value, std or None, seeds with a value or None) of one field across seeds."""
    present = [v for v in values if v is not None]
    if present and all(_is_number(v) for v in present):
        mean, std, count = _merge_numbers(values, n)
        return mean, std, (count if count < n else None)
    if (present and all(isinstance(v, list) for v in present)
            and len({len(v) for v in present}) == 1
            and all(x is None or _is_number(x) for v in present for x in v)):
        columns = [_merge_numbers([None if v is None else v[i] for v in values], n)
                   for i in range(len(present[0]))]
        stds = [c[1] for c in columns]
        counts = [c[2] for c in columns]
        return ([c[0] for c in columns], stds if any(s is not None for s in stds) else None,
                counts if any(c < n for c in counts) else None)
    return (present[0] if present else None), None, None


def row_id(row: Row) -> tuple[Any, ...]:
    return tuple((k, row[k]) for k in ID_KEYS if k in row)


def aggregate_rows(per_seed: Sequence[Sequence[Row]]) -> list[Row]:
    """Rows of several seeds → one row per row name (:data:`ID_KEYS`), first-seen order.
    Numbers that differ between seeds become their mean, with ``row["std"][key]`` the sample
    std over the seeds (absent when every seed measured the same) and
    ``row["num_seeds"][key]`` the number of seeds with a value where some had none (None);
    lists of numbers are merged element by element; other fields keep the first seed's
    value."""
    n = len(per_seed)
    by_seed = [{row_id(r): r for r in rows} for rows in per_seed]
    order = list(dict.fromkeys(row_id(r) for rows in per_seed for r in rows))
    out = []
    for rid in order:
        rows = [seed.get(rid) for seed in by_seed]
        keys = list(dict.fromkeys(k for r in rows if r is not None for k in r))
        merged: Row = dict(rid)
        std: Row = {}
        counts: Row = {}
        for key in keys:
            if key in merged:
                continue
            value, s, count = _merge_field([None if r is None else r.get(key) for r in rows], n)
            merged[key] = value
            if s is not None:
                std[key] = s
            if count is not None:
                counts[key] = count
        if std:
            merged["std"] = std
        if counts:
            merged["num_seeds"] = counts
        out.append(merged)
    return out


def _merge(values: Sequence[Any]) -> Any:
    first = values[0]
    if isinstance(first, dict):
        return {k: (aggregate_rows([v.get(k) or [] for v in values])
                    if k in SECTION_ROW_LISTS and isinstance(first[k], list)
                    else _merge([v.get(k) for v in values])) for k in first}
    if (isinstance(first, list) and first and all(isinstance(x, dict) for x in first)
            and all(isinstance(v, list) and len(v) == len(first) for v in values)):
        return [_merge(list(column)) for column in zip(*values, strict=True)]
    return first


def aggregate_sections(per_seed: Sequence[Row]) -> Row:
    """Section records of several seeds (same plan) → one record: every row list
    (:data:`SECTION_ROW_LISTS`, at any depth) merged by :func:`aggregate_rows`; settings,
    figures and files are the first seed's."""
    return _merge(list(per_seed))


def agreement(verdicts: Sequence[str]) -> tuple[str, str]:
    """(combined verdict, text) of one claim's per-seed verdicts: the verdict most seeds
    reached when it is a strict majority, else ``mixed``; text like ``held in 2/3 seeds,
    partly in 1/3``."""
    n = len(verdicts)
    counts = Counter(verdicts)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], CLAIM_VERDICTS.index(kv[0])
                                                   if kv[0] in CLAIM_VERDICTS else 99))
    top, top_n = ranked[0]
    text = f"{top} in {top_n}/{n} seeds" + "".join(f", {v} in {c}/{n}" for v, c in ranked[1:])
    return (top if 2 * top_n > n else "mixed"), text


def _combined_checks(seed_claims: Sequence[Row | None]) -> list[Row]:
    """Each check label of a claim over the seeds: :func:`~dmattack.demo.effects.over_seeds`
    (mean effect, Student-t 95% interval over the seeds)."""
    found = [x for c in seed_claims if c for x in c.get("comparisons") or []]
    labels = list(dict.fromkeys(x["label"] for x in found))
    return [over_seeds(label, [x for x in found if x["label"] == label]) for label in labels]


def combine_claims(per_seed: Sequence[Sequence[Row]], on_means: Sequence[Row]) -> list[Row]:
    """Claims of several seeds → one list in ``on_means`` order (the claims computed from the
    mean numbers, whose evidence they keep). A claim with checks gets each check combined over
    the seeds (:func:`_combined_checks`: the spread over the demo seeds) and its verdict from
    those (:func:`~dmattack.demo.effects.combine`); one without (e.g. purification's) gets the
    seeds' majority (:func:`agreement`). ``seed_verdicts``: each seed's verdict; ``agreement``:
    the count text."""
    out = []
    for on_mean in on_means:
        seed_claims = [next((c for c in claims if c["id"] == on_mean["id"]), None)
                       for claims in per_seed]
        verdicts = [c["verdict"] if c else "n/a" for c in seed_claims]
        majority, text = agreement(verdicts)
        checks = _combined_checks(seed_claims)
        combined = (claim(on_mean["id"], on_mean["claim"], on_mean["source"], checks,
                          on_mean["evidence"]) if checks else {"verdict": majority})
        out.append({**on_mean, **combined, "seed_verdicts": verdicts, "agreement": text})
    return out
