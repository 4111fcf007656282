"""The training loop: DDPM, Robust (adv / rand), invariance and DDPM-IP on clean or corrupted data.

All randomness of step ``k`` (batch indices, horizontal flips, t, ε, δ, ξ, dropout) is drawn
from seeds derived from ``(seed, k)``, so a resumed run continues exactly where an
uninterrupted one would be.

Reliability (docs/reliability.md): one process per run folder (``.lock``); the output folder is
checked for writability and free space before training; a non-finite loss or gradient stops
the run naming the step (``nan_policy="stop"``) or skips that optimiser step
(``nan_policy="skip"``); weights are checked finite before each checkpoint, so the last good
checkpoint is never overwritten by a diverged model. SIGTERM / SIGINT finish the step, write a
checkpoint and raise :class:`TrainingInterrupted` (``dmattack train`` exits with 3); a
checkpoint is also written every ``checkpoint_minutes`` of wall clock.

Speed (docs/performance.md): bf16 autocast, fused AdamW and channels-last U-Nets on CUDA,
``torch.compile`` (``compile=True``), a ``foreach`` EMA, in-memory data kept on the GPU when it
fits, pinned non-blocking copies otherwise. Under ``torchrun`` (:mod:`dmattack.core.distributed`)
the model is wrapped in DistributedDataParallel: every process draws the randomness of the
whole global batch from the step's seed and trains on its own contiguous rows, in
``grad_accum`` micro-batches, so W processes × K micro-batches give the single-process result
for the same global batch (up to float reduction order; dropout masks are drawn per
micro-batch). Rank 0 alone writes the run folder.

The loop is this module; the batches of each step are :mod:`dmattack.training.data`, the model,
EMA, optimiser and their restoring on resume :mod:`dmattack.training.parts`, the run folder's
guards and files :mod:`dmattack.training.folder`, stop signals :mod:`dmattack.training.stop`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import distributed
from ..core.errors import ConfigError, DivergedError, OutputError
from ..core.io import MiB, check_writable, provenance, write_json
from ..core.locking import lock_folder
from ..core.oserrors import WRITE_ERRORS, describe, error_number
from ..core.seeding import derive_seed, sample_seeds
from ..core.visualize import save_samples_png
from ..diffusion.sampling import SamplerConfig, sample
from ..models import PRESETS
from ..runs.checkpoints import CONFIG, remove_partial_checkpoints, save_checkpoint
from .config import TrainConfig, build_data, parse_device  # noqa: F401 - the API
from .data import (  # noqa: F401 - epoch_permutation, data_fits_on_device…: the API
    DEVICE_DATA_MAX_BYTES,
    TRAIN_STREAM,
    Batches,
    batch_indices,
    data_fits_on_device,
    epoch_permutation,
    flip_mask,
    flip_rows,
)
from .folder import (  # noqa: F401 - resume_config, prepare_run…: the API
    RESUME_OVERRIDES,
    append_log,
    check_new_run_folder,
    check_resume,
    checkpoint_bytes,
    guard_run_folder,
    has_checkpoints,
    new_run_dir,
    prepare_run,
    repair_log,
    resume_config,
)
from .objectives import draw_step, stat_keys, training_loss
from .parts import (  # noqa: F401 - resolve_device, fused_adamw: the API
    TrainingParts,
    build_parts,
    fused_adamw,
    place_and_optimize,
    resolve_device,
    resume_parts,
    wrap_for_training,
)
from .stop import (  # noqa: F401 - EXIT_INTERRUPTED, resume_command: the API
    EXIT_INTERRUPTED,
    ExtraCheckpoints,
    StopSignals,
    TrainingInterrupted,
    last_checkpoint_step,
    resume_command,
)
from .tensorboard import TrainingBoard

NAN_SKIP_LIMIT = 100  # consecutive skipped steps after which nan_policy="skip" stops anyway
log = logging.getLogger("dmattack")


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
                  "architecture": PRESETS.get(cfg.preset, "preset").architecture},
        "diffusion": {"schedule": cfg.schedule, "num_timesteps": cfg.num_timesteps,
                      "variance_type": cfg.variance_type},
        "seed": cfg.seed,
        "world_size": distributed.world_size(),  # processes of the (last) launch
        **provenance(),
    }


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False,
          callback: StepCallback | None = None, data=None) -> Path:
    """Train (or resume) the run in ``run_dir``; returns the folder.

    To resume, pass ``resume_config(run_dir, steps)`` and ``resume=True``. ``data`` is
    ``build_data(cfg)`` when the caller already built it.

    ``callback(step, stats)`` is called after every optimiser step with the step just finished
    (1-based) and its loss statistics (``stats["skipped"]`` is 1 for a step skipped under
    ``nan_policy="skip"``).

    Under torchrun every process calls this with the same arguments; each trains on its rows
    of every global batch (``batch_size`` must divide by world size × ``grad_accum``), and only
    rank 0 locks and writes ``run_dir`` and calls ``callback``.

    Raises :class:`~dmattack.core.locking.LockError` when another live process writes ``run_dir``,
    :class:`~dmattack.core.io.OutputError` when it cannot be written (or lacks room for a
    checkpoint), ``FloatingPointError`` on a non-finite loss / gradient (``nan_policy="stop"``)
    or non-finite weights (a :class:`~dmattack.core.errors.DivergedError`, a FloatingPointError);
    the last good checkpoint is never overwritten. On resume an unusable
    ``checkpoint/`` (truncated, corrupt) is moved aside to ``checkpoint.corrupt-<time>/`` and
    training continues from ``checkpoint.prev/``. A new run needs an absent or empty folder
    (:func:`check_new_run_folder`); a resume refuses changed settings (:func:`check_resume`).

    SIGTERM or SIGINT during the steps (main thread): the step is finished, a checkpoint of it
    written and :class:`TrainingInterrupted` raised; a second signal raises it at once. The
    previous signal handlers are restored on return. Besides every ``checkpoint_every``
    steps, a checkpoint is written every ``checkpoint_minutes`` (docs/reliability.md).
    """
    run_dir = Path(run_dir)
    cfg = cfg.resolved()
    cfg.validate()
    device = distributed.init(resolve_device(cfg.device))
    world = distributed.world_size()
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ConfigError(f"batch_size={cfg.batch_size} is invalid; allowed: a multiple of "
                          f"{world} processes × grad_accum {cfg.grad_accum}", field="batch_size")
    if not distributed.is_main():
        return _train_locked(cfg, run_dir, resume, None, data, device)
    created = not run_dir.exists()
    check_writable(run_dir)  # before the data is built: a bad --out fails at once
    try:
        with lock_folder(run_dir, "run folder", command="dmattack train"):
            return _train_locked(cfg, run_dir, resume, callback, data, device)
    except TrainingInterrupted as e:
        if e.run_dir is None:  # a second signal: it stopped at once
            e.locate(run_dir, last_checkpoint_step(run_dir))
        raise
    except BaseException:
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # failed before writing anything: leave no empty run folder
        raise


def _memory_format(cfg: TrainConfig, device: torch.device) -> torch.memory_format:
    """channels-last for U-Nets on CUDA (or as ``cfg.channels_last`` forces), else contiguous."""
    on = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    layout = on and PRESETS.get(cfg.preset, "preset").channels_last
    return torch.channels_last if layout else torch.contiguous_format


def _train_locked(cfg: TrainConfig, run_dir: Path, resume: bool,
                  callback: StepCallback | None, data, device: torch.device) -> Path:
    """:func:`train` once ``run_dir`` is locked (rank 0): guards, data, model, optimiser (from
    the checkpoint on resume), config.json, then the steps."""
    main = distributed.is_main()
    guard_run_folder(run_dir, cfg, resume)
    data = build_data(cfg) if data is None else data
    if len(data) < distributed.world_size() * cfg.grad_accum:
        raise ConfigError(f"{len(data)} training samples cannot fill "
                          f"{distributed.world_size()} processes × {cfg.grad_accum} "
                          "micro-batches", field="grad_accum")
    run_cfg = _run_config(cfg, data)
    if main:
        remove_partial_checkpoints(run_dir)
    parts = build_parts(cfg, run_cfg, device, _memory_format(cfg, device))
    if main:  # room for one more checkpoint (the new one is complete before the oldest goes)
        check_writable(run_dir, checkpoint_bytes(parts.model) + 32 * MiB)
    start = skipped = 0
    if resume and not has_checkpoints(run_dir):  # killed before its first checkpoint
        if main:
            log.warning("run %s has no checkpoint yet; training it from step 0", run_dir)
        resume = False
    if resume:
        start, skipped = resume_parts(cfg, run_dir, parts)
    else:
        place_and_optimize(cfg, parts)
    if main:
        write_json(run_dir / CONFIG, run_cfg)
        repair_log(run_dir / "log.jsonl", start if resume else 0)
    wrap_for_training(cfg, parts)
    with StopSignals() as signals:
        _Loop(cfg, run_dir, data, parts, start, skipped, resume, callback, signals).run()
    return run_dir


class _Loop:
    """Steps ``start … cfg.steps−1`` of ``parts`` (placed and wrapped,
    :mod:`dmattack.training.parts`).
    Checkpoints every ``checkpoint_every`` steps, at the end, every ``checkpoint_minutes`` and
    after a stop signal (then raises :class:`TrainingInterrupted`)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, data, parts: TrainingParts, start: int,
                 skipped: int, resume: bool, callback: StepCallback | None,
                 signals: StopSignals) -> None:
        self.cfg, self.run_dir, self.data, self.parts = cfg, run_dir, data, parts
        self.callback, self.start = callback, start
        self.main, self.world = distributed.is_main(), distributed.world_size()
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                                       enabled=parts.device.type == "cuda")
        self.rows = min(cfg.batch_size, len(data))  # the global batch (fewer samples: all of them)
        lo, hi = self.lo, self.hi = distributed.shard_range(self.rows)
        self.micro = [(lo + (hi - lo) * m // cfg.grad_accum,
                       lo + (hi - lo) * (m + 1) // cfg.grad_accum) for m in range(cfg.grad_accum)]
        self.step, self.skipped, self.run_of_skips = start, skipped, 0
        self.last_checkpoint = start if resume else None
        self.t0 = time.time()
        self.board = TrainingBoard(run_dir, start, cfg.batch_size,
                                   enabled=self.main and cfg.tensorboard)
        self.extra = ExtraCheckpoints(cfg, signals)

    def run(self) -> None:
        cfg, p, lo, hi = self.cfg, self.parts, self.lo, self.hi
        shape = (self.rows, *self.data.shape)
        for x_local in Batches(self.data, cfg, p.device, self.start, lo, hi):
            if cfg.flip:  # drawn for the global batch, cut to this process's rows
                x_local = flip_rows(x_local, flip_mask(self.step, self.rows, cfg.seed)[lo:hi])
            x_local = x_local.contiguous(memory_format=p.fmt) if x_local.dim() == 4 else x_local
            torch.manual_seed(derive_seed(cfg.seed, self.step, TRAIN_STREAM, 1))
            draws = draw_step(p.diffusion, cfg.objective, shape, p.device)  # the global batch
            for group in p.optimizer.param_groups:
                group["lr"] = lr_at(cfg, self.step)
            p.optimizer.zero_grad(set_to_none=True)
            loss_value, norm_value, stat_sum = self._backward(x_local, draws)
            stats, bad = self._update(loss_value, norm_value, stat_sum)
            self.step += 1
            self._record(stats, bad, norm_value)
            self._checkpoint_or_stop()
            self._preview()
        self.board.close()

    def _backward(self, x_local: torch.Tensor, draws) -> tuple[float, float, dict[str, float]]:
        """Forward and backward of this process's micro-batches of the step: the gradients of
        the global batch's mean loss. Returns that mean loss, the gradient norm (clipped to
        ``grad_clip`` when > 0) and the loss statistics, reduced over the processes."""
        cfg, p, rows, ddp = self.cfg, self.parts, self.rows, self.parts.ddp
        total = torch.zeros((), device=p.device)
        keys = stat_keys(cfg.objective)
        stat_sum = dict.fromkeys(keys, 0.0)
        for m, (a, b) in enumerate(self.micro):
            # the share of the global mean: DDP averages over ranks, so × world
            weight = self.world * (b - a) / rows
            last = m == len(self.micro) - 1  # DDP averages the gradients after the last one
            with ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext():
                # dropout masks of this micro-batch: a stream of its own (step, first row)
                torch.manual_seed(derive_seed(cfg.seed, self.step, TRAIN_STREAM, 2, a))
                with self.autocast:
                    loss, stats = training_loss(p.net, p.diffusion,
                                                x_local[a - self.lo:b - self.lo],
                                                cfg.objective, draws.rows(a, b, p.fmt))
                (loss * weight).backward()  # a non-finite loss is caught in _update
            total += loss.detach().float() * weight
            for k in keys:
                stat_sum[k] += stats[k] * weight
        if self.world > 1:
            reduced = distributed.all_reduce_mean(
                torch.tensor([float(total), *stat_sum.values()], dtype=torch.float64))
            total, stat_sum = reduced[0], dict(zip(keys, reduced[1:].tolist(),
                                                   strict=True))
        if cfg.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(p.model.parameters(), cfg.grad_clip)
        else:
            norm = _grad_norm(p.model)
        loss_value, norm_value = torch.stack([total.float().to(norm.device),
                                              norm.float()]).tolist()  # one sync
        return loss_value, norm_value, stat_sum

    def _update(self, loss_value: float, norm_value: float, stat_sum: dict[str, float]
                ) -> tuple[dict[str, float], str | None]:
        """The optimiser and EMA update of the step, or, when its loss or gradient is not
        finite, the ``nan_policy``: a DivergedError naming the step and the kept checkpoint
        (``stop``; ``skip`` after :data:`NAN_SKIP_LIMIT` skipped steps in a row), else the
        step skipped. Returns the step's stats and what was non-finite (None: nothing)."""
        cfg, p, step = self.cfg, self.parts, self.step
        bad = ("loss" if not math.isfinite(loss_value) else
               "gradient" if not math.isfinite(norm_value) else None)
        if bad is None:
            self.run_of_skips = 0
            p.optimizer.step()
            update_ema(p.ema, p.model, ema_decay_at(cfg, step))
            stats = {**stat_sum, "loss": loss_value}
            if cfg.grad_clip > 0:
                stats["grad_norm"] = norm_value
            return stats, None
        kept = (f"the last good checkpoint (step {self.last_checkpoint}) is kept in "
                f"{self.run_dir}" if self.last_checkpoint is not None
                else "no checkpoint was written yet")
        if cfg.nan_policy == "stop":
            raise DivergedError(
                f"non-finite training {bad} at step {step + 1}; stopped "
                f"(nan_policy=stop); {kept}; resume with nan_policy=skip to skip such "
                "steps, or lower the learning rate")
        self.skipped += 1
        self.run_of_skips += 1
        if self.run_of_skips > NAN_SKIP_LIMIT:
            raise DivergedError(
                f"non-finite training {bad} at {self.run_of_skips} steps in a row (last: step "
                f"{step + 1}); the run has diverged; {kept}")
        p.optimizer.zero_grad(set_to_none=True)
        if self.main:
            log.warning("non-finite training %s at step %d: optimiser step skipped "
                        "(nan_policy=skip, %d skipped so far)", bad, step + 1, self.skipped)
        return {"loss": loss_value, "skipped": 1.0, "skipped_total": float(self.skipped)}, bad

    def _record(self, stats: dict[str, float], bad: str | None, norm_value: float) -> None:
        """The callback, log.jsonl record and TensorBoard of the step just finished (rank 0)."""
        cfg, step = self.cfg, self.step
        if self.main and self.callback is not None:
            self.callback(step, stats)
        if self.main and (bad is not None or step % cfg.log_every == 0 or step == cfg.steps):
            append_log(self.run_dir / "log.jsonl",
                       {"step": step, "time_s": round(time.time() - self.t0, 3), **stats})
            self.board.log(step, stats, norm_value, self.parts.optimizer.param_groups[0]["lr"])

    def _checkpoint_or_stop(self) -> None:
        """The checkpoint the step calls for (every ``checkpoint_every`` steps, the last step,
        the time-based one, a stop signal's), then :class:`TrainingInterrupted` on a signal."""
        cfg, step, p = self.cfg, self.step, self.parts
        stop, timed = self.extra.poll()
        stop = stop if step < cfg.steps else None  # a signal in the last step: it is done
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or timed or stop:
            _checkpoint(self.run_dir, p.model, p.ema, p.optimizer, step, self.skipped,
                        self.last_checkpoint)
            self.last_checkpoint = step
            self.extra.written()
        if stop:
            self.board.close()
            raise TrainingInterrupted(stop, step, saved=True, run_dir=self.run_dir)

    def _preview(self) -> None:
        """The EMA sample grid every ``sample_every`` steps and at the end (rank 0 writes)."""
        cfg, step, p = self.cfg, self.step, self.parts
        if cfg.num_preview and (step % cfg.sample_every == 0 or step == cfg.steps):
            if self.main:
                path = self.run_dir / "samples" / f"step-{step:07d}.png"
                self.board.preview(step, write_preview(p.ema, p.diffusion, self.data.shape, cfg,
                                                       path, p.device))
            distributed.barrier()


def _all_finite(*modules: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for m in modules for p in m.parameters())


def _grad_norm(model: nn.Module) -> torch.Tensor:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _checkpoint(run_dir: Path, model: nn.Module, ema: nn.Module,
                optimizer: torch.optim.Optimizer, step: int, skipped: int,
                last_checkpoint: int | None) -> None:
    """Every rank: check the weights are finite, then rank 0 writes the checkpoint of ``step``
    (a DivergedError, and nothing written, when they are not)."""
    if not _all_finite(model, ema):
        raise DivergedError(
            f"the weights became non-finite by step {step}; the checkpoint was not "
            f"written and the last good one (step {last_checkpoint}) is kept in {run_dir}")
    if distributed.is_main():
        _save(run_dir, model, ema, optimizer, step, skipped, last_checkpoint)
    distributed.barrier()


def _save(run_dir: Path, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer,
          step: int, skipped: int, last_checkpoint: int | None) -> None:
    """Write the checkpoint of ``step`` (a one-line OutputError naming the kept one)."""
    try:
        save_checkpoint(run_dir, model, ema,
                        {"step": step, "optimizer": optimizer.state_dict(),
                         "skipped_steps": skipped}, step, skipped_steps=skipped)
    except (*WRITE_ERRORS, RuntimeError) as e:  # WRITE_ERRORS: + SafetensorError
        raise OutputError(error_number(e) or errno.EIO,
                          f"writing the checkpoint of step {step} to {run_dir} failed "
                          f"({describe(e)}); the last good checkpoint (step "
                          f"{last_checkpoint}) is intact: free some space and resume") from None


@torch.no_grad()
def write_preview(ema: nn.Module, diffusion, shape, cfg: TrainConfig, path: Path,
                  device: torch.device) -> torch.Tensor:
    """A PNG of EMA samples (respaced ancestral sampler, x̂_0 clipped for images as in
    sampling, fixed seeds across checkpoints); returns the samples (model space,
    (num_preview, *shape))."""
    steps = min(cfg.preview_steps, cfg.num_timesteps)
    sampler = SamplerConfig("respaced", steps).for_shape(shape)
    x = sample(ema, diffusion, shape, sample_seeds(cfg.seed, cfg.num_preview), sampler,
               device=device)
    save_samples_png(x, path, title=f"EMA samples, {sampler.describe(cfg.num_timesteps)}")
    return x

