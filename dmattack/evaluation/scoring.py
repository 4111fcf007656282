"""What can fail about scoring, checked before any sampling (:func:`check_scoring`): the
metrics' options, the weights they load, the Fréchet sample size, DINOv2's files."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError


def metric_keywords() -> frozenset[str]:
    """The keyword options of :func:`evaluators.evaluate` that some registered metric reads
    (``feature_extractor``, ``memorization_space``, ..., a plugin's own)."""
    from evaluators.metric import keywords

    from ..core.registry import METRICS

    return frozenset(k for n in METRICS.names() for k in keywords(METRICS[n].config))


def frechet_dimension(metric: str, shape: Sequence[int], extractor: str | None = None
                      ) -> tuple[int, str] | None:
    """``(d, what)``: the dimension of the space whose covariance a Fréchet-distance metric
    estimates from the samples, or None for other metrics. ``fid``: the FID layer of the
    resolved feature ``extractor`` (``digits-cnn`` | ``inception``), read from the
    torch-fidelity extractor itself (64 for digits-cnn, 2048 for Inception); ``fd-exact``: the
    data dimension prod(``shape``). docs/method.md §8."""
    if metric == "fd-exact":
        return math.prod(shape), "data"
    if metric != "fid" or extractor is None:
        return None
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from evaluators.extractors import EXTRACTORS

    entry = FEATURE_EXTRACTORS_REGISTRY[EXTRACTORS[extractor]]
    return int(entry.get_default_feature_layer_for_metric("fid")), f"{extractor} feature"


def check_sample_size(metrics: Sequence[str], shape: Sequence[int], num_samples: int,
                      extractor: str | None = None, allow_small: bool = False) -> None:
    """Refuse (one line, :class:`ConfigError`) a Fréchet distance from N ≤ d samples, d of
    :func:`frechet_dimension`: the sample covariance is singular and the number mostly
    estimator bias (docs/method.md §8). ``allow_small`` lets it through."""
    for m in metrics:
        dim = frechet_dimension(m, shape, extractor)
        if dim is None or allow_small or num_samples > dim[0]:
            continue
        raise ConfigError(
            f"{m} from {num_samples} samples: its {dim[0]}-D {dim[1]} covariance needs more "
            f"samples than dimensions, at least --num-samples {dim[0] + 1} (docs/method.md "
            f"§8); use --metrics kid (unbiased at any N) or pass --allow-small-fid",
            field="num_samples")


def check_scoring(metrics: Sequence[str], shape: Sequence[int], num_samples: int,
                  allow_small_fid: bool = False, **options: Any) -> dict[str, Any]:
    """Everything about scoring that can fail, checked before sampling: every option read by
    a requested metric and used under its resolved choice, every weights file located
    (:func:`evaluators.scoring_identity`), the Fréchet sample size
    (:func:`check_sample_size`), IS only with an extractor that has logits, DINOv2 only with a
    checkout and its weights. ``options``: the metrics' keyword options (None = unset).
    Returns the scoring identity."""
    from evaluators import MetricError, scoring_identity
    from evaluators.inception import FID_HELPER_SHA256, NO_LOGITS

    identity = scoring_identity(tuple(metrics), tuple(shape), **options)
    check_sample_size(metrics, shape, num_samples, identity.get("feature_extractor"),
                      allow_small_fid)
    if "is" in metrics and identity.get("feature_extractor_weights_sha256") == FID_HELPER_SHA256:
        raise MetricError(NO_LOGITS)
    if identity.get("memorization_space") == "dinov2":
        check_dinov2(options.get("dinov2_dir"))
    return identity


def check_dinov2(repo: str | os.PathLike | None) -> None:
    """One-line :class:`~evaluators.errors.MetricError` unless a DINOv2 checkout (``repo``,
    default torch-hub's cache copy, with ``hubconf.py``) and its weights are on disk: the
    files :func:`evaluators.memorization.memorization` loads in the ``dinov2`` space."""
    from evaluators import MetricError
    from evaluators.memorization import DINOV2_URL

    hub = Path(torch.hub.get_dir())
    repo = Path(repo) if repo is not None else hub / "facebookresearch_dinov2_main"
    ckpt = hub / "checkpoints" / os.path.basename(DINOV2_URL)
    if not (repo / "hubconf.py").is_file() or not ckpt.is_file():
        raise MetricError(f"DINOv2 needs a local facebookresearch/dinov2 checkout (hubconf.py; "
                          f"looked in {repo}; pass it as --dinov2-dir) and {DINOV2_URL} at "
                          f"{ckpt}")


