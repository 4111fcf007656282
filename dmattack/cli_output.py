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
        table.add_column(c, no_wrap=i < 2)  # the row labels stay whole in a narrow terminal
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
