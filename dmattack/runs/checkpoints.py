"""Run folders: what a trained model is saved as, and how it is loaded back.

Layout of a run folder::

    config.json          full resolved config, seed, library versions, git revision
    checkpoint/          latest checkpoint (checkpoint.prev/ keeps the one before)
        model/ ema/      U-Nets: diffusers ``save_pretrained`` folders;
        model.safetensors ema.safetensors   vector models (MLP)
        state.pt         optimizer state and step (tensors only: loads with weights_only=True)
        meta.json        step, what the checkpoint holds and the sha256 of every file in it
    samples/             PNG grids written during training
    log.jsonl            training losses
    .lock                while a process writes the run: its pid and host

Every file is written atomically; a checkpoint becomes visible only when complete (written
into a temp folder, fsynced, then renamed). Loading checks every file against the sha256 in
``meta.json``; when ``checkpoint/`` is truncated or corrupt, ``checkpoint.prev/`` is used
instead (with a warning naming the bad file). Nothing is unpickled except ``state.pt``, and
that only with ``torch.load(weights_only=True)`` (plain tensors and containers, no code).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load
from torch import nn

from ..core.errors import ConfigError, InputFileError, RunFolderError, first_line
from ..core.hashing import sha256_file
from ..core.io import write_json
from ..core.oserrors import save_file, torch_save  # storage failures: one line naming the file
from ..diffusion.gaussian import GaussianDiffusion
from ..models import UNetEps
from .config import (
    CONFIG,
    diffusion_from_config,
    is_int,
    model_from_config,
    read_config,
)
from .weights import is_weight_file, unet_files

CHECKPOINT = "checkpoint"
PREVIOUS = "checkpoint.prev"
META = "meta.json"
PARTIAL_PREFIX = ".checkpoint."  # temp / to-be-deleted checkpoint folders
log = logging.getLogger("dmattack")
T = TypeVar("T")
# what a truncated, corrupt or foreign checkpoint file raises while being loaded
LOAD_ERRORS = (OSError, RuntimeError, ValueError, KeyError, TypeError, EOFError,
               pickle.UnpicklingError, SafetensorError)


@dataclass
class LoadedModel:
    """A ready-to-sample model: ``eps = model(x_t, t)`` plus its diffusion.

    ``data_shape`` is the per-sample shape in model space; ``dataset`` names the clean
    reference data (None for an external pipeline without one); ``source`` is the folder.
    """

    model: nn.Module
    diffusion: GaussianDiffusion
    data_shape: tuple[int, ...]
    source: str
    dataset: str | None = None
    ema: bool = True
    config: dict[str, Any] = field(default_factory=dict)
    # sha256 over what determines the model's samples: the sha256 of every weight file in use
    # and the model / diffusion (or scheduler) config (:func:`model_fingerprint`,
    # :func:`~dmattack.runs.pipeline.pipeline_fingerprint`); None for a model built in memory
    fingerprint: str | None = None

    @property
    def preset(self) -> str | None:
        return self.config.get("model", {}).get("preset")


# ----------------------------------------------------------------------------- saving
def _save_weights(model: nn.Module, folder: Path, name: str) -> None:
    if isinstance(model, UNetEps):
        model.unet.save_pretrained(folder / name, safe_serialization=True)
    else:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(folder / f"{name}.safetensors"))


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != META)


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems refuse fsync on folders
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(run_dir: Path, model: nn.Module, ema: nn.Module, state: dict[str, Any],
                    step: int, **meta: Any) -> Path:
    """Write a complete checkpoint into a temp folder, fsync it, then swap it in; the previous
    checkpoint is kept as ``checkpoint.prev``. ``meta`` goes into meta.json besides the step,
    the model kind and the sha256 of every file.

    A kill at any moment leaves ``checkpoint/`` or ``checkpoint.prev/`` (or both) complete;
    leftover ``.checkpoint.*`` temp folders are removed by :func:`remove_partial_checkpoints`.
    """
    run_dir = Path(run_dir)
    tmp = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=run_dir))
    trash = run_dir / f"{PARTIAL_PREFIX}old-{uuid.uuid4().hex[:8]}"
    try:
        _save_weights(model, tmp, "model")
        _save_weights(ema, tmp, "ema")
        torch_save(state, tmp / "state.pt")
        files = _files(tmp)
        for f in files:
            _fsync(f)
        write_json(tmp / META, {"step": step, "unet": isinstance(model, UNetEps), **meta,
                                "files": {f.relative_to(tmp).as_posix(): sha256_file(f)
                                          for f in files}})
        _fsync(tmp)
        current, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS
        if current.exists():
            if previous.exists():
                os.replace(previous, trash)  # out of sight at once; deleted below
            os.replace(current, previous)
        os.replace(tmp, current)
        _fsync(run_dir)
    finally:
        for leftover in (tmp, trash):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return run_dir / CHECKPOINT


def remove_partial_checkpoints(run_dir: str | os.PathLike) -> None:
    """Delete the temp folders a killed :func:`save_checkpoint` may have left (call while
    holding the run's lock)."""
    for p in Path(run_dir).glob(f"{PARTIAL_PREFIX}*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------- loading
def load_unet_folder(folder: Path, error: type[InputFileError] = RunFolderError
                     ) -> tuple[nn.Module, dict[str, str]]:
    """A ``UNet2DModel`` loaded from exactly the files :func:`unet_files` names (staged as
    links in a temp folder, so nothing else in ``folder`` is read) and the sha256 of each of
    those files by name: what a fingerprint of the model is built from."""
    from diffusers import UNet2DModel

    files = unet_files(folder, error)
    digests = {name: sha256_file(folder / name) for name in files}
    with tempfile.TemporaryDirectory(prefix=".dmattack-load.") as tmp:
        for name in files:
            try:
                os.symlink((folder / name).resolve(), Path(tmp) / name)
            except OSError:  # a file system without links: a copy (hashed again below)
                shutil.copyfile(folder / name, Path(tmp) / name)
        # safetensors only: a pickled .bin in the folder is never loaded
        unet = UNet2DModel.from_pretrained(tmp, low_cpu_mem_usage=False, use_safetensors=True)
    for name in files:  # a file replaced while it was being read: refused, not mis-keyed
        if sha256_file(folder / name) != digests[name]:
            raise error(f"{folder / name} changed while it was being loaded; load it again")
    return unet, digests


def _load_weights(model: nn.Module, folder: Path, name: str) -> dict[str, str]:
    """Load the ``name`` (``model`` or ``ema``) weights of checkpoint ``folder`` into
    ``model``; returns the sha256 of every file read, by its name relative to ``folder``."""
    if isinstance(model, UNetEps):
        model.unet, digests = load_unet_folder(folder / name)
        return {f"{name}/{rel}": d for rel, d in digests.items()}
    path = folder / f"{name}.safetensors"
    data = path.read_bytes()
    model.load_state_dict(load(data))
    return {path.name: hashlib.sha256(data).hexdigest()}


def verify_checkpoint(ckpt: str | os.PathLike, weights: str | None = None) -> dict[str, Any]:
    """The meta.json of a checkpoint folder after checking every file it lists (with
    ``weights``, ``model`` or ``ema``: only that weights' files, the ones loading reads)
    against its sha256; a one-line :class:`RunFolderError` naming the first missing, truncated or
    corrupt file, or a weight, index or JSON file in the folder that meta.json does not list
    (other files, e.g. a desktop's ``.DS_Store``, are never read). (Checkpoints written
    before the sha256 list are only checked for a readable meta.json.)"""
    ckpt = Path(ckpt)
    meta_path = ckpt / META
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise RunFolderError(f"checkpoint {ckpt} is incomplete: {meta_path} is missing") from None
    except (OSError, ValueError) as e:
        raise RunFolderError(f"checkpoint file {meta_path} is unreadable: "
                             f"{first_line(e)}") from None
    if not (isinstance(meta, dict) and is_int(meta.get("step")) and meta["step"] >= 0
            and isinstance(meta.get("files", {}), dict)):
        raise RunFolderError(f"checkpoint file {meta_path} is corrupt: expected a step and a "
                             "file list")
    for rel, digest in meta.get("files", {}).items():
        if weights is not None and not _in_weights(rel, weights):
            continue
        f = ckpt / rel
        if not f.is_file():
            raise RunFolderError(f"checkpoint file {f} is missing")
        try:
            ok = sha256_file(f) == digest
        except OSError as e:
            raise RunFolderError(f"checkpoint file {f} is unreadable: {first_line(e)}") from None
        if not ok:
            raise RunFolderError(f"checkpoint file {f} is corrupt or truncated (its sha256 differs "
                           f"from the one in {meta_path})")
    listed = meta.get("files")
    for f in _files(ckpt) if listed else ():  # a loader could read it: refused, not ignored
        if f.relative_to(ckpt).as_posix() not in listed and (
                is_weight_file(f.name) or f.name.endswith(".json")):
            raise RunFolderError(f"checkpoint file {f} is not listed in {meta_path}; a checkpoint "
                           "holds only the weight and config files it lists: remove it")
    return meta


def _in_weights(rel: str, weights: str) -> bool:
    """Whether checkpoint file ``rel`` belongs to the ``weights`` (``model`` / ``ema``)."""
    return rel == f"{weights}.safetensors" or rel.startswith(f"{weights}/")


def _checkpoint_candidates(run_dir: Path) -> list[Path]:
    return [run_dir / n for n in (CHECKPOINT, PREVIOUS) if (run_dir / n).is_dir()]


def open_checkpoint(run_dir: str | os.PathLike,
                    load: Callable[[Path, dict[str, Any]], T] | None = None,
                    weights: str | None = None) -> tuple[Path, dict[str, Any], T | None]:
    """The newest usable checkpoint of a run: ``(folder, meta, load(folder, meta))``.

    ``checkpoint/`` is tried first, then ``checkpoint.prev/``. A checkpoint is usable when its
    files (``weights``: only those of the weights ``load`` reads) match the sha256 list in
    meta.json and ``load`` (if given) succeeds; a failure is
    logged as a warning naming the bad file and the previous checkpoint is tried. When none is
    usable, a one-line :class:`RunFolderError` names the bad file(s).
    """
    run_dir = Path(run_dir)
    candidates = _checkpoint_candidates(run_dir)
    errors: list[str] = []
    for i, ckpt in enumerate(candidates):
        try:
            meta = verify_checkpoint(ckpt, weights)
            result = load(ckpt, meta) if load is not None else None
        except RunFolderError as e:
            errors.append(str(e))
        except LOAD_ERRORS as e:
            errors.append(f"checkpoint {ckpt} is unreadable or does not match its config: "
                          f"{first_line(e)}")
        else:
            return ckpt, meta, result
        if i + 1 < len(candidates):
            log.warning("%s; falling back to %s", errors[-1], candidates[i + 1])
    if not errors:
        raise RunFolderError(f"run {run_dir} has no checkpoint yet")
    raise RunFolderError(f"run {run_dir} has no usable checkpoint: {'; '.join(errors)}")


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """The newest complete checkpoint of a run whose files are intact (falls back to
    ``checkpoint.prev``, see :func:`open_checkpoint`)."""
    return open_checkpoint(run_dir)[0]


def load_weights_into(model: nn.Module, ema: nn.Module | None, ckpt: Path,
                      verify: bool = True) -> dict[str, Any]:
    """Load model (and EMA) weights of a checkpoint folder; returns its meta.json (checked
    against the files' sha256 unless ``verify=False``, when the caller already did)."""
    meta = verify_checkpoint(ckpt) if verify else json.loads((ckpt / META).read_text())
    try:
        _load_weights(model, ckpt, "model")
        if ema is not None:
            _load_weights(ema, ckpt, "ema")
    except LOAD_ERRORS as e:
        raise RunFolderError(f"checkpoint {ckpt} is unreadable or does not match its config: "
                       f"{first_line(e)}") from None
    return meta


def digest(payload: Any) -> str:
    """sha256 of a JSON-able value (keys sorted, floats at full precision)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def model_fingerprint(cfg: dict[str, Any], weights: dict[str, str]) -> str:
    """sha256 over ``weights`` (the sha256 of every file the loader read, by name, as
    :func:`_load_weights` returns them) and the whole of config.json as read (a setting that
    does not change the samples changes it too: every file a run's loading reads is keyed,
    nothing is left out by a judgement of what matters)."""
    return digest({"weights": weights, "config": cfg})


def load_run(run_dir: str | os.PathLike, use_ema: bool = True,
             device: torch.device | str = "cpu") -> LoadedModel:
    """Load a trained run for sampling (EMA weights by default), in eval mode."""
    cfg = read_config(run_dir)
    try:
        model = model_from_config(cfg)
    except ConfigError as e:
        raise RunFolderError(f"{Path(run_dir) / CONFIG}: field 'model': {first_line(e)}") from None

    which = "ema" if use_ema else "model"

    def load(ckpt: Path, meta: dict[str, Any]) -> dict[str, str]:
        return _load_weights(model, ckpt, which)

    _, _, weights = open_checkpoint(run_dir, load, which)  # reads only the weights in use
    model.to(device).eval()
    return LoadedModel(
        model=model,
        diffusion=diffusion_from_config(cfg),
        data_shape=tuple(cfg["model"]["data_shape"]),
        source=str(Path(run_dir).resolve()),
        dataset=cfg["data"].get("name"),
        ema=use_ema,
        config=cfg,
        fingerprint=model_fingerprint(cfg, weights or {}),
    )


def newest_run(root: str | os.PathLike = "runs") -> Path:
    """The most recently modified run folder (one with a checkpoint) under ``root``."""
    root = Path(root)
    runs = [p for p in root.glob("*") if (p / CONFIG).is_file() and (
        (p / CHECKPOINT / META).is_file() or (p / PREVIOUS / META).is_file())]
    if not runs:
        raise RunFolderError(f"no trained run found under {root}/; train one with `dmattack train` "
                       "or pass --run")
    return max(runs, key=lambda p: (p / CONFIG).stat().st_mtime)
