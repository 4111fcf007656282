"""What attack evaluation keeps on disk, and how it is written (docs/reliability.md): the JSONL
curve-point store and its content keys, the cached clean samples of a curve, each process's
slices of unfinished points under torchrun (``shards/``, for resuming inside a point), and the
staged atomic write of an attack's result folder."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ...core import distributed
from ...core.errors import first_line
from ...core.io import OutputError, write_atomic, write_json
from ...core.keys import callable_key
from ...core.visualize import save_samples_png
from ...diffusion.sampling import SamplerConfig
from ...runs.checkpoints import LoadedModel, digest

if TYPE_CHECKING:
    from ..metrics import MetricFn

POINTS = "points.jsonl"
SHARDS = "shards"  # per-process slices of unfinished curve points (sharded runs)
CLEAN = "clean"  # a curve's clean samples per model, for the paired damage of later points
STAGING_PREFIX = ".staging."
ATTACK_FILES = ("samples.safetensors", "clean.png", "attacked.png", "results.json")
log = logging.getLogger("dmattack")


# --------------------------------------------------------------------------- the point store
def read_points(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a JSONL point store. An unterminated last line (a write cut by a kill) is
    ignored and cut off the file, so the next append starts on a fresh line."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        os.truncate(path, end)
    points = []
    for n, line in enumerate(data[:end].decode().splitlines(), 1):
        if line.strip():
            try:
                points.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{n} is not a JSON record; move the file away to "
                                 "recompute the curve") from None
    return points


def read_store(store: Path) -> dict[str, dict[str, Any]]:
    """The curve points of ``store`` by key; ValueError for a record that is not a point."""
    done = {}
    for n, record in enumerate(read_points(store), 1):
        if not (isinstance(record, dict) and isinstance(record.get("key"), str)
                and isinstance(record.get("metrics"), dict)):
            raise ValueError(f"{store}: record {n} is not a curve point; move the file away to "
                             "recompute the curve")
        done[record["key"]] = record
    return done


def append_point(path: Path, record: dict[str, Any]) -> None:
    """Append one record and fsync; a failed write (disk full) is cut off again, so the store
    keeps only whole records, and raised as a one-line OutputError."""
    line = (json.dumps(record) + "\n").encode()
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        with contextlib.suppress(OSError):
            os.truncate(path, size)
        raise OutputError(e.errno or errno.EIO, f"cannot append a point to {path}: "
                          f"{e.strerror or e}; the points before it are kept") from None


# --------------------------------------------------------------------------- keys
def model_identity(loaded: LoadedModel) -> str:
    """The model's content fingerprint (:attr:`LoadedModel.fingerprint`: weight files' sha256
    and config); for a model built in memory, a sha256 of its weights and diffusion now."""
    if loaded.fingerprint:
        return loaded.fingerprint
    h = hashlib.sha256(json.dumps([loaded.diffusion.variance_type, list(loaded.data_shape)]
                                  ).encode())
    h.update(torch.as_tensor(loaded.diffusion.betas).double().numpy().tobytes())
    for name, t in sorted(loaded.model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def metric_identity(metric_fn: MetricFn, metric_key: Any = None) -> Any:
    """What identifies ``metric_fn``'s numbers: ``metric_key`` if given, else the
    ``identity`` that :func:`~dmattack.evaluation.metrics.make_metric_fn` attaches (metrics,
    reference
    content, extractor weights), else the function's qualified name and code key
    (:func:`~dmattack.core.keys.callable_key`: a function that cannot be keyed by its code is
    refused, saying how to give a key)."""
    if metric_key is not None:
        return metric_key
    return getattr(metric_fn, "identity", None) or {
        "metric_fn": f"{getattr(metric_fn, '__module__', '')}."
                     f"{getattr(metric_fn, '__qualname__', type(metric_fn).__name__)}",
        "code": callable_key(metric_fn)}


def point_key(loaded: LoadedModel, model_id: str, label: str, sampler: SamplerConfig,
              num_samples: int, seed: Any, scoring: Any,
              attack: dict[str, Any] | None = None) -> str:
    """What identifies a point: its label and a sha256 of everything that determines its
    value: the model (folder, EMA, content fingerprint), the sampler's full settings, the
    number of samples, the seed, the scoring (metrics, reference, extractor weights) and the
    attack's full record (its settings at full precision and the attacked step indices). A
    point whose key differs is recomputed, never reused."""
    return label + "|" + digest({
        "model": loaded.source, "ema": loaded.ema, "fingerprint": model_id,
        "sampler": sampler.to_dict(), "num_samples": num_samples, "seed": seed,
        "scoring": scoring, "attack": attack})


def _short(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def clean_path(out: Path, clean_key: str) -> Path:
    """Where a curve keeps the clean samples of the clean point ``clean_key``."""
    return out / CLEAN / f"{_short(clean_key)}.safetensors"


def shard_dir(out: Path, key: str) -> Path:
    """Where the processes keep their slices of the unfinished point ``key``."""
    return out / SHARDS / _short(key)


# --------------------------------------------------------------------------- sample files
def samples_sha256(x: torch.Tensor) -> str:
    """sha256 of a sample tensor as the clean cache stores it: shape and float32 bytes."""
    x = x.detach().float().cpu().contiguous()
    return hashlib.sha256(repr(tuple(x.shape)).encode() + x.numpy().tobytes()).hexdigest()


def write_clean(path: Path, samples: torch.Tensor) -> str:
    """Keep a curve's clean samples at ``path`` (a cache: a failed write is resampled later);
    returns their :func:`samples_sha256`, recorded in the clean point."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(exist_ok=True)
        write_atomic(path, lambda p: save_file({"samples": samples.float().contiguous()},
                                               str(p)))
    return samples_sha256(samples)


def read_clean(path: Path, sha256: str | None) -> torch.Tensor | None:
    """The clean samples kept at ``path`` when they match ``sha256`` (the clean point's
    record), else None; a file that does not match is named in one warning line."""
    read = None
    with contextlib.suppress(OSError, SafetensorError, KeyError, ValueError):
        with safe_open(str(path), "pt") as f:
            read = f.get_tensor("samples")
    if read is not None and sha256 is not None and samples_sha256(read) == sha256:
        return read
    if read is not None:
        log.warning("%s %s; resampling the clean samples", path,
                    "has no sha256 recorded with the curve's clean point" if sha256 is None
                    else "does not match the sha256 recorded with the curve's clean point")
    return None


def cached_slice(path: Path, compute: Callable[..., tuple[torch.Tensor | None, float]],
                 *args: Any) -> tuple[torch.Tensor | None, float]:
    """``compute(*args)`` → (this process's samples of a point, seconds). In a sharded run the
    samples are kept at ``path`` with their sha256 and read back instead of recomputed when a
    killed run is resumed; a file that is unreadable or whose samples do not match their sha256
    is recomputed (one warning line for a mismatch)."""
    if not distributed.is_distributed():
        return compute(*args)
    with contextlib.suppress(OSError, SafetensorError, KeyError, ValueError):
        with safe_open(str(path), "pt") as f:
            samples, meta = f.get_tensor("samples"), f.metadata()
        if samples_sha256(samples) == meta["sha256"]:
            return samples, float(meta["seconds"])
        log.warning("warning: %s does not match its recorded sha256; recomputing it", path)
    samples, seconds = compute(*args)
    if samples is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"samples": samples.contiguous()}
        meta = {"seconds": repr(seconds), "sha256": samples_sha256(tensors["samples"].cpu())}
        write_atomic(path, lambda p: save_file(tensors, str(p), meta))
    return samples, seconds


# --------------------------------------------------------------------------- attack folders
def clear_staging(out: Path) -> None:
    """Remove staging folders a killed run left in ``out``."""
    for leftover in out.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def write_attack_files(out: Path, clean: torch.Tensor, attacked: torch.Tensor, label: str,
                       result: dict[str, Any]) -> None:
    """``samples.safetensors`` (``clean``, ``attacked`` (N, *shape) float32), ``clean.png``,
    ``attacked.png`` and ``results.json`` into ``out``, all or nothing: everything is written
    (and fsynced) into a staging folder first, so a full disk or a kill leaves the previous
    results as they were (a one-line OutputError); then the files are renamed in, with
    ``results.json`` first out and last in, so whenever it exists it describes the samples
    beside it."""
    tensors = {"clean": clean.float().contiguous(), "attacked": attacked.float().contiguous()}
    stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        try:
            write_atomic(stage / "samples.safetensors", lambda p: save_file(tensors, str(p)))
            save_samples_png(clean, stage / "clean.png", title="clean")
            save_samples_png(attacked, stage / "attacked.png", title=label)
            write_json(stage / "results.json", result)
        except OSError as e:
            reason = os.strerror(e.errno) if e.errno else first_line(e)
            raise OutputError(e.errno or errno.EIO, f"cannot write the results into {out}: "
                              f"{reason}; the previous results there are unchanged") from None
        (out / "results.json").unlink(missing_ok=True)
        for name in ATTACK_FILES:
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
