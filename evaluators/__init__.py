"""One entry point for all sample-quality metrics: :func:`evaluate`.

Non-finite policy: sample rows with any NaN/±inf are dropped, every metric is computed on the
finite rows, and ``protocol["num_nonfinite"]`` says how many were dropped. If no row is finite,
every requested metric value is None (nothing is computed).

A metric is a :class:`Metric` entry of :data:`METRICS` that computes its own values; a new one
is one registration, e.g.
``METRICS.register("mean-abs", Metric("mean |x|", lambda x, ref, c: {"mean |x|":
float(x.abs().mean())}, ("mean |x|",)))``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_fidelity

from dmattack.core.io import atomic_path
from dmattack.core.registry import METRICS

from . import exact
from .errors import ConfigError, MetricError
from .fidelity import (
    IMAGE_METRICS,
    KID_CI_LABELS,
    LABELS,
    PROVENANCE_KEYS,
    image_metrics,
    label_suffix,
)
from .memorization import THRESHOLDS, memorization

__all__ = ["METRICS", "Metric", "MetricContext", "MetricError", "check_metrics", "evaluate",
           "metric_labels", "scoring_identity"]


@dataclass
class MetricContext:
    """What one :func:`evaluate` call gives every metric besides the samples and reference:
    the requested ``metrics``, the known distribution ``truth``, the resolved feature
    ``extractor`` of fid/is/kid and memorisation ``space``, the options of :func:`evaluate`,
    ``info`` (the result's protocol, which a metric may extend with its provenance) and
    ``cache`` (shared by the metrics of one call, e.g. one feature pass for fid/is/kid)."""

    metrics: tuple[str, ...] = ()
    truth: Any = None
    extractor: str = "inception"
    space: str = "pixels"
    inception_weights: str | os.PathLike | None = None
    cache_dir: str | os.PathLike | None = None
    reference_name: str = "reference"
    train_set: torch.Tensor | None = None
    out_dir: str | os.PathLike | None = None
    dinov2_dir: str | os.PathLike | None = None
    info: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)


MetricCompute = Callable[[torch.Tensor, torch.Tensor, MetricContext],
                         Mapping[str, float | None]]
"""``compute(samples, reference, context) -> {result key: value}``: ``samples`` (N, *shape) are
the finite model-space rows (N ≥ 1), ``reference`` (N_ref, *shape) the clean reference."""


@dataclass(frozen=True)
class Metric:
    """A metric as registered in :data:`~dmattack.core.registry.METRICS`.

    ``label``: one line for listings; ``compute`` (:data:`MetricCompute`) returns exactly the
    result ``keys`` (a sequence, or a function of the :class:`MetricContext` when they depend
    on the extractor or space); what it needs: images (``needs_images``), attributes of a
    known distribution ``truth`` (``truth_needs``), a training set and an output folder
    (``needs_train_set``). :func:`check_metrics` refuses a metric whose needs are unmet.
    """

    label: str
    compute: MetricCompute
    keys: Sequence[str] | Callable[[MetricContext], Sequence[str]]
    needs_images: bool = False
    truth_needs: tuple[str, ...] = ()
    needs_train_set: bool = False

    def result_keys(self, context: MetricContext) -> list[str]:
        """The keys :attr:`compute` returns under ``context``."""
        return list(self.keys(context) if callable(self.keys) else self.keys)


def _image_keys(name: str) -> Callable[[MetricContext], list[str]]:
    extra = KID_CI_LABELS if name == "kid" else ()
    return lambda c: [label + label_suffix(c.extractor) for label in (*LABELS[name].values(),
                                                                      *extra)]


def _image_metric(name: str) -> MetricCompute:
    """fid/is/kid: the requested ones are computed together, in one feature pass."""

    def compute(x: torch.Tensor, reference: torch.Tensor, c: MetricContext) -> dict[str, float]:
        if "image_values" not in c.cache:
            requested = tuple(m for m in IMAGE_METRICS if m in c.metrics or m == name)
            values, info = image_metrics(
                x, reference, requested, extractor=c.extractor,
                weights=c.inception_weights if c.extractor == "inception" else None,
                cache_dir=c.cache_dir, reference_name=c.reference_name)
            c.info.update(info)
            c.cache["image_values"] = values
        return {k: c.cache["image_values"][k] for k in _image_keys(name)(c)}

    return compute


def _fd_exact(x: torch.Tensor, reference: torch.Tensor, c: MetricContext) -> dict[str, float]:
    return {"FD (exact)": exact.frechet_to_gaussian(x, c.truth.mean, c.truth.covariance())}


def _subspace(x: torch.Tensor, reference: torch.Tensor, c: MetricContext) -> dict[str, float]:
    return {"subspace error": exact.subspace_error(x, c.truth.mean, c.truth.basis),
            "subspace PSNR (dB)": exact.subspace_psnr(x, c.truth.mean, c.truth.basis)}


def _plane(x: torch.Tensor, reference: torch.Tensor, c: MetricContext) -> dict[str, float]:
    offset = float(getattr(c.truth, "offset", 0.0))
    return {"plane distance": exact.plane_distance(x, c.truth.normal, offset)}


def _loglik(x: torch.Tensor, reference: torch.Tensor, c: MetricContext) -> dict[str, float]:
    return {"loglik (nats)": exact.mixture_loglik(x, c.truth.means, float(c.truth.std))}


def _variance_ratio(x: torch.Tensor, reference: torch.Tensor, c: MetricContext
                    ) -> dict[str, float]:
    return {"variance ratio": exact.variance_ratio(x, reference)}


def _memorization_keys(c: MetricContext) -> list[str]:
    return ([f"memorization >{t} ({c.space})" for t in THRESHOLDS]
            + [f"memorization mean max-sim ({c.space})"])


def _memorization_metric(x: torch.Tensor, reference: torch.Tensor, c: MetricContext
                         ) -> dict[str, float]:
    weights = {"inception": c.inception_weights, "dinov2": c.dinov2_dir}.get(c.space)
    return _memorization(x, c.train_set, c.space, c.out_dir, c.info, weights)


for _name, _metric in {
    "fid": Metric("Fréchet Inception (or digits-cnn) distance", _image_metric("fid"),
                  _image_keys("fid"), needs_images=True),
    "is": Metric("Inception score", _image_metric("is"), _image_keys("is"), needs_images=True),
    "kid": Metric("kernel Inception distance", _image_metric("kid"), _image_keys("kid"),
                  needs_images=True),
    "fd-exact": Metric("exact Fréchet distance to the known distribution", _fd_exact,
                       ("FD (exact)",), truth_needs=("mean", "covariance")),
    "subspace": Metric("distance to the known subspace (error, PSNR)", _subspace,
                       ("subspace error", "subspace PSNR (dB)"),
                       truth_needs=("mean", "basis")),
    "plane": Metric("distance to the known plane", _plane, ("plane distance",),
                    truth_needs=("normal",)),
    "loglik": Metric("log-likelihood under the known mixture", _loglik, ("loglik (nats)",),
                     truth_needs=("means", "std")),
    "memorization": Metric("share of samples near a training item (cosine similarity)",
                           _memorization_metric, _memorization_keys, needs_train_set=True),
    "variance-ratio": Metric("sample variance / reference variance (smoothing: < 1)",
                             _variance_ratio, ("variance ratio",)),
}.items():
    METRICS.register(_name, _metric)


def _is_image(shape: tuple[int, ...]) -> bool:
    """Per-sample shape (C, H, W) with C in {1, 3}."""
    return len(shape) == 3 and shape[0] in (1, 3)


def _is_digits(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3 and shape[0] == 1 and shape[1] == shape[2] and shape[1] in (8, 16)


def metric_labels(metric: str, extractor: str = "inception", space: str = "pixels") -> list[str]:
    """Result keys that ``metric`` produces (``extractor`` for fid/is/kid, ``space`` for
    memorization)."""
    return METRICS.get(metric, "metric").result_keys(MetricContext(extractor=extractor,
                                                                   space=space))


def check_metrics(metrics: tuple[str, ...] | list[str], shape: tuple[int, ...],
                  truth: Any = None) -> None:
    """One-line ConfigError for an unknown metric or one impossible for samples of per-sample
    ``shape`` (e.g. FID on vectors) or without the needed ``truth``; call before sampling."""
    for m in metrics:
        metric = METRICS.get(m, "metric")
        if metric.needs_images and not _is_image(shape):
            raise ConfigError(f"{m} needs images (N, C, H, W) with C in {{1, 3}}; samples are "
                              f"(N, {', '.join(map(str, shape))})", field="metrics")
        missing = [a for a in metric.truth_needs if not hasattr(truth, a)]
        if missing:
            raise ConfigError(f"{m} needs a known distribution (truth with attribute(s) "
                              f"{', '.join(missing)}); this data has none", field="metrics")


def scoring_identity(metrics: tuple[str, ...] | list[str], shape: tuple[int, ...], *,
                     feature_extractor: str = "auto",
                     inception_weights: str | os.PathLike | None = None,
                     memorization_space: str = "auto",
                     dinov2_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """What :func:`evaluate` will score samples of per-sample ``shape`` with, resolved before
    any sampling: the metrics, the feature extractor of fid/is/kid and the sha256 of its
    weights, the memorisation space (and its weights' sha256), the torch-fidelity version.
    Raises :class:`MetricError` (one line) when weights a metric needs are missing, so a
    command fails before its expensive part. Stores key their points by this (plus the
    reference), so a point is never reused under other scoring."""
    from .extractors import resolve_weights, weights_sha256

    metrics = tuple(metrics)
    out: dict[str, Any] = {"metrics": list(metrics),
                           "torch_fidelity_version": torch_fidelity.__version__}
    if any(m in IMAGE_METRICS for m in metrics):
        extractor = _resolve(feature_extractor, ("digits-cnn", "inception"),
                             "digits-cnn" if _is_digits(shape) else "inception")
        path = resolve_weights(extractor, inception_weights if extractor == "inception"
                               else None)
        out.update(feature_extractor=extractor, feature_extractor_weights_sha256=(
            weights_sha256(path)))
    if "memorization" in metrics:
        space = _resolve(memorization_space, ("pixels", "digits-cnn", "inception", "dinov2"),
                         "digits-cnn" if _is_digits(shape)
                         else "inception" if _is_image(shape) else "pixels")
        out["memorization_space"] = space
        if space in ("digits-cnn", "inception"):
            path = resolve_weights(space, inception_weights if space == "inception" else None)
            out["memorization_weights_sha256"] = weights_sha256(path)
        elif space == "dinov2":
            out["memorization_weights"] = None if dinov2_dir is None else str(
                Path(dinov2_dir).resolve())
    return out


def _check(metrics: tuple[str, ...], shape: tuple[int, ...], truth: Any, train_set: Any,
           out_dir: Any) -> None:
    check_metrics(metrics, shape, truth)
    for m in metrics:
        if METRICS[m].needs_train_set and (train_set is None or out_dir is None):
            raise ConfigError(f"{m} needs train_set and out_dir (for its files)")


def _resolve(name: str, allowed: tuple[str, ...], auto: str) -> str:
    """``auto`` → ``auto``'s pick; otherwise ``name`` if allowed, else a one-line ValueError."""
    if name == "auto":
        return auto
    if name not in allowed:
        raise ConfigError(f"unknown feature space {name!r}; allowed: auto, "
                          f"{', '.join(allowed)}")
    return name


def _finite_float(v: float | None) -> float | None:
    """JSON-safe value: non-finite or missing → None."""
    return float(v) if v is not None and np.isfinite(v) else None


def evaluate(samples: torch.Tensor, reference: torch.Tensor, metrics: tuple[str, ...] | list[str],
             *, truth: Any = None, feature_extractor: str = "auto",
             inception_weights: str | os.PathLike | None = None,
             cache_dir: str | os.PathLike | None = None, reference_name: str = "reference",
             protocol: dict[str, Any] | None = None, train_set: torch.Tensor | None = None,
             out_dir: str | os.PathLike | None = None, memorization_space: str = "auto",
             dinov2_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Evaluate generated ``samples`` with the requested ``metrics``.

    Args:
        samples: (N, *shape) model-space samples ([-1, 1] for images; may contain non-finite
            rows, see the module docstring).
        reference: (N_ref, *shape) clean reference data (finite), for FID/KID and the variance
            ratio.
        metrics: names from :data:`METRICS`.
        truth: known distribution, duck-typed: ``mean`` (d,), ``covariance()`` (d, d), and as
            needed ``basis`` (d, k) orthonormal, ``normal`` (d,) [+ ``offset``], ``means`` (K, d)
            and ``std`` (isotropic mixture).
        feature_extractor: ``auto`` (``digits-cnn`` for 1×8×8 / 1×16×16 images, else
            ``inception``), ``digits-cnn`` or ``inception``; for fid/is/kid.
        inception_weights: local Inception weights file (default torch-fidelity's cache copy).
        cache_dir: reference-statistics cache (default ``$DMATTACK_CACHE`` or
            ``~/.cache/dmattack``).
        protocol: caller's provenance (sampler, steps, EMA, ...), merged into ``protocol``.
        train_set: (M, *shape) training data for memorization; out_dir receives its files.
        memorization_space: ``auto`` (digits-cnn for digit images, pixels for non-images,
            else inception), ``pixels``, ``digits-cnn``, ``inception`` or ``dinov2``.
        dinov2_dir: local facebookresearch/dinov2 checkout for ``dinov2``.
    Returns:
        ``{label: float | None, ..., "protocol": {...}}``, JSON-able; labels from
        :func:`metric_labels`, e.g. ``"FID (digits-cnn)"`` or ``"FID"`` (Inception).
    """
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    samples, reference = torch.as_tensor(samples), torch.as_tensor(reference)
    shape = tuple(samples.shape[1:])
    _check(metrics, shape, truth, train_set, out_dir)
    if tuple(reference.shape[1:]) != shape:
        raise ValueError(f"samples (N, {shape}) and reference (N, {tuple(reference.shape[1:])}) "
                         f"shapes differ")
    if not torch.isfinite(reference).all():
        raise ValueError("reference contains non-finite values")
    extractor = _resolve(feature_extractor, ("digits-cnn", "inception"),
                         "digits-cnn" if _is_digits(shape) else "inception")
    space = _resolve(memorization_space, ("pixels", "digits-cnn", "inception", "dinov2"),
                     "digits-cnn" if _is_digits(shape)
                     else "inception" if _is_image(shape) else "pixels")
    good = samples[torch.isfinite(samples.reshape(len(samples), -1)).all(dim=1)]
    info = _protocol(metrics, len(samples), len(good), reference_name, len(reference),
                     extractor, protocol)
    context = MetricContext(
        metrics, truth, extractor, space, inception_weights=inception_weights,
        cache_dir=cache_dir, reference_name=reference_name, train_set=train_set,
        out_dir=out_dir, dinov2_dir=dinov2_dir, info=info)
    values = _compute(metrics, good, reference, context)
    return {**values, "protocol": {**(protocol or {}), **info}}


def _protocol(metrics: tuple[str, ...], num_samples: int, num_finite: int, reference_name: str,
              num_reference: int, extractor: str, protocol: dict[str, Any] | None
              ) -> dict[str, Any]:
    """What :func:`evaluate` records about itself (metrics extend it with their provenance);
    a ValueError when the caller's ``protocol`` uses one of its keys."""
    requested_images = any(m in IMAGE_METRICS for m in metrics)
    info: dict[str, Any] = {
        "metrics": list(metrics),
        "num_samples": num_samples,
        "num_nonfinite": num_samples - num_finite,
        "num_evaluated": num_finite,
        "nonfinite_policy": "rows with NaN/inf dropped; metrics on the finite rows",
        "reference": reference_name,
        "num_reference": num_reference,
        "torch_fidelity_version": torch_fidelity.__version__,
        "feature_extractor": extractor if requested_images else None,
        "feature_extractor_weights_sha256": None,
    }
    clash = set(protocol or {}) & (set(info) | set(PROVENANCE_KEYS) | {"memorization"})
    if clash:
        raise ValueError(f"protocol keys {sorted(clash)} are reserved by evaluate")
    return info


def _compute(metrics: tuple[str, ...], good: torch.Tensor, reference: torch.Tensor,
             context: MetricContext) -> dict[str, float | None]:
    """Each requested metric once, in the order asked, on the (N_good, *shape) finite rows:
    its declared keys → JSON-safe values (all None when no row is finite)."""
    values: dict[str, float | None] = {}
    for m in dict.fromkeys(metrics):
        metric = METRICS[m]
        keys = metric.result_keys(context)
        if len(good) == 0:
            values.update(dict.fromkeys(keys))
            continue
        computed = dict(metric.compute(good, reference, context))
        if set(computed) != set(keys):
            raise ValueError(f"metric {m!r} returned {sorted(computed)}, not its declared "
                             f"keys {sorted(keys)}")
        values.update(computed)
    return {k: _finite_float(v) for k, v in values.items()}


def _memorization(x: torch.Tensor, train_set: torch.Tensor, space: str,
                  out_dir: str | os.PathLike, info: dict[str, Any],
                  weights: str | os.PathLike | None) -> dict[str, float]:
    """Run :func:`memorization`, save the per-sample maxima (.npy) and histogram (.png) in
    ``out_dir``, record the files in ``info["memorization"]``; return the summary values."""
    out_dir = Path(out_dir)
    res = memorization(x, torch.as_tensor(train_set), space=space, weights=weights,
                       histogram_path=out_dir / f"memorization_{space}.png")
    npy = out_dir / f"memorization_{space}.npy"
    with atomic_path(npy) as tmp:
        np.save(tmp, res["max_similarity"], allow_pickle=False)
    info["memorization"] = {"space": space, "weights_sha256": res["weights_sha256"],
                            "num_train": len(train_set), "histogram": res["histogram"],
                            "max_similarity_file": str(npy)}
    labels = metric_labels("memorization", space=space)
    return dict(zip(labels, [res[f"frac_above_{t}"] for t in THRESHOLDS]
                    + [res["mean_max_similarity"]], strict=True))
