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
fits, pinned non-blocking copies otherwise. Under ``torchrun`` (:mod:`dmattack.distributed`)
the model is wrapped in DistributedDataParallel: every process draws the randomness of the
whole global batch from the step's seed and trains on its own contiguous rows, in
``grad_accum`` micro-batches, so W processes × K micro-batches give the single-process result
for the same global batch (up to float reduction order; dropout masks are drawn per
micro-batch). Rank 0 alone writes the run folder.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import distributed
from .data import DataError
from .errors import ConfigError, DivergedError, OutputError, RunFolderError, first_line
from .io import MiB, check_writable, provenance, write_json, write_text
from .locking import lock_folder
from .models import PRESETS
from .objectives import draw_step, stat_keys, training_loss
from .oserrors import WRITE_ERRORS, describe, error_number
from .runs import (
    CHECKPOINT,
    CONFIG,
    LOAD_ERRORS,
    PREVIOUS,
    checkpoint_dir,
    diffusion_from_config,
    load_weights_into,
    model_from_config,
    open_checkpoint,
    read_config,
    remove_partial_checkpoints,
    save_checkpoint,
)
from .sampling import SamplerConfig, sample
from .seeding import derive_seed, sample_seeds
from .settings import option_name
from .tensorboard_log import TrainingBoard
from .train_config import TrainConfig, build_data, parse_device  # noqa: F401 - the API
from .train_stop import (  # noqa: F401 - EXIT_INTERRUPTED, resume_command: the API
    EXIT_INTERRUPTED,
    ExtraCheckpoints,
    StopSignals,
    TrainingInterrupted,
    ignore_stop_signals,
    last_checkpoint_step,
    resume_command,
)
from .visualize import save_samples_png

TRAIN_STREAM = 2  # seed purpose of per-step training randomness
NAN_SKIP_LIMIT = 100  # consecutive skipped steps after which nan_policy="skip" stops anyway
# an in-memory training set is kept on the GPU up to this size (and a quarter of the free memory)
DEVICE_DATA_MAX_BYTES = 8 << 30
log = logging.getLogger("dmattack")


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


class _Batches:
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


RESUME_OVERRIDES = ("nan_policy", "grad_accum", "compile", "channels_last", "num_workers",
                    "tensorboard", "checkpoint_minutes")
"""Settings a resumed run may change besides ``steps``: none changes the steps trained."""


def _resumable_options() -> str:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    return ", ".join(option_name(fields[k]) for k in ("steps", *RESUME_OVERRIDES))


def resume_config(run_dir: str | Path, steps: int | None = None,
                  nan_policy: str | None = None, **overrides: Any) -> TrainConfig:
    """The config of an existing run (with a checkpoint), optionally extended to ``steps``
    and with another ``nan_policy``, ``tensorboard``, ``checkpoint_minutes`` or speed setting
    (``grad_accum``, ``compile``, ``channels_last``, ``num_workers``); none of them changes the
    steps already trained.
    An override given as None keeps the saved value."""
    unknown = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if unknown:
        raise ConfigError(f"{unknown[0]} cannot change on resume; allowed: "
                          f"{', '.join(RESUME_OVERRIDES)}", field=unknown[0])
    saved = read_config(run_dir)["train"]  # validated: a bad field is a one-line RunFolderError
    if _has_checkpoints(run_dir):
        checkpoint_dir(run_dir)  # a one-line RunFolderError when none of them is usable
    cfg = TrainConfig.from_dict({**saved, "steps": saved["steps"] if steps is None else steps})
    changes = {k: v for k, v in {"nan_policy": nan_policy, **overrides}.items() if v is not None}
    return dataclasses.replace(cfg, **changes)


def check_resume(run_dir: str | Path, cfg: TrainConfig) -> None:
    """The guard of every resume, from Python and the command line alike: a one-line
    ConfigError naming the first setting of ``cfg`` (resolved) that differs from the run's
    config.json, other than ``steps`` and :data:`RESUME_OVERRIDES`; a RunFolderError when
    ``run_dir`` is not a run (no valid config.json)."""
    saved = {p: v for p, _, v in TrainConfig.from_dict(read_config(run_dir)["train"]).settings()}
    for path, f, new in cfg.settings():
        old = saved.get(path)
        if path not in ("steps", *RESUME_OVERRIDES) and old != new:
            raise ConfigError(f"{path} ({option_name(f)}) = {new!r} differs from the run's "
                              f"{old!r} and cannot change on resume; allowed to change: "
                              f"{_resumable_options()}", field=path)


def check_new_run_folder(run_dir: str | Path) -> None:
    """The guard of every new run: ``run_dir`` is absent or empty (hidden files aside: the
    lock, temp files), so a run, a checkpoint without its config.json, a training log or a
    curve / purification store is never trained over. A one-line ConfigError otherwise."""
    run_dir = Path(run_dir)
    if (run_dir / CONFIG).exists():
        raise ConfigError(f"run folder {run_dir} already holds a run; resume it (--resume "
                          f"{run_dir}, or train(resume_config(run_dir), run_dir, resume=True)) "
                          "or choose another --out", field="out")
    held = sorted(p.name + "/" * p.is_dir() for p in run_dir.iterdir()
                  if not p.name.startswith(".")) if run_dir.is_dir() else []
    if held:
        raise ConfigError(f"run folder {run_dir} is not empty (it holds {', '.join(held[:3])}"
                          f"{', …' if len(held) > 3 else ''}) and is not a run to resume; a new "
                          "run needs a new or empty folder: choose another --out", field="out")


def new_run_dir(cfg: TrainConfig, out: str | Path | None, runs_root: str | Path) -> Path:
    """The folder of a new run: ``out``, or ``<runs_root>/<dataset>-<method>-<time>``; a
    one-line ConfigError when it is not empty (:func:`check_new_run_folder`)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out or Path(runs_root) / f"{cfg.dataset}-{cfg.objective.method}-{stamp}")
    check_new_run_folder(run_dir)
    return run_dir


def prepare_run(cfg: TrainConfig | None, out: str | Path | None, runs_root: str | Path,
                resume: str | Path | None = None, steps: int | None = None,
                join: Callable[[str], Any] | None = None, **overrides: Any
                ) -> tuple[TrainConfig, Path, Any]:
    """What ``dmattack train`` does before the first step: ``(config, run folder, data)``.

    A new run of ``cfg`` (resolved) goes into ``out`` (default :func:`new_run_dir`). With
    ``resume`` the run there continues: as ``cfg`` when given (checked by
    :func:`check_resume`), else as :func:`resume_config` with ``steps`` and ``overrides``.
    ``join(device)`` joins torchrun's process group first (the run folder is then rank 0's);
    the data is built and the folder checked writable."""
    if resume:
        run_dir = Path(resume)
        cfg = resume_config(resume, steps, **overrides) if cfg is None else cfg.resolved()
        check_resume(run_dir, cfg)
    else:
        cfg = cfg.resolved()
        run_dir = new_run_dir(cfg, out, runs_root)
    cfg.validate()
    if join is not None:
        join(cfg.device)
    run_dir = Path(distributed.broadcast_object(str(run_dir)))  # rank 0's time stamp
    data = build_data(cfg)
    if distributed.is_main():
        check_writable(run_dir)
    return cfg, run_dir, data


def _has_checkpoints(run_dir: str | Path) -> bool:
    return any((Path(run_dir) / name).is_dir() for name in (CHECKPOINT, PREVIOUS))


def checkpoint_bytes(model: nn.Module) -> int:
    """Disk size of one checkpoint: model + EMA weights + AdamW's two moments (float32)."""
    return 16 * sum(p.numel() for p in model.parameters()) + 64 * 1024


def _all_finite(*modules: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for m in modules for p in m.parameters())


def _grad_norm(model: nn.Module) -> torch.Tensor:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _repair_log(log_path: Path, last_step: int | None) -> None:
    """Cut a torn last line (a kill mid-write) and, on resume, the records of steps after the
    checkpoint (they are trained again), so the log reads like an uninterrupted run's."""
    if not log_path.exists():
        return
    data = log_path.read_bytes()
    lines = data[:data.rfind(b"\n") + 1].decode(errors="replace").splitlines(keepends=True)

    def keep(line: str) -> bool:
        try:
            return last_step is None or int(json.loads(line)["step"]) <= last_step
        except (ValueError, KeyError, TypeError):
            return False

    kept = [line for line in lines if keep(line)]
    if len(kept) != len(lines) or len(data) != sum(len(x.encode()) for x in lines):
        write_text(log_path, "".join(kept))


def _append_log(log_path: Path, record: dict[str, Any]) -> None:
    try:
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        raise OutputError(e.errno or errno.EIO, f"cannot append to {log_path}: "
                          f"{e.strerror or e}") from None


def _quarantine(ckpt: Path) -> None:
    """Move an unusable ``checkpoint/`` aside (kept for inspection, never rotated into
    ``checkpoint.prev``), so the good previous checkpoint survives the next save."""
    target = ckpt.with_name(f"{ckpt.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(ckpt, target)
    log.warning("moved the unusable checkpoint %s to %s", ckpt, target)


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

    Raises :class:`~dmattack.locking.LockError` when another live process writes ``run_dir``,
    :class:`~dmattack.io.OutputError` when it cannot be written (or lacks room for a
    checkpoint), ``FloatingPointError`` on a non-finite loss / gradient (``nan_policy="stop"``)
    or non-finite weights (a :class:`~dmattack.errors.DivergedError`, a FloatingPointError);
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


def _train_locked(cfg: TrainConfig, run_dir: Path, resume: bool,
                  callback: StepCallback | None, data, device: torch.device) -> Path:
    main = distributed.is_main()
    # the guards of `dmattack train`, here under the folder's lock so that train() called from
    # Python refuses exactly what the command line refuses
    problem = None
    if main:
        try:
            if resume:
                check_resume(run_dir, cfg)
            else:
                check_new_run_folder(run_dir)
        except (ConfigError, RunFolderError) as e:
            problem = e
    problem = distributed.broadcast_object(problem if main else None)
    if problem is not None:
        raise problem
    data = build_data(cfg) if data is None else data
    if len(data) < distributed.world_size() * cfg.grad_accum:
        raise ConfigError(f"{len(data)} training samples cannot fill "
                          f"{distributed.world_size()} processes × {cfg.grad_accum} "
                          "micro-batches", field="grad_accum")
    run_cfg = _run_config(cfg, data)
    if main:
        remove_partial_checkpoints(run_dir)

    fmt = _memory_format(cfg, device)
    if device.type == "cuda":  # fixed shapes: let cuDNN pick its fastest convolutions
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(derive_seed(cfg.seed, 0))
    model = model_from_config(run_cfg)
    ema = copy.deepcopy(model).requires_grad_(False)
    diffusion = diffusion_from_config(run_cfg)
    if main:  # room for one more checkpoint (the new one is complete before the oldest goes)
        check_writable(run_dir, checkpoint_bytes(model) + 32 * MiB)

    def place_and_optimizer() -> torch.optim.Optimizer:
        model.to(device, memory_format=fmt)
        ema.to(device, memory_format=fmt).requires_grad_(False)
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 fused=fused_adamw(device))

    start = skipped = 0
    if resume and not _has_checkpoints(run_dir):  # killed before its first checkpoint
        if main:
            log.warning("run %s has no checkpoint yet; training it from step 0", run_dir)
        resume = False
    if resume:
        def load(ckpt: Path, meta: dict[str, Any]) -> tuple[torch.optim.Optimizer, dict]:
            # U-Net weights load as new modules: the optimiser is built after them
            load_weights_into(model, ema, ckpt, verify=False)
            opt = place_and_optimizer()
            path = ckpt / "state.pt"
            try:  # weights_only: tensors and plain containers, never pickled code
                state = torch.load(path, map_location=device, weights_only=True)
                opt.load_state_dict(state["optimizer"])
            except LOAD_ERRORS as e:
                raise RunFolderError(f"checkpoint file {path} is unreadable: {first_line(e)}"
                               ) from None
            _match_layout(opt)
            return opt, state

        ckpt, _, (optimizer, state) = open_checkpoint(run_dir, load)
        start, skipped = int(state["step"]), int(state.get("skipped_steps", 0))
        if cfg.steps < start:  # before config.json is rewritten: the run stays as it was
            raise ConfigError(f"steps = {cfg.steps} is fewer than the {start} steps run "
                              f"{run_dir} has trained; allowed on resume: --steps >= {start}",
                              field="steps")
        distributed.barrier()  # every rank has read the checkpoint before rank 0 moves any
        if main and ckpt.name != CHECKPOINT and (run_dir / CHECKPOINT).exists():
            _quarantine(run_dir / CHECKPOINT)
    else:
        optimizer = place_and_optimizer()
    if main:
        write_json(run_dir / CONFIG, run_cfg)
        _repair_log(run_dir / "log.jsonl", start if resume else 0)

    ddp = None
    if distributed.is_distributed():
        ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                      else None)
    net = ddp or model
    if cfg.compile:
        net = torch.compile(net)
    net.train()
    ema.eval()
    with StopSignals() as signals:
        _loop(cfg, run_dir, data, device, fmt, model, ema, net, ddp, diffusion, optimizer,
              start, skipped, resume, callback, signals)
    return run_dir


def _loop(cfg: TrainConfig, run_dir: Path, data, device: torch.device,
          fmt: torch.memory_format, model: nn.Module, ema: nn.Module, net: nn.Module,
          ddp: DistributedDataParallel | None, diffusion, optimizer: torch.optim.Optimizer,
          start: int, skipped: int, resume: bool, callback: StepCallback | None,
          signals: StopSignals) -> None:
    """Steps ``start … cfg.steps−1``. ``net`` is what the loss calls (``model``, or its DDP
    wrapper ``ddp``, possibly compiled); ``model`` is saved and feeds the EMA. Checkpoints
    every ``checkpoint_every`` steps, at the end, every ``checkpoint_minutes`` and after a stop
    signal (then raises :class:`TrainingInterrupted`)."""
    main, world = distributed.is_main(), distributed.world_size()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    rows = min(cfg.batch_size, len(data))  # the global batch (fewer samples: all of them)
    lo, hi = distributed.shard_range(rows)
    micro = [(lo + (hi - lo) * m // cfg.grad_accum, lo + (hi - lo) * (m + 1) // cfg.grad_accum)
             for m in range(cfg.grad_accum)]
    shape = (rows, *data.shape)
    log_path = run_dir / "log.jsonl"
    step, last_checkpoint, run_of_skips = start, start if resume else None, 0
    t0 = time.time()
    board = TrainingBoard(run_dir, start, cfg.batch_size, enabled=main and cfg.tensorboard)
    extra = ExtraCheckpoints(cfg, signals)
    for x_local in _Batches(data, cfg, device, start, lo, hi):
        if cfg.flip:  # drawn for the global batch, cut to this process's rows
            x_local = flip_rows(x_local, flip_mask(step, rows, cfg.seed)[lo:hi])
        x_local = x_local.contiguous(memory_format=fmt) if x_local.dim() == 4 else x_local
        torch.manual_seed(derive_seed(cfg.seed, step, TRAIN_STREAM, 1))
        draws = draw_step(diffusion, cfg.objective, shape, device)  # the whole global batch
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step)
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        keys = stat_keys(cfg.objective)
        stat_sum = dict.fromkeys(keys, 0.0)
        for m, (a, b) in enumerate(micro):
            # the share of the global mean: DDP averages over ranks, so × world
            weight = world * (b - a) / rows
            last = m == len(micro) - 1  # DDP averages the gradients after the last one
            with ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext():
                # dropout masks of this micro-batch: a stream of its own (step, first row)
                torch.manual_seed(derive_seed(cfg.seed, step, TRAIN_STREAM, 2, a))
                with autocast:
                    loss, stats = training_loss(net, diffusion, x_local[a - lo:b - lo],
                                                cfg.objective, draws.rows(a, b, fmt))
                (loss * weight).backward()  # a non-finite loss is caught below
            total += loss.detach().float() * weight
            for k in keys:
                stat_sum[k] += stats[k] * weight
        if world > 1:
            reduced = distributed.all_reduce_mean(
                torch.tensor([float(total), *stat_sum.values()], dtype=torch.float64))
            total, stat_sum = reduced[0], dict(zip(keys, reduced[1:].tolist(),
                                                   strict=True))
        if cfg.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        else:
            norm = _grad_norm(model)
        loss_value, norm_value = torch.stack([total.float().to(norm.device),
                                              norm.float()]).tolist()  # one sync
        bad = ("loss" if not math.isfinite(loss_value) else
               "gradient" if not math.isfinite(norm_value) else None)
        if bad is not None:
            kept = (f"the last good checkpoint (step {last_checkpoint}) is kept in {run_dir}"
                    if last_checkpoint is not None else "no checkpoint was written yet")
            if cfg.nan_policy == "stop":
                raise DivergedError(
                    f"non-finite training {bad} at step {step + 1}; stopped "
                    f"(nan_policy=stop); {kept}; resume with nan_policy=skip to skip such "
                    "steps, or lower the learning rate")
            skipped += 1
            run_of_skips += 1
            if run_of_skips > NAN_SKIP_LIMIT:
                raise DivergedError(
                    f"non-finite training {bad} at {run_of_skips} steps in a row (last: step "
                    f"{step + 1}); the run has diverged; {kept}")
            optimizer.zero_grad(set_to_none=True)
            if main:
                log.warning("non-finite training %s at step %d: optimiser step skipped "
                            "(nan_policy=skip, %d skipped so far)", bad, step + 1, skipped)
            stats = {"loss": loss_value, "skipped": 1.0, "skipped_total": float(skipped)}
        else:
            run_of_skips = 0
            optimizer.step()
            update_ema(ema, model, ema_decay_at(cfg, step))
            stats = {**stat_sum, "loss": loss_value}
            if cfg.grad_clip > 0:
                stats["grad_norm"] = norm_value
        step += 1
        if main and callback is not None:
            callback(step, stats)
        if main and (bad is not None or step % cfg.log_every == 0 or step == cfg.steps):
            _append_log(log_path, {"step": step, "time_s": round(time.time() - t0, 3),
                                   **stats})
            board.log(step, stats, norm_value, optimizer.param_groups[0]["lr"])
        stop, timed = extra.poll()
        stop = stop if step < cfg.steps else None  # a signal in the last step: it is done
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or timed or stop:
            _checkpoint(run_dir, model, ema, optimizer, step, skipped, last_checkpoint)
            last_checkpoint = step
            extra.written()
        if stop:
            board.close()
            raise TrainingInterrupted(stop, step, saved=True, run_dir=run_dir)
        if cfg.num_preview and (step % cfg.sample_every == 0 or step == cfg.steps):
            if main:
                board.preview(step, write_preview(ema, diffusion, data.shape, cfg, run_dir /
                                                  "samples" / f"step-{step:07d}.png", device))
            distributed.barrier()
    board.close()


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


