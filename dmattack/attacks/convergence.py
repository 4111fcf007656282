"""Has an attack converged? The rule applied to PGD traces (docs/method.md §12 "convergence").

A trace is the best-so-far mean objective after each iteration of an N-iteration PGD, N + 1
values (entry 0: the random start), non-decreasing. Over the last fifth of the iterations,
k = max(1, ⌈N/5⌉), the relative rise is

    rise = (trace[N] − trace[N − k]) / |trace[N − k]|

and the attack counts as converged when rise ≤ ``tolerance`` (default 1%): another fifth of
the iterations would, at the rate seen last, raise the damage by at most that much. A trace
that stays at 0 has rise 0; a rise from 0 to a positive value is infinite (recorded as None,
not converged).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..core.errors import ConfigError
from ..core.settings import is_number

TOLERANCE = 0.01
"""Default largest relative rise over the last fifth of the iterations of a converged attack."""


def last_fifth(iterations: int) -> int:
    """Iterations in the last fifth of ``iterations`` (⌈N/5⌉, at least 1)."""
    return max(1, math.ceil(iterations / 5))


def rise_last_fifth(trace: Sequence[float], iterations: int) -> float:
    """Relative rise of ``trace`` (``iterations`` + 1 values) over its last fifth."""
    end, before = float(trace[iterations]), float(trace[iterations - last_fifth(iterations)])
    if end == before:
        return 0.0
    return (end - before) / abs(before) if before != 0 else math.inf


def convergence(trace: Sequence[float], iterations: int, restarts: int,
                tolerance: float = TOLERANCE,
                trace_per_restart: Sequence[Sequence[float]] | None = None) -> dict[str, Any]:
    """The convergence record of one attack run: ``trace`` (``iterations`` + 1 values, the
    best-so-far mean objective, best across ``restarts``), ``trace_per_restart`` (one trace per
    restart; default: ``[trace]`` for one restart), ``rise_last_fifth`` (relative, see the
    module docstring; None if infinite) and ``converged`` = rise ≤ ``tolerance``. Raises
    ConfigError for a bad tolerance and ValueError for a trace of the wrong length."""
    if not (is_number(tolerance) and tolerance >= 0):
        raise ConfigError(f"convergence tolerance = {tolerance!r} is invalid; allowed: a "
                          "finite number >= 0", field="tolerance")
    if iterations < 1 or len(trace) != iterations + 1:
        raise ValueError(f"a trace of {iterations} iterations has {iterations + 1} values "
                         f"(iterations >= 1), got {len(trace)}")
    if trace_per_restart is None:
        if restarts != 1:
            raise ValueError(f"trace_per_restart is needed for {restarts} restarts")
        trace_per_restart = [trace]
    if len(trace_per_restart) != restarts:
        raise ValueError(f"got {len(trace_per_restart)} per-restart traces for {restarts} "
                         "restarts")
    rise = rise_last_fifth(trace, iterations)
    return {"trace": [float(v) for v in trace],
            "trace_per_restart": [[float(v) for v in t] for t in trace_per_restart],
            "converged": bool(rise <= tolerance), "iterations": iterations,
            "restarts": restarts, "tolerance": tolerance,
            "rise_last_fifth": rise if math.isfinite(rise) else None}


def trace_of(progress: torch.Tensor) -> list[float]:
    """The across-restarts trace of a progress tensor (R, N + 1, C): entry i is the mean over
    the C columns of the best over restarts at iterate i (as if the R restarts ran side by
    side), so its last entry is the mean of each column's best over every iterate."""
    return progress.amax(0).mean(-1).tolist()


def convergence_of(progress: Sequence[torch.Tensor], tolerance: float = TOLERANCE
                   ) -> dict[str, Any] | None:
    """:func:`convergence` of progress tensors (R, N + 1, C_j) of one attack (e.g. one per
    batch), their columns pooled: the trace is the column-count-weighted mean of the parts'
    traces. None when there is no column (nothing was attacked)."""
    parts = [p.detach().float().cpu() for p in progress if p.shape[-1] > 0]
    if not parts:
        return None
    p = torch.cat(parts, -1)
    return convergence(trace_of(p), p.shape[1] - 1, p.shape[0], tolerance,
                       p.mean(-1).tolist())
