"""One entry point for all sample-quality metrics: :func:`evaluate`.

Non-finite policy: sample rows with any NaN/±inf are dropped, every metric is computed on the
finite rows, and ``protocol["num_nonfinite"]`` says how many were dropped. If no row is finite,
every requested metric value is None (nothing is computed).

A metric is a :class:`Metric` entry of :data:`METRICS` that computes its own values and owns
its options (:attr:`Metric.config`, e.g. fid/is/kid's feature extractor); a new one is one
registration, e.g.
``METRICS.register("mean-abs", Metric("mean |x|", lambda x, ref, c: {"mean |x|":
float(x.abs().mean())}, ("mean |x|",)))``. :func:`evaluate`'s keyword options go to the
requested metrics that read them (:func:`~evaluators.metric.route_options`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_fidelity

from dmattack.core.io import atomic_path
from dmattack.core.registry import METRICS

from . import exact
from .checks import data_dimension, dinov2_files, fid_dimension, needs_logits
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
from .metric import (
    Metric,
    MetricCompute,
    MetricContext,
    keywords,
    merge_records,
    options_record,
    route_options,
)
from .options import FeatureOptions, MemorizationOptions, is_image

__all__ = ["METRICS", "Metric", "MetricCompute", "MetricContext", "MetricError", "check_metrics",
           "evaluate", "metric_labels", "scoring_identity"]


def _image_keys(name: str) -> Callable[[FeatureOptions], list[str]]:
    extra = KID_CI_LABELS if name == "kid" else ()
    return lambda o: [label + label_suffix(o.feature_extractor)
                      for label in (*LABELS[name].values(), *extra)]


def _image_metric(name: str) -> MetricCompute:
    """fid/is/kid: the requested ones are computed together, in one feature pass."""

    def compute(x: torch.Tensor, reference: torch.Tensor, c: MetricContext) -> dict[str, float]:
        key = ("image_values", c.options)
        if key not in c.cache:
            requested = tuple(m for m in IMAGE_METRICS if m in c.metrics or m == name)
            values, info = image_metrics(
                x, reference, requested, extractor=c.options.feature_extractor,
                weights=c.options.weights(), cache_dir=c.cache_dir,
                reference_name=c.reference_name)
            c.info.update(info)
            c.cache[key] = values
        return {k: c.cache[key][k] for k in _image_keys(name)(c.options)}

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


def _memorization_keys(o: MemorizationOptions) -> list[str]:
    return ([f"memorization >{t} ({o.space})" for t in THRESHOLDS]
            + [f"memorization mean max-sim ({o.space})"])


def _memorization_metric(x: torch.Tensor, reference: torch.Tensor, c: MetricContext
                         ) -> dict[str, float]:
    return _memorization(x, c.train_set, c.options, c.out_dir, c.info)


_SET = dict(needs_images=True, config=FeatureOptions, on_features=True)
"""What fid, is and kid share: images, their options (one feature pass), features."""

for _name, _metric in {
    "fid": Metric("Fréchet Inception (or digits-cnn) distance", _image_metric("fid"),
                  _image_keys("fid"), default_for=("images",), better="lower",
                  sample_dimension=fid_dimension, **_SET),
    "is": Metric("Inception score", _image_metric("is"), _image_keys("is"), better="higher",
                 check=needs_logits, **_SET),
    "kid": Metric("kernel Inception distance", _image_metric("kid"), _image_keys("kid"),
                  better="lower", **_SET),
    "fd-exact": Metric("exact Fréchet distance to the known distribution", _fd_exact,
                       ("FD (exact)",), truth_needs=("mean", "covariance"),
                       default_for=("known",), better="lower", sample_dimension=data_dimension),
    "subspace": Metric("distance to the known subspace (error, PSNR)", _subspace,
                       ("subspace error", "subspace PSNR (dB)"),
                       truth_needs=("mean", "basis")),
    "plane": Metric("distance to the known plane", _plane, ("plane distance",),
                    truth_needs=("normal",)),
    "loglik": Metric("log-likelihood under the known mixture", _loglik, ("loglik (nats)",),
                     truth_needs=("means", "std")),
    "memorization": Metric("share of samples near a training item (cosine similarity)",
                           _memorization_metric, _memorization_keys, needs_train_set=True,
                           config=MemorizationOptions, check=dinov2_files),
    "variance-ratio": Metric("sample variance / reference variance (smoothing: < 1)",
                             _variance_ratio, ("variance ratio",),
                             default_for=("images", "known", "vectors")),
}.items():
    METRICS.register(_name, _metric)


def metric_labels(metric: str, shape: Sequence[int] = (), **options: Any) -> list[str]:
    """Result keys that ``metric`` produces on samples of per-sample ``shape`` (default:
    unknown) with keyword ``options`` (e.g. ``feature_extractor="digits-cnn"``; those it does
    not read are left out, so one set of options can be asked of several metrics)."""
    reads = keywords(METRICS.get(metric, "metric").config)
    own = {k: v for k, v in options.items() if k in reads}
    return METRICS[metric].result_keys(route_options([metric], shape, own)[metric])


def check_metrics(metrics: tuple[str, ...] | list[str], shape: tuple[int, ...],
                  truth: Any = None) -> None:
    """One-line ConfigError for an unknown metric or one impossible for samples of per-sample
    ``shape`` (e.g. FID on vectors) or without the needed ``truth``; call before sampling."""
    for m in metrics:
        metric = METRICS.get(m, "metric")
        if metric.needs_images and not is_image(shape):
            raise ConfigError(f"{m} needs images (N, C, H, W) with C in {{1, 3}}; samples are "
                              f"(N, {', '.join(map(str, shape))})", field="metrics")
        missing = [a for a in metric.truth_needs if not hasattr(truth, a)]
        if missing:
            raise ConfigError(f"{m} needs a known distribution (truth with attribute(s) "
                              f"{', '.join(missing)}); this data has none", field="metrics")


def scoring_identity(metrics: tuple[str, ...] | list[str], shape: tuple[int, ...],
                     **options: Any) -> dict[str, Any]:
    """What :func:`evaluate` will score samples of per-sample ``shape`` with, resolved before
    any sampling: the metrics, the torch-fidelity version and what each metric's resolved
    ``options`` (routed as :func:`evaluate` routes them) say its numbers depend on (fid/is/kid:
    the feature extractor and its weights' sha256; memorization: the space and its weights'
    sha256; a plugin's options by their fields). Raises :class:`MetricError` (one line) when
    weights a metric needs are missing, so a command fails before its expensive part, and
    :class:`ConfigError` for an option the metrics do not read. Stores key their points by
    this (plus the reference), so a point is never reused under other scoring."""
    metrics = tuple(metrics)
    out: dict[str, Any] = {"metrics": list(metrics),
                           "torch_fidelity_version": torch_fidelity.__version__}
    for name, opts in _distinct(route_options(metrics, tuple(shape), options)):
        merge_records(out, options_record(name, opts, "identity"))
    return out


def _distinct(per_metric: dict[str, Any]) -> list[tuple[str, Any]]:
    """(metric, options) in registration order, one per distinct options (fid, is and kid
    share theirs)."""
    out: list[tuple[str, Any]] = []
    for name in METRICS.names():
        opts = per_metric.get(name)
        if name in per_metric and not (hasattr(opts, "identity") and any(
                type(o) is type(opts) and o == opts for _, o in out)):
            out.append((name, opts))
    return out


def _check(metrics: tuple[str, ...], shape: tuple[int, ...], truth: Any, train_set: Any,
           out_dir: Any) -> None:
    check_metrics(metrics, shape, truth)
    for m in metrics:
        if METRICS[m].needs_train_set and (train_set is None or out_dir is None):
            raise ConfigError(f"{m} needs train_set and out_dir (for its files)")


def _finite_float(v: float | None) -> float | None:
    """JSON-safe value: non-finite or missing → None."""
    return float(v) if v is not None and np.isfinite(v) else None


def evaluate(samples: torch.Tensor, reference: torch.Tensor, metrics: tuple[str, ...] | list[str],
             *, truth: Any = None, cache_dir: str | os.PathLike | None = None,
             reference_name: str = "reference", protocol: dict[str, Any] | None = None,
             train_set: torch.Tensor | None = None, out_dir: str | os.PathLike | None = None,
             **options: Any) -> dict[str, Any]:
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
        cache_dir: reference-statistics cache (default ``$DMATTACK_CACHE`` or
            ``~/.cache/dmattack``).
        protocol: caller's provenance (sampler, steps, EMA, ...), merged into ``protocol``.
        train_set: (M, *shape) training data for memorization; out_dir receives its files.
        **options: the metrics' own options (None = unset), each routed to the requested
            metrics that read it, e.g. ``feature_extractor`` (fid/is/kid: ``auto`` =
            ``digits-cnn`` for 1×8×8 / 1×16×16 images, else ``inception``; or ``digits-cnn``,
            ``inception``), ``inception_weights`` (a local Inception weights file; default
            torch-fidelity's cache copy), ``memorization_space`` (``auto`` = digits-cnn for
            digit images, pixels for non-images, else inception; ``pixels``, ``digits-cnn``,
            ``inception`` or ``dinov2``), ``dinov2_dir`` (a local facebookresearch/dinov2
            checkout). One that none of ``metrics`` reads (or that all its readers would
            ignore) is a one-line :class:`ConfigError`.
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
    per_metric = route_options(metrics, shape, options)
    good = samples[torch.isfinite(samples.reshape(len(samples), -1)).all(dim=1)]
    info = _protocol(metrics, len(samples), len(good), reference_name, len(reference),
                     per_metric, protocol)
    context = MetricContext(metrics, truth, reference_name, cache_dir, train_set, out_dir, info)
    values = _compute(metrics, good, reference, context, per_metric)
    return {**values, "protocol": {**(protocol or {}), **info}}


def _protocol(metrics: tuple[str, ...], num_samples: int, num_finite: int, reference_name: str,
              num_reference: int, per_metric: dict[str, Any], protocol: dict[str, Any] | None
              ) -> dict[str, Any]:
    """What :func:`evaluate` records about itself and the metrics' options (metrics extend it
    with their provenance); a ValueError when the caller's ``protocol`` uses one of its
    keys. ``feature_extractor`` and its weights' sha256 are always recorded (None without
    fid/is/kid), so results of different metrics share their columns."""
    info: dict[str, Any] = {
        "metrics": list(metrics),
        "num_samples": num_samples,
        "num_nonfinite": num_samples - num_finite,
        "num_evaluated": num_finite,
        "nonfinite_policy": "rows with NaN/inf dropped; metrics on the finite rows",
        "reference": reference_name,
        "num_reference": num_reference,
        "torch_fidelity_version": torch_fidelity.__version__,
        "feature_extractor": None,
        "feature_extractor_weights_sha256": None,
    }
    for name, opts in _distinct(per_metric):
        merge_records(info, options_record(name, opts, "protocol"))
    reserved = set(info) | set(PROVENANCE_KEYS) | {"memorization", "metric_options"}
    clash = set(protocol or {}) & reserved
    if clash:
        raise ValueError(f"protocol keys {sorted(clash)} are reserved by evaluate")
    return info


def _compute(metrics: tuple[str, ...], good: torch.Tensor, reference: torch.Tensor,
             context: MetricContext, per_metric: dict[str, Any]) -> dict[str, float | None]:
    """Each requested metric once, in the order asked, on the (N_good, *shape) finite rows,
    with its own resolved options (``context.options``): its declared keys → JSON-safe values
    (all None when no row is finite)."""
    values: dict[str, float | None] = {}
    for m in dict.fromkeys(metrics):
        metric = METRICS[m]
        keys = metric.result_keys(per_metric[m])
        if len(good) == 0:
            values.update(dict.fromkeys(keys))
            continue
        own = dataclasses.replace(context, options=per_metric[m])  # shares info and cache
        computed = dict(metric.compute(good, reference, own))
        if set(computed) != set(keys):
            raise ValueError(f"metric {m!r} returned {sorted(computed)}, not its declared "
                             f"keys {sorted(keys)}")
        values.update(computed)
    return {k: _finite_float(v) for k, v in values.items()}


def _memorization(x: torch.Tensor, train_set: torch.Tensor, options: MemorizationOptions,
                  out_dir: str | os.PathLike, info: dict[str, Any]) -> dict[str, float]:
    """Run :func:`memorization` in the options' (resolved) space, save the per-sample maxima
    (.npy) and histogram (.png) in ``out_dir``, record the files in ``info["memorization"]``;
    return the summary values."""
    out_dir, space = Path(out_dir), options.space
    res = memorization(x, torch.as_tensor(train_set), space=space, weights=options.weights(),
                       histogram_path=out_dir / f"memorization_{space}.png")
    npy = out_dir / f"memorization_{space}.npy"
    with atomic_path(npy) as tmp:
        np.save(tmp, res["max_similarity"], allow_pickle=False)
    info["memorization"] = {"space": space, "weights_sha256": res["weights_sha256"],
                            "num_train": len(train_set), "histogram": res["histogram"],
                            "max_similarity_file": str(npy)}
    labels = _memorization_keys(options)
    return dict(zip(labels, [res[f"frac_above_{t}"] for t in THRESHOLDS]
                    + [res["mean_max_similarity"]], strict=True))
