"""Watch a training run in TensorBoard: ``<run>/tb/`` (optional extra ``dmattack[tensorboard]``).

:class:`TrainingBoard` writes, at every logged step, the loss terms, the gradient norm (before
clipping), the learning rate and the training throughput (images/s), and the EMA preview
samples whenever a preview is drawn. Open it with ``tensorboard --logdir runs/``.

Resume-safe: a resumed run opens the folder with ``purge_step`` = the first step it trains
again (checkpoint step + 1), which writes a ``SessionLog.START`` record that makes TensorBoard
discard every earlier event at or after that step. Events are flushed at every logged step, so
everything up to a checkpoint is on disk before the next checkpoint is written. After a
SIGKILL and ``--resume`` every step appears once, in order, like the log.jsonl records.

Without the ``tensorboard`` package, or with ``enabled=False``, every method does nothing
and no ``tb/`` folder is made.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import weakref
from collections.abc import Mapping
from pathlib import Path

import torch

log = logging.getLogger("dmattack")
TB_FOLDER = "tb"


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can be used (the ``tensorboard`` package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


class TrainingBoard:
    """TensorBoard events of one training process in ``run_dir/tb``.

    Args:
        run_dir: the run folder.
        start_step: optimiser steps already done (the resumed checkpoint's step; 0 for a new
            run). Events of steps > ``start_step`` from an earlier, killed process are purged.
        batch_size: images (or vectors) per optimiser step, for the images/s rate.
        enabled: False (``--no-tensorboard``, or a non-main torchrun rank) writes nothing.
    """

    def __init__(self, run_dir: str | Path, start_step: int, batch_size: int,
                 enabled: bool = True) -> None:
        self.writer = None
        self.batch_size = batch_size
        self.last_step, self.last_time = start_step, time.perf_counter()
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("tensorboard is not installed; pip install 'dmattack[tensorboard]' to "
                     "watch runs in TensorBoard")
            return
        folder = Path(run_dir) / TB_FOLDER
        _wait_to_sort_last(folder)
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=start_step + 1)
        self.writer.flush()  # the purge record is on disk before any new step
        weakref.finalize(self, self.writer.close)  # also when training stops with an error

    @property
    def active(self) -> bool:
        return self.writer is not None

    def log(self, step: int, stats: Mapping[str, float], grad_norm: float, lr: float) -> None:
        """Scalars of the optimiser step ``step`` (1-based): ``train/<stat>`` for every loss
        statistic, ``train/grad_norm`` (the global gradient norm before clipping),
        ``train/lr`` and ``train/images_per_s`` (since the previous call)."""
        now = time.perf_counter()
        seconds, steps = now - self.last_time, step - self.last_step
        self.last_step, self.last_time = step, now
        if self.writer is None:
            return
        for key, value in stats.items():
            if key != "grad_norm":
                self.writer.add_scalar(f"train/{key}", float(value), step)
        self.writer.add_scalar("train/grad_norm", float(grad_norm), step)
        self.writer.add_scalar("train/lr", float(lr), step)
        if seconds > 0 and steps > 0:
            self.writer.add_scalar("train/images_per_s", steps * self.batch_size / seconds,
                                   step)
        self.writer.flush()

    def preview(self, step: int, samples: torch.Tensor) -> None:
        """The preview samples of ``step`` (model space, (N, *shape)): an image grid for
        images ([-1, 1] → [0, 1]), a scatter plot for 2-D/3-D vectors."""
        if self.writer is None:
            return
        from ..core.visualize import as_images  # matplotlib and torchvision: only when used

        samples = samples.detach().float().cpu()
        images = as_images(samples)
        if images is not None:
            from torchvision.utils import make_grid

            grid = ((images[:64].clamp(-1, 1) + 1) / 2).nan_to_num(0.0)
            self.writer.add_image("preview/ema_samples",
                                  make_grid(grid, nrow=max(1, math.isqrt(len(grid))),
                                            padding=1), step)
        elif samples.dim() == 2 and samples.shape[1] >= 2:
            self.writer.add_figure("preview/ema_samples", _scatter(samples), step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _wait_to_sort_last(folder: Path) -> None:
    """Event files are named ``events.out.tfevents.<whole seconds>.<host>.<pid>.<n>`` and read
    in name order, so a file opened in the same second as a killed process's file may sort
    before it (a smaller pid) and TensorBoard would read the purge record first. Wait (< 1 s)
    until this process's file sorts after every existing one."""
    stamps = []
    for path in folder.glob("events.out.tfevents.*"):
        with contextlib.suppress(IndexError, ValueError):
            stamps.append(int(path.name.split(".")[3]))
    if stamps:
        delay = max(stamps) + 1 - time.time()
        if delay > 0:
            time.sleep(delay)


def _scatter(cloud: torch.Tensor):
    """A matplotlib figure of the finite rows of ``cloud`` (N, d≥2): x0 against x1, x2 as
    colour."""
    import matplotlib.pyplot as plt  # the Agg backend: dmattack.core.visualize chose it

    cloud = cloud[torch.isfinite(cloud).all(dim=1)]
    fig, ax = plt.subplots(figsize=(4, 4))
    colour = {"c": cloud[:, 2], "cmap": "viridis"} if cloud.shape[1] > 2 else {}
    ax.scatter(cloud[:, 0], cloud[:, 1], s=2, **colour)
    ax.set_xlabel("x0")
    ax.set_ylabel("x1")
    fig.tight_layout()
    return fig  # add_figure closes it
