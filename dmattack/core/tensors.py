"""Small tensor and module helpers shared across dmattack."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample tensor ``v`` (B,) reshaped to (B, 1, …, 1) to broadcast against ``like``
    (B, …), in ``like``'s dtype."""
    return v.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


@contextmanager
def restored_modes(model: nn.Module) -> Iterator[None]:
    """Every submodule's train/eval flag as it was on entry is restored when the block ends
    (also when it raises); the block may change them."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block; every submodule's train/eval flag is restored
    afterwards (also when the block raises)."""
    with restored_modes(model):
        model.eval()
        yield


def nonfinite_rows(x: torch.Tensor) -> int:
    """How many samples (rows of ``x`` (N, …)) hold a NaN or ±inf."""
    return int((~torch.isfinite(x.reshape(len(x), -1))).any(1).sum()) if len(x) else 0


def report_nonfinite(x: torch.Tensor, what: str) -> int:
    """:func:`nonfinite_rows` of ``x``, with one warning line (logger ``dmattack``) when any:
    a diverged model or attack must be loud, never a silent NaN in a result."""
    n = nonfinite_rows(x)
    if n:
        logging.getLogger("dmattack").warning(
            "%d of %d %s are non-finite (NaN or inf); they are recorded as num_nonfinite and "
            "left out of the metrics", n, len(x), what)
    return n
