"""Training-set corruption (docs/method.md §7): a seeded fraction p of the samples is altered once.

- ``gaussian``: x̃ = x + σ·n, n ~ N(0, I), in model space, no clipping.
- ``outliers`` (vector data only): x̃ ~ U(box), the per-coordinate bounding box of the clean data
  enlarged by 10% of its width on each side (the "grid-like layer" embedding the cloud); σ unused.

Exactly round(p·N) indices are chosen by a permutation seeded with ``seed``. The noise is fixed:
for in-memory data it is drawn once, in index order, from one generator; for lazily read images
sample i's noise comes from a generator seeded by (seed, i), so it is identical every epoch.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..core.errors import ConfigError
from ..core.seeding import derive_seed
from .base import DiffusionDataset, check_choice, check_seed

CORRUPTION_MODES = ("gaussian", "outliers")
BOX_MARGIN = 0.1
# Stream keys under the corruption seed.
_SELECT, _VALUES = 0, 1


def outlier_box(clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) corners, each (d,), of the bounding box of ``clean`` (N, d), enlarged by
    ``BOX_MARGIN`` of its width per side."""
    low, high = clean.amin(dim=0), clean.amax(dim=0)
    margin = BOX_MARGIN * (high - low)
    return low - margin, high + margin


class CorruptedDataset(DiffusionDataset):
    """A view of ``base`` in which the samples at ``corrupted_indices`` are altered.

    ``truth`` stays the clean data's distribution: evaluation is always against clean data.
    """

    def __init__(self, base: DiffusionDataset, mode: str, fraction: float, sigma: float,
                 seed: int) -> None:
        super().__init__(base.name, base.shape, base.kind, seed=base.seed,
                         resolution=base.resolution, params=base.params, truth=base.truth)
        self.base, self.mode, self.fraction, self.sigma = base, mode, fraction, sigma
        self.corruption_seed = seed
        self.in_memory = base.in_memory
        n = len(base)
        select = torch.Generator().manual_seed(derive_seed(seed, _SELECT))
        chosen = torch.randperm(n, generator=select)[: round(fraction * n)]
        self.corrupted_indices = torch.sort(chosen).values
        self._row = torch.full((n,), -1, dtype=torch.long)
        self._row[self.corrupted_indices] = torch.arange(len(chosen))
        self._box: tuple[torch.Tensor, torch.Tensor] | None = None
        self._values: torch.Tensor | None = None  # (M, *shape) corrupted samples, in memory
        clean = base.tensor()
        if mode == "outliers":
            self._box = outlier_box(clean)
        if clean is not None:
            values = torch.Generator().manual_seed(derive_seed(seed, _VALUES))
            self._values = self._corrupt(clean[self.corrupted_indices], values)

    def _corrupt(self, clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Corrupted versions of the clean samples ``clean`` (M, *shape)."""
        if self.mode == "outliers":
            low, high = self._box
            return low + (high - low) * torch.rand(clean.shape, generator=generator)
        return clean + self.sigma * torch.randn(clean.shape, generator=generator)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> torch.Tensor:
        index = range(len(self))[index]  # bounds check; negative → positive
        row = int(self._row[index])
        if row < 0:
            return self.base[index]
        if self._values is not None:
            return self._values[row].clone()
        generator = torch.Generator().manual_seed(derive_seed(self.corruption_seed, _VALUES, index))
        return self._corrupt(self.base[index], generator)

    def tensor(self) -> torch.Tensor | None:
        data = self.base.tensor()
        if data is not None and self._values is not None:
            data[self.corrupted_indices] = self._values
        return data

    def describe(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "mode": self.mode, "fraction": self.fraction,
            "sigma": self.sigma if self.mode == "gaussian" else None,
            "seed": self.corruption_seed, "num_corrupted": len(self.corrupted_indices)}
        if self._box is not None:
            record["box"] = [self._box[0].tolist(), self._box[1].tolist()]
        return {**self.base.describe(), "corruption": record}


def corrupt(ds: DiffusionDataset, mode: str = "gaussian", fraction: float = 0.0,
            sigma: float = 0.0, seed: int = 0) -> CorruptedDataset:
    """Corrupt round(fraction·N) samples of ``ds`` (see the module docstring).

    ``fraction`` in [0, 1]; ``sigma`` ≥ 0 is the noise std in model units (gaussian mode).
    ``fraction=0`` gives an unchanged copy. Raises ValueError on bad arguments.
    """
    check_choice("corruption mode", mode, CORRUPTION_MODES)
    if isinstance(ds, CorruptedDataset):
        raise ConfigError(f"dataset {ds.name!r} is already corrupted; corrupt the clean dataset")
    fraction, sigma = float(fraction), float(sigma)
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"fraction must be in [0, 1], got {fraction}")
    if not (math.isfinite(sigma) and sigma >= 0.0):
        raise ConfigError(f"sigma must be a finite number >= 0, got {sigma}")
    if mode == "outliers" and ds.kind != "vector":
        raise ConfigError(f"mode 'outliers' needs vector data; {ds.name!r} is {ds.kind} data "
                         f"(allowed for images: gaussian)")
    return CorruptedDataset(ds, mode, fraction, sigma, check_seed(seed))
