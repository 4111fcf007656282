"""The demo's units of work, run by :class:`~dmattack.demo.pool.TaskPool` (top-level functions
so spawned workers can import them). Each takes ``report(n)`` for progress."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..attacks import AttackSpec
from ..core.seeding import sample_seeds
from ..diffusion.sampling import SamplerConfig, sample_batched
from ..evaluation.attack_eval import run_curve
from ..evaluation.metrics import clean_dataset, make_metric_fn, reference_for
from ..runs.checkpoints import load_run
from ..training.train import TrainConfig, train

Report = Callable[[int], None]
REPORT_EVERY = 10  # training steps per progress message


def sampler_config(steps: int, num_timesteps: int) -> SamplerConfig:
    """``ddpm`` on all T steps, otherwise ``respaced`` ancestral on ``steps``; x̂_0 clipping
    follows the data (on for the digits U-Nets' images, off for vectors)."""
    return SamplerConfig("ddpm") if steps == num_timesteps else SamplerConfig("respaced", steps)


def train_task(cfg: TrainConfig, run_dir: str, *, report: Report) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``; ``report`` counts optimiser steps. Returns the wall time
    (s), ``step_seconds``: the mean wall time (s) of an optimiser step after the first (None
    with fewer than 2 steps), and ``error``: None, or the message of a non-finite loss."""
    start, done = time.perf_counter(), 0
    first: tuple[int, float] | None = None  # (step, time) of the first and last callbacks
    last: tuple[int, float] | None = None

    def on_step(step: int, _: dict[str, float]) -> None:
        nonlocal done, first, last
        last = (step, time.perf_counter())
        first = first or last
        if step - done >= REPORT_EVERY or step == cfg.steps:
            report(step - done)
            done = step

    try:
        train(cfg, run_dir, callback=on_step)
        error = None
    except FloatingPointError as e:
        report(cfg.steps - done)
        error = str(e).split(";")[0]
    step_seconds = ((last[1] - first[1]) / (last[0] - first[0])
                    if first and last and last[0] > first[0] else None)
    return {"seconds": round(time.perf_counter() - start, 2), "step_seconds": step_seconds,
            "error": error}


def sample_task(run_dir: str, num_samples: int, sampler_steps: int, seed: int, num_paths: int,
                device: str, *, report: Report) -> tuple[torch.Tensor, torch.Tensor | None]:
    """EMA samples (N, *shape) of a run, seeds ``sample_seeds(seed, N)``, and (if
    ``num_paths``) the states of the first ``num_paths`` chains before every reverse step
    plus the final sample, (K + 1, num_paths, *shape). ``report`` counts reverse steps."""
    loaded = load_run(run_dir, device=device)
    states: list[torch.Tensor] = []

    def hook_factory(_: Sequence[int]):
        def hook(x_t: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
            states.append(x_t[:num_paths].detach().cpu().clone())
            return x_t
        return hook

    sampler = sampler_config(sampler_steps, loaded.diffusion.num_timesteps)
    with torch.no_grad():
        x = sample_batched(loaded.model, loaded.diffusion, loaded.data_shape,
                           sample_seeds(seed, num_samples), num_samples, sampler,
                           hook_factory if num_paths else None, device,
                           lambda _: report(1))
    paths = torch.stack([*states, x[:num_paths]]) if num_paths else None
    return x, paths


def curve_task(run_dirs: Sequence[str], specs: Sequence[AttackSpec], num_samples: int, seed: int,
               sampler_steps: int, metrics: Sequence[str], metric: str, out_dir: str,
               device: str, *, report: Report) -> dict[str, Any]:
    """:func:`~dmattack.evaluation.attack_eval.run_curve` of the runs (scored against the first
    run's
    clean data); ``report`` counts curve points. Returns the curve with its wall time."""
    start = time.perf_counter()
    models = [load_run(d, device=device) for d in run_dirs]
    metric_fn = make_metric_fn(reference_for(clean_dataset(models[0])), metrics)
    curve = run_curve(models, specs, num_samples=num_samples, seed=seed,
                      sampler=sampler_config(sampler_steps, models[0].diffusion.num_timesteps),
                      batch_size=num_samples, metric_fn=metric_fn, device=device,
                      out_dir=Path(out_dir), metric=metric, progress=lambda *_: report(1))
    curve["seconds"] = round(time.perf_counter() - start, 2)
    curve["csv"], curve["png"] = str(Path(out_dir) / "curve.csv"), str(Path(out_dir) / "curve.png")
    return curve


def purify_task(config: Any, out_dir: str, device: str, *, report: Report) -> dict[str, Any]:
    """:func:`~dmattack.purification.run_purification` of ``config`` (a PurifyConfig) with the
    shipped DDPM and Robust_adv digits U-Nets as purifiers; ``report`` counts finished units
    (one purifier on one batch, clean or under one attack). Returns the result with its wall
    time (``wall_seconds``)."""
    from ..purification import run_purification
    from .purification import RUNS

    start = time.perf_counter()
    result = run_purification(config, [RUNS["ddpm"], RUNS["robust-adv"]], out_dir, device,
                              progress=lambda *_: report(1))
    result["wall_seconds"] = round(time.perf_counter() - start, 2)
    return result
