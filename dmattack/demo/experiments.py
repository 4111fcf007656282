"""The four demo sections, one function each. Each returns its JSON-able section record
(settings, metrics, figures relative to the output folder) and what later sections reuse."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..attacks import AttackSpec
from ..core.checkout import CHECKPOINTS
from ..core.errors import MissingResourceError
from ..diffusion.gaussian import GaussianDiffusion, respace
from ..evaluation.attack_eval import curve_specs
from ..evaluation.damage import PIXEL
from ..training.train import build_data
from . import figures
from .common import (
    Context,
    TrainedModel,
    sample_all,
    score,
    section_settings,
    seeds_text,
    train_all,
    train_config,
)
from .effects import metric_scorer, set_effects
from .plan import AttackSectionPlan, Corruption, StepsPlan, SubspacePlan, ToyPlan
from .tasks import curve_task, sample_task

SUBSPACE_METRICS = ("subspace", "fd-exact", "variance-ratio")
TOY_METRICS = {"oblique-plane": ("fd-exact", "plane", "variance-ratio"),
               "3-gaussians": ("fd-exact", "loglik", "variance-ratio")}
TOY_PRIMARY_LABEL = {"oblique-plane": "plane distance", "3-gaussians": "loglik (nats)"}
CURVE_METRICS = {"subspace": (("fd-exact", "variance-ratio"), "FD (exact)"),
                 "images": (("kid", "variance-ratio"), "KID (digits-cnn)")}
"""The set metric of each curve kind. The digits use KID: their 64-D digits-cnn features make
an FID from the demo's 16–96 digits mostly estimator bias (N ≤ d: singular covariance,
docs/method.md §8), while KID is unbiased at any N; the verdicts rest on the paired damage."""
SUBSPACE_CONTRASTS = (
    *((("corrupted", a, b, m) for a, b in (("robust-adv", "ddpm"), ("robust-rand", "ddpm"),
                                           ("robust-adv", "robust-rand"))
       for m in ("subspace error", "subspace PSNR (dB)", "FD (exact)"))),
    *((c, "invariance", "ddpm", "FD (exact)") for c in ("corrupted", "clean")),
    ("clean", "robust-adv", "ddpm", "variance ratio"))
"""(data, A, B, metric) of the set-metric differences A − B that section 1's claims check."""
ATTACKED = ("ddpm", "robust-adv")
METHOD_ORDER = ("fgsm", "pgd", "random")
IMAGE_RUNS = {m: f"digits-{m}" for m in ATTACKED}

Key = tuple[str, str]  # (data condition, method)


def _failed_row(tm: TrainedModel) -> dict[str, Any]:
    return {"num_nonfinite": 0, "num_evaluated": 0, "train_error": tm.error,
            "train_seconds": tm.seconds}


# --------------------------------------------------------------------------- section 1
def corrupted_subspace(plan: SubspacePlan, ctx: Context
                       ) -> tuple[dict[str, Any], dict[Key, TrainedModel], dict[Key, torch.Tensor]]:
    """Train every method on corrupted and on clean digits-subspace; score samples against the
    true distribution. Returns (section, models by key, samples by key)."""
    conditions = {"corrupted": plan.corrupt_fraction, "clean": 0.0}
    cfgs = {(c, m): train_config("digits-subspace", m, plan.train, seed=ctx.seed,
                                 device=ctx.device, num_data=plan.num_data, corrupt_fraction=f,
                                 corrupt_sigma=plan.corrupt_sigma)
            for c, f in conditions.items() for m in plan.methods}
    with ctx.stage(f"1 digits-subspace: train {len(cfgs)} models",
                   len(cfgs) * plan.train.steps) as advance:
        trained = train_all(ctx, {f"subspace-{c}-{m}": cfg for (c, m), cfg in cfgs.items()},
                            advance)
    models = {(c, m): trained[f"subspace-{c}-{m}"] for c, m in cfgs}

    with ctx.stage("1 digits-subspace: sample", len(cfgs) * plan.sampler_steps) as advance:
        drawn = sample_all(ctx, models, plan.num_samples, plan.sampler_steps, 0, advance)
    samples = {k: x for k, (x, _) in drawn.items()}
    rows = []
    for key, tm in models.items():
        row = {"data": key[0], "method": key[1]}
        if tm.loaded is None:
            rows.append({**row, **_failed_row(tm)})
        else:
            rows.append({**row, **score(ctx.reference(tm.loaded), samples[key],
                                        SUBSPACE_METRICS), "train_seconds": tm.seconds})
    ref = ctx.reference(next(tm.loaded for tm in models.values() if tm.loaded is not None))
    noisy = build_data(cfgs["corrupted", plan.methods[0]]).tensor()
    truth = ref.truth.sample(plan.num_samples, torch.Generator().manual_seed(ctx.seed)).float()
    references = [
        {"data": "corrupted", "method": "training data itself",
         **score(ref, noisy, SUBSPACE_METRICS)},
        {"data": "clean", "method": "true distribution (exact draws)",
         **score(ref, truth, SUBSPACE_METRICS)},
    ]
    figs = {}
    for cond in conditions:
        panels = [("true distribution", truth)]
        panels += [("training data", noisy)] if cond == "corrupted" else []
        panels += [(m, samples[cond, m]) for m in plan.methods if (cond, m) in samples]
        figs[cond] = ctx.rel(figures.digit_grids(
            panels, ctx.out_dir / "figures" / f"subspace_{cond}_samples.png",
            f"digits-subspace samples, models trained on {cond} data"))
    with ctx.stage("1 digits-subspace: bootstrap intervals", 1):
        effects = subspace_effects(ctx, models, samples)
    section = {
        "title": "Corrupted training data: digits-subspace",
        "effects": effects,
        "settings": section_settings(ctx, plan, list(SUBSPACE_METRICS),
                                     dataset="digits-subspace"),
        "rows": rows,
        "references": references,
        "figures": figs,
        "runs": {f"{c}/{m}": ctx.rel(tm.run_dir) for (c, m), tm in models.items()},
    }
    return section, models, samples


def subspace_effects(ctx: Context, models: dict[Key, TrainedModel],
                     samples: dict[Key, torch.Tensor]) -> dict[str, Any]:
    """``"<data>: <metric>: <A> − <B>"`` for :data:`SUBSPACE_CONTRASTS` and ``"clean:
    variance ratio: robust-adv"``, each ``{"value", "ci95", "n", …}``: the set metric
    recomputed on resampled rows, the same rows in every model (paired by seed;
    :func:`~dmattack.demo.effects.set_effects`)."""
    arms = {f"{c}/{m}": samples[c, m] for (c, m), tm in models.items()
            if tm.loaded is not None and (c, m) in samples}
    refs = {f"{c}/{m}": ctx.reference(tm.loaded) for (c, m), tm in models.items()
            if tm.loaded is not None}
    contrasts = {f"{c}: {metric}: {a} − {b}": (metric, ((1.0, f"{c}/{a}"), (-1.0, f"{c}/{b}")),
                                                 0.0)
                 for c, a, b, metric in SUBSPACE_CONTRASTS}
    contrasts["clean: variance ratio: robust-adv"] = ("variance ratio",
                                                      ((1.0, "clean/robust-adv"),), 0.0)
    return set_effects(metric_scorer(refs, contrasts), arms, contrasts, seed=ctx.seed)


# --------------------------------------------------------------------------- section 2
def _corruption_text(corr: Corruption) -> str:
    if corr.mode == "gaussian":
        return f"{corr.fraction:.0%} of samples + N(0, {corr.sigma:g}²)"
    return f"{corr.fraction:.0%} of samples replaced by uniform points in the data's box"


def toy_3d(plan: ToyPlan, ctx: Context) -> dict[str, Any]:
    """3-D sets with inlier noise and with outliers: train, sample, score; scatter plots of
    generations and of a few chains' trajectories."""
    cfgs = {(d, c, m): train_config(d, m, plan.train, seed=ctx.seed, device=ctx.device,
                                    num_data=plan.num_data, corrupt_mode=c.mode,
                                    corrupt_fraction=c.fraction, corrupt_sigma=c.sigma)
            for d in plan.datasets for c in plan.corruptions for m in plan.methods}
    with ctx.stage(f"2 3-D data: train {len(cfgs)} models",
                   len(cfgs) * plan.train.steps) as advance:
        trained = train_all(ctx, {f"{d}-{c.mode}-{m}": cfg for (d, c, m), cfg in cfgs.items()},
                            advance)
    models = {k: trained[f"{k[0]}-{k[1].mode}-{k[2]}"] for k in cfgs}
    with ctx.stage("2 3-D data: sample", len(cfgs) * plan.sampler_steps) as advance:
        drawn = sample_all(ctx, models, plan.num_samples, plan.sampler_steps,
                            plan.num_trajectories, advance)

    rows: list[dict[str, Any]] = []
    figs: dict[str, str] = {}
    arms: dict[str, tuple[Any, torch.Tensor]] = {}  # "<dataset>/<corruption>/<method>"
    for d in plan.datasets:
        for c in plan.corruptions:
            data = build_data(cfgs[d, c, plan.methods[0]])
            noisy, clean = data.tensor(), getattr(data, "base", data).tensor()
            clouds, paths, ref = [], [], None
            for m in plan.methods:
                tm = models[d, c, m]
                row = {"dataset": d, "corruption": c.label, "method": m}
                if tm.loaded is None:
                    rows.append({**row, **_failed_row(tm)})
                    continue
                ref = ctx.reference(tm.loaded)
                x, traj = drawn[d, c, m]
                arms[f"{d}/{c.label}/{m}"] = (ref, x)
                clouds.append((m, x))
                paths.append((m, traj))
                rows.append({**row, **score(ref, x, TOY_METRICS[d]), "train_seconds": tm.seconds})
            if ref is not None:
                rows.append({"dataset": d, "corruption": c.label,
                             "method": "training data itself", **score(ref, noisy, TOY_METRICS[d])})
            path = figures.toy_scatter(d, clean, noisy, clouds, paths,
                                       ctx.out_dir / "figures" / f"toy_{d}_{c.mode}.png",
                                       f"{d}, {c.label} ({_corruption_text(c)})")
            figs[f"{d}, {c.label}"] = ctx.rel(path)
    with ctx.stage("2 3-D data: bootstrap intervals", 1):
        effects = toy_effects(arms, ctx.seed)
    return {
        "title": "3-D data with inlier noise and with outliers",
        "settings": section_settings(ctx, plan, {k: list(v) for k, v in TOY_METRICS.items()}),
        "rows": rows,
        "effects": effects,
        "figures": figs,
    }


def toy_effects(arms: dict[str, tuple[Any, torch.Tensor]], seed: int) -> dict[str, Any]:
    """``"<dataset>/<corruption>: <metric>: <A> − ddpm"`` (A = robust-adv on the set's
    primary metric, A = invariance on FD), set metrics recomputed on resampled rows,
    the same rows in both models (:func:`~dmattack.demo.effects.set_effects`)."""
    contrasts = {}
    for key in arms:
        d, c, m = key.split("/")
        metrics = ((TOY_PRIMARY_LABEL[d],) if m == "robust-adv"
                   else ("FD (exact)",) if m == "invariance" else ())
        contrasts.update({f"{d}/{c}: {metric}: {m} − ddpm":
                          (metric, ((1.0, key), (-1.0, f"{d}/{c}/ddpm")), 0.0)
                          for metric in metrics})
    return set_effects(metric_scorer({k: ref for k, (ref, _) in arms.items()}, contrasts),
                       {k: x for k, (_, x) in arms.items()}, contrasts, seed=seed)


# --------------------------------------------------------------------------- section 3
def check_image_runs(hint: str = "pass --train-images to train the digits U-Nets here") -> None:
    """Raise MissingResourceError (one line, ending in ``hint``) unless both shipped digits
    U-Net runs exist."""
    missing = [n for n in IMAGE_RUNS.values() if not (CHECKPOINTS / n / "config.json").is_file()]
    if missing:
        raise MissingResourceError(f"pretrained run {CHECKPOINTS / missing[0]} is missing; "
                                   + hint)


def _image_runs(plan: AttackSectionPlan, ctx: Context, train_images: bool
                ) -> tuple[list[str], str]:
    """Run folders of the two digits U-Nets (shipped, or trained now) and how they were made."""
    if not train_images:
        check_image_runs()
        return ([str(CHECKPOINTS / n) for n in IMAGE_RUNS.values()],
                "pretrained with the commands in checkpoints/README.md ("
                + ", ".join(f"checkpoints/{n}" for n in IMAGE_RUNS.values()) + ")")
    cfgs = {name: train_config("digits", method, plan.image_train, seed=ctx.seed,
                               device=ctx.device, num_data=None)
            for method, name in IMAGE_RUNS.items()}
    with ctx.stage("3 attacks: train the digits U-Nets", 2 * plan.image_train.steps) as advance:
        trained = train_all(ctx, cfgs, advance)
    failed = [tm for tm in trained.values() if tm.loaded is None]
    if failed:
        raise FloatingPointError(f"{failed[0].name}: {failed[0].error}")
    return ([str(tm.run_dir) for tm in trained.values()],
            f"trained in this demo ({asdict(plan.image_train)}), run folders under runs/")


def attack_curves(plan: AttackSectionPlan, ctx: Context,
                  subspace_models: dict[Key, TrainedModel], train_images: bool) -> dict[str, Any]:
    """FGSM / PGD-20 / random curves, ddpm vs robust-adv: section 1's clean-trained
    digits-subspace models (FD, variance ratio) and the digits U-Nets (FID (digits-cnn),
    variance ratio). One pool task per (data, curve plan, window, attack method), costliest
    first; curves with the same window, samples and sampler are merged into one table and
    one figure."""
    sub = [subspace_models["clean", m] for m in ATTACKED]
    if any(tm.loaded is None for tm in sub):
        raise FloatingPointError("a clean digits-subspace model diverged; no attack curves")
    image_runs, image_source = _image_runs(plan, ctx, train_images)
    runs = {"subspace": [str(tm.run_dir) for tm in sub], "images": image_runs}
    jobs = []
    for kind, curve_plans in (("subspace", plan.subspace), ("images", plan.images)):
        metrics, main = CURVE_METRICS[kind]
        for cp in curve_plans:
            for window in cp.windows:
                key = (kind, window, cp.num_samples, cp.sampler_steps)
                for method in cp.methods:
                    specs = curve_specs((method,), cp.percents, (window,), loss=plan.loss)
                    folder = (ctx.out_dir / "attacks" / f"{kind}-{window}-n{cp.num_samples}"
                              / f"{method}-{len(jobs)}")
                    jobs.append((key, (runs[kind], specs, cp.num_samples, ctx.seed,
                                       cp.sampler_steps, metrics, main, str(folder),
                                       ctx.device)))
    total = sum(len(args[0]) * (1 + len(args[1])) for _, args in jobs)
    jobs.sort(key=lambda j: -_cost(j[1][1], j[1][2]))
    with ctx.stage(f"3 attacks: {len(jobs)} curves", total) as advance:
        curves = ctx.pool.map(curve_task, [args for _, args in jobs], advance)
    merged: dict[tuple[str, str, int, int], list[dict[str, Any]]] = {}
    for (key, _), curve in zip(jobs, curves, strict=True):
        merged.setdefault(key, []).append(curve)
    out: dict[str, Any] = {"subspace": [], "images": []}
    for (kind, window, n, k), group in merged.items():
        table = {"window": window, "num_samples": n, "sampler_steps": k,
                 **_merge_curves(ctx, group)}
        path = ctx.out_dir / "figures" / f"attack_{kind}_{window}_n{n}.png"
        table["figure"] = ctx.rel(figures.attack_plot(
            table, path, f"{kind}: {window} window, {n} samples, {k} respaced steps, "
                         f"loss {plan.loss}"))
        out[kind].append(table)
    steps = sorted({cp.sampler_steps for cp in (*plan.subspace, *plan.images)} | {1000})
    out["settings"] = {**asdict(plan), "image_models": image_source,
                       "subspace_models": "section 1's models trained on clean data",
                       "budget": "ε_t = √β̃_t per attacked step (ℓ∞, docs/method.md §6)",
                       "mean_loss_network_weight": {str(k): _network_weight(k) for k in steps}}
    return out


def _network_weight(steps: int) -> dict[str, float]:
    """Relative weight β_t/(1−ᾱ_t) of ε_θ inside the ``mean`` loss μ_θ (its coefficient
    β_t/√(1−ᾱ_t) times ∂ε_θ/∂x ~ 1/√(1−ᾱ_t), docs/method.md §6.1), over the steps of a
    respaced chain of the default linear schedule: median ≈ 0.013 on the full 1000-step chain,
    0.25 / 0.44 on 50 / 25 steps; 1 at the last step."""
    d = GaussianDiffusion.from_schedule()
    d = d if steps == d.num_timesteps else respace(d, steps)
    w = d.betas / (1.0 - d.alphas_cumprod)
    return {"median": round(float(np.median(w)), 4), "max": round(float(w.max()), 4)}


def _cost(specs: list[AttackSpec], num_samples: int) -> float:
    """Rough cost of a curve: attacked-step gradient evaluations × samples."""
    return num_samples * sum(s.percent * (s.pgd_steps if s.method == "pgd" else 1) + 1
                             for s in specs)


def _pick(values: list[Any] | None, keep: list[int]) -> list[Any]:
    """``values`` at the indices ``keep`` (None everywhere when ``values`` is None)."""
    return [None if values is None else values[i] for i in keep]


def _merge_curves(ctx: Context, curves: list[dict[str, Any]]) -> dict[str, Any]:
    """One table from the curves of one window (one curve per attack method): per row the
    percents it ran (0 = the clean point, shared by every row of a model), the main metric,
    the variance ratio and whether the attacked steps include the last (zero-budget) one; per
    percent of the table the number of attacked steps ("12 of 25")."""
    rows, folders, counts = [], [], {}
    for curve in curves:
        ratio = {(p["model_name"], p["series"], p["percent"]): p["metrics"].get("variance ratio")
                 for p in curve["points"]}
        per_sample = {(p["model_name"], p["series"], p["percent"]):
                      (p.get("damage_per_sample") or {}).get(PIXEL) for p in curve["points"]}
        n = len(curve["percents"])
        counts.update({q: c for q, c in zip(curve["percents"],
                                            curve.get("steps_attacked") or [None] * n,
                                            strict=True) if c})
        for r in curve["rows"]:
            lasts = r.get("last_step_attacked") or [None] * n
            keep = [i for i, v in enumerate(r["values"]) if v is not None]
            qs = [curve["percents"][i] for i in keep]

            def col(key: str, r: dict[str, Any] = r, keep: list[int] = keep) -> list[Any]:
                return _pick(r.get(key), keep)

            rows.append({"model": r["model"], "series": r["series"], "method": r["method"],
                         "percents": qs, "values": col("values"),
                         "variance_ratio": [ratio.get((r["model"],
                                                       "clean" if q == 0 else r["series"], q))
                                            for q in qs],
                         "last_step_attacked": [lasts[i] for i in keep],
                         "improved_under_attack": col("improved_under_attack"),
                         "pixel_deviation": [((d or {}).get(PIXEL) or {}) or None
                                             for d in col("damage")],
                         "pixel_deviation_per_sample": [
                             None if q == 0 else per_sample.get((r["model"], r["series"], q))
                             for q in qs]})
        folders.append({"csv": ctx.rel(Path(curve["csv"])), "png": ctx.rel(Path(curve["png"])),
                        "seconds": curve["seconds"]})
    rows.sort(key=lambda r: (r["model"], METHOD_ORDER.index(r["method"])))
    protocol = curves[0]["protocol"]
    percents = sorted({q for r in rows for q in r["percents"]})
    return {"metric": curves[0]["metric"], "percents": percents,
            "steps_attacked": [counts.get(q) for q in percents], "rows": rows,
            "sampler": protocol["sampler"]["label"], "seed": protocol["seed"],
            "curves": folders, "seconds": round(sum(f["seconds"] for f in folders), 2)}


# --------------------------------------------------------------------------- section 4
def sampling_steps(plan: StepsPlan, sub_plan: SubspacePlan, ctx: Context,
                   models: dict[Key, TrainedModel],
                   samples: dict[Key, torch.Tensor]) -> dict[str, Any]:
    """FD / subspace error / variance ratio of ddpm and robust-adv (both data conditions of
    section 1) on fewer respaced ancestral steps, same seeds; section 1's samples are reused
    for its own step count."""
    keys = [(c, m) for c in ("clean", "corrupted") for m in plan.methods
            if models[c, m].loaded is not None]
    todo = [(k, s) for k in keys for s in plan.steps
            if not (s == sub_plan.sampler_steps and k in samples)]
    with ctx.stage("4 fewer sampling steps", sum(s for _, s in todo)) as advance:
        drawn = ctx.pool.map(sample_task, [(str(models[k].run_dir), sub_plan.num_samples, s,
                                            ctx.seed, 0, ctx.device) for k, s in todo], advance)
    new = {ks: x for ks, (x, _) in zip(todo, drawn, strict=True)}
    rows = []
    arms: dict[str, tuple[Any, torch.Tensor]] = {}
    for key in keys:
        ref = ctx.reference(models[key].loaded)
        for steps in plan.steps:
            x = new[key, steps] if (key, steps) in new else samples[key]
            arms[f"{key[0]}/{key[1]}/{steps}"] = (ref, x)
            rows.append({"data": key[0], "method": key[1], "steps": steps,
                         **score(ref, x, SUBSPACE_METRICS)})
    with ctx.stage("4 fewer sampling steps: bootstrap intervals", 1):
        effects = steps_effects(arms, min(plan.steps), max(plan.steps), ctx.seed)
    fig = figures.steps_plot(rows, plan.steps, ctx.out_dir / "figures" / "sampling_steps.png")
    return {
        "title": "Fewer sampling steps (respaced ancestral sampler)",
        "settings": {**asdict(plan), "dataset": "digits-subspace",
                     "models": "section 1's models", "num_samples": sub_plan.num_samples,
                     "seeds": seeds_text(ctx.seed, sub_plan.num_samples),
                     "metrics": list(SUBSPACE_METRICS)},
        "rows": rows,
        "effects": effects,
        "figures": {"steps": ctx.rel(fig)},
    }


def steps_effects(arms: dict[str, tuple[Any, torch.Tensor]], lo: int, hi: int,
                  seed: int) -> dict[str, Any]:
    """Per data condition ``"<data>: FD change: <method>"`` = FD(``lo`` steps) − FD(``hi``
    steps) and ``"<data>: FD change: robust-adv − ddpm"`` (the difference of the two changes),
    exact FD recomputed on resampled rows, the same rows in all four arms (the same seeds
    start every chain; :func:`~dmattack.demo.effects.set_effects`)."""
    fd = "FD (exact)"
    contrasts = {}
    for data in dict.fromkeys(k.split("/")[0] for k in arms):
        change = {m: ((1.0, f"{data}/{m}/{lo}"), (-1.0, f"{data}/{m}/{hi}"))
                  for m in ("ddpm", "robust-adv")}
        contrasts.update({f"{data}: FD change: {m}": (fd, terms, 0.0)
                          for m, terms in change.items()})
        contrasts[f"{data}: FD change: robust-adv − ddpm"] = (fd, (
            *change["robust-adv"], *((-w, a) for w, a in change["ddpm"])), 0.0)
    return set_effects(metric_scorer({k: ref for k, (ref, _) in arms.items()}, contrasts),
                       {k: x for k, (_, x) in arms.items()}, contrasts, seed=seed)


__all__ = ["attack_curves", "check_image_runs", "corrupted_subspace", "sampling_steps", "toy_3d"]
