"""What a run trains and where: the device, the model with its EMA copy and diffusion built
from the run's config (seeded), their placement and AdamW optimiser, their state restored
from a checkpoint on resume, and the DDP / ``torch.compile`` wrapping the loss calls
(docs/performance.md)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..core import distributed
from ..core.errors import ConfigError, RunFolderError, first_line
from ..core.seeding import derive_seed
from ..diffusion.gaussian import GaussianDiffusion
from ..runs.checkpoints import (
    CHECKPOINT,
    LOAD_ERRORS,
    diffusion_from_config,
    load_weights_into,
    model_from_config,
    open_checkpoint,
)
from .config import TrainConfig, parse_device
from .folder import quarantine


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU) or a torch device string; a one-line
    ValueError for a malformed name or a device that is not there."""
    device = parse_device(name)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not (torch.cuda.is_available() and (
            device.index is None or device.index < torch.cuda.device_count())):
        raise ConfigError(f"device {name!r} is not available here "
                          f"({torch.cuda.device_count()} CUDA device(s) found)", field="device")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} is not available here", field="device")
    return device


def fused_adamw(device: torch.device) -> bool:
    """Whether AdamW's fused kernel serves ``device``: CUDA, and CPU from PyTorch 2.4 (there
    5× faster than the default per-parameter loop)."""
    version = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    return device.type == "cuda" or (device.type == "cpu" and version >= (2, 4))


def _match_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give loaded optimizer moments their parameter's memory layout (a checkpoint written
    with another layout would otherwise pair elements wrongly in fused/foreach updates)."""
    for p, state in optimizer.state.items():
        for k, v in state.items():
            if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


@dataclass
class TrainingParts:
    """What a run trains on ``device``: ``model`` (saved, feeds the EMA), its EMA copy
    ``ema`` (no gradients), the diffusion, the memory format ``fmt`` both are kept in, the
    AdamW ``optimizer`` of ``model`` (:func:`place_and_optimize`) and ``net``, what the loss
    calls: ``model``, or its DDP wrapper ``ddp``, possibly compiled (:func:`wrap_for_training`)."""

    model: nn.Module
    ema: nn.Module
    diffusion: GaussianDiffusion
    device: torch.device
    fmt: torch.memory_format
    optimizer: torch.optim.Optimizer | None = None
    net: nn.Module | None = None
    ddp: DistributedDataParallel | None = None


def build_parts(cfg: TrainConfig, run_cfg: dict[str, Any], device: torch.device,
                fmt: torch.memory_format) -> TrainingParts:
    """The model (initialised from the seed's stream 0), its EMA copy and the diffusion of
    ``run_cfg`` (a run's config.json content), still on the CPU and without an optimiser."""
    if device.type == "cuda":  # fixed shapes: let cuDNN pick its fastest convolutions
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(derive_seed(cfg.seed, 0))
    model = model_from_config(run_cfg)
    ema = copy.deepcopy(model).requires_grad_(False)
    return TrainingParts(model, ema, diffusion_from_config(run_cfg), device, fmt)


def place_and_optimize(cfg: TrainConfig, parts: TrainingParts) -> torch.optim.Optimizer:
    """Move model and EMA to the device in ``parts.fmt`` and build the model's AdamW (U-Net
    weights loaded from a checkpoint are new modules: call it after loading them)."""
    parts.model.to(parts.device, memory_format=parts.fmt)
    parts.ema.to(parts.device, memory_format=parts.fmt).requires_grad_(False)
    parts.optimizer = torch.optim.AdamW(parts.model.parameters(), lr=cfg.lr,
                                        weight_decay=cfg.weight_decay,
                                        fused=fused_adamw(parts.device))
    return parts.optimizer


def resume_parts(cfg: TrainConfig, run_dir: Path, parts: TrainingParts) -> tuple[int, int]:
    """Load the newest usable checkpoint of ``run_dir`` into ``parts`` (weights, optimiser
    state; :func:`~dmattack.runs.checkpoints.open_checkpoint` falls back to ``checkpoint.prev/``);
    returns ``(steps trained, steps skipped)``. A ConfigError when ``cfg.steps`` is fewer
    than the steps trained; an unusable ``checkpoint/`` is then moved aside (rank 0)."""
    def load(ckpt: Path, meta: dict[str, Any]) -> tuple[torch.optim.Optimizer, dict]:
        # U-Net weights load as new modules: the optimiser is built after them
        load_weights_into(parts.model, parts.ema, ckpt, verify=False)
        opt = place_and_optimize(cfg, parts)
        path = ckpt / "state.pt"
        try:  # weights_only: tensors and plain containers, never pickled code
            state = torch.load(path, map_location=parts.device, weights_only=True)
            opt.load_state_dict(state["optimizer"])
        except LOAD_ERRORS as e:
            raise RunFolderError(f"checkpoint file {path} is unreadable: {first_line(e)}"
                                 ) from None
        _match_layout(opt)
        return opt, state

    ckpt, _, (parts.optimizer, state) = open_checkpoint(run_dir, load)
    start, skipped = int(state["step"]), int(state.get("skipped_steps", 0))
    if cfg.steps < start:  # before config.json is rewritten: the run stays as it was
        raise ConfigError(f"steps = {cfg.steps} is fewer than the {start} steps run "
                          f"{run_dir} has trained; allowed on resume: --steps >= {start}",
                          field="steps")
    distributed.barrier()  # every rank has read the checkpoint before rank 0 moves any
    if distributed.is_main() and ckpt.name != CHECKPOINT and (run_dir / CHECKPOINT).exists():
        quarantine(run_dir / CHECKPOINT)
    return start, skipped


def wrap_for_training(cfg: TrainConfig, parts: TrainingParts) -> None:
    """``parts.net``: the model wrapped in DistributedDataParallel under torchrun, compiled
    with ``cfg.compile``; the model in train mode, the EMA in eval mode."""
    if distributed.is_distributed():
        parts.ddp = DistributedDataParallel(
            parts.model, device_ids=[parts.device] if parts.device.type == "cuda" else None)
    net = parts.ddp or parts.model
    if cfg.compile:
        net = torch.compile(net)
    parts.net = net
    net.train()
    parts.ema.eval()
