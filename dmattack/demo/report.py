"""report.md (tables, figures, settings, timings, verdicts) and the terminal headline table,
both generated from the results.json content alone (each section's markdown:
:mod:`.report_sections`)."""

from __future__ import annotations

from pathlib import Path

from ..core.io import write_text
from .effects import Row, describe_check
from .report_sections import SECTION_TEXT, SUBSPACE_COLUMNS, cell, fmt_cell, nonfinite, table


def headline_rows(results: Row) -> tuple[list[str], list[list[str]]]:
    """Section 1's table (corrupted and clean digits-subspace) for the terminal; without
    section 1, the compute-matched or the sweep section's table."""
    secs = results["sections"]
    if "corrupted_subspace" in secs:
        columns = ["data", "method", "subspace err ↓", "PSNR ↑", "FD ↓", "var. ratio", "NaN/inf"]
        rows = [[r["data"], r["method"], *(fmt_cell(cell(r, c)) for c in SUBSPACE_COLUMNS),
                 nonfinite(r)] for r in secs["corrupted_subspace"]["rows"]]
        return columns, rows
    if "compute_matched" in secs:
        columns = ["method", "training", "steps", "train (s)", "subspace err ↓", "FD ↓"]
        return columns, [[r["method"], r["training"], fmt_cell(cell(r, "train_steps")),
                          fmt_cell(cell(r, "train_seconds")), fmt_cell(cell(r, "subspace error")),
                          fmt_cell(cell(r, "FD (exact)"))] for r in secs["compute_matched"]["rows"]]
    if "corruption_sweep" not in secs:
        return (["purifier", "t*", "attack", "clean", "robust"],
                [[r["purifier"], fmt_cell(r["t_star"]), r["attack"],
                  fmt_cell(cell(r, "clean_accuracy")), fmt_cell(cell(r, "robust_accuracy"))]
                 for r in secs["purification"]["rows"]])
    sweep = secs["corruption_sweep"]
    fractions = sweep["settings"]["fractions"]
    grid = {(c["sigma"], c["fraction"]): c for c in sweep["differences"]}
    return (["σ \\ p", *(f"{p:g}" for p in fractions)],
            [[f"{s:g}", *(fmt_cell(cell(grid[s, p], "FD difference")) for p in fractions)]
             for s in sweep["settings"]["sigmas"]])


def headline_title(results: Row) -> str:
    """The title of :func:`headline_rows`' table."""
    secs = results["sections"]
    over = (f" (mean ± std over {len(results['seeds'])} seeds)"
            if len(results.get("seeds", [])) > 1 else "")
    if "corrupted_subspace" in secs:
        st = secs["corrupted_subspace"]["settings"]
        return (f"Headline: digits-subspace, {st['corrupt_fraction']:.0%} of training samples "
                f"noisy (σ = {st['corrupt_sigma']:g}){over}")
    if "compute_matched" in secs:
        return f"Headline: Robust_adv vs a compute-matched DDPM{over}"
    if "corruption_sweep" not in secs:
        return f"Headline: digits-cnn accuracy, undefended and purified{over}"
    return f"Headline: FD(DDPM) − FD(Robust_adv) over corrupted fraction p × σ{over}"


VERDICT_RULE = (
    "How a verdict is made (docs/demo.md): each check is an effect with its 95% interval "
    "(paired bootstrap over seeds for per-sample damage; set metrics recomputed on resampled "
    "paired samples; over several demo seeds a Student-t interval of the per-seed effects) "
    "against a minimum effect m: **held** when the interval lies beyond m in the claimed "
    "direction, **did not hold** when it lies beyond m the other way, **inconclusive** "
    "otherwise. A claim is held when every check held, did not hold when none held and at "
    "least one did not hold, inconclusive when every check was inconclusive, and partly "
    "otherwise (some held, some did not or were inconclusive).")


def _verdict(c: Row) -> str:
    counts = f"{c['checks_passed']}/{c['checks']} checks held"
    if c.get("checks_failed") is not None:
        counts += (f", {c['checks_failed']} did not hold, {c['checks_inconclusive']} "
                   "inconclusive")
    note = f"; {c['attack_note']}" if c.get("attack_note") else ""
    if "agreement" not in c:
        return f"**{c['verdict']}** ({counts}{note})"
    return f"**{c['verdict']}** ({counts}; per seed: {c['agreement']}{note})"


def _checks(c: Row) -> str:
    """Every check of a claim: effect [95% interval], minimum effect, n and verdict."""
    if not c.get("comparisons"):
        return c["evidence"]
    return "<br>".join(describe_check(x) for x in c["comparisons"]) + "<br>" + c["evidence"]


def _claims(results: Row) -> str:
    rows = [[c["claim"], c["source"], _verdict(c), _checks(c)] for c in results["claims"]]
    return table(["claim", "source", "verdict", "checks: effect [95% interval], m, n → verdict; "
                   "measured"], rows) + "\n\n" + VERDICT_RULE


def _timings(results: Row) -> str:
    rows = [[k, v] for k, v in results["timings"].items()]
    return table(["stage", "seconds"], rows)


def _mode(results: Row) -> str:
    seeds = results.get("seeds", [results["seed"]])
    mode = "quick (`--quick`)" if results["quick"] else "default"
    if len(seeds) == 1:
        return f"Mode: **{mode}**; seed {results['seed']}"
    return (f"Mode: **{mode}**; **{len(seeds)} seeds** ({', '.join(map(str, seeds))}): every "
            "number below is the mean ± the sample std over the seeds (one number: every seed "
            "measured the same); each check is the mean of the per-seed effects with a "
            "Student-t 95% interval over the seeds, and each verdict also says how many seeds "
            "reached it; figures show "
            f"seed {seeds[0]} (the sweep heatmap: the means); every seed's own numbers are in "
            "`results.json` (`per_seed`)")


def _sections_text(results: Row) -> str:
    """Which sections ran and which did not (with how to add them)."""
    from .sections import SECTIONS

    ran = results.get("sections_run", [])
    left = [n for n in SECTIONS if n not in ran]
    return (f"Sections run: {', '.join(f'`{n}`' for n in ran)}"
            + (f"; not run: {', '.join(f'`{n}`' for n in left)} (add one with `--section NAME`)"
               if left else "") + ".")


def write_report(results: Row, out_dir: Path) -> Path:
    """Write ``out_dir/report.md`` from the results; returns its path."""
    secs = results["sections"]
    env = results["environment"]
    body = []
    for key, (number, render) in SECTION_TEXT.items():
        if key in secs:
            title = secs[key].get("title", "Attacks on the reverse chain")
            body += [f"## {number}{title}", "", render(secs[key]), ""]
    text = "\n".join([
        "# dmattack demo report", "",
        f"{_mode(results)}; device `{results['device']}`; total wall "
        f"time **{results['timings']['total']:.0f} s** on {env['cpu_count']} CPU core(s): "
        f"{env['worker_processes']} worker process(es) × {env['torch_threads_per_worker']} "
        f"torch thread(s) (0 workers = in-process, {env['torch_threads']} threads; load average "
        "at start "
        f"{env['load_average_start']}, at end {env['load_average_end']}); "
        f"{results['finished']}.", "",
        _sections_text(results), "",
        "Everything below was measured in this run; the verdicts are computed from these numbers "
        "(see `dmattack/demo/claims.py`). The models are small CPU models (MLPs on 64-D / 3-D "
        "data, 8×8 U-Nets), so this checks the direction of the paper's claims, not their "
        "size. Non-finite samples (a diverged model) are dropped before scoring: every metric "
        "is computed on the finite rows and the table says how many were dropped.", "",
        "## What held and what did not", "", _claims(results), "",
        *body,
        "## Timings", "", _timings(results), "",
        "## Provenance", "",
        f"git revision `{results['provenance']['git_revision']}`; versions: "
        + ", ".join(f"{k} {v}" for k, v in results["provenance"]["versions"].items()) + ".",
        "All settings are in `results.json` (`plan` and each section's `settings`); the "
        "trained run folders are under "
        + ("`runs/`." if len(results.get("seeds", [0])) == 1 else "`seed-<seed>/runs/`."), ""])
    path = out_dir / "report.md"
    write_text(path, text)
    return path
