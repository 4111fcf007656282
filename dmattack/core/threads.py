"""How many CPU threads torch may use: ``--threads``, ``DMATTACK_THREADS``, or a default that
does not oversubscribe a busy machine.

torch's intra-op pool defaults to one thread per core. When other processes already keep the
cores busy, its threads wait on each other at every parallel op, and a command runs several
times slower than with one thread (docs/performance.md "Threads"). The default is therefore
the cores left idle by the rest of the machine: ``min(cores, max(1, cores − load))`` with
``load`` the one-minute load average, rounded (``os.getloadavg``; no load average: all cores).
``OMP_NUM_THREADS``, when the user set it, is kept as the default.
"""

from __future__ import annotations

import os
import sys

ENV = "DMATTACK_THREADS"


def cpu_count() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def idle_cores(cores: int | None = None, load: float | None = None) -> int:
    """``min(cores, max(1, cores − round(load)))``: the cores the rest of the machine leaves
    idle (at least one). ``load`` defaults to the one-minute load average."""
    cores = cpu_count() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return min(cores, max(1, cores - round(load)))


def default_threads() -> tuple[int, str]:
    """The thread count when none is given, and where it comes from (for the record):
    ``DMATTACK_THREADS``, else a user's ``OMP_NUM_THREADS``, else :func:`idle_cores`."""
    for var in (ENV, "OMP_NUM_THREADS"):
        text = os.environ.get(var, "").strip()
        if text.isdigit() and int(text) >= 1:
            return int(text), var
    return idle_cores(), "idle cores"


def apply_threads(threads: int | None) -> int:
    """Use ``threads`` (None: :func:`default_threads`) torch threads in this process and in
    the processes it starts; returns the count. torch itself is configured now when it is
    imported, else through ``OMP_NUM_THREADS`` when it is (so a command that never needs
    torch does not import it)."""
    n = default_threads()[0] if threads is None else threads
    os.environ["OMP_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    return n
