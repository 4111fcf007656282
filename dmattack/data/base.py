"""The dataset interface shared by every data source, and the in-memory implementation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.data import Dataset

from ..core.errors import ConfigError, InputFileError
from .truth import KnownDistribution


class DataError(InputFileError):
    """Data that cannot be found or read (a missing folder, an empty folder, a bad file)."""


def check_choice(what: str, value: Any, allowed: Iterable[str]) -> None:
    """Raise a one-line ConfigError unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}", field=what)


def check_seed(seed: int) -> int:
    """``seed`` as a Python int; a one-line ConfigError unless it is an integer >= 0."""
    if isinstance(seed, bool) or not isinstance(seed, (int, float)) or int(seed) != seed \
            or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}", field="seed")
    return int(seed)


def uint8_to_model(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in [0, 255] → float32 model space [−1, 1]."""
    return x.to(torch.float32) / 127.5 - 1.0


class DiffusionDataset(Dataset, ABC):
    """A training set for a diffusion model; items are float32 tensors in model space.

    Attributes: ``name``; ``shape`` of one item, (C, H, W) for images (values in [−1, 1]) or
    (d,) for vectors; ``kind`` ("image" | "vector"); ``truth``, the known clean distribution or
    None; ``in_memory``, whether :meth:`tensor` returns the whole data.
    """

    in_memory: bool = False

    def __init__(self, name: str, shape: tuple[int, ...], kind: str, *, seed: int,
                 resolution: int | None = None, params: dict[str, Any] | None = None,
                 truth: KnownDistribution | None = None) -> None:
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.kind = kind
        self.seed = seed
        self.resolution = resolution
        self.params = dict(params or {})
        self.truth = truth

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> torch.Tensor: ...

    def tensor(self) -> torch.Tensor | None:
        """The whole data as one (N, *shape) float32 tensor (a fresh copy), or None when the data
        is read lazily from disk."""
        return None

    def describe(self) -> dict[str, Any]:
        """A JSON-able record of everything that defines the data."""
        return {"name": self.name, "kind": self.kind, "num_samples": len(self),
                "shape": list(self.shape), "resolution": self.resolution, "seed": self.seed,
                "params": dict(self.params)}


class InMemoryDataset(DiffusionDataset):
    """Data held as one (N, *shape) tensor: float32 model-space values, or uint8 pixels in
    [0, 255] that are mapped to [−1, 1] on access (this keeps e.g. CIFAR-10 at 150 MB)."""

    in_memory = True

    def __init__(self, name: str, data: torch.Tensor, kind: str, **kwargs: Any) -> None:
        if data.dtype not in (torch.float32, torch.uint8):
            raise TypeError(f"data must be float32 or uint8, got {data.dtype}")
        super().__init__(name, tuple(data.shape[1:]), kind, **kwargs)
        self._data = data

    def __len__(self) -> int:
        return self._data.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._convert(self._data[index])

    def tensor(self) -> torch.Tensor:
        return self._convert(self._data)

    @staticmethod
    def _convert(x: torch.Tensor) -> torch.Tensor:
        """A fresh float32 model-space copy of stored values."""
        return uint8_to_model(x) if x.dtype == torch.uint8 else x.clone()
