"""Glue between trained models and the ``evaluators`` package: the clean reference data of a
model, the default metrics for its data, a ``metric_fn(samples) -> dict`` for attacks, and
:func:`prepare_evaluation`, the one setup (sampler → sample count → batch → reference →
metrics → label) that ``dmattack evaluate``, ``attack`` and ``curve`` share."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError
from ..core.registry import DATASETS, METRICS
from ..core.settings import check_settings, setting
from ..core.text import comma_list
from ..data import DiffusionDataset, load_dataset
from ..diffusion.sampling import SamplerConfig
from ..runs.checkpoints import LoadedModel, digest

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

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 over the reference's content (the float32 bytes and shape of ``data``, so
        every file under ``--data-dir`` that is read counts, byte for byte) and its
        description (dataset, parameters, seed: what the known ``truth`` derives from)."""
        h = hashlib.sha256(json.dumps([self.name, self.description, list(self.data.shape)],
                                      sort_keys=True, default=str).encode())
        for block in self.data.reshape(len(self.data), -1).split(4096):
            h.update(block.float().contiguous().numpy().tobytes())
        return h.hexdigest()


def clean_dataset(loaded: LoadedModel, data_dir: str | os.PathLike | None = None
                  ) -> DiffusionDataset:
    """The CLEAN training set of a run (corruption is never applied to the reference)."""
    data_cfg = loaded.config.get("data", {})
    train_cfg = loaded.config.get("train", {})
    name = loaded.dataset
    if name is None:
        raise ConfigError(f"{loaded.source} names no dataset; pass --dataset for the reference",
                          field="dataset")
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
    from ..data import DEFAULT_PARAMS

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
    """The registered metrics whose :attr:`~evaluators.Metric.default_for` names this data's
    kind (images: (C, H, W); known: vectors with a ``truth``; else vectors), in registration
    order. Built-in: FID for images (digits-cnn on the embedded digits), the exact Fréchet
    distance for known distributions; always the variance ratio (docs/method.md §11:
    smoothing shows up as a ratio below 1)."""
    import evaluators  # noqa: F401 - registers the built-in metrics

    kind = "images" if len(shape) == 3 else "known" if truth is not None else "vectors"
    return tuple(n for n in METRICS.names() if kind in METRICS[n].default_for)


def make_metric_fn(reference: Reference, metrics: Sequence[str], *,
                   protocol: dict[str, Any] | None = None, **evaluate_kwargs: Any) -> MetricFn:
    """``metric_fn(samples) -> {label: value, ..., "protocol": {...}}`` for these metrics
    (checked against the reference's shape and truth now, before any sampling, and every
    weights file they need located: a missing one fails here, not after sampling).

    ``metric_fn.identity`` says what its numbers depend on (metrics, extractor weights'
    sha256, the reference's content fingerprint, torch-fidelity's version); curve stores key
    their points by it (:func:`~dmattack.evaluation.attack_eval.run_curve`)."""
    from evaluators import check_metrics, evaluate, scoring_identity

    from .scoring import metric_keywords

    shape = tuple(reference.data.shape[1:])
    check_metrics(tuple(metrics), shape, reference.truth)
    for m in metrics:
        if METRICS[m].needs_train_set and not {"train_set", "out_dir"} <= set(evaluate_kwargs):
            raise ConfigError(f"{m} needs a training set and an output folder for its files: "
                              "score it with dmattack evaluate (evaluate_model)", field="metrics")
    options = {k: v for k, v in evaluate_kwargs.items() if k in metric_keywords()}
    identity = {**scoring_identity(tuple(metrics), shape, **options),
                "reference": reference.name, "reference_sha256": reference.fingerprint}

    def metric_fn(samples: torch.Tensor) -> dict[str, Any]:
        return evaluate(samples, reference.data, tuple(metrics), truth=reference.truth,
                        reference_name=reference.name, protocol=protocol, **evaluate_kwargs)

    metric_fn.identity = identity  # type: ignore[attr-defined]
    return metric_fn


DEFAULT_STRIDED_STEPS = 100  # a strided sampler's length when neither user nor preset sets one
MAX_SAMPLES = 10_000_000


@dataclass(frozen=True)
class EvaluationConfig:
    """How a model's samples are scored: how many, in which batches, against which reference,
    with which metrics. Unset (None) values come from the model's protocol
    (:func:`~dmattack.evaluation.attack_eval.default_protocol`) and its data."""

    num_samples: int | None = setting(None, "Samples to draw.", low=1, high=MAX_SAMPLES,
                                      auto="the model's preset: tiny 256, mlp 2000, GPU "
                                      "presets 10k")
    batch_size: int | None = setting(None, "Samples per batch.", low=1, high=MAX_SAMPLES,
                                     auto="the model's preset")
    seed: int = setting(0, "Seed of the per-sample randomness (x_T and every z).", low=0,
                        high=2**63 - 1)
    first_sample: int = setting(0, "Index of the first sample (for sharding across "
                                "processes/GPUs).", low=0, high=2**40)
    metrics: str | None = setting(None, "Comma list of metrics; the first is the headline.",
                                  auto="the data: fid for images, fd-exact for known "
                                  "distributions; variance-ratio always",
                                  aliases=("--metric",))
    dataset: str | None = setting(None, "Clean reference data [default: the run's dataset; "
                                  "required for --pipeline].", choices=DATASETS.names)
    data_dir: str | None = setting(None, "Root of on-disk reference data.")
    allow_small_fid: bool = setting(False, "Score a Fréchet distance (fid, fd-exact) from N "
                                    "samples at or below its feature dimension d (singular "
                                    "covariance, mostly bias; docs/method.md §8); recorded as "
                                    "allow_small_fid in the result.")

    def __post_init__(self) -> None:
        check_settings(self)
        if self.metrics is not None:
            metric_list(self.metrics)

    def metric_names(self) -> list[str] | None:
        return None if self.metrics is None else metric_list(self.metrics)


def metric_list(text: str) -> list[str]:
    """``"fid,variance-ratio"`` → the metric names, each checked against the METRICS
    registry."""
    import evaluators  # noqa: F401 - registers the built-in metrics

    items = comma_list(text, "metrics")
    for m in items:
        METRICS.get(m, "metric")
    return items


def resolve_sampler(loaded: LoadedModel, name: str | None = None, steps: int | None = None,
                    clip_denoised: bool | None = None, **options: Any) -> SamplerConfig:
    """The sampler of the model's protocol with the given fields replaced (None keeps the
    protocol's). ``options`` are the sampler's own (``eta=0.5`` for ddim; one it does not
    read is refused); the others keep the protocol's where the sampler is the protocol's, else
    their defaults. A strided sampler without a length runs the preset's, or
    :data:`DEFAULT_STRIDED_STEPS` (docs/method.md §8); ``clip_denoised`` defaults to on for
    images and off for vectors (a pipeline: its ``clip_sample``)."""
    from .attack_eval import default_protocol

    proto = default_protocol(loaded).sampler
    name = proto.name if name is None else name
    sampler = SamplerConfig(
        name, proto.steps if steps is None else steps,
        clip_denoised=proto.clip_denoised if clip_denoised is None else clip_denoised,
        options=proto.options if name == proto.name else None, **options)
    if sampler.steps is None and sampler.entry.strided:
        sampler = dataclasses.replace(sampler, steps=DEFAULT_STRIDED_STEPS)
    sampler.validate(loaded.diffusion.num_timesteps)
    return sampler


def resolve_reference(loaded: LoadedModel, dataset: str | None = None,
                      data_dir: str | os.PathLike | None = None) -> Reference:
    """The clean reference of a model (its own training set, or ``dataset``), checked against
    its data shape."""
    name = dataset if dataset is not None else loaded.dataset
    if data_dir is not None and name is not None and reads_no_files(name):
        raise ConfigError(f"--data-dir {data_dir} is not read by {name} (embedded or synthetic "
                          "data); remove it", field="data_dir")
    if dataset is not None and dataset != loaded.dataset:
        ds = load_dataset(dataset, data_dir=data_dir,
                          resolution=loaded.data_shape[-1] if len(loaded.data_shape) == 3
                          else None)
    else:
        ds = clean_dataset(loaded, data_dir)
    ref = reference_for(ds)
    if tuple(ref.data.shape[1:]) != tuple(loaded.data_shape):
        raise ConfigError(f"model {loaded.source} makes samples of shape {loaded.data_shape} "
                          f"but the reference {ds.name} has shape "
                          f"{tuple(ref.data.shape[1:])}", field="dataset")
    return ref


def reads_no_files(dataset: str) -> bool:
    """Whether data set ``dataset`` is built without reading ``--data-dir``: vector sets, and
    image sets registered as embedded (``DatasetEntry.label`` says "(embedded)")."""
    entry = DATASETS.get(dataset, "dataset")
    return entry.kind == "vector" or "(embedded)" in entry.label


def evaluation_label(metrics: Sequence[str], num_samples: int) -> str:
    """E.g. ``FID-10k`` or ``FD (exact)-2k``: the headline metric and sample count."""
    from evaluators import metric_labels

    n = f"{num_samples // 1000}k" if num_samples % 1000 == 0 else str(num_samples)
    return f"{metric_labels(metrics[0])[0]}-{n}"


@dataclass
class EvaluationSetup:
    """Everything a scoring command resolved: the sampler (and its label, e.g.
    ``respaced-25``), sample count and batch, the clean reference, the metrics, the label
    the numbers are reported under (e.g. ``FID-256``) and the metrics' options that were
    given (``scoring``: keywords of :func:`evaluators.evaluate`)."""

    sampler: SamplerConfig
    sampler_label: str
    num_samples: int
    batch_size: int
    reference: Reference
    metrics: list[str]
    label: str
    config: EvaluationConfig
    scoring: dict[str, Any] = dataclasses.field(default_factory=dict)

    def protocol(self) -> dict[str, Any]:
        """What every result of this setup records about its scoring: the label, and
        ``allow_small_fid: true`` when a small-sample Fréchet distance was allowed."""
        return {"evaluation": self.label,
                **({"allow_small_fid": True} if self.config.allow_small_fid else {})}

    def metric_fn(self, **evaluate_kwargs: Any) -> MetricFn:
        """``metric_fn(samples)`` for :func:`~dmattack.evaluation.attack_eval.run_attack` /
        ``run_curve`` (the setup's ``scoring`` options, overridden by ``evaluate_kwargs``)."""
        fn = make_metric_fn(self.reference, self.metrics, protocol=self.protocol(),
                            **{**self.scoring, **evaluate_kwargs})
        if self.config.allow_small_fid:
            fn.identity["allow_small_fid"] = True  # type: ignore[attr-defined]
        return fn


def prepare_evaluation(loaded: LoadedModel, cfg: EvaluationConfig = EvaluationConfig(),
                       sampler: SamplerConfig | None = None,
                       num_samples: int | None = None, **options: Any) -> EvaluationSetup:
    """Resolve a scoring run of ``loaded`` before any sampling: the sampler (default: the
    model's protocol, :func:`resolve_sampler`), sample count (``num_samples`` overrides
    ``cfg``, e.g. for samples read from files) and batch, the reference, the metrics (checked
    against the data, the sample count and the metrics' keyword ``options`` of
    :func:`evaluators.evaluate`, e.g. ``feature_extractor``; None = unset; the given ones are
    kept in the setup's ``scoring``; see :func:`~dmattack.evaluation.scoring.check_scoring`)
    and the result label. Raises :class:`ConfigError` / :class:`~evaluators.errors.MetricError`
    (one line) for a bad choice, an option the metrics do not read included."""
    from evaluators import check_metrics

    from .attack_eval import default_protocol
    from .scoring import check_scoring

    proto = default_protocol(loaded)
    sampler = (sampler if sampler is not None else resolve_sampler(loaded)
               ).for_shape(loaded.data_shape)
    sampler.validate(loaded.diffusion.num_timesteps)
    n = num_samples or cfg.num_samples or proto.num_samples
    reference = resolve_reference(loaded, cfg.dataset, cfg.data_dir)
    metrics = cfg.metric_names() or list(default_metrics(loaded.data_shape, reference.truth))
    check_metrics(metrics, tuple(loaded.data_shape), reference.truth)
    scoring = {k: v for k, v in options.items() if v is not None}
    check_scoring(metrics, tuple(loaded.data_shape), n, cfg.allow_small_fid, **scoring)
    return EvaluationSetup(sampler, sampler.describe(loaded.diffusion.num_timesteps), n,
                           cfg.batch_size or proto.batch_size, reference, metrics,
                           evaluation_label(metrics, n), cfg, scoring)


def memorization_train_set(loaded: LoadedModel, reference: Reference) -> torch.Tensor:
    """The set memorisation is measured against: a run's own (possibly corrupted) training
    set, else the clean reference."""
    if loaded.config.get("kind") != "dmattack-run":
        return reference.data
    from ..training.config import TrainConfig, build_data

    data = build_data(TrainConfig.from_dict(loaded.config["train"]))
    return data.tensor() if data.tensor() is not None else reference.data


def default_out_dir(loaded: LoadedModel, kind: str, name: str, runs_root: str | os.PathLike
                    ) -> Path:
    """``<base>/<kind>/<model name>-<short content hash>/<name>``: results of a run go inside
    it (``base`` the run folder), those of a pipeline under ``runs_root``. The model name is
    the folder's name, the hash the first 8 hex digits of the weights' and config's
    fingerprint (EMA and raw weights differ), so two models never share a folder, also two
    pipelines in folders of the same name."""
    model = Path(loaded.source).name + (f"-{loaded.fingerprint[:8]}" if loaded.fingerprint
                                        else "")
    base = Path(loaded.source) if loaded.config.get("kind") == "dmattack-run" else Path(runs_root)
    return base / kind / model / name


def curve_folder(models: Sequence[LoadedModel], specs: Sequence[Any], setup: EvaluationSetup,
                 ema: bool, runs_root: str | os.PathLike) -> Path:
    """``<runs_root>/curves/<hash>``: the default store of a curve, named by everything that
    defines its points, so re-running the same command resumes there: the models' content
    fingerprints (weights and config, not their paths), the attacks, the sampler, the sample
    count, seed and first sample, the metrics and the reference's content fingerprint (the
    data read, not its folder)."""
    from .attack_eval import model_identity

    first = setup.config.first_sample
    key = digest([[model_identity(m) for m in models], ema, [s.to_dict() for s in specs],
                  setup.sampler.to_dict(), setup.num_samples, setup.config.seed, setup.metrics,
                  setup.reference.fingerprint, *([first] if first else [])])
    return Path(runs_root) / "curves" / key[:12]
