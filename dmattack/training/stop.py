"""Stopping training without loss (docs/reliability.md, "Stopping and resuming training").

SIGTERM (a scheduler's preemption notice) or SIGINT (Ctrl-C) while
:func:`dmattack.training.train.train`
runs: the first lets the step in progress finish and a checkpoint of it be written, then stops
with :class:`TrainingInterrupted` (exit code :data:`EXIT_INTERRUPTED` from the CLI); a second
stops at once, keeping the last complete checkpoint. ``checkpoint_minutes`` adds wall-clock
checkpoints so a crash never loses more than that.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..core import distributed
from ..runs.checkpoints import CHECKPOINT, META, PREVIOUS

if TYPE_CHECKING:
    from .config import TrainConfig

EXIT_INTERRUPTED = 3  # `dmattack train`'s exit code after a stop signal: checkpoint written
STOP_SIGNALS = ("SIGTERM", "SIGINT")


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM and SIGINT (a scheduler or Ctrl-C signals the whole
    process group): the main process finishes its step and shuts them down itself."""
    for name in STOP_SIGNALS:
        signal.signal(signal.Signals[name], signal.SIG_IGN)


def resume_command(run_dir: str | Path) -> str:
    """The shell command that resumes the run in ``run_dir`` (as this process was launched:
    under torchrun, with as many processes per node)."""
    folder = shlex.quote(str(run_dir))
    if distributed.world_size() == 1:
        return f"dmattack train --resume {folder}"
    per_node = os.environ.get("LOCAL_WORLD_SIZE", str(distributed.world_size()))
    return f"torchrun --nproc-per-node {per_node} -- $(which dmattack) train --resume {folder}"


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGTERM or SIGINT (docs/reliability.md, "Stopping and resuming").

    After a first signal the step in progress is finished and a checkpoint of it written:
    ``saved`` is True and ``step`` that step. A second signal stops at once: ``saved`` is
    False and ``step`` is the step of the last complete checkpoint (None: none yet), which
    the stop leaves intact. ``str()`` is one line ending with the command that resumes;
    :attr:`exit_code` is what ``dmattack train`` exits with. A KeyboardInterrupt, so that
    ``except Exception`` in a caller does not swallow the stop.
    """

    def __init__(self, signal_name: str, step: int | None = None, saved: bool = False,
                 run_dir: str | Path | None = None) -> None:
        super().__init__(signal_name)
        self.signal_name, self.step, self.saved = signal_name, step, saved
        self.run_dir: Path | None = None
        self.command: str | None = None
        if run_dir is not None:
            self.locate(run_dir, step)

    def locate(self, run_dir: str | Path, step: int | None) -> None:
        """Set the run folder, the checkpoint step and the resume command."""
        self.run_dir, self.step = Path(run_dir), step
        self.command = resume_command(run_dir)

    @property
    def exit_code(self) -> int:
        """:data:`EXIT_INTERRUPTED` (3) after a checkpoint of the stop step; 128 + the signal
        number (130 for SIGINT, 143 for SIGTERM) after a second signal."""
        return EXIT_INTERRUPTED if self.saved else 128 + int(signal.Signals[self.signal_name])

    def __str__(self) -> str:
        resume = f"resume with: {self.command}" if self.command else "resume the run"
        if self.saved:
            return f"stopped at step {self.step} ({self.signal_name}); checkpoint saved; {resume}"
        kept = ("no checkpoint was written yet" if self.step is None else
                f"the last complete checkpoint (step {self.step}) is kept")
        return f"stopped at once (second {self.signal_name}); {kept}; {resume}"


def last_checkpoint_step(run_dir: Path) -> int | None:
    """The step of the newest checkpoint folder of a run (meta.json; files not hashed)."""
    for name in (CHECKPOINT, PREVIOUS):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return int(json.loads((run_dir / name / META).read_text())["step"])
    return None


class StopSignals:
    """SIGTERM and SIGINT while training: the first sets :attr:`name` (the loop finishes the
    step, writes a checkpoint and stops); a second raises :class:`TrainingInterrupted` at once.
    The previous handlers are restored on exit (and before that second raise). Outside the
    main thread (where Python cannot handle signals) it does nothing."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                sig = signal.Signals[name]
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.name is None:
            self.name = name
            return
        self.restore()
        raise TrainingInterrupted(name)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def __exit__(self, *exc: object) -> None:
        self.restore()


class ExtraCheckpoints:
    """When the loop writes a checkpoint off the ``checkpoint_every`` grid: a stop signal or
    ``checkpoint_minutes`` (wall clock) since the last checkpoint. Under torchrun the ranks
    agree (an all-reduce of three flags per step; a plain process makes none)."""

    def __init__(self, cfg: TrainConfig, signals: StopSignals) -> None:
        self.seconds, self.signals = 60.0 * cfg.checkpoint_minutes, signals
        self.last = time.monotonic()

    def poll(self) -> tuple[str | None, bool]:
        """``(signal name or None, whether the time-based checkpoint is due)``."""
        name = self.signals.name
        due = self.seconds > 0 and time.monotonic() - self.last >= self.seconds
        if distributed.world_size() > 1:
            flags = distributed.all_reduce_mean(torch.tensor(
                [name == STOP_SIGNALS[0], name == STOP_SIGNALS[1], due], dtype=torch.float64))
            term, sigint, due = (bool(v > 0) for v in flags.tolist())
            name = STOP_SIGNALS[0] if term else STOP_SIGNALS[1] if sigint else None
        return name, due

    def written(self) -> None:
        self.last = time.monotonic()
