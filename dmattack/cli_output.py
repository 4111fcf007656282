"""What the command line prints: progress on stderr (:mod:`dmattack.progress`), result tables
and paths on stdout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from . import progress

console = Console(stderr=True)
stdout = Console()


def reporting(command: str) -> Any:
    """The progress block of ``dmattack command`` (bars in a terminal, plain lines elsewhere;
    see :mod:`dmattack.progress`), shown on stderr."""
    return progress.reporting(f"dmattack {command}", console)


def ticker(st: progress.StageHandle) -> Callable[[Any], None]:
    """``progress(_)`` advancing stage ``st`` by one per call."""
    return lambda _: st.advance()


def progress_steps(st: progress.StageHandle) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback setting stage ``st``'s counts."""
    return lambda done, total: st.update(done, total)


def metric_row(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "protocol"}


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    stdout.print(f"[bold]{title}[/]")
    table = Table()
    for i, c in enumerate(columns):
        table.add_column(c, no_wrap=i < 2)  # the row labels stay whole in a narrow terminal
    for r in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
    stdout.print(table)


def train_progress(st: progress.StageHandle) -> Callable[[int, dict[str, float]], None]:
    """The ``callback(step, stats)`` of :func:`dmattack.train.train` showing the loss."""

    def on_step(step: int, stats: dict[str, float]) -> None:
        first = st.stage.done == 0 and st.stage.base == 0  # resumed at step - 1: not timed
        st.update(step, info=f"loss {stats['loss']:.4f}", base=step - 1 if first else None)

    return on_step


def curve_progress(st: progress.StageHandle) -> Callable[[int, int, dict[str, Any]], None]:
    """The ``progress(done, total, record)`` of :func:`dmattack.attack_eval.run_curve`."""

    def on_point(done: int, total: int, record: dict[str, Any]) -> None:
        tag = " (resumed)" if record.get("resumed") else ""
        st.update(done, total, info=f"last: {record['model_name']} {record['label']}{tag}")

    return on_point


def unit_progress(st: progress.StageHandle) -> Callable[[int, int, str], None]:
    """A ``progress(done, total, label)`` callback (run_purification's)."""
    return lambda done, total, label: st.update(done, total, info=label)


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
