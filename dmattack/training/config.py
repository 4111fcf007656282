"""What defines a training run: :class:`TrainConfig`, each setting declared once (default,
allowed values, help text); ``dmattack train``'s options are generated from it and a run's
config.json is checked against it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.errors import ConfigError, first_line
from ..core.registry import DATASETS, PRESETS
from ..core.seeding import derive_seed
from ..core.settings import check_settings, iter_settings, setting
from ..data import corrupt, is_vector_dataset, load_dataset
from ..data.corruption import CORRUPTION_MODES
from ..diffusion.gaussian import SCHEDULES, VARIANCE_TYPES
from .objectives import ObjectiveConfig

NAN_POLICIES = ("stop", "skip")
MAX_NUM_DATA = 10_000_000
MAX_STEPS = 1_000_000_000
MAX_BATCH = 10_000_000
MAX_TIMESTEPS = 100_000
MAX_IN_MEMORY_RESOLUTION = 256
"""The largest ``--resolution`` of an image dataset held in memory (its entry's
``in_memory``)."""


def parse_device(name: str) -> torch.device | None:
    """The torch device a name stands for (None for ``auto``), without checking it is
    present; a one-line ConfigError for a malformed or unsupported name."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r} is invalid; allowed: auto, cpu, cuda, cuda:N, mps",
                          field="device")
    return device


@dataclass
class TrainConfig:
    """Everything that defines a training run (recorded in the run's config.json).

    ``preset``, ``steps``, ``batch_size`` and ``warmup`` left as None take the defaults of the
    dataset's kind and the preset (:meth:`resolved`)."""

    # data
    dataset: str = setting("digits", "Training data.", choices=DATASETS.names)
    data_dir: str | None = setting(None, "Root of on-disk datasets.")
    resolution: int | None = setting(None, "Image side [default: the dataset's].", low=1,
                                     high=4096)
    num_data: int | None = setting(None, "Samples for synthetic vector data (images: keep the "
                                   "first N).", low=1, high=MAX_NUM_DATA)
    corrupt_mode: str = setting("gaussian", "Corruption: gaussian noise or outliers (vector "
                                "data).", choices=CORRUPTION_MODES)
    corrupt_fraction: float = setting(0.0, "Fraction p of training samples corrupted.", low=0,
                                      high=1)
    corrupt_sigma: float = setting(0.2, "Noise std of the corruption, in model space [-1, 1].",
                                   low=0)
    flip: bool | None = setting(None, "Random horizontal flips of the training images (half of "
                                "each batch, drawn from the step's seed).",
                                auto="the dataset's flip_default: on for cifar10, celeba, "
                                "lsun-bedroom, imagefolder; off for digits and vector data")
    # model and diffusion
    preset: str | None = setting(None, "Model preset [default: tiny for images, mlp for "
                                 "vectors].", choices=PRESETS.names)
    dropout: float | None = setting(None, "Dropout [default: the preset's, 0.1 for "
                                    "ddpm-cifar10 / ddpm-64].", low=0, high=1, high_open=True)
    schedule: str = setting("linear", "β schedule.", choices=SCHEDULES)
    num_timesteps: int = setting(1000, "Diffusion steps T.", low=2, high=MAX_TIMESTEPS,
                                 option="--timesteps")
    variance_type: str = setting("fixed_large", "Sampler variance: fixed_large (β_t) or "
                                 "fixed_small (β̃_t).", choices=VARIANCE_TYPES)
    # objective (docs/method.md §3–§5)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    # optimisation
    steps: int | None = setting(None, "Optimiser steps [default: by preset: tiny 800, mlp "
                                "3000, ddpm-cifar10 800k].", low=1, high=MAX_STEPS)
    batch_size: int | None = setting(None, "Global batch [default: by preset: tiny 64, mlp "
                                     "256, ddpm-cifar10 128, ddpm-64 64].", low=1,
                                     high=MAX_BATCH)
    lr: float = setting(2e-4, "AdamW learning rate.", low=0, low_open=True, high=1)
    weight_decay: float = setting(0.0, "AdamW weight decay.", low=0)
    warmup: int | None = setting(None, "Linear learning-rate warm-up steps [default: by "
                                 "preset: 100, GPU presets 5000].", low=0)
    grad_clip: float = setting(1.0, "Clip the gradient norm to this (0: off).", low=0)
    ema_decay: float = setting(0.9999, "EMA decay of the weights used for sampling.", low=0,
                               high=1, high_open=True)
    ema_warmup: bool = setting(True, "Warm the EMA decay up as min(decay, (1+k)/(10+k)).")
    # bookkeeping
    seed: int = setting(0, "Seed of every random draw of the run.", low=0, high=2**63 - 1)
    device: str = setting("auto", "auto (CUDA when available), cpu, cuda, cuda:N or mps.")
    checkpoint_every: int = setting(500, "Optimiser steps between checkpoints.", low=1)
    checkpoint_minutes: float = setting(10.0, "Minutes between time-based checkpoints, besides "
                                        "--checkpoint-every (0: off): a crash loses at most "
                                        "this much work; the trained numbers do not change.",
                                        low=0)
    sample_every: int = setting(500, "Optimiser steps between preview grids.", low=1)
    num_preview: int = setting(64, "Samples in each preview grid (0: none).", low=0,
                               high=4096)
    preview_steps: int = setting(100, "Respaced sampler steps of the previews.", low=1)
    log_every: int = setting(25, "Optimiser steps between log.jsonl records.", low=1)
    tensorboard: bool = setting(True, "TensorBoard events in <run>/tb/ when tensorboard is "
                                "installed (pip install 'dmattack[tensorboard]').")
    num_workers: int = setting(0, "DataLoader workers for on-disk image data.", low=0,
                               high=256)
    nan_policy: str = setting("stop", "Non-finite loss or gradient: stop (the last good "
                              "checkpoint is kept) or skip that optimiser step (counted in "
                              "log.jsonl).", choices=NAN_POLICIES)
    # speed (results equal up to float round-off, see docs/performance.md)
    grad_accum: int = setting(1, "Micro-batches per optimiser step (per process).", low=1)
    compile: bool = setting(False, "torch.compile the model: slower start, faster steps.")
    channels_last: bool | None = setting(None, "Channels-last U-Net memory layout [default: on "
                                         "for CUDA].")

    def __post_init__(self) -> None:
        check_settings(self)
        if not isinstance(self.objective, ObjectiveConfig):
            raise ConfigError(f"objective = {self.objective!r} is invalid; allowed: an "
                              "ObjectiveConfig", field="objective")
        entry = DATASETS.get(self.dataset, "--dataset")
        if self.resolution is not None and entry.in_memory and entry.kind == "image" \
                and self.resolution > MAX_IN_MEMORY_RESOLUTION:
            raise ConfigError(f"resolution (--resolution) = {self.resolution} is invalid; "
                              f"allowed: an image side in 1..{MAX_IN_MEMORY_RESOLUTION} for "
                              f"{self.dataset} (held in memory)", field="resolution")
        if self.batch_size is not None and self.batch_size % self.grad_accum:
            raise ConfigError(f"grad_accum (--grad-accum) = {self.grad_accum} is invalid; "
                              f"allowed: a divisor of batch_size={self.batch_size} "
                              "(micro-batches per step)", field="grad_accum")
        parse_device(self.device)
        if self.flip and is_vector_dataset(self.dataset):
            raise ConfigError(f"flip (--flip) = True is invalid for {self.dataset}; allowed: "
                              "an image dataset (vector data has nothing to mirror)",
                              field="flip")

    def resolved(self) -> TrainConfig:
        """A copy with the defaults filled in for unset preset (by the dataset's kind),
        steps / batch / warm-up (by the preset) and flip (the dataset entry's
        ``flip_default``)."""
        preset = self.preset or ("mlp" if is_vector_dataset(self.dataset) else "tiny")
        p = PRESETS.get(preset, "preset")
        return dataclasses.replace(
            self,
            preset=preset,
            steps=p.steps if self.steps is None else self.steps,
            batch_size=p.batch_size if self.batch_size is None else self.batch_size,
            warmup=p.warmup if self.warmup is None else self.warmup,
            flip=DATASETS.get(self.dataset, "--dataset").flip_default if self.flip is None
            else self.flip,
        )

    def validate(self) -> None:
        """Check a :meth:`resolved` config is complete (every field is checked when built)."""
        for name in ("preset", "steps", "batch_size", "warmup", "flip"):
            if getattr(self, name) is None:
                raise ConfigError(f"{name} is unset; call resolved() first", field=name)

    def settings(self) -> Iterator[tuple[str, dataclasses.Field, Any]]:
        """``(dotted path, field, value)`` of every leaf setting, the objective's options
        (``objective.lam``) included; tuples as lists (as config.json holds them)."""
        for path, f, _ in iter_settings(TrainConfig):
            yield path, f, _value(self, path)
        options = self.objective.options
        for path, f, _ in iter_settings(type(options)):
            yield "objective." + path, f, _value(options, path)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["objective"] = self.objective.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from :meth:`to_dict` output (e.g. a run's config.json); a
        malformed field raises a one-line :class:`ConfigError` naming it. A missing ``flip``
        reads as False (a run written before flips existed trained without them)."""
        if not isinstance(d, dict):
            raise ConfigError(f"expected an object, got {type(d).__name__}", field="train")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown training config field {unknown[0]!r}",
                              field=unknown[0])
        d = dict(d)
        d.setdefault("flip", False)  # runs from before flips were trained without them
        objective = d.get("objective", {})
        try:
            if not isinstance(objective, dict):
                raise ConfigError(f"expected an object, got {objective!r}")
            d["objective"] = ObjectiveConfig.from_dict(objective)
        except (ConfigError, TypeError) as e:
            raise ConfigError(first_line(e), field="objective") from None
        return cls(**d)


def _value(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return list(cfg) if isinstance(cfg, tuple) else cfg


def build_data(cfg: TrainConfig):
    """The (possibly corrupted) training set of a config."""
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, resolution=cfg.resolution,
                        num_samples=cfg.num_data, seed=cfg.seed)
    if cfg.corrupt_fraction > 0:
        data = corrupt(data, mode=cfg.corrupt_mode, fraction=cfg.corrupt_fraction,
                       sigma=cfg.corrupt_sigma, seed=derive_seed(cfg.seed, 1))
    return data
