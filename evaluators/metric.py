"""A registered metric (:class:`Metric`), what one evaluation gives it (:class:`MetricContext`)
and the routing of :func:`evaluators.evaluate`'s keyword options to the metrics that read them
(:func:`route_options`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from dmattack.core.registry import METRICS
from dmattack.core.settings import field_types, option_name, setting_of, shown

from .errors import ConfigError
from .options import NoOptions

DATA_KINDS = ("images", "known", "vectors")
"""Kinds of data a metric can be a default for: images (C, H, W), vectors with a known
distribution (``truth``), other vectors."""


@dataclass
class MetricContext:
    """What one :func:`evaluators.evaluate` call gives a metric besides the samples and
    reference: the requested ``metrics``, the known distribution ``truth``, the reference's
    name and statistics cache folder, the training set and output folder (memorization), the
    metric's own resolved ``options`` (an instance of its :attr:`Metric.config`), ``info`` (the
    result's protocol, which a metric may extend with its provenance) and ``cache`` (shared by
    the metrics of one call, e.g. one feature pass for fid/is/kid)."""

    metrics: tuple[str, ...] = ()
    truth: Any = None
    reference_name: str = "reference"
    cache_dir: str | os.PathLike | None = None
    train_set: torch.Tensor | None = None
    out_dir: str | os.PathLike | None = None
    info: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    options: Any = NoOptions()


MetricCompute = Callable[[torch.Tensor, torch.Tensor, MetricContext],
                         Mapping[str, float | None]]
"""``compute(samples, reference, context) -> {result key: value}``: ``samples`` (N, *shape) are
the finite model-space rows (N ≥ 1), ``reference`` (N_ref, *shape) the clean reference."""


@dataclass(frozen=True)
class Metric:
    """A metric as registered in :data:`~dmattack.core.registry.METRICS`.

    ``label``: one line for listings; ``compute`` (:data:`MetricCompute`) returns exactly the
    result ``keys`` (a sequence, or a function of the metric's resolved options when they
    depend on them, e.g. the extractor); what it needs: images (``needs_images``), attributes
    of a known distribution ``truth`` (``truth_needs``), a training set and an output folder
    (``needs_train_set``). :func:`evaluators.check_metrics` refuses a metric whose needs are
    unmet. ``config``: a frozen dataclass whose fields, declared with
    :func:`~dmattack.core.settings.setting`, are the metric's options (keywords of
    ``evaluate`` and command-line options; see :mod:`evaluators.options`). ``default_for``:
    the :data:`DATA_KINDS` it is scored by default on; ``better``: ``"lower"`` or ``"higher"``
    for a set metric whose fall (rise) under attack is flagged (docs/method.md §11.1);
    ``on_features``: scored on the feature extractor's features (a card protocol's reference
    metrics). Checked before any sampling: ``sample_dimension(options, shape) -> (d, what)``
    for a Fréchet distance, the dimension of the space whose covariance it estimates from the
    samples (a run with N ≤ d samples is refused, docs/method.md §8); ``check(options)``
    raises a one-line error when the resolved options cannot be scored (files missing, an
    extractor without the logits it needs).
    """

    label: str
    compute: MetricCompute
    keys: Sequence[str] | Callable[[Any], Sequence[str]]
    needs_images: bool = False
    truth_needs: tuple[str, ...] = ()
    needs_train_set: bool = False
    config: type = NoOptions
    default_for: tuple[str, ...] = ()
    better: str | None = None
    on_features: bool = False
    sample_dimension: Callable[[Any, tuple[int, ...]], tuple[int, str]] | None = None
    check: Callable[[Any], None] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.config, type) and dataclasses.is_dataclass(self.config)):
            raise TypeError(f"Metric config must be a dataclass, got {self.config!r}")
        field_types(self.config)  # TypeError for a field type the command line cannot take
        bare = [f.name for f in fields(self.config) if setting_of(f) is None]
        if bare:
            raise TypeError(f"{self.config.__name__} fields {bare} are not declared with "
                            "dmattack.core.settings.setting() (their help and allowed values)")
        if self.better not in (None, "lower", "higher"):
            raise ValueError(f"Metric better must be None, 'lower' or 'higher', got "
                             f"{self.better!r}")
        unknown = set(self.default_for) - set(DATA_KINDS)
        if unknown:
            raise ValueError(f"Metric default_for {sorted(unknown)}: allowed "
                             f"{', '.join(DATA_KINDS)}")

    def result_keys(self, options: Any = None) -> list[str]:
        """The keys :attr:`compute` returns under the resolved ``options`` (default: the
        config's defaults, resolved for unknown data)."""
        if options is None:
            options = resolve(self.config(), ())
        return list(self.keys(options) if callable(self.keys) else self.keys)


def keywords(config: type) -> dict[str, dataclasses.Field]:
    """Keyword → field of a metric config: the keyword is the field's command-line spelling
    without ``--`` (``memorization_space`` for field ``space`` spelled
    ``--memorization-space``)."""
    return {option_name(f)[2:].replace("-", "_"): f for f in fields(config)}


def resolve(options: Any, shape: tuple[int, ...]) -> Any:
    """``options.resolved(shape)`` where the config defines it."""
    method = getattr(options, "resolved", None)
    return options if method is None else method(tuple(shape))


def _readers(keyword: str) -> list[str]:
    return [n for n in METRICS.names() if keyword in keywords(METRICS[n].config)]


def route_options(metrics: Sequence[str], shape: Sequence[int], options: Mapping[str, Any]
                  ) -> dict[str, Any]:
    """Per requested metric, its resolved options: each keyword option (None = unset) goes to
    the metrics whose config reads it. :class:`ConfigError` (one line) for an option no
    registered metric has, one none of ``metrics`` reads, or one every reader ignores under
    its resolved choice (e.g. Inception weights with the digits-cnn extractor)."""
    given = {k: os.fspath(v) if isinstance(v, os.PathLike) else v
             for k, v in options.items() if v is not None}
    for k, v in given.items():
        if not _readers(k):
            known = sorted({kw for n in METRICS.names() for kw in keywords(METRICS[n].config)})
            raise ConfigError(f"{k} = {shown(v)} is no metric option; the metrics' options: "
                              f"{', '.join(known)}", field=k)
    out: dict[str, Any] = {}
    for m in dict.fromkeys(metrics):
        entry = METRICS.get(m, "metric")
        own = {f.name: given[k] for k, f in keywords(entry.config).items() if k in given}
        out[m] = resolve(entry.config(**own), tuple(shape))
    for k, v in given.items():
        spelling = "--" + k.replace("_", "-")
        readers = [m for m in out if k in keywords(METRICS[m].config)]
        if not readers:
            which = f"metric {next(iter(out))!r}" if len(out) == 1 else \
                f"any of the metrics {', '.join(out)}"
            raise ConfigError(f"{k} ({spelling}) = {shown(v)} is not used by {which}; it is "
                              f"read by: {', '.join(_readers(k))}", field=k)
        whys = [_unused(out[m], keywords(METRICS[m].config)[k].name) for m in readers]
        if all(whys):
            raise ConfigError(f"{k} ({spelling}) = {shown(v)} would be ignored by "
                              f"{', '.join(readers)}: {whys[0]}; remove it", field=k)
    return out


def _unused(options: Any, name: str) -> str | None:
    method = getattr(options, "unused", None)
    return None if method is None else method().get(name)


def options_record(name: str, options: Any, hook: str) -> dict[str, Any]:
    """What ``options`` add to a scoring identity (``hook="identity"``) or a result's protocol
    (``hook="protocol"``): the config's hook, else its fields under ``metric_options``."""
    method = getattr(options, hook, None)
    if method is not None:
        return dict(method())
    if not fields(options):
        return {}
    return {"metric_options": {name: dataclasses.asdict(options)}}


def merge_records(out: dict[str, Any], record: dict[str, Any]) -> None:
    """``out.update(record)``, the ``metric_options`` of several metrics merged."""
    for k, v in record.items():
        if k == "metric_options":
            out.setdefault(k, {}).update(v)
        else:
            out[k] = v
