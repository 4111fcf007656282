"""A training run's folder: the guards of a new run and of a resume (docs/reliability.md),
what ``dmattack train`` does before the first step, and the folder's files besides the
checkpoints: ``log.jsonl`` (repaired on resume, appended to per logged step) and an unusable
``checkpoint/`` moved aside."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..core import distributed
from ..core.errors import ConfigError, OutputError, RunFolderError
from ..core.io import check_writable, write_text
from ..core.settings import option_name
from ..runs.checkpoints import CHECKPOINT, PREVIOUS, checkpoint_dir
from ..runs.config import CONFIG, read_config
from .config import TrainConfig, build_data

log = logging.getLogger("dmattack")


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
    if has_checkpoints(run_dir):
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


def has_checkpoints(run_dir: str | Path) -> bool:
    return any((Path(run_dir) / name).is_dir() for name in (CHECKPOINT, PREVIOUS))


def guard_run_folder(run_dir: Path, cfg: TrainConfig, resume: bool) -> None:
    """The guards of `dmattack train` (:func:`check_resume` or :func:`check_new_run_folder`),
    checked by rank 0 under the folder's lock and raised on every rank, so that ``train()``
    called from Python refuses exactly what the command line refuses."""
    main = distributed.is_main()
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


def checkpoint_bytes(model: nn.Module) -> int:
    """Disk size of one checkpoint: model + EMA weights + AdamW's two moments (float32)."""
    return 16 * sum(p.numel() for p in model.parameters()) + 64 * 1024


def repair_log(log_path: Path, last_step: int | None) -> None:
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


def append_log(log_path: Path, record: dict[str, Any]) -> None:
    try:
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        raise OutputError(e.errno or errno.EIO, f"cannot append to {log_path}: "
                          f"{e.strerror or e}") from None


def quarantine(ckpt: Path) -> None:
    """Move an unusable ``checkpoint/`` aside (kept for inspection, never rotated into
    ``checkpoint.prev``), so the good previous checkpoint survives the next save."""
    target = ckpt.with_name(f"{ckpt.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(ckpt, target)
    log.warning("moved the unusable checkpoint %s to %s", ckpt, target)

