"""Run independent demo tasks on worker processes, with progress.

The demo's models are small: a training step of an MLP costs ~10 ms, mostly Python and
per-op overhead on one core, so a second intra-op thread buys little, while a second process
doubles throughput on a 2-core CPU. On CPU the pool runs ``min(cpu_count, 4)`` spawned
workers with ``threads // workers`` torch threads each (at least one; ``threads`` is the
command's ``--threads`` or :func:`dmattack.core.threads.default_threads`, which leaves out the
cores a busy machine already uses); on a GPU (or with one core) tasks run in-process.
Task functions are top-level callables ``fn(*args, report=report)``;
``report(n)`` adds ``n`` units to the caller's progress.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from ..core.threads import cpu_count, default_threads

MAX_WORKERS = 4
POLL_S = 0.1

_QUEUE: Any = None  # the progress queue, in worker processes


def _init_worker(progress_queue: Any, threads: int) -> None:
    global _QUEUE
    _QUEUE = progress_queue
    torch.set_num_threads(threads)


def _run(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    def report(n: int = 1) -> None:
        _QUEUE.put(n)

    return fn(*args, report=report)


class TaskPool:
    """A pool of ``workers`` processes (0: run tasks in this process). Use as a context
    manager; an exception inside the block stops the workers. A worker that dies (killed,
    out of memory) fails the map with a one-line ChildProcessError instead of hanging it."""

    def __init__(self, workers: int, threads: int = 1) -> None:
        self.workers = workers
        self.threads = threads
        self._pool: ProcessPoolExecutor | None = None
        self._queue = None
        if workers > 0:
            ctx = mp.get_context("spawn")
            self._queue = ctx.Queue()
            self._pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                             initargs=(self._queue, threads))

    @classmethod
    def for_device(cls, device: str) -> TaskPool:
        """Worker processes on a multi-core CPU, in-process otherwise."""
        cpus = cpu_count()
        if device != "cpu" or cpus < 2:
            return cls(0)
        workers = min(cpus, MAX_WORKERS)
        return cls(workers, max(1, default_threads()[0] // workers))

    def describe(self) -> dict[str, int]:
        return {"worker_processes": self.workers, "torch_threads_per_worker": self.threads}

    def map(self, fn: Callable[..., Any], arglist: Sequence[tuple[Any, ...]],
            advance: Callable[[int], None]) -> list[Any]:
        """``[fn(*args, report=…) for args in arglist]``, in parallel; results in order. The
        first task exception is re-raised here."""
        if self._pool is None:
            return [fn(*args, report=advance) for args in arglist]
        futures: list[Future] = [self._pool.submit(_run, fn, args) for args in arglist]
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
                self._drain(advance)
                for f in done:
                    f.result()  # re-raise the first failure at once
            self._drain(advance)
            return [f.result() for f in futures]
        except BrokenProcessPool:
            raise ChildProcessError("a demo worker process died (killed, or out of memory); "
                                    "rerun with a fresh --out folder") from None

    def _drain(self, advance: Callable[[int], None]) -> None:
        try:
            while True:
                advance(self._queue.get_nowait())
        except queue_mod.Empty:
            pass

    def __enter__(self) -> TaskPool:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self._pool is None:
            return
        if exc_type is not None:  # stop the tasks still running, not just the queued ones
            workers = list((self._pool._processes or {}).values())  # no public API in 3.11
            self._pool.shutdown(wait=False, cancel_futures=True)
            for proc in workers:
                proc.terminate()
        self._pool.shutdown(wait=True)
