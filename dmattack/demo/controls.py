"""The reviewers' controls as demo sections: a corruption sweep (fraction × σ, DDPM vs
Robust_adv) and a compute-matched DDPM (as many optimiser steps as fit in Robust_adv's
measured training time). Each returns its JSON-able section record."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from . import figures
from .common import (
    Context,
    TrainedModel,
    sample_all,
    score,
    section_settings,
    train_all,
    train_config,
)
from .effects import metric_scorer, set_effects
from .plan import ComputePlan, SweepPlan

SWEEP_METRICS = ("fd-exact", "subspace", "variance-ratio")
FD = "FD (exact)"
DDPM, ADV = "ddpm", "robust-adv"


def _row(ctx: Context, tm: TrainedModel, x: Any, metrics: tuple[str, ...]) -> dict[str, Any]:
    """Scores of one model's samples (or its training failure) and its training times."""
    times = {"train_seconds": tm.seconds, "step_seconds": tm.step_seconds}
    if tm.loaded is None:
        return {"num_nonfinite": 0, "num_evaluated": 0, "train_error": tm.error, **times}
    return {**score(ctx.reference(tm.loaded), x, metrics), **times}


# --------------------------------------------------------------------------- sweep
def _cell(p: float, s: float | None) -> str:
    return f"p{p:g}" + ("" if s is None else f"-s{s:g}")


def sweep_differences(rows: list[dict[str, Any]], fractions: tuple[float, ...],
                      sigmas: tuple[float, ...], effects: dict[str, Any] | None = None
                      ) -> list[dict[str, Any]]:
    """One record per (fraction, σ) cell: FD of DDPM and of Robust_adv and their difference
    FD(DDPM) − FD(Robust_adv) (positive = Robust helps; None if either is missing), with its
    95% interval ``FD difference ci95`` and ``n`` from ``effects`` (keyed like
    :func:`sweep_effects`; None without). Rows of fraction 0 have σ None and serve every σ."""
    fd = {(r["fraction"], r["sigma"], r["method"]): r.get(FD) for r in rows}
    out = []
    for s in sigmas:
        for p in fractions:
            key = (p, s if p > 0 else None)
            a, b = fd.get((*key, DDPM)), fd.get((*key, ADV))
            eff = (effects or {}).get(_cell(*key)) or {}
            out.append({"fraction": p, "sigma": s, "FD DDPM": a, "FD Robust_adv": b,
                        "FD difference": None if a is None or b is None else a - b,
                        "FD difference ci95": eff.get("ci95"), "n": eff.get("n")})
    return out


def sweep_effects(ctx: Context, models: dict[Any, TrainedModel],
                  drawn: dict[Any, Any]) -> dict[str, Any]:
    """Per cell ``"p<fraction>[-s<σ>]"``: FD(DDPM) − FD(Robust_adv) recomputed on resampled
    rows, the same rows in both models (:func:`~dmattack.demo.effects.set_effects`)."""
    arms = {f"{_cell(p, s)}/{m}": (ctx.reference(tm.loaded), drawn[p, s, m][0])
            for (p, s, m), tm in models.items() if tm.loaded is not None and (p, s, m) in drawn}
    cells = dict.fromkeys(_cell(p, s) for p, s, _ in models)
    contrasts = {c: (FD, ((1.0, f"{c}/{DDPM}"), (-1.0, f"{c}/{ADV}")), 0.0) for c in cells}
    return set_effects(metric_scorer({k: ref for k, (ref, _) in arms.items()}, contrasts),
                       {k: x for k, (_, x) in arms.items()}, contrasts, seed=ctx.seed)


def sweep_figure(section: dict[str, Any], path: Path, root: Path, num_seeds: int = 1) -> str:
    """Draw the section's heatmap of FD(DDPM) − FD(Robust_adv) at ``path`` (cells: the
    difference, ± its std over the seeds when ``num_seeds`` > 1); returns the path relative
    to ``root``."""
    st = section["settings"]
    title = (f"digits-subspace: FD(DDPM) − FD(Robust_adv) (> 0: Robust helps), "
             f"{st['train']['steps']} training steps"
             + (f", mean ± std over {num_seeds} seeds" if num_seeds > 1 else ""))
    figures.sweep_heatmap(section["differences"], st["fractions"], st["sigmas"], path, title)
    return Path(path).relative_to(root).as_posix()


def corruption_sweep(plan: SweepPlan, ctx: Context) -> dict[str, Any]:
    """DDPM and Robust_adv on digits-subspace with ``fraction`` of the samples + N(0, σ²), for
    every fraction × σ of the plan; exact FD etc. against the true distribution. Fraction 0
    (clean data, σ unused) is trained once per method."""
    conditions = list(dict.fromkeys((p, s if p > 0 else None)
                                    for p in plan.fractions for s in plan.sigmas))
    cfgs = {(p, s, m): train_config("digits-subspace", m, plan.train, seed=ctx.seed,
                                    device=ctx.device, num_data=plan.num_data,
                                    corrupt_fraction=p,
                                    corrupt_sigma=plan.sigmas[0] if s is None else s)
            for p, s in conditions for m in plan.methods}

    def name(p: float, s: float | None, m: str) -> str:
        return f"sweep-p{p:g}" + ("" if s is None else f"-s{s:g}") + f"-{m}"

    with ctx.stage(f"sweep: train {len(cfgs)} models", len(cfgs) * plan.train.steps) as advance:
        trained = train_all(ctx, {name(*k): cfg for k, cfg in cfgs.items()}, advance)
    models = {k: trained[name(*k)] for k in cfgs}
    with ctx.stage("sweep: sample", len(cfgs) * plan.sampler_steps) as advance:
        drawn = sample_all(ctx, models, plan.num_samples, plan.sampler_steps, 0, advance)
    rows = [{"fraction": p, "sigma": s, "method": m,
             **_row(ctx, tm, drawn.get((p, s, m), (None,))[0], SWEEP_METRICS)}
            for (p, s, m), tm in models.items()]
    section = {
        "title": "Corruption sweep: where does Robust_adv start to help?",
        "settings": section_settings(ctx, plan, list(SWEEP_METRICS),
                                     dataset="digits-subspace"),
        "rows": rows,
        "differences": sweep_differences(rows, plan.fractions, plan.sigmas,
                                         sweep_effects(ctx, models, drawn)),
        "runs": {name(*k): ctx.rel(tm.run_dir) for k, tm in models.items()},
    }
    path = ctx.out_dir / "figures" / "sweep_fd_difference.png"
    section["figures"] = {"heatmap": sweep_figure(section, path, ctx.root or ctx.out_dir)}
    return section


# --------------------------------------------------------------------------- compute
def matched_steps(budget_seconds: float, step_seconds: float) -> int:
    """Optimiser steps of ``step_seconds`` each that fit in ``budget_seconds`` (at least 1)."""
    return max(1, int(budget_seconds / step_seconds))


def compute_matched(plan: ComputePlan, ctx: Context) -> dict[str, Any]:
    """Robust_adv vs DDPM on corrupted digits-subspace, DDPM also trained for as many steps as
    fit in Robust_adv's measured training time. The three trainings run one after the other,
    each alone on the pool (a training next to another one measured 2-3× slower per step on a
    loaded 2-core machine): Robust_adv first (its budget: its optimiser-step time × its steps,
    without the start-up and checkpoint costs every run pays, which in a fresh worker process
    include seconds of library warm-up), then DDPM with the same steps (its time per step),
    then the compute-matched DDPM for ``matched_steps(budget, DDPM's step time)`` steps."""
    def cfg(method: str, steps: int):
        return train_config("digits-subspace", method, replace(plan.train, steps=steps),
                            seed=ctx.seed, device=ctx.device, num_data=plan.num_data,
                            corrupt_fraction=plan.corrupt_fraction,
                            corrupt_sigma=plan.corrupt_sigma)

    steps = plan.train.steps
    with ctx.stage("compute: train Robust_adv (timed)", steps) as advance:
        adv = train_all(ctx, {"compute-robust-adv": cfg(ADV, steps)},
                        advance)["compute-robust-adv"]
    with ctx.stage("compute: train DDPM (timed)", steps) as advance:
        ddpm = train_all(ctx, {"compute-ddpm": cfg(DDPM, steps)}, advance)["compute-ddpm"]
    if ddpm.step_seconds is None or adv.step_seconds is None:
        raise ConfigError(f"the compute section needs at least 2 training steps, not {steps}",
                          "compute.train.steps")
    budget = adv.step_seconds * steps
    k = matched_steps(budget, ddpm.step_seconds)
    with ctx.stage(f"compute: train the compute-matched DDPM ({k} steps)", k) as advance:
        matched = train_all(ctx, {"compute-ddpm-matched": cfg(DDPM, k)},
                            advance)["compute-ddpm-matched"]
    entries = {(DDPM, "plan steps"): (ddpm, steps), (DDPM, "compute-matched"): (matched, k),
               (ADV, "plan steps"): (adv, steps)}
    with ctx.stage("compute: sample", len(entries) * plan.sampler_steps) as advance:
        drawn = sample_all(ctx, {key: tm for key, (tm, _) in entries.items()}, plan.num_samples,
                           plan.sampler_steps, 0, advance)
    rows = [{"method": m, "training": t, "train_steps": n,
             "step_time_total": None if tm.step_seconds is None else tm.step_seconds * n,
             **_row(ctx, tm, drawn.get((m, t), (None,))[0], SWEEP_METRICS)}
            for (m, t), (tm, n) in entries.items()]
    arms = {f"{m}, {t}": (ctx.reference(tm.loaded), drawn[m, t][0])
            for (m, t), (tm, _) in entries.items() if tm.loaded is not None and (m, t) in drawn}
    contrasts = {f"{metric}: robust-adv − compute-matched ddpm": (metric, (
        (1.0, f"{ADV}, plan steps"), (-1.0, f"{DDPM}, compute-matched")), 0.0)
        for metric in (FD, "subspace error")}
    return {
        "title": "Compute-matched DDPM: is Robust_adv's win just more compute?",
        "effects": set_effects(metric_scorer({k: ref for k, (ref, _) in arms.items()},
                                             contrasts),
                               {k: x for k, (_, x) in arms.items()}, contrasts, seed=ctx.seed),
        "settings": {**section_settings(ctx, plan, list(SWEEP_METRICS),
                                        dataset="digits-subspace"),
                     "matching": "Robust_adv, then a DDPM of the same step count, then the "
                                 "compute-matched DDPM train one at a time; compute-matched "
                                 "steps = ⌊Robust_adv's optimiser-step time × its steps / that "
                                 "DDPM's mean optimiser-step time⌋ (wall time of the steps "
                                 "only, without the start-up and checkpoint costs every run "
                                 "pays)"},
        "rows": rows,
        "runs": {f"{m}, {t}": ctx.rel(tm.run_dir) for (m, t), (tm, _) in entries.items()},
    }


__all__ = ["compute_matched", "corruption_sweep", "matched_steps", "sweep_differences",
           "sweep_figure"]
