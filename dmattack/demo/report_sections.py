"""The markdown of each demo section in report.md (settings, tables, figures) and the table
cells they share with the headline, from the results.json content alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..evaluation.attack_eval.render import LAST_STEP_MARK
from .claims import sweep_onset
from .effects import Row

SUBSPACE_COLUMNS = ("subspace error", "subspace PSNR (dB)", "FD (exact)", "variance ratio")
DAMAGE_COLUMNS = ("pixel deviation mean", "pixel deviation median", "class changed (digits-cnn)")


def fmt_cell(v: Any) -> str:
    """Table cell: 3 significant digits, scientific for huge values, n/a for None."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"
    return str(v)


def cell(r: Row, key: str) -> Any:
    """``r[key]``, as ``mean ± std`` text when the row carries a std over seeds for it."""
    v, std = r.get(key), r.get("std", {}).get(key)
    return v if std is None or isinstance(std, list) else f"{fmt_cell(v)} ± {std:.2g}"


def cells(r: Row, key: str) -> list[Any]:
    """The list ``r[key]`` element by element, each as :func:`cell` would show it."""
    stds = r.get("std", {}).get(key)
    if not isinstance(stds, list):
        return list(r[key])
    return [v if s is None else f"{fmt_cell(v)} ± {s:.2g}"
            for v, s in zip(r[key], stds, strict=True)]


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def nonfinite(r: Row) -> str:
    if r.get("train_error"):
        return f"training stopped ({r['train_error']})"
    bad, good = r.get("num_nonfinite", 0), r.get("num_evaluated", 0)
    return f"{fmt_cell(bad)}/{fmt_cell(bad + good)}"


def _figure(path: str, alt: str) -> str:
    return f"![{alt}]({path})"


def _subspace(s: Row) -> str:
    st = s["settings"]
    tr = st["train"]
    out = [
        f"Training data: `{st['dataset']}` ({st['num_data']} samples, 64-D, true distribution "
        f"a Gaussian on k = 9 PCA directions of the sklearn digits); corrupted = "
        f"{st['corrupt_fraction']:.0%} of the samples + N(0, {st['corrupt_sigma']}²) noise. "
        f"Each model: preset `{tr['preset']}`, {tr['steps']} steps × batch {tr['batch_size']}, "
        f"lr {tr['lr']}, λ = {tr['lam']} (λ_t scaling `{tr['lambda_scaling']}`), training seed "
        f"{st['training_seed']}. Samples: {st['num_samples']} per model, sampler "
        f"`{st['sampler']}`, seeds `{st['seeds']}`. Metrics against the true distribution "
        "(FD = exact Fréchet distance; variance ratio = total variance of the samples over that "
        "of the clean data, < 1 means smoothing).",
        "",
        table(["data", "method", *SUBSPACE_COLUMNS, "non-finite", "train (s)"],
               [[r["data"], r["method"], *(cell(r, c) for c in SUBSPACE_COLUMNS),
                 nonfinite(r), cell(r, "train_seconds")] for r in s["rows"]]),
        "",
        "References (no model):",
        "",
        table(["data", "what", *SUBSPACE_COLUMNS, "N"],
               [[r["data"], r["method"], *(cell(r, c) for c in SUBSPACE_COLUMNS),
                 r["num_evaluated"]] for r in s["references"]]),
        "",
    ]
    for k, p in s["figures"].items():
        out += [_figure(p, f"digits-subspace samples ({k})"), ""]
    return "\n".join(out)


def _toy(s: Row) -> str:
    st = s["settings"]
    tr = st["train"]
    corr = "; ".join(f"{c['label']}: mode `{c['mode']}`, fraction {c['fraction']}"
                     + (f", σ = {c['sigma']}" if c["mode"] == "gaussian" else "")
                     for c in st["corruptions"])
    metric_cols = ["FD (exact)", "plane distance", "loglik (nats)", "variance ratio"]
    out = [
        f"Data: {', '.join(st['datasets'])} ({st['num_data']} samples each). Corruptions: "
        f"{corr}. Each model: preset `{tr['preset']}`, {tr['steps']} steps × batch "
        f"{tr['batch_size']}, lr {tr['lr']}, λ = {tr['lam']}. Samples: {st['num_samples']} per "
        f"model, sampler `{st['sampler']}`; trajectories: the first {st['num_trajectories']} "
        "chains. Plane distance = mean |n·x| (lower is better); loglik = mean exact "
        "log-density under the clean mixture (higher is better).",
        "",
        table(["dataset", "corruption", "method", *metric_cols, "non-finite"],
               [[r["dataset"], r["corruption"], r["method"], *(cell(r, c) for c in metric_cols),
                 nonfinite(r)] for r in s["rows"]]),
        "",
        "Top row of each figure: training data, then generations (clean data in grey); bottom "
        "row: trajectories x_T → x_0 of a few chains (× = the final sample).",
        "",
    ]
    for k, p in s["figures"].items():
        out += [_figure(p, k), ""]
    return "\n".join(out)


def _curve_table(c: Row) -> str:
    pct = c["percents"]
    rows, vr_rows, marked = [], [], False
    for r in c["rows"]:
        last = dict(zip(r["percents"], r.get("last_step_attacked") or [None] * len(pct),
                        strict=False))
        marked = marked or any(last.values())

        def mark(values: dict, p: float, last: dict = last) -> Any:
            if p not in values:
                return "—"
            return fmt_cell(values[p]) + LAST_STEP_MARK if last.get(p) else values[p]

        at = dict(zip(r["percents"], cells(r, "values"), strict=True))
        vr = dict(zip(r["percents"], cells(r, "variance_ratio"), strict=True))
        rows.append([r["model"], r["series"], *(mark(at, p) for p in pct)])
        vr_rows.append([r["model"], r["series"], *(mark(vr, p) for p in pct)])
    counts = c.get("steps_attacked") or [None] * len(pct)
    head = ["model", "attack", *(f"{p:g}% ({n})" if n else f"{p:g}%"
                                 for p, n in zip(pct, counts, strict=True))]
    csvs = ", ".join(f"[{f['csv']}]({f['csv']})" for f in c["curves"])
    note = ([f"{LAST_STEP_MARK} the attacked steps include the last reverse step, whose budget "
             "√β̃ = 0 leaves it unperturbed.", ""] if marked else [])
    return "\n".join([
        f"{c['metric']} (0% = clean samples with the same seeds; — = not run; column: % of the "
        "steps attacked (attacked of all steps)):", "",
        table(head, rows), "", "variance ratio:", "", table(head, vr_rows), "", *note,
        _figure(c["figure"], f"attack curves {c['figure']}"), "",
        f"CSV: {csvs}; {c['seconds']} s of worker time."])


def _plan_text(cp: Row) -> str:
    return (f"{', '.join(cp['methods'])} at {', '.join(f'{p:g}%' for p in cp['percents'])} "
            f"on the {', '.join(cp['windows'])} window(s), {cp['num_samples']} samples, "
            f"{cp['sampler_steps']} respaced steps")


def _attacks(s: Row) -> str:
    st = s["settings"]
    out = [
        f"Attack loss `{st['loss']}` (docs/method.md §6.1 J_att), ℓ∞ budget {st['budget']}. "
        f"digits-subspace models: {st['subspace_models']}. Digits U-Nets: {st['image_models']}.",
        "",
    ]
    for kind, title in (("subspace", "digits-subspace"), ("images", "digits images")):
        out += [f"### {title}", "", "Run: " + "; ".join(_plan_text(cp) for cp in st[kind])
                + ".", ""]
        for table in s[kind]:
            out += [f"#### {title}: `{table['window']}` window, {table['num_samples']} samples, "
                    f"sampler `{table['sampler']}`", "", _curve_table(table), ""]
    return "\n".join(out)


def _steps(s: Row) -> str:
    st = s["settings"]
    rows = [[r["data"], r["method"], r["steps"], *(cell(r, c) for c in SUBSPACE_COLUMNS),
             nonfinite(r)] for r in s["rows"]]
    return "\n".join([
        f"Models: {st['models']} (digits-subspace), {st['num_samples']} samples, seeds "
        f"`{st['seeds']}`; the respaced ancestral sampler on "
        f"{', '.join(map(str, st['steps']))} steps (1000 = the full DDPM sampler). The paper's "
        "Table 3 uses CIFAR-10 images; sampling a U-Net 1000 steps does not fit the demo's "
        "CPU budget, so this section uses the 64-D models.", "",
        table(["data", "method", "steps", *SUBSPACE_COLUMNS, "non-finite"], rows), "",
        _figure(s["figures"]["steps"], "sampling steps")])


def _sweep(s: Row) -> str:
    st = s["settings"]
    tr = st["train"]
    fractions, sigmas = st["fractions"], st["sigmas"]
    grid = {(c["sigma"], c["fraction"]): c for c in s["differences"]}
    onset = sweep_onset(s["differences"])
    cols = ("FD (exact)", "subspace error", "variance ratio")
    return "\n".join([
        f"Training data: `{st['dataset']}` ({st['num_data']} samples), a fraction p of them + "
        f"N(0, σ²) noise, p ∈ {{{', '.join(f'{p:g}' for p in fractions)}}} × σ ∈ "
        f"{{{', '.join(f'{x:g}' for x in sigmas)}}} (p = 0 is clean data whatever σ: one model "
        f"per method serves every σ). Methods {', '.join(st['methods'])}; each model: preset "
        f"`{tr['preset']}`, {tr['steps']} steps × batch {tr['batch_size']}, lr {tr['lr']}, "
        f"λ = {tr['lam']}, training seed {st['training_seed']}. Samples: {st['num_samples']} "
        f"per model, sampler `{st['sampler']}`. Exact FD against the true distribution.", "",
        "FD(DDPM) − FD(Robust_adv) (positive = Robust_adv closer to the true distribution):", "",
        table(["σ \\ p", *(f"{p:g}" for p in fractions)],
               [[f"{x:g}", *(cell(grid[x, p], "FD difference") for p in fractions)]
                for x in sigmas]), "",
        "Where Robust_adv starts to help (the smallest p from which the difference is above "
        "its seed spread at that and every larger p; above 0 with one seed): "
        + "; ".join(f"σ = {x:g}: " + ("at no p" if p is None else f"from p = {p:g}")
                    for x, p in onset.items()) + ".", "",
        _figure(s["figures"]["heatmap"], "FD difference heatmap"), "",
        "Every model:", "",
        table(["p", "σ", "method", *cols, "non-finite", "train (s)"],
               [[r["fraction"], "any" if r["sigma"] is None else r["sigma"], r["method"],
                 *(cell(r, c) for c in cols), nonfinite(r), cell(r, "train_seconds")]
                for r in s["rows"]])])


def _compute(s: Row) -> str:
    st = s["settings"]
    tr = st["train"]
    cols = ("subspace error", "subspace PSNR (dB)", "FD (exact)", "variance ratio")
    return "\n".join([
        f"Training data: `{st['dataset']}` ({st['num_data']} samples), "
        f"{st['corrupt_fraction']:.0%} of them + N(0, {st['corrupt_sigma']:g}²) (section 1's "
        f"corrupted data). Robust_adv and DDPM: preset `{tr['preset']}`, {tr['steps']} steps × "
        f"batch {tr['batch_size']}, lr {tr['lr']}, λ = {tr['lam']}, training seed "
        f"{st['training_seed']}. {st['matching']}. Samples: {st['num_samples']} per model, "
        f"sampler `{st['sampler']}`.", "",
        table(["method", "training", "steps", "s / step", "steps (s)", "whole run (s)", *cols,
                "non-finite"],
               [[r["method"], r["training"], cell(r, "train_steps"), cell(r, "step_seconds"),
                 cell(r, "step_time_total"), cell(r, "train_seconds"),
                 *(cell(r, c) for c in cols), nonfinite(r)] for r in s["rows"]])])


def _pct(r: Row, key: str) -> str:
    """A fraction of ``r`` in %, with ``± std`` (in points) over the seeds when it has one."""
    v, std = r.get(key), r.get("std", {}).get(key)
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def _ci(r: Row, key: str) -> str:
    """`` [lo, hi]`` in % of an interval field of ``r`` (empty when absent)."""
    ci = r.get(key)
    return "" if not ci or None in ci else f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]"


def _adaptive(s: Row) -> str:
    st = s["settings"]
    labels = "; ".join(f"`{k}` = `{v}`" for k, v in st["labels"].items())
    out = [
        f"{', '.join(st['attacks'])} at {st['percent']:g}% of the steps (`{st['window']}` "
        f"window), budget {st['budget']}; {st['iterations']} PGD iterations each, trajectory "
        f"PGD {st.get('trajectory_iterations', st['iterations'])} (look-ahead: "
        f"per attacked step, EOT over {st['eot']} draws of the future noise, horizon "
        f"{st['horizon']}); whole-chain attacks maximise the `{st['distance']}` distance to the "
        f"clean sample. Labels: {labels}. digits-subspace: {st['subspace_models']}, "
        f"{st['subspace_samples']} samples, {st['subspace_steps']} respaced steps; digits "
        f"U-Nets ({st['image_models']}): {st['image_samples']} samples, {st['image_steps']} "
        f"respaced steps; seeds `{st['seeds']}`. Pixel deviation = per-sample mean squared "
        "difference between the attacked and the clean sample of the same seeds (model space, "
        "mean and median over samples); class changed = share of digits whose digits-cnn class "
        "differs; increase = attacked − clean value of the metric.", ""]
    cols = ["value", "increase", "variance ratio", *DAMAGE_COLUMNS, "num_nonfinite", "seconds"]
    for kind, metric in st["metrics"].items():
        rows = [[r["model"], r["method"],
                 fmt_cell(cell(r, "value")) + (" †" if r.get("improved_under_attack") else ""),
                 *(cell(r, c) for c in cols[1:3]),
                 _with_ci(r), *(cell(r, c) for c in cols[4:]), _converged(r)]
                for r in s["rows"] if r["data"] == kind]
        out += [f"### {kind}: {metric}", "",
                table(["model", "attack", metric, "increase", "variance ratio",
                        "pixel dev. mean [95% CI]", "pixel dev. median", "class changed",
                        "non-finite", "attack (s)", "converged"], rows),
                ""]
    out += ["A † marks a set metric that got better under attack: flagged, never read as "
            "robustness. `converged`: the trajectory attack's trace rose by less than the "
            "tolerance over its last fifth of iterations (docs/method.md §12); n/a: not "
            "recorded (per-step attacks, or a version without traces).", ""]
    out += [_figure(s["figures"]["bars"], "adaptive attacks"), ""]
    return "\n".join(out)


def _with_ci(r: Row) -> str:
    """The pixel deviation's mean with its 95% interval (single seed) or ± std (seeds)."""
    ci = r.get("pixel deviation ci95")
    text = fmt_cell(cell(r, "pixel deviation mean"))
    if ci and "std" not in r:
        text += f" [{fmt_cell(ci[0])}, {fmt_cell(ci[1])}]"
    return text


def _converged(r: Row) -> str:
    v = r.get("converged")
    return "n/a" if v is None else "yes" if v else "**no**"


def _purification(s: Row) -> str:
    st = s["settings"]
    cfg = st["config"]
    rows = [[r["purifier"], "—" if r["t_star"] is None else r["t_star"], r["attack"],
             _pct(r, "clean_accuracy"), _pct(r, "robust_accuracy") + _ci(r, "robust_ci95"),
             _pct(r, "robust_majority") + _ci(r, "robust_majority_ci95"),
             _pct(r, "robust_worst") + _ci(r, "robust_worst_ci95"),
             cell(r, "attack_seconds")] for r in s["rows"]]
    return "\n".join([
        f"Classifier `{st['classifier']}` on {st['data']} (n = {st['num_samples']}); purifiers "
        f"{', '.join(f'`{v}`' for v in st['purifiers'].values())} (EMA) at t* ∈ "
        f"{{{', '.join(f'{t:g}' for t in st['t_stars'])}}} of T = 1000, K = "
        f"{st['purify_steps']} respaced ancestral reverse steps; attacks "
        f"{', '.join(st['attacks'])} (torchattacks EOTPGD; full gradients through the "
        f"checkpointed chain, or BPDA), ℓ∞ ε = {st['eps']:g} in [0, 1] units, α = ε/4, "
        f"{st['iterations']} iterations × EOT-{st['eot']}, {cfg['draws']} evaluation draws, "
        f"seed {cfg['seed']}. ε = 0.25 is where the undefended classifier keeps 0% under "
        "PGD-20 (docs/purification.md). Robust accuracy = correct on the clean and on the "
        "adversarial image: mean over the draws, majority and worst of the draws, with 95% "
        "intervals over images. The shipped purifiers were trained on all 1797 digits, so "
        "the evaluation digits were seen in training.", "",
        table(["purifier", "t*", "attack", "clean acc. (%)", "robust acc. (%) [95%]",
                "majority (%)", "worst (%)", "attack (s)"], rows), "",
        _figure(s["figures"]["bars"], "purification accuracies")])


SECTION_TEXT = {"corrupted_subspace": ("1. ", _subspace), "toy_3d": ("2. ", _toy),
                "attacks": ("3. ", _attacks), "sampling_steps": ("4. ", _steps),
                "adaptive_attacks": ("5. ", _adaptive),
                "purification": ("6. ", _purification),
                "corruption_sweep": ("Control: ", _sweep),
                "compute_matched": ("Control: ", _compute)}

