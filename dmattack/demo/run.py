"""Running `dmattack demo` (:func:`run_demo`) and its checks before any work
(:func:`check_demo`); the package docstring says what the demo is."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError, OutputError
from ..core.io import provenance, write_json
from ..training.train import resolve_device
from . import controls, experiments, robustness
from .aggregate import aggregate_sections, combine_claims
from .claims import assess
from .common import Context, StageProgress
from .plan import DemoPlan, default_plan, quick_plan
from .pool import TaskPool
from .report import headline_rows, headline_title, write_report
from .sections import (  # the section table, light enough for the CLI
    DEFAULT_SECTIONS,
    QUICK_SECTIONS,
    SECTIONS,
    SHIPPED_UNETS,
    resolve_sections,
)

RESULTS = "results.json"


def _load() -> str:
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


MAX_SEED = 2**63 - 1  # the largest seed a training config takes (TrainConfig.seed)


def check_demo(out_dir: Path, train_images: bool = False, *, seeds: int = 1,
               sections: Sequence[str] | None = None, quick: bool = False, seed: int = 0
               ) -> None:
    """Raise a one-line error before any work (nothing is created) if ``out_dir`` is a
    non-empty folder (or not a folder), if the shipped digits U-Nets are missing (for the
    attacks section unless ``train_images``; always for the adaptive and purification
    sections), if ``seeds`` < 1, if a seed ``seed … seed+seeds−1`` is outside 0..2**63−1 or a
    section name is unknown."""
    out_dir = Path(out_dir)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds {seeds!r} is not an integer >= 1", "seeds")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED - seeds + 1:
        raise ConfigError(f"seed (--seed) = {seed!r} is invalid; allowed: an integer in "
                          f"0..{MAX_SEED - seeds + 1} (with --seeds {seeds})", "seed")
    names = resolve_sections(sections, quick)
    shipped = [n for n in SHIPPED_UNETS if n in names]
    if shipped:
        experiments.check_image_runs(f"the {' and '.join(shipped)} section(s) run on the "
                                     "shipped U-Nets; choose other sections with --section")
    elif "attacks" in names and not train_images:
        experiments.check_image_runs()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OutputError(errno.EEXIST, f"output folder {out_dir} is not empty; pass another "
                          "one or remove it")


def _run_sections(plan: DemoPlan, ctx: Context, names: tuple[str, ...],
                  train_images: bool) -> dict[str, Any]:
    """Every section of ``names`` for one seed (``ctx.seed``); results.json's ``sections``."""
    out: dict[str, Any] = {}
    models = samples = None
    if "subspace" in names:
        out["corrupted_subspace"], models, samples = experiments.corrupted_subspace(
            plan.subspace, ctx)
    if "toy" in names:
        out["toy_3d"] = experiments.toy_3d(plan.toy, ctx)
    if "attacks" in names:
        out["attacks"] = experiments.attack_curves(plan.attacks, ctx, models, train_images)
    if "steps" in names:
        out["sampling_steps"] = experiments.sampling_steps(plan.steps, plan.subspace, ctx,
                                                           models, samples)
    if "adaptive" in names:
        out["adaptive_attacks"] = robustness.adaptive_attacks(plan.adaptive, ctx, models)
    if "purification" in names:
        out["purification"] = robustness.purification(plan.purification, ctx)
    if "sweep" in names:
        out["corruption_sweep"] = controls.corruption_sweep(plan.sweep, ctx)
    if "compute" in names:
        out["compute_matched"] = controls.compute_matched(plan.compute, ctx)
    return out


def _prefixed(progress: StageProgress | None, prefix: str) -> StageProgress | None:
    if progress is None or not prefix:
        return progress
    return lambda label, done, total: progress(prefix + label, done, total)


def _combine_seeds(per_seed: list[dict[str, Any]], out_dir: Path
                   ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, float]]:
    """results.json's ``sections``, ``claims`` and ``timings`` from every seed's own: those of
    the one seed, or the sections' means ± std over the seeds (the sweep's heatmap redrawn
    from them), the claims with how many seeds agree and every seed's timings."""
    if len(per_seed) == 1:
        return per_seed[0]["sections"], per_seed[0]["claims"], per_seed[0]["timings"]
    sections_out = aggregate_sections([p["sections"] for p in per_seed])
    if "corruption_sweep" in sections_out:
        sweep = sections_out["corruption_sweep"]
        sweep["figures"] = {"heatmap": controls.sweep_figure(
            sweep, out_dir / "figures" / "sweep_fd_difference.png", out_dir, len(per_seed))}
    claims = combine_claims([p["claims"] for p in per_seed], assess(sections_out))
    timings = {f"seed {p['seed']}: {k}": v for p in per_seed for k, v in p["timings"].items()}
    return sections_out, claims, timings


def run_demo(out_dir: Path, *, quick: bool = False, seed: int = 0, device: str = "cpu",
             progress: StageProgress | None = None, train_images: bool = False,
             plan: DemoPlan | None = None, seeds: int = 1,
             sections: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the demo into ``out_dir`` (must be empty or absent); returns results.json's
    content. ``progress(stage_label, done, total)`` reports each stage's sub-steps.
    ``train_images`` retrains the two digits U-Nets instead of loading the shipped
    checkpoints; ``plan`` overrides the default / quick settings (its ``quick`` flag picks the
    default sections). ``sections``: names from :data:`SECTIONS` (default
    :data:`DEFAULT_SECTIONS`, with ``quick`` :data:`QUICK_SECTIONS`; see
    :func:`resolve_sections`).

    ``seeds`` > 1 repeats every section with training and sampling seeds ``seed``,
    ``seed + 1``, … (each into ``out_dir/seed-<s>/``): results.json's ``sections`` then hold
    every number as the mean over the seeds with its sample std (``std``), ``per_seed`` every
    seed's own sections, claims and timings, and each claim says how many seeds reached its
    verdict. With one seed the folder and results.json are those of a single run."""
    out_dir = Path(out_dir)
    plan = plan or (quick_plan() if quick else default_plan())
    names = resolve_sections(sections, plan.quick)
    check_demo(out_dir, train_images, seeds=seeds, sections=names, seed=seed)
    device = str(resolve_device(str(device)))
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    environment: dict[str, Any] = {"cpu_count": os.cpu_count(),
                                   "torch_threads": torch.get_num_threads(),
                                   "load_average_start": _load()}
    seed_list = list(range(seed, seed + seeds))
    per_seed = []
    with TaskPool.for_device(device) as pool:
        environment.update(pool.describe())
        for s in seed_list:
            multi = len(seed_list) > 1
            prefix = f"seed {s} ({s - seed + 1}/{seeds}) · " if multi else ""
            ctx = Context(out_dir / f"seed-{s}" if multi else out_dir, s, device, pool,
                          _prefixed(progress, prefix), root=out_dir)
            secs = _run_sections(plan, ctx, names, train_images)
            per_seed.append({"seed": s, "sections": secs, "claims": assess(secs),
                             "timings": ctx.timings})
    environment["load_average_end"] = _load()
    sections_out, claims, timings = _combine_seeds(per_seed, out_dir)
    timings["total"] = round(time.perf_counter() - start, 2)
    results = {
        "kind": "dmattack-demo", "quick": plan.quick, "seed": seed, "seeds": seed_list,
        "sections_run": list(names), "device": device, "train_images": train_images,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "environment": environment, "plan": plan.to_dict(), "sections": sections_out,
        "claims": claims, "timings": timings, "provenance": provenance(),
    }
    if len(per_seed) > 1:
        results["per_seed"] = per_seed
    write_json(out_dir / RESULTS, results)
    write_report(results, out_dir)
    if progress is not None:
        progress("report", 1, 1)
    return results


__all__ = ["DEFAULT_SECTIONS", "QUICK_SECTIONS", "RESULTS", "SECTIONS", "check_demo",
           "headline_rows", "headline_title", "resolve_sections", "run_demo"]
