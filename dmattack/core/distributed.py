"""torch.distributed glue for runs launched with ``torchrun``.

``torchrun --nproc-per-node N $(which dmattack) train ...`` starts N processes and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each. :func:`init`
joins the process group they describe (NCCL on CUDA, gloo on CPU) and returns the process's
device (``cuda:LOCAL_RANK`` on CUDA). A plain process (no ``WORLD_SIZE``, or 1) is rank 0 of 1:
every helper below is then a no-op or the identity, so the same code runs both ways.

Sharding is by contiguous slices in whole batches (:func:`shard_range`), so concatenating the
slices in rank order gives the original order and every batch is the one a single process runs.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import ConfigError

T = TypeVar("T")
TIMEOUT = timedelta(minutes=30)  # a rank waiting this long for the others gives up


def env_world_size() -> int:
    """The world size torchrun announced in ``WORLD_SIZE`` (1 for a plain process)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def is_distributed() -> bool:
    """True in a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0, the process that writes files and prints."""
    return rank() == 0


def init(device: torch.device) -> torch.device:
    """Join torchrun's process group (once; later calls only return the device).

    ``device`` is the requested device (``cuda`` / ``cuda:N`` / ``cpu``). Under torchrun a CUDA
    request becomes ``cuda:LOCAL_RANK`` (one GPU per process) and the backend is NCCL; on CPU it
    is gloo. Raises a one-line ValueError for a device that cannot be shared out (mps) or
    when there are fewer GPUs than local processes.
    """
    world = env_world_size()
    if world == 1:
        return device
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(f"device {device} cannot be used under torchrun; use cuda or cpu")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local} needs a GPU but only "
                             f"{torch.cuda.device_count()} are visible; start fewer processes")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
        else:
            dist.init_process_group("gloo", timeout=TIMEOUT)
        atexit.register(shutdown)
    return device


def shutdown() -> None:
    """Leave the process group (registered at exit by :func:`init`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (small picklable objects)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over ranks (same shape; a new tensor on ``x``'s device)."""
    if not is_distributed():
        return x
    y = x.detach().to(_comm_device(), copy=True)
    dist.all_reduce(y)
    return (y / world_size()).to(x.device)


def gather_rows(x: torch.Tensor, dst: int = 0) -> torch.Tensor | None:
    """Concatenate every rank's rows (N_r, …) in rank order on rank ``dst``, on CPU.

    Shards may differ in length; all must share the trailing shape and dtype. Other ranks get
    None. A plain process gets ``x`` on CPU.
    """
    if not is_distributed():
        return x.cpu()
    device = _comm_device()
    counts = torch.tensor([len(x)], device=device)
    all_counts = [torch.zeros_like(counts) for _ in range(world_size())]
    dist.all_gather(all_counts, counts)
    sizes = [int(c) for c in all_counts]
    padded = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=device)
    padded[:len(x)] = x.to(device)
    parts = [torch.empty_like(padded) for _ in sizes] if rank() == dst else None
    dist.gather(padded, parts, dst=dst)
    if parts is None:
        return None
    return torch.cat([p[:n].cpu() for p, n in zip(parts, sizes, strict=True)])


def shard_range(n: int, batch_size: int = 1, rank_: int | None = None,
                world: int | None = None) -> tuple[int, int]:
    """The [start, stop) of rank ``rank_``'s contiguous share of n items (default: this
    process's), in whole batches of ``batch_size``: the items are cut into ⌈n/batch_size⌉
    batches and each rank takes ⌊B·r/W⌋ … ⌊B·(r+1)/W⌋−1 of them, so every batch is the one a
    single process runs and per-batch arithmetic is unchanged."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    batches = -(-n // batch_size)
    return (min(n, batches * r // w * batch_size), min(n, batches * (r + 1) // w * batch_size))


def shard(items: Sequence[T], batch_size: int = 1) -> Sequence[T]:
    """This process's contiguous slice of ``items`` (e.g. per-sample seeds), in whole batches
    (:func:`shard_range`)."""
    start, stop = shard_range(len(items), batch_size)
    return items[start:stop]
