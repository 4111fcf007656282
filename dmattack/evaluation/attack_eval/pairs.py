"""Paired sampling: clean and attacked samples of a model's chain with the same per-sample
seeds, so that a difference between them is the attack's effect alone (docs/method.md §11.1).
The x_T and every chain noise z of sample i are identical in both runs (the attack draws from
its own ATTACK stream), and 0% attacked reproduces the clean samples bit for bit."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ...attacks.plan import AttackPlan
from ...core.tensors import eval_mode
from ...diffusion.sampling import SamplingChain, sample_batched
from ...runs.checkpoints import LoadedModel
from .store import read_clean, samples_sha256, write_clean


def sample_pair(
    loaded: LoadedModel, chain: SamplingChain, plan: AttackPlan | None, seeds: Sequence[int],
    batch_size: int, device: torch.device | str, want_clean: bool,
    progress: Callable[[int, int], None] | None,
    diagnostics: dict[str, Any] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, float]]:
    """Clean (if ``want_clean``) and attacked (if ``plan`` attacks any step) samples of
    ``chain`` with the same seeds (this process's; not gathered); returns (clean, attacked,
    seconds). ``progress(done, total)`` counts steps. ``diagnostics`` is handed to an
    ``AttackPlan.sample`` that accepts it (attacks with a convergence trace fill it in)."""
    k = chain.num_steps
    attacking = plan is not None and bool(plan.steps(k))
    chunks = math.ceil(len(seeds) / batch_size)
    total = chunks * k * (int(want_clean) + int(attacking))
    done = 0

    def tick(_: int) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    clean = attacked = None
    seconds: dict[str, float] = {}
    shape = loaded.data_shape
    with eval_mode(loaded.model), torch.no_grad():
        if want_clean:
            clean, seconds["clean"] = _timed(lambda: sample_batched(
                loaded.model, chain, shape, seeds, batch_size, None, None, device, tick))
        if attacking:
            extra = ({"diagnostics": diagnostics}
                     if diagnostics is not None and _takes_diagnostics(plan) else {})
            attacked, seconds["attacked"] = _timed(lambda: plan.sample(
                loaded.model, chain, shape, seeds, batch_size, None, device, tick, **extra))
    return clean, attacked, seconds


def _timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    """``fn()`` and the seconds it took."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _takes_diagnostics(plan: AttackPlan) -> bool:
    """Whether this version's ``AttackPlan.sample`` fills a ``diagnostics`` dict (the
    convergence trace of the whole-chain attacks)."""
    return "diagnostics" in inspect.signature(plan.sample).parameters


def point_samples(loaded: LoadedModel, chain: SamplingChain, plan: AttackPlan | None,
                  seeds: Sequence[int], batch_size: int, device: torch.device | str,
                  diagnostics: dict[str, Any] | None = None
                  ) -> tuple[torch.Tensor | None, float]:
    """The samples a curve point scores (clean for ``plan`` None, else attacked; None when no
    step is attacked at this chain length) and the seconds they took; an attack with a
    convergence trace fills ``diagnostics``."""
    clean, attacked, seconds = sample_pair(loaded, chain, plan, seeds, batch_size, device,
                                           plan is None, None, diagnostics)
    return (clean if clean is not None else attacked), sum(seconds.values())


def clean_samples(loaded: LoadedModel, chain: SamplingChain, path: Path, sha256: str | None,
                  seeds: Sequence[int], batch_size: int, device: torch.device | str
                  ) -> torch.Tensor:
    """A curve's clean samples of a model for the paired damage: read back from ``path`` when
    they match ``sha256`` (the clean point's record), else resampled (unsharded) and, when
    they then match it, rewritten."""
    read = read_clean(path, sha256)
    if read is not None:
        return read
    clean, _, _ = sample_pair(loaded, chain, None, seeds, batch_size, device, True, None)
    if sha256 is not None and samples_sha256(clean) == sha256:
        write_clean(path, clean)
    return clean
