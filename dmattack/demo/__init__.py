"""`dmattack demo`: everything the toolkit is for, on data with a known distribution, in
minutes on a CPU (sections: corrupted digits-subspace, 3-D scatter plots, attack curves,
fewer sampling steps). Writes ``report.md``, PNG figures and ``results.json``."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import OutputError
from ..io import provenance, write_json
from ..train import resolve_device
from . import experiments
from .claims import assess
from .common import Context, Progress
from .plan import DemoPlan, default_plan, quick_plan
from .pool import TaskPool
from .report import headline_rows, write_report

RESULTS = "results.json"


def _load() -> str:
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def check_run(out_dir: Path, train_images: bool = False) -> None:
    """Raise a one-line error before any work if ``out_dir`` is a non-empty folder (or not a
    folder), or if the shipped digits U-Nets are missing without ``train_images``."""
    out_dir = Path(out_dir)
    if not train_images:
        experiments.check_image_runs()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OutputError(errno.EEXIST, f"output folder {out_dir} is not empty; pass another "
                          "one or remove it")


def run_demo(out_dir: Path, *, quick: bool = False, seed: int = 0, device: str = "cpu",
             progress: Progress | None = None, train_images: bool = False,
             plan: DemoPlan | None = None) -> dict[str, Any]:
    """Run every section into ``out_dir`` (must be empty or absent); returns results.json's
    content. ``progress(stage_label, done, total)`` reports each stage's sub-steps.
    ``train_images`` retrains the two digits U-Nets instead of loading the shipped
    checkpoints; ``plan`` overrides the default / quick settings."""
    out_dir = Path(out_dir)
    check_run(out_dir, train_images)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = plan or (quick_plan() if quick else default_plan())
    device = str(resolve_device(str(device)))
    start = time.perf_counter()
    environment: dict[str, Any] = {"cpu_count": os.cpu_count(),
                                   "torch_threads": torch.get_num_threads(),
                                   "load_average_start": _load()}
    with TaskPool.for_device(device) as pool:
        environment.update(pool.describe())
        ctx = Context(out_dir, seed, device, pool, progress)
        subspace, models, samples = experiments.corrupted_subspace(plan.subspace, ctx)
        sections = {"corrupted_subspace": subspace,
                    "toy_3d": experiments.toy_3d(plan.toy, ctx),
                    "attacks": experiments.attack_curves(plan.attacks, ctx, models, train_images),
                    "sampling_steps": experiments.sampling_steps(plan.steps, plan.subspace, ctx,
                                                                 models, samples)}
    environment["load_average_end"] = _load()
    ctx.timings["total"] = round(time.perf_counter() - start, 2)
    results = {
        "kind": "dmattack-demo", "quick": plan.quick, "seed": seed, "device": device,
        "train_images": train_images, "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "environment": environment, "plan": plan.to_dict(), "sections": sections,
        "claims": assess(sections), "timings": ctx.timings, "provenance": provenance(),
    }
    write_json(out_dir / RESULTS, results)
    write_report(results, out_dir)
    if progress is not None:
        progress("report", 1, 1)
    return results


__all__ = ["RESULTS", "check_run", "headline_rows", "run_demo"]
