"""What the command line prints: progress bars on stderr, result tables and paths on stdout."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=True)
stdout = Console()


def progress_bar(*extra: str) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        *[TextColumn(f"{{task.fields[{name}]}}") for name in extra],
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, transient=False,
    )


class Rate:
    """Iterations per second over the whole task, for the progress bar."""

    def __init__(self) -> None:
        self.t0, self.n0 = time.time(), None

    def __call__(self, n: int) -> str:
        if self.n0 is None:
            self.n0, self.t0 = n, time.time()
            return ""
        dt = time.time() - self.t0
        return f"{(n - self.n0) / dt:5.1f} it/s" if dt > 0 else ""


def ticker(bar: Progress, task: Any) -> Callable[[Any], None]:
    """``progress(_)`` advancing ``task`` by one per call."""
    done, rate = [0], Rate()

    def tick(_: Any) -> None:
        done[0] += 1
        bar.update(task, completed=done[0], rate=rate(done[0]))

    return tick


def progress_steps(bar: Progress, task: Any) -> Callable[[int, int], None]:
    rate = Rate()

    def tick(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total, rate=rate(done))

    return tick


def metric_row(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "protocol"}


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    stdout.print(f"[bold]{title}[/]")
    table = Table()
    for i, c in enumerate(columns):
        # the row labels stay whole in a narrow terminal; numbers fold rather than lose digits
        table.add_column(c, no_wrap=i < 2, overflow="fold")
    for r in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
    stdout.print(table)


def train_progress(bar: Progress, steps: int) -> Callable[[int, dict[str, float]], None]:
    """The ``callback(step, stats)`` of :func:`dmattack.train.train` showing the loss."""
    task, rate = bar.add_task("train", total=steps, rate="", loss=""), Rate()

    def on_step(step: int, stats: dict[str, float]) -> None:
        bar.update(task, completed=step, rate=rate(step), loss=f"loss {stats['loss']:.4f}")

    return on_step


def curve_progress(bar: Progress) -> Callable[[int, int, dict[str, Any]], None]:
    """The ``progress(done, total, record)`` of :func:`dmattack.attack_eval.run_curve`."""
    task, rate = bar.add_task("curve points", total=None, rate="", point=""), Rate()

    def on_point(done: int, total: int, record: dict[str, Any]) -> None:
        tag = " (resumed)" if record.get("resumed") else ""
        bar.update(task, completed=done, total=total, rate=rate(done),
                   point=f"{record['model_name']} {record['label']}{tag}")

    return on_point


def stage_progress(bar: Progress, description: str) -> Callable[[str, int, int], None]:
    """A ``progress(stage, done, total)`` callback (the demo's) showing the current stage."""
    task = bar.add_task(description, total=None, rate="", stage="")

    def on_progress(stage: str, done: int, total: int) -> None:
        bar.update(task, completed=done, total=total, stage=stage, rate="")

    return on_progress


def unit_progress(bar: Progress, description: str) -> Callable[[int, int, str], None]:
    """A ``progress(done, total, label)`` callback (run_purification's) with a rate."""
    task, rate = bar.add_task(description, total=None, rate="", unit=""), Rate()

    def on_unit(done: int, total: int, label: str) -> None:
        bar.update(task, completed=done, total=total, rate=rate(done), unit=label)

    return on_unit


def purify_rows(result: dict[str, Any]) -> list[list[Any]]:
    """The terminal table of a ``dmattack purify`` result: one row per purifier × t* × attack ×
    eval mode, accuracies in %."""
    return [[r["purifier"], "—" if r["t_star"] is None else f"{r['t_star']:g}",
             "—" if r["reverse_steps"] is None else r["reverse_steps"], r["attack"],
             r["eval_mode"], f"{100 * r['clean_accuracy']:.1f}",
             f"{100 * r['robust_accuracy']:.1f}", f"{r['attack_seconds']:.1f}"]
            for r in result["rows"]]


PURIFY_COLUMNS = ["purifier", "t*", "K", "attack", "eval mode", "clean %", "robust %",
                  "attack s"]


# ----------------------------------------------------------------------------- attack results
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
    from dmattack.attack_eval import IMPROVED_MARK, IMPROVED_NOTE

    clean, attacked = (metric_row(result["metrics"][k]) for k in ("clean", "attacked"))
    better = result.get("improved_under_attack") or {}
    print_table(title, ["metric", "clean", "attacked"],
                [[k, clean[k], f"{attacked[k]:.4g}{IMPROVED_MARK}" if better.get(k)
                  else attacked.get(k)] for k in clean])
    if any(better.values()):
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
    from dmattack.attack_eval import damage_measures

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
    from dmattack.attack_eval import (
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
