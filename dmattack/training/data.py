"""The batches of each training step: the seeded order of the training samples, the rows of
a step's global batch that this process trains on, horizontal flips, and moving them to the
device (kept there for a whole in-memory data set when it fits; docs/performance.md).

All of it is drawn from ``(seed, step)`` alone, so a resumed run, any device and any split
into processes or micro-batches see the same batches and flips."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..core.seeding import derive_seed
from ..data import DataError
from .config import TrainConfig
from .stop import ignore_stop_signals

TRAIN_STREAM = 2  # seed purpose of per-step training randomness
# an in-memory training set is kept on the GPU up to this size (and a quarter of the free memory)
DEVICE_DATA_MAX_BYTES = 8 << 30


def epoch_permutation(epoch: int, n: int, seed: int) -> torch.Tensor:
    """The seeded order of the n training samples in ``epoch`` (n,)."""
    g = torch.Generator().manual_seed(derive_seed(seed, epoch, TRAIN_STREAM, 0))
    return torch.randperm(n, generator=g)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """Indices of the batch of ``step``: epochs are seeded permutations, last partial
    batch dropped (with fewer samples than a batch, each batch is a full permutation prefix)."""
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    return epoch_permutation(epoch, n, seed)[k * batch_size:(k + 1) * batch_size]


def flip_mask(step: int, rows: int, seed: int) -> torch.Tensor:
    """Which rows of the global batch of ``step`` are mirrored left-right: (rows,) bool, each
    True with probability 1/2, drawn on the CPU from ``(seed, step)`` alone (so a resumed run,
    any device and any split into processes or micro-batches see the same flips)."""
    g = torch.Generator().manual_seed(derive_seed(seed, step, TRAIN_STREAM, 3))
    return torch.rand(rows, generator=g) < 0.5


def flip_rows(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) with the rows where ``mask`` (B,) is True mirrored along W."""
    return torch.where(mask.to(x.device).reshape(-1, 1, 1, 1), x.flip(-1), x)


class _BatchPlan:
    """:func:`batch_indices` of consecutive steps, one permutation per epoch (not per step),
    cut to this process's rows ``lo … hi−1`` of the global batch."""

    def __init__(self, n: int, cfg: TrainConfig, lo: int, hi: int) -> None:
        self.n, self.cfg, self.lo, self.hi = n, cfg, lo, hi
        self.epoch, self.perm = -1, torch.empty(0, dtype=torch.long)

    def __call__(self, step: int) -> torch.Tensor:
        b = self.cfg.batch_size
        epoch, k = divmod(step, max(1, self.n // b))
        if epoch != self.epoch:
            self.epoch, self.perm = epoch, epoch_permutation(epoch, self.n, self.cfg.seed)
        return self.perm[k * b:(k + 1) * b][self.lo:self.hi]


class _StepIndices:
    """The DataLoader batch sampler of steps ``start … end−1`` (this process's rows)."""

    def __init__(self, plan: _BatchPlan, steps: range) -> None:
        self.plan, self.steps = plan, steps

    def __iter__(self) -> Iterator[list[int]]:
        return (self.plan(s).tolist() for s in self.steps)

    def __len__(self) -> int:
        return len(self.steps)


def data_fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether an in-memory training set of ``nbytes`` stays on ``device`` for the whole run:
    always off CUDA; on CUDA when it takes at most :data:`DEVICE_DATA_MAX_BYTES` and a quarter
    of the free memory (CIFAR-10 in float32 takes 0.6 GB)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= min(DEVICE_DATA_MAX_BYTES, free // 4)


class Batches:
    """Iterates this process's rows ``lo … hi−1`` of the global training batches of steps
    ``start … end−1`` (model space, on ``device``)."""

    def __init__(self, data, cfg: TrainConfig, device: torch.device, start: int, lo: int,
                 hi: int) -> None:
        self.data, self.cfg, self.device, self.start = data, cfg, device, start
        self.plan = _BatchPlan(len(data), cfg, lo, hi)
        tensor = data.tensor()
        if tensor is not None and data_fits_on_device(tensor.nbytes, device):
            tensor = tensor.to(device)
        self.tensor = tensor

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda" and not x.is_cuda:  # pinned: overlaps the GPU's work
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    def __iter__(self) -> Iterator[torch.Tensor]:
        steps = range(self.start, self.cfg.steps)
        if self.tensor is not None:
            for step in steps:
                idx = self.plan(step).to(self.tensor.device)
                yield self._to_device(self.tensor[idx])
            return
        loader = torch.utils.data.DataLoader(
            self.data,
            batch_sampler=_StepIndices(self.plan, steps),
            num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=ignore_stop_signals,
        )
        batches = iter(loader)
        try:
            for batch in batches:
                yield batch.to(self.device, non_blocking=True)
        except DataError as e:
            # a worker's DataError arrives wrapped ("Caught DataError in DataLoader worker
            # process 0", then its traceback): re-raise its own one-line message
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            msg = lines[-1].split("DataError: ", 1)[-1] if lines else "unreadable data"
            raise DataError(msg) from None
        finally:
            # workers ignore SIGTERM (see ignore_stop_signals), so they must be shut down
            # here: a traceback that keeps this iterator alive would otherwise leave them
            # running and the interpreter waiting for them at exit
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
