"""What the command line prints: progress on stderr (:mod:`dmattack.core.progress`), result tables
and paths on stdout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from ..core import progress

console = Console(stderr=True)
stdout = Console()


def command_reporting(command: str) -> Any:
    """The progress block of ``dmattack command`` (bars in a terminal, plain lines elsewhere;
    see :mod:`dmattack.core.progress`), shown on stderr."""
    return progress.reporting(f"dmattack {command}", console)


def progress_steps(st: progress.StageHandle) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback setting stage ``st``'s counts."""
    return lambda done, total: st.update(done, total)


def metric_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics to print, ``protocol`` left out; a KID with its interval entries becomes
    one ``KID [lo, hi]`` cell (docs/method.md §8)."""
    out = {k: v for k, v in metrics.items() if k != "protocol"}
    for k in [k for k in out if k.split(" ")[0] == "KID" and "ci95" not in k.split()]:
        lo, hi = (out.pop(k.replace("KID", f"KID ci95 {b}", 1), None) for b in ("lo", "hi"))
        if isinstance(out[k], float) and isinstance(lo, float) and isinstance(hi, float):
            out[k] = f"{out[k]:.4g} [{lo:.4g}, {hi:.4g}]"
    return out


def _cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    stdout.print(f"[bold]{title}[/]")
    table = Table()
    for i, c in enumerate(columns):
        # the row labels stay whole in a narrow terminal; numbers fold rather than lose digits
        table.add_column(c, no_wrap=i < 2, overflow="fold")
    for r in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
    stdout.print(table)


def train_progress(st: progress.StageHandle) -> Callable[[int, dict[str, float]], None]:
    """The ``callback(step, stats)`` of :func:`dmattack.training.train.train` showing the loss."""

    def on_step(step: int, stats: dict[str, float]) -> None:
        first = st.stage.done == 0 and st.stage.base == 0  # resumed at step - 1: not timed
        st.update(step, info=f"loss {stats['loss']:.4f}", base=step - 1 if first else None)

    return on_step


def curve_progress(st: progress.StageHandle) -> Callable[[int, int, dict[str, Any]], None]:
    """The ``progress(done, total, record)`` of
    :func:`dmattack.evaluation.attack_eval.run_curve`."""

    def on_point(done: int, total: int, record: dict[str, Any]) -> None:
        tag = " (resumed)" if record.get("resumed") else ""
        st.update(done, total, info=f"last: {record['model_name']} {record['label']}{tag}")

    return on_point


def unit_progress(st: progress.StageHandle) -> Callable[[int, int, str], None]:
    """A ``progress(done, total, label)`` callback (run_purification's)."""
    return lambda done, total, label: st.update(done, total, info=label)


def interval(summary: dict[str, Any] | None, scale: float = 1.0, unit: str = "") -> str:
    """``0.0123 [0.0101, 0.0147]``: a ``{"mean", "ci95"}`` summary (or an effect's ``value``)
    with its 95% interval, 3 significant digits; ``—`` when missing."""
    if not summary:
        return "—"
    v = summary.get("mean", summary.get("value"))
    if v is None:
        return "—"
    ci = summary.get("ci95")
    text = f"{scale * v:.3g}{unit}"
    return text + (f" [{scale * ci[0]:.3g}{unit}, {scale * ci[1]:.3g}{unit}]" if ci else "")


def damage_rows(damage: dict[str, Any]) -> list[list[Any]]:
    """One row per damage measure: mean [95% CI], median, n (the class change in %)."""
    rows = []
    for m, s in damage.items():
        if isinstance(s, dict):
            pct = m.startswith("class changed")
            rows.append([m + (" (%)" if pct else ""), interval(s, 100 if pct else 1),
                         "—" if s.get("median") is None or pct else f"{s['median']:.3g}",
                         s.get("n", 0)])
    return rows


def convergence_warning(label: str, convergence: dict[str, Any] | None) -> str | None:
    """The one warning line for an attack whose trace had not converged, else None."""
    if not convergence or convergence.get("converged") is not False:
        return None
    rise = convergence.get("rise_last_fifth")
    rose = f"{100 * rise:.1f}%" if isinstance(rise, (int, float)) else "more than the tolerance"
    return (f"warning: {label} did not converge (its objective's best-so-far rose {rose} over "
            f"the last fifth of {convergence.get('iterations')} iterations); raise --iterations "
            "(per-step pgd: --pgd-steps) or --restarts")


def print_attack_result(result: dict[str, Any], title: str) -> None:
    """A ``dmattack attack`` result: the metrics clean vs attacked (a set metric better under
    attack marked ‡, with a footnote), the paired damage with its 95% intervals, and a warning
    line for an attack that did not converge."""
    from dmattack.evaluation.attack_eval.render import IMPROVED_MARK, IMPROVED_NOTE

    clean, attacked = (metric_row(result["metrics"][k]) for k in ("clean", "attacked"))
    better = result.get("improved_under_attack") or {}
    print_table(title, ["metric", "clean", "attacked"],
                [[k, clean[k], f"{_cell(attacked[k])}{IMPROVED_MARK}" if better.get(k)
                  else attacked.get(k)] for k in clean])
    if any(better.get(k) for k in clean):
        stdout.print(IMPROVED_NOTE)
    damage = result.get("damage") or {}
    print_table(f"paired damage, attacked vs clean sample of each seed ({damage.get('num_samples')}"
                f" samples, {damage.get('num_nonfinite')} non-finite; mean [95% CI])",
                ["measure", "mean [95% CI]", "median", "n"], damage_rows(damage))
    warning = convergence_warning(result["label"], result.get("convergence"))
    if warning:
        stdout.print(warning, markup=False, soft_wrap=True)


# ----------------------------------------------------------------------------- curve results
def _point_rows(curve: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The curve's paired damage, one row per series × model × percent > 0."""
    from dmattack.evaluation.attack_eval.render import damage_measures

    measures = damage_measures(curve)
    ratio = any(x for row in curve["rows"] for x in row.get("relative_to_random") or [])
    short = {"pixel deviation": "pixel dev.", "class changed (digits-cnn)": "class chg. %"}
    cols = ["series", "model", "%", *(short.get(m, m) for m in measures),
            *(["pixel dev. ÷ random"] if ratio else [])]
    rows = []
    for row in curve["rows"]:
        for i, p in enumerate(curve["percents"]):
            d = (row.get("damage") or [None] * len(curve["percents"]))[i]
            if not d:
                continue
            rel = (row.get("relative_to_random") or [None] * len(curve["percents"]))[i] or {}
            rows.append([row["series"], row["model"], f"{p:g}%",
                         *(interval(d.get(m), 100 if m.startswith("class") else 1)
                           for m in measures),
                         *([interval(rel.get("pixel deviation"))] if ratio else [])])
    return cols, rows


def comparison_lines(comparisons: list[dict[str, Any]]) -> list[str]:
    """One line per model pair × series × percent × measure: A − B on raw damage and on the
    attack/random ratio, each with its 95% interval and its verdict on "A is more robust than
    B" (lines, not a table: they stay whole in a narrow terminal)."""
    def part(name: str, c: dict[str, Any] | None) -> str:
        return f"{name} —" if not c else f"{name} {interval(c)} {c.get('verdict', '')}"

    return [f"{c['model_a']} vs {c['model_b']} · {c['series']} {c['percent']:g}% · "
            f"{c['measure']}: {part('A − B', c['raw'])}; "
            f"{part('÷ random A − B', c.get('ratio'))}" for c in comparisons]


def print_curve_result(curve: dict[str, Any], title: str) -> None:
    """A ``dmattack curve`` result: the metric table (marks † for the zero-budget last step
    and ‡ for a set metric better under attack, with footnotes), the paired damage of every
    point with its 95% interval (and its ratio to the random control), the model comparisons,
    and a warning line per attack point that did not converge."""
    from dmattack.evaluation.attack_eval.render import (
        IMPROVED_NOTE,
        LAST_STEP_NOTE,
        marked_values,
        percent_headers,
    )

    print_table(title, ["series", "model", *percent_headers(curve)],
                [[r["series"], r["model"], *marked_values(r)] for r in curve["rows"]])
    if any(any(r.get("last_step_attacked") or []) for r in curve["rows"]):
        stdout.print(LAST_STEP_NOTE)
    if any(any(r.get("improved_under_attack") or []) for r in curve["rows"]):
        stdout.print(IMPROVED_NOTE)
    cols, rows = _point_rows(curve)
    if rows:
        print_table("paired damage per point, attacked vs clean sample of each seed: mean [95% "
                    "CI] (pixel dev. = pixel deviation; class chg. = class changed, digits-cnn)",
                    cols, rows)
    if curve.get("comparisons"):
        stdout.print("[bold]A vs B, paired by seed[/]: damage A − B [95% CI] and the verdict "
                     "on \"A is more robust than B\" (held / did not hold / inconclusive; "
                     "minimum effect 5% of B's value; docs/method.md §11.1)")
        for line in comparison_lines(curve["comparisons"]):
            stdout.print(line, markup=False, soft_wrap=True)
    for p in curve.get("points", []):
        warning = convergence_warning(f"{p['model_name']} {p['label']}", p.get("convergence"))
        if warning:
            stdout.print(warning, markup=False, soft_wrap=True)
