"""What can fail about scoring, checked before any sampling (:func:`check_scoring`): the
metrics' options, the weights they load, the Fréchet sample size and each metric's own
check (its entry's ``sample_dimension`` and ``check``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..core.errors import ConfigError
from ..core.registry import METRICS


def metric_keywords() -> frozenset[str]:
    """The keyword options of :func:`evaluators.evaluate` that some registered metric reads
    (``feature_extractor``, ``memorization_space``, ..., a plugin's own)."""
    from evaluators.metric import keywords

    return frozenset(k for n in METRICS.names() for k in keywords(METRICS[n].config))


def frechet_dimension(metric: str, shape: Sequence[int], options: Any = None
                      ) -> tuple[int, str] | None:
    """``(d, what)``: the dimension of the space whose covariance metric ``metric`` estimates
    from samples of per-sample ``shape`` (its entry's ``sample_dimension``; fid: the FID layer
    of the resolved feature extractor, 64 for digits-cnn and 2048 for Inception; fd-exact: the
    data dimension), or None for a metric that estimates none. ``options``: the metric's
    resolved options (default: its defaults resolved for ``shape``). docs/method.md §8."""
    from evaluators.metric import resolve

    entry = METRICS.get(metric, "metric")
    if entry.sample_dimension is None:
        return None
    options = resolve(entry.config(), tuple(shape)) if options is None else options
    return entry.sample_dimension(options, tuple(shape))


def check_sample_size(metrics: Sequence[str], shape: Sequence[int], num_samples: int,
                      options: Mapping[str, Any] | None = None, allow_small: bool = False
                      ) -> None:
    """Refuse (one line, :class:`ConfigError`) a Fréchet distance from N ≤ d samples, d of
    :func:`frechet_dimension` (``options``: per metric, its resolved options; default: its
    defaults): the sample covariance is singular and the number mostly estimator bias
    (docs/method.md §8). ``allow_small`` lets it through."""
    for m in metrics:
        dim = frechet_dimension(m, shape, (options or {}).get(m))
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
    (:func:`check_sample_size`) and each metric entry's own ``check`` (IS: weights with
    logits; memorization in the dinov2 space: the checkout and its weights).
    ``options``: the metrics' keyword options (None = unset). Returns the scoring
    identity."""
    from evaluators import scoring_identity
    from evaluators.metric import route_options

    identity = scoring_identity(tuple(metrics), tuple(shape), **options)
    resolved = route_options(metrics, tuple(shape), options)
    check_sample_size(metrics, shape, num_samples, resolved, allow_small_fid)
    for m, opts in resolved.items():
        if METRICS[m].check is not None:
            METRICS[m].check(opts)
    return identity
