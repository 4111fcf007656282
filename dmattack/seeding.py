"""Deterministic seeds: one stream per (run seed, sample, purpose), independent of batching."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# Purposes get their own streams so that, e.g., attack random starts never shift chain noise.
CHAIN_NOISE = 0
ATTACK = 1


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (numpy SeedSequence hashing)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def sample_seeds(seed: int, num_samples: int, start: int = 0) -> list[int]:
    """Per-sample seeds for samples ``start … start+num_samples−1`` of a run seeded ``seed``."""
    return [derive_seed(seed, i) for i in range(start, start + num_samples)]


def generators(
    seeds: Sequence[int], purpose: int, device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One torch.Generator per sample for the given purpose."""
    return [torch.Generator(device=device).manual_seed(derive_seed(s, purpose)) for s in seeds]


def randn_per_sample(
    shape: Sequence[int], gens: Sequence[torch.Generator], device, dtype=torch.float32
) -> torch.Tensor:
    """A (len(gens), *shape) standard normal tensor; row i drawn from ``gens[i]`` only."""
    return torch.stack(
        [torch.randn(tuple(shape), generator=g, device=device, dtype=dtype) for g in gens]
    )


def rand_per_sample(
    shape: Sequence[int], gens: Sequence[torch.Generator], device, dtype=torch.float32
) -> torch.Tensor:
    """A (len(gens), *shape) U[0, 1) tensor; row i drawn from ``gens[i]`` only."""
    return torch.stack(
        [torch.rand(tuple(shape), generator=g, device=device, dtype=dtype) for g in gens]
    )
