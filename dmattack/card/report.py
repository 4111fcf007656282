"""The human-readable parts of a card: ``card.md``, ``comparison.md`` and the curves PNG
(docs/card.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROW_LISTS = ("values", "steps_attacked", "last_step_attacked", "improved_under_attack",
             "damage", "relative_to_random")


def merged_curve(curves: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One curve table of several ``run_curve`` results (percents united; a row's cells at a
    percent its attack did not run are None), for :func:`dmattack.core.visualize.curve_png`."""
    percents = sorted({p for c in curves for p in c["percents"]})
    counts: list[Any] = [None] * len(percents)
    rows = []
    for c in curves:
        where = [percents.index(p) for p in c["percents"]]
        for i, n in zip(where, c.get("steps_attacked") or [None] * len(where), strict=True):
            counts[i] = counts[i] or n
        for row in c["rows"]:
            new = dict(row)
            for key in ROW_LISTS:
                cells: list[Any] = [None] * len(percents)
                for i, v in zip(where, row.get(key) or [None] * len(where), strict=True):
                    cells[i] = v
                new[key] = cells
            rows.append(new)
    return {"metric": curves[0]["metric"], "percents": percents, "steps_attacked": counts,
            "rows": rows}


def curves_png(curves: Sequence[dict[str, Any]], path: str | Path) -> None:
    """The card's curves: the set metric (all-sample attacks) and the paired pixel deviation
    with its 95% interval of every attack against % of steps attacked (controls dashed)."""
    from ..core.visualize import curve_png

    curve_png(merged_curve(curves), path)


def _num(v: Any) -> str:
    return "—" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _ci(e: dict[str, Any] | None) -> str:
    if not e or e.get("value", e.get("mean")) is None:
        return "—"
    ci = e.get("ci95") or [None, None]
    return f"{_num(e.get('value', e.get('mean')))} [{_num(ci[0])}, {_num(ci[1])}]"


def _attack_lines(block: dict[str, Any], conv: dict[str, Any]) -> list[str]:
    lines = [f"### {block['attack']} ({block['num_samples']} samples; damage AUC "
             f"{_ci(block['damage_auc'])}; convergence: {conv['status']})", "",
             "| % | steps | pixel deviation | class changed | set metric | ÷ random |",
             "|---|---|---|---|---|---|"]
    for pt in block["points"]:
        dmg = pt["damage"] or {}
        rel = (pt.get("relative_to_random") or {}).get("pixel deviation")
        metric = "; ".join(f"{k} {_num(v)}" for k, v in pt["metrics"].items()
                           if isinstance(v, float)) or "—"
        lines.append(f"| {pt['percent']:g} | {pt['steps_attacked']} | "
                     f"{_ci(dmg.get('pixel deviation'))} | "
                     f"{_ci(dmg.get('class changed (digits-cnn)'))} | {metric} | {_ci(rel)} |")
    return [*lines, ""]


def _purification_lines(block: dict[str, Any] | None) -> list[str]:
    if not block:
        return []
    modes = block.get("eval_modes")  # v1 protocols; later ones give the draws
    draws = (f"Evaluation modes {', '.join(modes)}" if modes
             else f"{block.get('draws')} evaluation draws per image")
    lines = ["## Purification", "", f"{draws}: mean over the draws, and the worst case over "
             "them (correct on every draw).", "",
             "| purifier | t* | attack | draws | clean acc. | robust acc. | robust, worst | "
             "converged |", "|---|---|---|---|---|---|---|---|"]
    for r in block["rows"]:
        robust = r.get("robust") or {}
        lines.append(f"| {r['purifier']} | {_num(r['t_star'])} | {r['attack']} | "
                     f"{r.get('draws')} | {_ci(r.get('clean'))} | {_ci(robust)} | "
                     f"{_ci(robust.get('worst'))} | {_num(r.get('converged'))} |")
    return [*lines, ""]


def card_markdown(card: dict[str, Any]) -> str:
    """``card.md``: identity, headline numbers, every attack's table, purification, cost."""
    p, m, meas = card["protocol"], card["model"], card["measurements"]
    lines = [f"# Robustness card: {m['name']} · {p['name']}-v{p['version']}", "",
             f"- model: `{m['source']}` (fingerprint `{m['fingerprint'][:16]}…`)",
             f"- protocol: {p['name']} v{p['version']}, hash `{p['hash']}`",
             f"- sampler {meas['setup']['sampler']}, {len(card['seeds'])} samples, reference "
             f"{meas['setup']['reference']}; wall time {card['seconds']['total']:.0f} s "
             f"(points computed in the stores: {card['seconds']['compute_in_stores']:.0f} s)",
             "", "## Headline numbers (95% intervals; definitions: docs/method.md §14)", "",
             "| number | value [95% CI] | n | better |", "|---|---|---|---|"]
    for key, e in card["headline"].items():
        lines.append(f"| {key}: {e['label']} | {_ci(e)} | {e['n']} | {e['better']} |")
    lines += ["", "Clean set metrics: " + "; ".join(
        f"{k} {_num(v)}" for k, v in meas["clean"]["metrics"].items()
        if isinstance(v, float)), "", "## Attacks (pixel deviation = paired mean squared "
              "difference to the clean sample of the same seed)", ""]
    for name, block in meas["attacks"].items():
        lines += _attack_lines(block, card["convergence"][name])
    lines += _purification_lines(meas.get("purification"))
    lines += [f"![curves]({card['files']['curves']})", ""]
    return "\n".join(lines)


def comparison_markdown(result: dict[str, Any]) -> str:
    """``comparison.md``: per pair, each headline difference A − B with its interval and
    verdict on "A is better than B"."""
    p = result["protocol"]
    lines = [f"# Card comparison · {p['name']}-v{p['version']} (`{p['hash'][:16]}…`)", "",
             "Differences A − B on the same seeds, 95% paired intervals; the verdict is on "
             "\"A is better than B\" beyond the protocol's minimum effect (docs/method.md §14).",
             ""]
    for pair in result["pairs"]:
        lines += [f"## A = {pair['a']}, B = {pair['b']}", "",
                  "| headline | A − B [95% CI] | n | min effect | verdict |",
                  "|---|---|---|---|---|"]
        for r in pair["rows"]:
            lines.append(f"| {r['headline']} | {_num(r['difference'])} [{_num(r['ci95'][0])}, "
                         f"{_num(r['ci95'][1])}] | {r['n']} | {_num(r['min_effect'])} | "
                         f"{r['verdict']} |")
        lines.append("")
    return "\n".join(lines)
