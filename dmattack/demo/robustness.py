"""The demo's robustness sections: adaptive attacks on the generation chain (per-step PGD,
trajectory PGD, look-ahead EOT PGD, the random control; docs/method.md §12) and diffusion
purification attacked with torchattacks (docs/method.md §13). Each returns its JSON-able
section record."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..attacks import AttackPlan, AttackSpec
from ..attacks.lookahead import LookaheadPGD
from ..attacks.trajectory import TrajectoryPGD
from ..core.errors import ConfigError
from ..evaluation.damage import PIXEL
from ..purification import PurifyConfig
from . import figures
from .common import Context, TrainedModel
from .experiments import ATTACKED, CHECKPOINTS, CURVE_METRICS, IMAGE_RUNS
from .plan import AdaptivePlan, PurificationPlan
from .purification import RUNS, section_rows
from .tasks import curve_task, purify_task

ADAPTIVE_ATTACKS = ("pgd-mean", "pgd-eps", "trajectory", "lookahead", "random")
DAMAGE = ("pixel deviation mean", "pixel deviation median", "class changed (digits-cnn)")


def _flat_damage(damage: dict[str, Any]) -> dict[str, Any]:
    """The demo's damage columns from a point's ``damage.<measure> = {"mean", "median", …}``
    (docs/method.md §11.1): pixel deviation mean and median, the class-change share."""
    pixel = damage.get("pixel deviation") or {}
    out = {"pixel deviation mean": pixel.get("mean"),
           "pixel deviation median": pixel.get("median")}
    if "class changed (digits-cnn)" in damage:
        out["class changed (digits-cnn)"] = (damage["class changed (digits-cnn)"] or {}).get(
            "mean")
    return {k: out[k] for k in DAMAGE if k in out}
# rough cost of one attacked sample, in network evaluations per chain step (for ordering tasks)
_UNET_COST = 40.0


def attack_plan(name: str, plan: AdaptivePlan) -> AttackPlan:
    """The :class:`AttackPlan` of one of :data:`ADAPTIVE_ATTACKS` at the plan's budgets."""
    if name in ("pgd-mean", "pgd-eps"):
        spec = AttackSpec("pgd", plan.percent, plan.window, loss=name.split("-")[1],
                          pgd_steps=plan.iterations)
        return AttackPlan.of(spec)
    if name == "random":
        return AttackPlan.of(AttackSpec("random", plan.percent, plan.window))
    if name == "trajectory":
        attack = TrajectoryPGD(distance=plan.distance, iterations=plan.trajectory_iterations)
    elif name == "lookahead":
        attack = LookaheadPGD(distance=plan.distance, iterations=plan.iterations, eot=plan.eot,
                              horizon=plan.horizon)
    else:
        raise ConfigError(f"adaptive.attacks entry {name!r} is not one of "
                          f"{', '.join(ADAPTIVE_ATTACKS)}", "adaptive.attacks")
    return AttackPlan(attack, plan.percent, plan.window)


def _cost(name: str, plan: AdaptivePlan, samples: int, steps: int, unet: bool) -> float:
    share, it = plan.percent / 100, plan.iterations
    per_step = {"random": 1.0, "pgd-mean": 1 + 2 * share * it, "pgd-eps": 1 + 2 * share * it,
                "trajectory": 3.0 * plan.trajectory_iterations + 2,
                "lookahead": 2 + 3 * share * it * plan.eot * (plan.horizon + 1)}[name]
    return samples * steps * per_step * (_UNET_COST if unet else 1.0)


def adaptive_attacks(plan: AdaptivePlan, ctx: Context,
                     subspace_models: dict[tuple[str, str], TrainedModel]) -> dict[str, Any]:
    """Every attack of ``plan`` on DDPM and Robust_adv: section 1's clean-trained
    digits-subspace MLPs (exact FD) and the shipped digits U-Nets (FID (digits-cnn)), each
    point with its paired damage against the clean samples of the same seeds. One pool task
    per (data, model, attack), costliest first."""
    sub = [subspace_models["clean", m] for m in ATTACKED]
    if any(tm.loaded is None for tm in sub):
        raise FloatingPointError("a clean digits-subspace model diverged; no adaptive attacks")
    runs = {"subspace": dict(zip(ATTACKED, (str(tm.run_dir) for tm in sub), strict=True)),
            "images": {m: str(CHECKPOINTS / IMAGE_RUNS[m]) for m in ATTACKED}}
    jobs = _adaptive_jobs(plan, ctx, runs)
    with ctx.stage(f"adaptive: {len(jobs)} attacks", 2 * len(jobs)) as advance:
        curves = ctx.pool.map(curve_task, [args for _, args in jobs], advance)
    rows = _adaptive_rows(plan, runs, jobs, curves)
    fig = figures.adaptive_bars(rows, {k: CURVE_METRICS[k][1] for k in runs},
                                ctx.out_dir / "figures" / "adaptive_attacks.png",
                                f"DDPM vs Robust_adv, {plan.percent:g}% of the steps attacked "
                                f"({plan.window}), {plan.iterations} PGD iterations "
                                f"(trajectory {plan.trajectory_iterations})")
    return {
        "title": "Adaptive attacks on the generation chain",
        "settings": {**asdict(plan),
                     "labels": {name: attack_plan(name, plan).series for name in plan.attacks},
                     "metrics": {k: CURVE_METRICS[k][1] for k in runs},
                     "subspace_models": "section 1's models trained on clean data",
                     "image_models": ", ".join(f"checkpoints/{IMAGE_RUNS[m]}" for m in ATTACKED),
                     "budget": "ε_s = √β̃_s per attacked step (ℓ∞, model space), the per-step "
                               "attacks' budget",
                     "seeds": f"dmattack.core.seeding.sample_seeds({ctx.seed}, N), clean and "
                              "attacked paired"},
        "rows": rows,
        "figures": {"bars": ctx.rel(fig)},
        "folders": {f"{kind}-{model}-{name}": ctx.rel(Path(args[7]))
                    for (kind, model, name), args in jobs},
    }


Job = tuple[tuple[str, str, str], tuple]


def _sizes(plan: AdaptivePlan) -> dict[str, tuple[int, int]]:
    """(samples, respaced steps) per data kind."""
    return {"subspace": (plan.subspace_samples, plan.subspace_steps),
            "images": (plan.image_samples, plan.image_steps)}


def _adaptive_jobs(plan: AdaptivePlan, ctx: Context, runs: dict[str, dict[str, str]]
                   ) -> list[Job]:
    """``((kind, model, attack), curve_task arguments)`` of every attack on every model of
    ``runs`` (data kind → model → run folder), costliest first."""
    sizes = _sizes(plan)
    jobs = []
    for kind, by_model in runs.items():
        metrics, main = CURVE_METRICS[kind]
        n, k = sizes[kind]
        for model, run_dir in by_model.items():
            for name in plan.attacks:
                folder = ctx.out_dir / "adaptive" / f"{kind}-{model}-{name}"
                jobs.append(((kind, model, name), (
                    [run_dir], [attack_plan(name, plan)], n, ctx.seed, k, metrics, main,
                    str(folder), ctx.device)))
    jobs.sort(key=lambda j: -_cost(j[0][2], plan, *sizes[j[0][0]], j[0][0] == "images"))
    return jobs


def _adaptive_rows(plan: AdaptivePlan, runs: dict[str, dict[str, str]], jobs: list[Job],
                   curves: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The section's rows in report order (data kind, model, attack): each model's clean row
    (its curve's 0% point) before its attacks' rows (the curve's last point)."""
    rows: list[dict[str, Any]] = []
    clean: dict[tuple[str, str], dict[str, Any]] = {}
    for ((kind, model, name), _), curve in sorted(
            zip(jobs, curves, strict=True),
            key=lambda jc: (list(runs).index(jc[0][0][0]), ATTACKED.index(jc[0][0][1]),
                            plan.attacks.index(jc[0][0][2]))):
        main = CURVE_METRICS[kind][1]
        point0, point = curve["points"][0], curve["points"][-1]
        base = clean.setdefault((kind, model), {
            "data": kind, "model": model, "method": "clean", "series": "clean",
            "value": point0["metrics"].get(main),
            "variance ratio": point0["metrics"].get("variance ratio")})
        if base not in rows:
            rows.append(base)
        rows.append(_attack_row(kind, model, name, point, main, base["value"]))
    return rows


def _attack_row(kind: str, model: str, name: str, point: dict[str, Any], main: str,
                clean_value: float | None) -> dict[str, Any]:
    """One attack's row from its curve point: the metric ``main`` and its increase over the
    clean ``clean_value``, the damage, convergence and cost."""
    value = point["metrics"].get(main)
    damage = point["damage"] or {}
    return {
        "data": kind, "model": model, "method": name, "series": point["series"],
        "value": value,
        "increase": None if value is None or clean_value is None
        else value - clean_value,
        "variance ratio": point["metrics"].get("variance ratio"),
        **_flat_damage(damage),
        "pixel deviation ci95": (damage.get(PIXEL) or {}).get("ci95"),
        "pixel_deviation_per_sample": (point.get("damage_per_sample") or {}).get(PIXEL),
        "improved_under_attack": (point.get("improved_under_attack") or {}).get(main),
        "converged": point.get("converged"),
        "trace_length": None if point.get("trace") is None else len(point["trace"]),
        "num_nonfinite": damage.get("num_nonfinite", 0),
        "attacked_steps": point["steps_attacked"], "seconds": point["seconds"]}


def purification_config(plan: PurificationPlan, seed: int) -> PurifyConfig:
    """The :class:`PurifyConfig` of the section (every t* of the plan, one batch)."""
    return PurifyConfig(t_star=",".join(f"{t:g}" for t in plan.t_stars),
                        purify_steps=plan.purify_steps, attacks=",".join(plan.attacks),
                        eps=plan.eps, iterations=plan.iterations, eot=plan.eot,
                        num_samples=plan.num_samples,
                        batch_size=plan.num_samples, seed=seed)


def purification(plan: PurificationPlan, ctx: Context) -> dict[str, Any]:
    """digits-cnn undefended and purified by the shipped DDPM and Robust_adv U-Nets at every
    t* of ``plan`` (one pool task per t*; the undefended rows, computed by each, are
    identical) under each attack; clean and robust accuracy per row."""
    cfg = purification_config(plan, ctx.seed)
    per_task = 3 * (1 + len(plan.attacks))  # (none, ddpm, robust-adv) × (clean, attacks)
    args = [(replace(cfg, t_star=f"{t:g}"), str(ctx.out_dir / "purification" / f"t{t:g}"),
             ctx.device) for t in plan.t_stars]
    with ctx.stage(f"purification: {len(args)} t*", per_task * len(args)) as advance:
        results = ctx.pool.map(purify_task, args, advance)
    rows: list[dict[str, Any]] = []
    for result in results:
        for r in section_rows(result):
            if r["purifier"] != "none" or not any(
                    q["purifier"] == "none" and q["attack"] == r["attack"] for q in rows):
                rows.append(r)
    order = {"none": 0, "ddpm": 1, "robust-adv": 2}
    rows.sort(key=lambda r: (order.get(r["purifier"], 3), r["t_star"] or 0,
                             plan.attacks.index(r["attack"])))
    fig = figures.purification_bars(rows, ctx.out_dir / "figures" / "purification.png",
                                    f"digits-cnn, ε = {plan.eps:g}, {plan.iterations} "
                                    f"iterations × EOT-{plan.eot}, n = {plan.num_samples}")
    return {
        "title": "Purification: DDPM vs Robust_adv U-Nets as purifiers",
        "settings": {**asdict(plan), "config": cfg.to_dict(), "classifier": "digits-cnn",
                     "purifiers": {m: str(RUNS[m].relative_to(CHECKPOINTS.parent))
                                   for m in RUNS},
                     "data": "digits-cnn's held-out digits (the first num_samples)"},
        "rows": rows,
        "figures": {"bars": ctx.rel(fig)},
        "seconds": {f"t*={t:g}": r["wall_seconds"]
                    for t, r in zip(plan.t_stars, results, strict=True)},
        "folders": {f"t*={t:g}": ctx.rel(Path(a[1])) for t, a in zip(plan.t_stars, args,
                                                                     strict=True)},
    }


__all__ = ["ADAPTIVE_ATTACKS", "adaptive_attacks", "attack_plan", "purification",
           "purification_config"]
