"""Glue between trained models and the ``evaluators`` package: the clean reference data of a
model, the default metrics for its data, and a ``metric_fn(samples) -> dict`` for attacks."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .data import DiffusionDataset, load_dataset
from .runs import LoadedModel

MetricFn = Callable[[torch.Tensor], dict[str, Any]]
MAX_REFERENCE = 50_000  # the paper's FID reference size (CIFAR-10 train set)


@dataclass
class Reference:
    """Clean reference data of a model: ``data`` (N, *shape) model space, the known
    distribution ``truth`` (vector sets) and a ``name`` describing it for result files."""

    data: torch.Tensor
    truth: Any
    name: str
    description: dict[str, Any]


def clean_dataset(loaded: LoadedModel, data_dir: str | os.PathLike | None = None
                  ) -> DiffusionDataset:
    """The CLEAN training set of a run (corruption is never applied to the reference)."""
    data_cfg = loaded.config.get("data", {})
    train_cfg = loaded.config.get("train", {})
    name = loaded.dataset
    if name is None:
        raise ValueError(f"{loaded.source} names no dataset; pass --dataset for the reference")
    return load_dataset(
        name,
        data_dir=data_dir or train_cfg.get("data_dir"),
        resolution=train_cfg.get("resolution"),
        num_samples=train_cfg.get("num_data"),
        seed=int(data_cfg.get("seed", train_cfg.get("seed", 0))),
        **{k: v for k, v in data_cfg.get("params", {}).items()
           if k in _user_params(name)},
    )


def _user_params(name: str) -> tuple[str, ...]:
    from .data import DEFAULT_PARAMS

    return tuple(DEFAULT_PARAMS.get(name, {}))


def reference_for(dataset: DiffusionDataset, max_samples: int = MAX_REFERENCE) -> Reference:
    """Materialise (at most ``max_samples`` of) a dataset as the reference tensor."""
    data = dataset.tensor()
    if data is None:
        n = min(len(dataset), max_samples)
        data = torch.stack([dataset[i] for i in range(n)])
    desc = dataset.describe()
    name = f"{desc['name']} clean train set ({len(data)} samples)"
    return Reference(data[:max_samples], dataset.truth, name, desc)


def default_metrics(shape: Sequence[int], truth: Any) -> tuple[str, ...]:
    """What a robustness researcher reads first for this data: FID for images (digits-cnn on
    the embedded digits), the exact Fréchet distance for known distributions; always the
    variance ratio (METHOD §11: smoothing shows up as a ratio below 1)."""
    if len(shape) == 3:
        return ("fid", "variance-ratio")
    if truth is not None:
        return ("fd-exact", "variance-ratio")
    return ("variance-ratio",)


def make_metric_fn(reference: Reference, metrics: Sequence[str], *,
                   protocol: dict[str, Any] | None = None, **evaluate_kwargs: Any) -> MetricFn:
    """``metric_fn(samples) -> {label: value, ..., "protocol": {...}}`` for these metrics
    (checked against the reference's shape and truth now, before any sampling)."""
    from evaluators import check_metrics, evaluate

    check_metrics(tuple(metrics), tuple(reference.data.shape[1:]), reference.truth)

    def metric_fn(samples: torch.Tensor) -> dict[str, Any]:
        return evaluate(samples, reference.data, tuple(metrics), truth=reference.truth,
                        reference_name=reference.name, protocol=protocol, **evaluate_kwargs)

    return metric_fn
