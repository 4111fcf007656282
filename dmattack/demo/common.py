"""Shared plumbing of the demo sections: progress stages, timings, training a run folder,
sampling and scoring a model with the library's public functions."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..evaluation import Reference, clean_dataset, make_metric_fn, reference_for
from ..objectives import ObjectiveConfig
from ..runs import LoadedModel, load_run
from ..sampling import SamplerConfig, sample_batched
from ..seeding import sample_seeds
from ..train import TrainConfig, train
from .plan import TrainSettings

Progress = Callable[[str, int, int], None]
"""``progress(stage_label, done, total)``: called as sub-steps of a stage complete."""


@dataclass
class Context:
    """What every section needs: output folder, seed, device, progress and timings (s)."""

    out_dir: Path
    seed: int
    device: str
    progress: Progress | None = None
    timings: dict[str, float] = field(default_factory=dict)
    _references: dict[str, Reference] = field(default_factory=dict)

    @contextmanager
    def stage(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        """Report ``label`` at 0/total, yield ``advance(n)``; record the stage's wall time."""
        done = 0

        def advance(n: int = 1) -> None:
            nonlocal done
            done = min(total, done + n)
            if self.progress is not None:
                self.progress(label, done, total)

        advance(0)
        start = time.perf_counter()
        try:
            yield advance
        finally:
            self.timings[label] = round(time.perf_counter() - start, 2)
        if done < total:
            advance(total - done)

    def reference(self, loaded: LoadedModel) -> Reference:
        """The clean reference data of a model (cached per dataset description)."""
        key = repr(sorted(loaded.config["data"].items(), key=lambda kv: kv[0]))
        if key not in self._references:
            self._references[key] = reference_for(clean_dataset(loaded))
        return self._references[key]


@dataclass
class TrainedModel:
    """A trained demo model: its run folder, wall time, and the loaded EMA model (None if
    training stopped on a non-finite loss; ``error`` then says where)."""

    name: str
    run_dir: Path
    seconds: float
    loaded: LoadedModel | None
    error: str | None = None


def train_config(dataset: str, method: str, settings: TrainSettings, *, seed: int, device: str,
                 num_data: int, corrupt_mode: str = "gaussian", corrupt_fraction: float = 0.0,
                 corrupt_sigma: float = 0.2) -> TrainConfig:
    """The TrainConfig of one demo model (checkpoint only at the end, no previews)."""
    objective = ObjectiveConfig(method, lam=settings.lam, lambda_scaling=settings.lambda_scaling)
    return TrainConfig(
        dataset=dataset, num_data=num_data, corrupt_mode=corrupt_mode,
        corrupt_fraction=corrupt_fraction, corrupt_sigma=corrupt_sigma, preset=settings.preset,
        objective=objective, steps=settings.steps, batch_size=settings.batch_size,
        lr=settings.lr, warmup=settings.warmup, seed=seed, device=device,
        checkpoint_every=settings.steps, num_preview=0, log_every=max(1, settings.steps // 20))


def train_model(ctx: Context, name: str, cfg: TrainConfig,
                advance: Callable[[int], None]) -> TrainedModel:
    """Train ``cfg`` into ``out_dir/runs/name``; ``advance(1)`` after every optimiser step."""
    run_dir = ctx.out_dir / "runs" / name
    start = time.perf_counter()
    done = 0

    def on_step(step: int, _: dict[str, float]) -> None:
        nonlocal done
        advance(step - done)
        done = step

    try:
        train(cfg, run_dir, callback=on_step)
    except FloatingPointError as e:
        advance(cfg.steps - done)
        return TrainedModel(name, run_dir, time.perf_counter() - start, None,
                            str(e).split(";")[0])
    seconds = time.perf_counter() - start
    return TrainedModel(name, run_dir, seconds, load_run(run_dir, device=ctx.device))


def draw_samples(ctx: Context, loaded: LoadedModel, num_samples: int, sampler_steps: int,
                 advance: Callable[[int], None] | None = None) -> torch.Tensor:
    """(N, *shape) samples on CPU: ancestral sampler on ``sampler_steps`` respaced steps (all
    T = 1000 steps is the plain DDPM sampler), seeds ``sample_seeds(ctx.seed, N)``."""
    sampler = sampler_config(sampler_steps, loaded.diffusion.num_timesteps)
    with torch.no_grad():
        return sample_batched(loaded.model, loaded.diffusion, loaded.data_shape,
                              sample_seeds(ctx.seed, num_samples), num_samples, sampler,
                              device=ctx.device,
                              progress=(lambda _: advance(1)) if advance else None)


def sampler_config(steps: int, num_timesteps: int) -> SamplerConfig:
    """``ddpm`` on all T steps, otherwise ``respaced`` ancestral on ``steps``."""
    return SamplerConfig("ddpm") if steps == num_timesteps else SamplerConfig("respaced", steps)


def score(ctx: Context, loaded: LoadedModel, samples: torch.Tensor,
          metrics: Sequence[str]) -> dict[str, Any]:
    """Evaluator metrics of ``samples`` against the model's clean data, flattened to
    ``{label: value or None, "num_nonfinite": int, "num_evaluated": int}``."""
    result = make_metric_fn(ctx.reference(loaded), metrics)(samples)
    protocol = result.pop("protocol")
    return {**result, "num_nonfinite": protocol["num_nonfinite"],
            "num_evaluated": protocol["num_evaluated"]}
