"""Deterministic seeds: one stream per (run seed, sample, purpose), independent of batching."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache

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


def randn_steps(
    shape: Sequence[int], gens: Sequence[torch.Generator], count: int, device,
    dtype=torch.float32, block_elements: int = 1 << 24,
) -> Iterator[torch.Tensor]:
    """Yield ``count`` (len(gens), *shape) standard normal tensors, the j-th bit-identical to the
    j-th of ``count`` successive :func:`randn_per_sample` calls; row i drawn from ``gens[i]`` only.

    Each generator draws the values of a block of steps in one call, (k, *shape), when torch makes
    that the same stream as k calls of ``shape`` (checked once per size, dtype and device; on the
    CPU it holds when the per-sample size is a multiple of 16), else one step per call. A block
    holds at most ``block_elements`` values (all samples), 64 MiB in float32 by default.
    """
    shape = tuple(shape)
    numel = max(1, int(np.prod(shape, dtype=np.int64)))
    block = max(1, min(count, block_elements // (numel * max(1, len(gens)))))
    done = 0
    while done < count:
        k = min(block, count - done)
        if k == 1 or not _block_draw_is_exact(numel, k, dtype, str(torch.device(device))):
            for _ in range(k):
                yield randn_per_sample(shape, gens, device, dtype)
        else:
            yield from torch.stack(
                [torch.randn((k, *shape), generator=g, device=device, dtype=dtype) for g in gens],
                dim=1)
        done += k


@lru_cache(maxsize=64)
def _block_draw_is_exact(numel: int, k: int, dtype: torch.dtype, device: str) -> bool:
    """Whether one draw of (k, numel) equals k draws of (numel,) from the same generator state,
    and leaves the generator where they leave it."""
    a, b = (torch.Generator(device=device).manual_seed(20240229) for _ in range(2))
    block = torch.randn((k, numel), generator=a, device=device, dtype=dtype)
    steps = torch.stack([torch.randn((numel,), generator=b, device=device, dtype=dtype)
                         for _ in range(k)])
    after = [torch.randn((17,), generator=g, device=device, dtype=dtype) for g in (a, b)]
    return torch.equal(block, steps) and torch.equal(*after)


def rand_per_sample(
    shape: Sequence[int], gens: Sequence[torch.Generator], device, dtype=torch.float32
) -> torch.Tensor:
    """A (len(gens), *shape) U[0, 1) tensor; row i drawn from ``gens[i]`` only."""
    return torch.stack(
        [torch.rand(tuple(shape), generator=g, device=device, dtype=dtype) for g in gens]
    )
