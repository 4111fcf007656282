"""Progress of long-running work: rich bars in a terminal, plain log lines anywhere else.

A command opens one :func:`reporting` block; code running inside it (the library included)
opens stages with :func:`stage` and reports ``done/total``; a long inner loop (a whole-chain
attack's iterations and restarts, feature extraction batches) reports with :func:`inner`.
Outside a reporting block these calls only time the stage, so library functions report
unconditionally::

    with progress.stage("scoring", total=None) as s:   # s.seconds: wall time (s)
        metrics = metric_fn(x)

    for i in range(iterations):                        # inside some stage
        ...
        progress.inner(i + 1, iterations, "PGD iteration")

When stderr is not a terminal (a file, a pipe, CI, ``nohup``), one plain line is written at
every stage change and then every ``DMATTACK_PROGRESS_EVERY`` seconds (default 15) while the
stage runs, from a background thread, so a stage that reports nothing still shows it is
alive. Each line has the stage, done/total, the measured rate and the ETA. The ETA is
``remaining / rate`` with the rate measured over the current stage up to *now* (not up to the
last report), so it grows while a step takes longer than the earlier ones instead of freezing.
``DMATTACK_PROGRESS=bars|lines|off`` overrides the choice.
"""

from __future__ import annotations

import contextvars
import functools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

EVERY_ENV = "DMATTACK_PROGRESS_EVERY"
MODE_ENV = "DMATTACK_PROGRESS"
DEFAULT_EVERY_S = 15.0
MODES = ("bars", "lines", "off")


def hms(seconds: float | None) -> str:
    """``seconds`` as ``H:MM:SS`` (``M:SS`` under an hour); ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, m = divmod(s, 3600)
    m, s = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class Stage:
    """One stage of a command: ``done`` of ``total`` units (None: unknown), a free ``info``
    text (e.g. the loss), and the inner loop of the current unit (``sub``: done, total,
    what); ``base``: units already done when the stage started (a resumed run), left out of
    the rate. Times are ``time.monotonic`` seconds."""

    label: str
    total: float | None = None
    unit: str = "it"
    done: float = 0
    info: str = ""
    sub: tuple[int, int, str] | None = None
    base: float = 0
    start: float = field(default_factory=lambda: time.monotonic())
    end: float | None = None
    parent: Stage | None = None

    @property
    def seconds(self) -> float:
        """Wall time of the stage so far (s)."""
        return (self.end or time.monotonic()) - self.start

    def progress(self) -> float:
        """Units done, counting the current unit's inner loop as a fraction of one unit."""
        frac = 0.0
        if self.sub is not None and self.sub[1] > 0:
            frac = min(1.0, self.sub[0] / self.sub[1])
        done = self.done + frac
        return done if self.total is None else min(self.total, done)

    def rate(self) -> float | None:
        """Units per second measured over the stage up to now; None before any unit."""
        done = self.progress() - self.base
        return done / self.seconds if done > 0 and self.seconds > 0 else None

    def eta(self) -> float | None:
        """Seconds left at the measured rate; None when the total or the rate is unknown."""
        rate = self.rate()
        if self.total is None or rate is None or self.end is not None:
            return None
        return max(0.0, self.total - self.progress()) / rate

    def status(self) -> str:
        """``12/40 steps (30%) · 2.1 steps/s · ETA 0:13 · PGD iteration 3/50 · loss 0.12``."""
        parts = []
        done = f"{self.done:g}"
        if self.total is not None:
            pct = 100 * self.progress() / self.total if self.total else 100.0
            parts.append(f"{done}/{self.total:g} {self.unit} ({pct:.0f}%)")
        elif self.done:
            parts.append(f"{done} {self.unit}")
        rate = self.rate()
        if rate is not None:
            parts.append(f"{rate:.0f} {self.unit}/s" if rate >= 100
                         else f"{rate:.3g} {self.unit}/s" if rate >= 0.1
                         else f"{1 / rate:.3g} s/{self.unit}")
        if self.end is not None:
            parts.append(f"done in {hms(self.seconds)}")
        else:
            parts.append(f"elapsed {hms(self.seconds)}")
            if self.total is not None:
                parts.append(f"ETA {hms(self.eta())}")
        if self.sub is not None and self.end is None:
            parts.append(f"{self.sub[2]} {self.sub[0]}/{self.sub[1]}")
        if self.info:
            parts.append(self.info)
        return " · ".join(parts)

    def path(self) -> str:
        """The labels from the outermost open stage to this one, ``a › b``."""
        return self.label if self.parent is None else f"{self.parent.path()} › {self.label}"


class Reporter:
    """Where the stages of one command are shown: ``mode`` ``bars`` (rich), ``lines`` (one
    plain line per stage change and every ``every`` seconds) or ``off``. ``console``: a rich
    Console (its ``quiet`` silences it, e.g. on torchrun ranks other than 0)."""

    def __init__(self, command: str, console: Any, mode: str, every: float) -> None:
        self.command, self.console, self.mode, self.every = command, console, mode, every
        self.stack: list[Stage] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_line = 0.0
        self._bars: Any = None
        self._tasks: dict[int, Any] = {}
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Reporter:
        if self.mode == "bars":
            self._bars = _rich_progress(self.console)
            self._bars.start()
        elif self.mode == "lines":
            self._thread = threading.Thread(target=self._beat, name="dmattack-progress",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bars is not None:
            self._bars.stop()

    # ------------------------------------------------------------------ stages
    def open(self, label: str, total: float | None, unit: str) -> Stage:
        with self._lock:
            st = Stage(label, total, unit, parent=self.stack[-1] if self.stack else None)
            self.stack.append(st)
            if self._bars is not None:
                self._tasks[id(st)] = self._bars.add_task(st.path(), total=total, stage=st)
        self._line(st, force=True)
        return st

    def close(self, st: Stage) -> None:
        st.end = time.monotonic()
        with self._lock:
            if st in self.stack:
                self.stack.remove(st)
        self.refresh(st)
        self._line(st, force=True)

    def refresh(self, st: Stage) -> None:
        """Show ``st``'s new counts (a bar now; a line when the rhythm says so)."""
        if self._bars is not None and id(st) in self._tasks:
            if st.end is not None:  # a full bar, also for an unknown total
                total = st.total or 1
                self._bars.update(self._tasks[id(st)], total=total, completed=total)
            else:
                self._bars.update(self._tasks[id(st)], total=st.total, completed=st.progress())
        self._line(st)

    # ------------------------------------------------------------------ lines
    def _line(self, st: Stage, force: bool = False) -> None:
        if self.mode != "lines":
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_line < self.every:
                return
            self._last_line = now
        self.console.print(f"{self.command} · {st.path()}: {st.status()}", markup=False,
                           highlight=False, soft_wrap=True)

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.every)):
            with self._lock:
                current = self.stack[-1] if self.stack else None
            if current is not None:
                self._line(current)


_REPORTER: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar(
    "dmattack_progress_reporter", default=None)
_STAGE: contextvars.ContextVar[Stage | None] = contextvars.ContextVar(
    "dmattack_progress_stage", default=None)


def env_mode(console: Any) -> str:
    """``DMATTACK_PROGRESS`` if set (bars, lines, off), else bars on a terminal, lines
    elsewhere."""
    mode = os.environ.get(MODE_ENV, "").strip().lower()
    if mode in MODES:
        return mode
    return "bars" if getattr(console, "is_terminal", False) else "lines"


def env_every() -> float:
    """Seconds between plain progress lines: ``DMATTACK_PROGRESS_EVERY`` (> 0) or 15."""
    try:
        every = float(os.environ.get(EVERY_ENV, DEFAULT_EVERY_S))
    except ValueError:
        return DEFAULT_EVERY_S
    return every if every > 0 and math.isfinite(every) else DEFAULT_EVERY_S


@contextmanager
def reporting(command: str, console: Any = None, mode: str | None = None,
              every: float | None = None) -> Iterator[Reporter]:
    """Show the stages opened inside this block (this thread and its context) for
    ``command``; ``console`` defaults to a rich Console on stderr."""
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    rep = Reporter(command, console, mode or env_mode(console),
                   env_every() if every is None else every)
    token = _REPORTER.set(rep)
    try:
        with rep:
            yield rep
    finally:
        _REPORTER.reset(token)


class StageHandle:
    """What :func:`stage` yields: ``update``/``advance`` the counts; ``seconds`` is the
    stage's wall time (final after the block)."""

    def __init__(self, st: Stage, reporter: Reporter | None) -> None:
        self.stage, self.reporter = st, reporter

    @property
    def seconds(self) -> float:
        return self.stage.seconds

    def update(self, done: float | None = None, total: float | None = None,
               info: str | None = None, base: float | None = None) -> None:
        """Set ``done`` (units) and, when given, ``total``, the ``info`` text and ``base``
        (units done before this run, left out of the rate); a new ``done`` ends the current
        unit's inner loop."""
        st = self.stage
        if base is not None:
            st.base = base
        if total is not None:
            st.total = total
        if done is not None:
            if done != st.done:
                st.sub = None
            st.done = done
        if info is not None:
            st.info = info
        if self.reporter is not None:
            self.reporter.refresh(st)

    def advance(self, n: float = 1) -> None:
        self.update(done=self.stage.done + n)


@contextmanager
def stage(label: str, total: float | None = None, unit: str = "it") -> Iterator[StageHandle]:
    """A stage of ``total`` units (None: unknown) shown by the enclosing :func:`reporting`
    block, if any; nested stages show as ``outer › inner``."""
    rep = _REPORTER.get()
    st = rep.open(label, total, unit) if rep is not None else Stage(label, total, unit)
    token = _STAGE.set(st)
    try:
        yield StageHandle(st, rep)
    finally:
        _STAGE.reset(token)
        if rep is not None:
            rep.close(st)
        else:
            st.end = time.monotonic()


def inner(done: int, total: int, what: str = "iteration") -> None:
    """Report an inner loop of the current stage's current unit: ``done`` of ``total``
    ``what`` (e.g. ``"restart 2/3 · PGD iteration"``). It counts as that fraction of one unit
    in the rate and ETA, and is cleared when the stage's count moves on. A no-op outside a
    stage; cheap enough to call every iteration."""
    st = _STAGE.get()
    if st is None:
        return
    st.sub = (done, total, what)
    rep = _REPORTER.get()
    if rep is not None:
        rep.refresh(st)


class Switcher:
    """A ``progress(label, done, total)`` callback (the demo's) that keeps one stage open per
    label: a new label closes the previous stage and opens the next. Call :meth:`close` at
    the end."""

    def __init__(self, unit: str = "it") -> None:
        self.unit = unit
        self._cm: Any = None
        self._handle: StageHandle | None = None

    def __call__(self, label: str, done: float, total: float | None) -> None:
        if self._handle is None or self._handle.stage.label != label:
            self.close()
            self._cm = stage(label, total, self.unit)
            self._handle = self._cm.__enter__()
        self._handle.update(done, total)

    def close(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
        self._cm = self._handle = None


def staged(fn: Callable[..., Any], label: str, unit: str = "it") -> Callable[..., Any]:
    """``fn`` with each call run as stage ``label`` (e.g. a metric function as "scoring");
    ``fn``'s attributes (e.g. a metric function's ``identity``) are kept."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with stage(label, unit=unit):
            return fn(*args, **kwargs)

    return run


def _rich_progress(console: Any) -> Any:
    """rich bars whose text column is :meth:`Stage.status` (live rate and ETA)."""
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn
    from rich.text import Text

    class StatusColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(task.fields["stage"].status())

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), StatusColumn(),
                    console=console, transient=False)
