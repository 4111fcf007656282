"""Shared by the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model (from /proc/cpuinfo) and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "CPU"
    return f"{model} ({torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings end here)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, the device's queued work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start
