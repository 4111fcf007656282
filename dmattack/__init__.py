"""dmattack: adversarial training and reverse-chain attacks for diffusion models.

The names below are imported on first use (PEP 562), so ``import dmattack.<module>`` of a
module that needs no torch (the command line's option declarations, :mod:`dmattack.core.errors`,
:mod:`dmattack.core.progress`) does not import torch."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
_EXPORTS = {"GaussianDiffusion": "diffusion.gaussian", "beta_schedule": "diffusion.gaussian",
            "respace": "diffusion.gaussian", "SamplerConfig": "diffusion.sampling",
            "sample": "diffusion.sampling", "sample_batched": "diffusion.sampling"}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
