"""Small tensor and module helpers shared across dmattack."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample tensor ``v`` (B,) reshaped to (B, 1, …, 1) to broadcast against ``like``
    (B, …), in ``like``'s dtype."""
    return v.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block; every submodule's train/eval flag is restored
    afterwards (also when the block raises)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
