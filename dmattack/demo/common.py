"""Shared plumbing of the demo sections: progress stages and timings, the task pool, training
a batch of run folders, and scoring samples with the library's evaluators."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..evaluation.metrics import Reference, clean_dataset, make_metric_fn, reference_for
from ..runs.checkpoints import LoadedModel, load_run
from ..training.objectives import ObjectiveConfig, options_class
from ..training.train import TrainConfig
from .plan import TrainSettings
from .pool import TaskPool
from .tasks import sample_task, sampler_config, train_task

StageProgress = Callable[[str, int, int], None]
"""``progress(stage_label, done, total)``: called as sub-steps of a stage complete."""

# relative cost of one training step (ddpm = 1), to start the longest runs first
STEP_COST = {"ddpm": 1.0, "robust-rand": 1.5, "robust-adv": 2.2, "invariance": 2.2}


@dataclass
class Context:
    """What every section needs: output folder, seed, device, task pool, progress, timings.
    ``root`` is the report folder that recorded paths are relative to (``out_dir`` itself,
    or its parent when each seed of a multi-seed run writes into its own subfolder)."""

    out_dir: Path
    seed: int
    device: str
    pool: TaskPool
    progress: StageProgress | None = None
    timings: dict[str, float] = field(default_factory=dict)
    _references: dict[str, Reference] = field(default_factory=dict)
    root: Path | None = None

    def rel(self, path: Path) -> str:
        """``path`` relative to the report folder, POSIX style."""
        return Path(path).relative_to(self.root or self.out_dir).as_posix()

    @contextmanager
    def stage(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        """Report ``label`` at 0/total, yield ``advance(n)``; record the stage's wall time (s)."""
        done = 0

        def advance(n: int = 1) -> None:
            nonlocal done
            done = min(total, done + n)
            if self.progress is not None:
                self.progress(label, done, total)

        advance(0)
        start = time.perf_counter()
        yield advance
        self.timings[label] = round(time.perf_counter() - start, 2)
        advance(total - done)

    def reference(self, loaded: LoadedModel) -> Reference:
        """The clean reference data of a model (cached per data description)."""
        key = repr(sorted(loaded.config["data"].items()))
        if key not in self._references:
            self._references[key] = reference_for(clean_dataset(loaded))
        return self._references[key]


@dataclass
class TrainedModel:
    """A trained demo model: run folder, training wall time (s), and the loaded EMA model
    (None if training stopped on a non-finite loss; ``error`` then says where);
    ``step_seconds``: mean wall time of one optimiser step after the first (s)."""

    name: str
    run_dir: Path
    seconds: float
    loaded: LoadedModel | None
    error: str | None = None
    step_seconds: float | None = None


def train_config(dataset: str, method: str, settings: TrainSettings, *, seed: int, device: str,
                 num_data: int | None, corrupt_mode: str = "gaussian",
                 corrupt_fraction: float = 0.0, corrupt_sigma: float = 0.2) -> TrainConfig:
    """The TrainConfig of one demo model (checkpoint only at the end, no preview samples)."""
    values = {"lam": settings.lam, "lambda_scaling": settings.lambda_scaling}  # those it has
    objective = ObjectiveConfig(method, **{k: v for k, v in values.items()
                                           if k in options_class(method).__dataclass_fields__})
    return TrainConfig(
        dataset=dataset, num_data=num_data, corrupt_mode=corrupt_mode,
        corrupt_fraction=corrupt_fraction, corrupt_sigma=corrupt_sigma, preset=settings.preset,
        objective=objective, steps=settings.steps, batch_size=settings.batch_size,
        lr=settings.lr, warmup=settings.warmup, seed=seed, device=device,
        checkpoint_every=settings.steps, num_preview=0, log_every=max(1, settings.steps // 20))


def train_all(ctx: Context, jobs: dict[str, TrainConfig],
              advance: Callable[[int], None]) -> dict[str, TrainedModel]:
    """Train every ``{name: config}`` into ``out_dir/runs/name`` on the pool (costliest
    first); ``advance`` counts optimiser steps."""
    order = sorted(jobs, key=lambda n: -STEP_COST.get(jobs[n].objective.method, 1.0)
                   * jobs[n].steps)
    results = ctx.pool.map(train_task, [(jobs[n], str(ctx.out_dir / "runs" / n)) for n in order],
                           advance)
    out = {}
    for name, res in zip(order, results, strict=True):
        run_dir = ctx.out_dir / "runs" / name
        loaded = None if res["error"] else load_run(run_dir, device=ctx.device)
        out[name] = TrainedModel(name, run_dir, res["seconds"], loaded, res["error"],
                                 res["step_seconds"])
    return {n: out[n] for n in jobs}


def sample_all(ctx: Context, models: dict[Any, TrainedModel], num_samples: int, steps: int,
               num_paths: int, advance: Callable[[int], None]
               ) -> dict[Any, tuple[torch.Tensor, torch.Tensor | None]]:
    """Samples (and trajectories, see :func:`~dmattack.demo.tasks.sample_task`) of every model
    that trained, seeds ``sample_seeds(ctx.seed, num_samples)``, on the pool."""
    keys = [k for k, tm in models.items() if tm.loaded is not None]
    results = ctx.pool.map(sample_task, [(str(models[k].run_dir), num_samples, steps, ctx.seed,
                                          num_paths, ctx.device) for k in keys], advance)
    return dict(zip(keys, results, strict=True))


def score(reference: Reference, samples: torch.Tensor, metrics: Sequence[str]) -> dict[str, Any]:
    """Evaluator metrics of ``samples`` (N, *shape) against the clean ``reference``, flattened
    to ``{label: value or None, "num_nonfinite": int, "num_evaluated": int}``. Non-finite rows
    are dropped by the evaluator (metrics on the finite rows); None only when no row is
    finite."""
    result = make_metric_fn(reference, metrics)(samples)
    protocol = result.pop("protocol")
    return {**result, "num_nonfinite": protocol["num_nonfinite"],
            "num_evaluated": protocol["num_evaluated"]}


def seeds_text(seed: int, n: int) -> str:
    """How a section's per-sample seeds are drawn, as recorded in its settings."""
    return f"dmattack.core.seeding.sample_seeds({seed}, {n})"


def section_settings(ctx: Context, plan: Any, metrics: Any, **extra: Any) -> dict[str, Any]:
    """A trained-models section's recorded settings: the fields of its ``plan`` (a dataclass
    with ``sampler_steps`` and ``num_samples``), ``extra``, the sampler on the 1000-step chain,
    the per-sample and training seeds, and the ``metrics`` scored."""
    return {**asdict(plan), **extra,
            "sampler": sampler_config(plan.sampler_steps, 1000).describe(1000),
            "seeds": seeds_text(ctx.seed, plan.num_samples), "training_seed": ctx.seed,
            "metrics": metrics}
