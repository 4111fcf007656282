"""The training loop: DDPM, Robust (adv / rand), invariance and DDPM-IP on clean or corrupted data.

All randomness of step ``k`` (batch indices, t, ε, δ, ξ, dropout) is drawn from seeds derived
from ``(seed, k)``, so a resumed run continues exactly where an uninterrupted one would be.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import DATASETS, corrupt, load_dataset
from .diffusion import SCHEDULES, VARIANCE_TYPES
from .io import provenance, write_json
from .models import PRESETS, UNET_PRESETS
from .objectives import ObjectiveConfig, training_loss
from .runs import (
    CONFIG,
    checkpoint_dir,
    diffusion_from_config,
    load_weights_into,
    model_from_config,
    read_config,
    save_checkpoint,
)
from .sampling import SamplerConfig, sample
from .seeding import derive_seed, sample_seeds
from .visualize import save_samples_png

TRAIN_STREAM = 2  # seed purpose of per-step training randomness

# Per-preset defaults of (steps, batch size, warm-up steps). The CPU presets fit the
# 5-minute budget of `dmattack train` on 2 cores; the GPU presets follow Ho et al. 2020.
PRESET_DEFAULTS: dict[str, tuple[int, int, int]] = {
    "tiny": (1000, 64, 100),
    "mlp": (3000, 256, 100),
    "mlp-small": (3000, 256, 100),
    "ddpm-cifar10": (800_000, 128, 5000),
    "ddpm-64": (500_000, 64, 5000),
}


@dataclass
class TrainConfig:
    """Everything that defines a training run (recorded in the run's config.json)."""

    # data
    dataset: str = "digits"
    data_dir: str | None = None
    resolution: int | None = None
    num_data: int | None = None
    corrupt_mode: str = "gaussian"
    corrupt_fraction: float = 0.0
    corrupt_sigma: float = 0.2
    # model and diffusion
    preset: str = "tiny"
    dropout: float | None = None
    schedule: str = "linear"
    num_timesteps: int = 1000
    variance_type: str = "fixed_large"
    # objective (METHOD §3–§5)
    objective: ObjectiveConfig = field(default_factory=lambda: ObjectiveConfig("robust-adv"))
    # optimisation
    steps: int | None = None  # None: the preset's default (PRESET_DEFAULTS)
    batch_size: int | None = None
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: int | None = None
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    # bookkeeping
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 500
    sample_every: int = 500
    num_preview: int = 64
    preview_steps: int = 100
    log_every: int = 25
    num_workers: int = 0

    def resolved(self) -> TrainConfig:
        """A copy with the preset's defaults filled in for unset steps / batch / warm-up."""
        steps, batch, warmup = PRESET_DEFAULTS.get(self.preset, (1000, 64, 100))
        return dataclasses.replace(
            self,
            steps=steps if self.steps is None else self.steps,
            batch_size=batch if self.batch_size is None else self.batch_size,
            warmup=warmup if self.warmup is None else self.warmup,
        )

    def validate(self) -> None:
        """Raise ValueError (one line naming the field, value and what is allowed).
        Call on a :meth:`resolved` config."""
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"{name}={getattr(self, name)!r} is invalid; allowed: {allowed}")

        if self.dataset not in DATASETS:
            raise bad("dataset", ", ".join(DATASETS))
        if self.preset not in PRESETS:
            raise bad("preset", ", ".join(PRESETS))
        if self.schedule not in SCHEDULES:
            raise bad("schedule", ", ".join(SCHEDULES))
        if self.variance_type not in VARIANCE_TYPES:
            raise bad("variance_type", ", ".join(VARIANCE_TYPES))
        if not 0.0 <= self.corrupt_fraction <= 1.0:
            raise bad("corrupt_fraction", "a fraction in [0, 1]")
        if not self.corrupt_sigma >= 0.0:
            raise bad("corrupt_sigma", "a noise std >= 0")
        for name in ("steps", "batch_size", "num_timesteps", "checkpoint_every",
                     "sample_every", "log_every", "preview_steps"):
            if getattr(self, name) <= 0:
                raise bad(name, "an integer > 0")
        if self.num_preview < 0 or self.warmup < 0 or self.num_workers < 0:
            raise bad("num_preview" if self.num_preview < 0 else
                      "warmup" if self.warmup < 0 else "num_workers", "an integer >= 0")
        if not self.lr > 0:
            raise bad("lr", "a learning rate > 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise bad("ema_decay", "a decay in [0, 1)")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise bad("grad_clip" if self.grad_clip < 0 else "weight_decay", "a value >= 0")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["objective"] = self.objective.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training config field {unknown[0]!r}")
        d = dict(d)
        d["objective"] = ObjectiveConfig.from_dict(d.get("objective", {}))
        return cls(**d)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_data(cfg: TrainConfig):
    """The (possibly corrupted) training set of a config."""
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, resolution=cfg.resolution,
                        num_samples=cfg.num_data, seed=cfg.seed)
    if cfg.corrupt_fraction > 0:
        data = corrupt(data, mode=cfg.corrupt_mode, fraction=cfg.corrupt_fraction,
                       sigma=cfg.corrupt_sigma, seed=derive_seed(cfg.seed, 1))
    return data


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """Indices of the batch of ``step``: epochs are seeded permutations, last partial
    batch dropped (with fewer samples than a batch, each batch is a full permutation prefix)."""
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(derive_seed(seed, epoch, TRAIN_STREAM, 0))
    perm = torch.randperm(n, generator=g)
    return perm[k * batch_size:(k + 1) * batch_size]


class _Batches:
    """Iterates the training batches of steps ``start..end−1`` (model space, on device)."""

    def __init__(self, data, cfg: TrainConfig, device: torch.device, start: int) -> None:
        self.data, self.cfg, self.device, self.start = data, cfg, device, start
        tensor = data.tensor()
        self.tensor = tensor.to(device) if tensor is not None else None

    def __iter__(self) -> Iterator[torch.Tensor]:
        cfg, n = self.cfg, len(self.data)
        steps = range(self.start, cfg.steps)
        if self.tensor is not None:
            for step in steps:
                idx = batch_indices(step, n, cfg.batch_size, cfg.seed).to(self.device)
                yield self.tensor[idx]
            return
        loader = torch.utils.data.DataLoader(
            self.data,
            batch_sampler=[batch_indices(s, n, cfg.batch_size, cfg.seed).tolist() for s in steps],
            num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for batch in loader:
            yield batch.to(self.device, non_blocking=True)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    ema_params = list(ema.parameters())
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


def ema_decay_at(cfg: TrainConfig, step: int) -> float:
    """EMA decay at ``step``: ``ema_decay``, warmed up as min(decay, (1+k)/(10+k)) so short
    CPU runs average recent weights instead of the initialisation."""
    if not cfg.ema_warmup:
        return cfg.ema_decay
    return min(cfg.ema_decay, (1 + step) / (10 + step))


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to ``lr`` over ``warmup`` steps, then constant (improved-diffusion)."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr


StepCallback = Callable[[int, dict[str, float]], None]


def _run_config(cfg: TrainConfig, data) -> dict[str, Any]:
    return {
        "kind": "dmattack-run",
        "train": cfg.to_dict(),
        "data": data.describe(),
        "model": {"preset": cfg.preset, "data_shape": list(data.shape),
                  "dropout": cfg.dropout,
                  "architecture": "diffusers.UNet2DModel" if cfg.preset in UNET_PRESETS
                  else "dmattack.MLPEps"},
        "diffusion": {"schedule": cfg.schedule, "num_timesteps": cfg.num_timesteps,
                      "variance_type": cfg.variance_type},
        "seed": cfg.seed,
        **provenance(),
    }


def resume_config(run_dir: str | Path, steps: int | None = None) -> TrainConfig:
    """The config of an existing run (with a checkpoint), optionally extended to ``steps``."""
    saved = read_config(run_dir)["train"]
    checkpoint_dir(run_dir)
    return TrainConfig.from_dict({**saved, "steps": steps or saved["steps"]})


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False,
          callback: StepCallback | None = None, data=None) -> Path:
    """Train (or resume) the run in ``run_dir``; returns the folder.

    To resume, pass ``resume_config(run_dir, steps)`` and ``resume=True``. ``data`` is
    ``build_data(cfg)`` when the caller already built it.

    ``callback(step, stats)`` is called after every optimiser step with the step just finished
    (1-based) and its loss statistics.
    """
    run_dir = Path(run_dir)
    cfg = cfg.resolved()
    cfg.validate()
    device = resolve_device(cfg.device)
    data = build_data(cfg) if data is None else data
    run_cfg = _run_config(cfg, data)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / CONFIG, run_cfg)

    torch.manual_seed(derive_seed(cfg.seed, 0))
    model = model_from_config(run_cfg).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    diffusion = diffusion_from_config(run_cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr,
                                  weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")
    start = 0
    if resume:
        ckpt = checkpoint_dir(run_dir)
        load_weights_into(model, ema, ckpt)
        model.to(device)
        ema.to(device).requires_grad_(False)
        state = torch.load(ckpt / "state.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    log_path = run_dir / "log.jsonl"
    model.train()
    ema.eval()
    step = start
    t0 = time.time()
    for x0 in _Batches(data, cfg, device, start):
        torch.manual_seed(derive_seed(cfg.seed, step, TRAIN_STREAM, 1))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step)
        with autocast:
            loss, stats = training_loss(model, diffusion, x0, cfg.objective)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at step {step + 1}; the last "
                                     f"good checkpoint is kept in {run_dir}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            stats["grad_norm"] = float(nn.utils.clip_grad_norm_(model.parameters(),
                                                                cfg.grad_clip))
        optimizer.step()
        update_ema(ema, model, ema_decay_at(cfg, step))
        step += 1
        stats = {k: float(v) for k, v in stats.items()}
        stats["loss"] = float(loss.detach())
        if callback is not None:
            callback(step, stats)
        if step % cfg.log_every == 0 or step == cfg.steps:
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step, "time_s": round(time.time() - t0, 3),
                                    **stats}) + "\n")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint(run_dir, model, ema,
                            {"step": step, "optimizer": optimizer.state_dict()}, step)
        if cfg.num_preview and (step % cfg.sample_every == 0 or step == cfg.steps):
            write_preview(ema, diffusion, data.shape, cfg, run_dir / "samples" /
                          f"step-{step:07d}.png", device)
    return run_dir


@torch.no_grad()
def write_preview(ema: nn.Module, diffusion, shape, cfg: TrainConfig, path: Path,
                  device: torch.device) -> None:
    """A PNG of EMA samples (respaced ancestral sampler, fixed seeds across checkpoints)."""
    steps = min(cfg.preview_steps, cfg.num_timesteps)
    x = sample(ema, diffusion, shape, sample_seeds(cfg.seed, cfg.num_preview),
               SamplerConfig("respaced", steps), device=device)
    save_samples_png(x, path, title=f"EMA samples, {steps} respaced steps")


