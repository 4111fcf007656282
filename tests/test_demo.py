"""`dmattack demo --quick` end to end: every section present with finite numbers, a report
that embeds existing figures, and the progress callback (run once per module)."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cli
import dmattack.demo as demo_pkg
import dmattack.demo.run as demo_run
from dmattack.core.errors import ConfigError, OutputError
from dmattack.demo import SECTIONS as SECTIONS_BY_NAME
from dmattack.demo import headline_rows, resolve_sections, run_demo
from dmattack.demo.aggregate import aggregate_rows, aggregate_sections, agreement, combine_claims
from dmattack.demo.claims import (
    adaptive_claims,
    compute_claims,
    purification_claims,
    robust_helps,
    sweep_claims,
    sweep_onset,
)
from dmattack.demo.controls import matched_steps, sweep_differences
from dmattack.demo.effects import check, combine, set_effects
from dmattack.demo.effects import claim as claim_row
from dmattack.demo.plan import (
    AdaptivePlan,
    AttackSectionPlan,
    ComputePlan,
    CurvePlan,
    DemoPlan,
    PurificationPlan,
    StepsPlan,
    SubspacePlan,
    SweepPlan,
    ToyPlan,
    TrainSettings,
    quick_plan,
)
from dmattack.demo.pool import TaskPool
from dmattack.demo.report_sections import cell, cells

SECTIONS = ("corrupted_subspace", "toy_3d", "attacks", "sampling_steps")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], list]:
    out = tmp_path_factory.mktemp("demo")
    calls: list[tuple[str, int, int]] = []
    results = run_demo(out, quick=True, progress=lambda *a: calls.append(a))
    return out, results, calls


def _numbers(obj: Any) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return []


def _metric_values(rows: list[dict[str, Any]], labels: tuple[str, ...]) -> list[Any]:
    return [r[k] for r in rows for k in labels if k in r]


@pytest.mark.slow
def test_results_json_has_every_section_with_finite_numbers(demo):
    out, results, _ = demo
    on_disk = json.loads((out / "results.json").read_text(), parse_constant=lambda c: c)
    assert on_disk["kind"] == "dmattack-demo" and on_disk["quick"] is True
    assert set(SECTIONS) <= set(on_disk["sections"])
    assert all(math.isfinite(x) for x in _numbers(on_disk)), "NaN/inf in results.json"
    secs = on_disk["sections"]
    sub = secs["corrupted_subspace"]["rows"]
    adaptive = secs["adaptive_attacks"]["rows"]
    assert {(r["data"], r["model"], r["method"]) for r in adaptive} == {
        (d, m, a) for d in ("subspace", "images") for m in ("ddpm", "robust-adv")
        for a in ("clean", *quick_plan().adaptive.attacks)}
    for r in adaptive:
        assert r["value"] is not None
        if r["method"] != "clean":
            assert r["pixel deviation mean"] is not None and r["attacked_steps"]
    assert {(r["data"], r["method"]) for r in sub} == {
        (d, m) for d in ("corrupted", "clean")
        for m in ("ddpm", "robust-rand", "robust-adv", "invariance")}
    for r in sub + secs["toy_3d"]["rows"] + secs["sampling_steps"]["rows"]:
        # None only where nothing finite was left to score (recorded explicitly)
        if r.get("FD (exact)") is None:
            assert r["num_evaluated"] == 0 or r.get("train_error")
    labels = ("subspace error", "subspace PSNR (dB)", "FD (exact)", "variance ratio")
    for rows in (sub, secs["sampling_steps"]["rows"]):
        assert any(v is not None for v in _metric_values(rows, labels))
    assert any(r.get("plane distance") is not None for r in secs["toy_3d"]["rows"])
    assert any(r.get("loglik (nats)") is not None for r in secs["toy_3d"]["rows"])
    for kind, metric in (("subspace", "FD (exact)"), ("images", "KID (digits-cnn)")):
        tables = secs["attacks"][kind]
        assert tables, kind
        for table in tables:
            assert table["metric"] == metric
            assert {r["model"].rsplit("-", 1)[-1] for r in table["rows"]} == {"ddpm", "adv"}
            for r in table["rows"]:
                assert r["percents"][0] == 0 and len(r["percents"]) >= 2
                assert all(v is not None for v in r["values"])
    assert {r["steps"] for r in secs["sampling_steps"]["rows"]} == set(quick_plan().steps.steps)
    verdicts = {"held", "partly", "did not hold", "inconclusive", "n/a"}
    assert on_disk["claims"] and all(c["verdict"] in verdicts for c in on_disk["claims"])
    # every verdict rests on effects with an interval, a minimum effect and n
    for c in on_disk["claims"]:
        assert c["comparisons"], c["id"]
        for x in c["comparisons"]:
            assert x["verdict"] in verdicts
            if x["direction"] is None:  # decided without an interval: a diverged model
                assert x["note"]
                continue
            assert x["min_effect"] is not None and x["n"] >= 2
            assert x["ci95"] is None or x["ci95"][0] <= x["ci95"][1]
    # --quick runs 3 trajectory iterations: its verdicts say they are not on a converged attack
    for c in on_disk["claims"]:
        if c["id"].startswith("adaptive-"):
            assert c["attack_note"].startswith("made on an") and "made on an" in c["claim"]
    # no Fréchet distance from the 16 digits of the adaptive section (64-D features)
    assert all(not k.startswith("FID") for r in adaptive for k in r)
    assert on_disk["timings"]["total"] > 0
    assert on_disk["provenance"]["versions"]["torch"]
    assert results["sections"].keys() == on_disk["sections"].keys()


@pytest.mark.slow
def test_report_embeds_existing_figures(demo):
    out, _, _ = demo
    text = (out / "report.md").read_text()
    for heading in ("What held and what did not", "1. Corrupted", "2. 3-D", "3. Attacks",
                    "4. Fewer sampling steps", "Timings", "How a verdict is made"):
        assert heading in text
    # each verdict with its effect and interval
    assert re.search(r"corrupted: FD \(exact\): robust-adv − ddpm: \S+ \[\S+, \S+\]", text)
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) >= 8
    for rel in images:
        assert not Path(rel).is_absolute()
        assert (out / rel).is_file() and (out / rel).stat().st_size > 1000, rel


@pytest.mark.slow
def test_progress_and_headline(demo):
    _, results, calls = demo
    assert calls[-1] == ("report", 1, 1)
    assert all(0 <= done <= total for _, done, total in calls)
    stages = {label for label, _, _ in calls}
    assert any(s.startswith("1 ") for s in stages) and any(s.startswith("3 ") for s in stages)
    columns, rows = headline_rows(results)
    assert len(rows) == 8 and all(len(r) == len(columns) for r in rows)


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        run_demo(tmp_path, quick=True)


def _tiny_plan() -> DemoPlan:
    """Every section at toy size (seconds): for checking the CLI's wiring, not the numbers."""
    few = TrainSettings(steps=4, batch_size=64, warmup=1)
    return DemoPlan(
        True, SubspacePlan(train=few, num_data=200, num_samples=40, sampler_steps=20),
        ToyPlan(datasets=("oblique-plane",), train=few, num_data=200, num_samples=40,
                sampler_steps=10, num_trajectories=2),
        AttackSectionPlan(subspace=(CurvePlan(("fgsm",), ("spread",), (100.0,), 40, 10),),
                          images=(CurvePlan(("random",), ("spread",), (100.0,), 16, 5),),
                          image_train=TrainSettings(preset="tiny", steps=3, batch_size=16,
                                                    warmup=1)),
        StepsPlan(steps=(20, 10)),
        adaptive=AdaptivePlan(attacks=("trajectory", "random"), iterations=1,
                              subspace_samples=20, subspace_steps=6, image_samples=4,
                              image_steps=4),
        purification=PurificationPlan(t_stars=(0.1,), purify_steps=1, iterations=1, eot=1,
                                      num_samples=4))


def test_cli_demo_prints_headline_and_report(tmp_path, monkeypatch):
    """The CLI end to end on a toy-size plan, retraining the digits U-Nets (--train-images)."""
    monkeypatch.setattr(demo_run, "quick_plan", _tiny_plan)
    out = tmp_path / "report"
    result = CliRunner().invoke(cli.main, ["demo", "--quick", "--train-images", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Headline" in result.output and str(out / "report.md") in result.output
    results = json.loads((out / "results.json").read_text())
    assert results["plan"]["subspace"]["num_samples"] == 40 and results["train_images"]
    for name in ("digits-ddpm", "digits-robust-adv"):
        assert (out / "runs" / name / "config.json").is_file()
    assert "trained in this demo" in results["sections"]["attacks"]["settings"]["image_models"]
    assert (out / "report.md").is_file()
    # a second run into the same folder is refused with one line, exit 2, nothing touched
    before = (out / "results.json").read_bytes()
    again = CliRunner().invoke(cli.main, ["demo", "--quick", "--out", str(out)])
    assert again.exit_code == 2 and len(again.output.strip().splitlines()) == 1
    assert "is not empty" in again.output
    assert (out / "results.json").read_bytes() == before


def test_cli_demo_rejects_a_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(cli.main, ["demo", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "not empty" in result.output and "Traceback" not in result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _task_exits(*_: Any, report) -> None:
    os._exit(3)  # a worker killed mid-task (the OOM killer, a signal)


def _task_fails(seconds: float, *, report) -> None:
    if seconds == 0:
        raise ValueError("task failed")
    time.sleep(seconds)


def test_pool_reports_a_dead_worker_instead_of_hanging():
    with pytest.raises(ChildProcessError, match="worker process died"):
        with TaskPool(2) as pool:
            pool.map(_task_exits, [(), ()], lambda n: None)


def test_pool_reraises_a_task_error_and_stops_the_other_tasks():
    start = time.perf_counter()
    with pytest.raises(ValueError, match="task failed"):
        with TaskPool(2) as pool:
            pool.map(_task_fails, [(60.0,), (0,)], lambda n: None)
    assert time.perf_counter() - start < 30  # the 60 s task was terminated, not awaited


# --------------------------------------------------------------------------- seeds
def test_aggregate_rows_mean_std_and_missing_values():
    seeds = [
        [{"data": "clean", "method": "ddpm", "FD (exact)": 1.0, "num_evaluated": 40,
          "values": [1.0, 2.0, None], "note": "first"},
         {"data": "clean", "method": "robust-adv", "FD (exact)": None, "num_evaluated": 0}],
        [{"data": "clean", "method": "robust-adv", "FD (exact)": 5.0, "num_evaluated": 40},
         {"data": "clean", "method": "ddpm", "FD (exact)": 2.0, "num_evaluated": 40,
          "values": [1.0, 4.0, 3.0], "note": "second"}],
        [{"data": "clean", "method": "ddpm", "FD (exact)": 6.0, "num_evaluated": 40,
          "values": [1.0, 6.0, 5.0]},
         {"data": "clean", "method": "robust-adv", "FD (exact)": 7.0, "num_evaluated": 40}],
    ]
    ddpm, adv = aggregate_rows(seeds)  # matched by name, first-seen order
    assert (ddpm["method"], adv["method"]) == ("ddpm", "robust-adv")
    assert ddpm["FD (exact)"] == pytest.approx(3.0)
    assert ddpm["std"]["FD (exact)"] == pytest.approx(statistics.stdev([1.0, 2.0, 6.0]))
    assert ddpm["num_evaluated"] == 40 and "num_evaluated" not in ddpm["std"]  # same everywhere
    assert ddpm["values"] == pytest.approx([1.0, 4.0, 4.0])
    assert ddpm["std"]["values"][0] is None  # identical in every seed
    assert ddpm["std"]["values"][1] == pytest.approx(2.0)
    assert ddpm["num_seeds"]["values"] == [3, 3, 2]
    assert ddpm["note"] == "first"
    # a seed without a value: mean of the others, and how many seeds had one
    assert adv["FD (exact)"] == pytest.approx(6.0) and adv["num_seeds"]["FD (exact)"] == 2
    assert adv["std"]["FD (exact)"] == pytest.approx(math.sqrt(2.0))
    assert adv["num_evaluated"] == pytest.approx(80 / 3)


def test_aggregate_sections_merges_nested_rows_and_keeps_first_settings():
    def section(seed: int, fd: float) -> dict[str, Any]:
        table = {"window": "spread", "rows": [{"model": "m", "series": "fgsm", "values": [fd]}]}
        return {"attacks": {"subspace": [table], "settings": {"seed": seed}},
                "steps": {"settings": {"training_seed": seed},
                          "rows": [{"data": "clean", "method": "ddpm", "steps": 10,
                                    "FD (exact)": fd}]}}
    merged = aggregate_sections([section(0, 1.0), section(1, 3.0)])
    assert merged["attacks"]["settings"] == {"seed": 0}
    row = merged["attacks"]["subspace"][0]["rows"][0]
    assert row["values"] == [2.0] and row["std"]["values"] == [pytest.approx(math.sqrt(2))]
    assert merged["steps"]["rows"][0]["steps"] == 10
    assert merged["steps"]["rows"][0]["FD (exact)"] == 2.0


def test_verdict_agreement_counts_seeds():
    assert agreement(["held"] * 3) == ("held", "held in 3/3 seeds")
    assert agreement(["held", "did not hold", "held"]) == (
        "held", "held in 2/3 seeds, did not hold in 1/3")
    assert agreement(["held", "partly"]) == ("mixed", "held in 1/2 seeds, partly in 1/2")
    # a claim without checks (purification's) keeps the seeds' majority
    per_seed = [[{"id": "a", "verdict": "held"}], [{"id": "a", "verdict": "partly"}],
                [{"id": "a", "verdict": "held"}]]
    on_means = [{"id": "a", "verdict": "partly", "checks_passed": 1, "checks": 2,
                 "evidence": "means"}]
    (claim,) = combine_claims(per_seed, on_means)
    assert claim["verdict"] == "held" and claim["seed_verdicts"] == ["held", "partly", "held"]
    assert claim["agreement"] == "held in 2/3 seeds, partly in 1/3"
    assert claim["evidence"] == "means"


def test_checks_over_seeds_use_a_student_t_interval_of_the_per_seed_effects():
    from scipy import stats as sps

    def seed_claim(value: float) -> list[dict[str, Any]]:
        c = check("x: a − b", {"value": value, "ci95": [value - 0.1, value + 0.1], "n": 50},
                  direction="less", min_effect=0.05)
        return [claim_row("a", "A beats B", "here", [c], "numbers")]

    values = [-1.0, -1.2, -0.9]
    (combined,) = combine_claims([seed_claim(v) for v in values], seed_claim(-1.03))
    (c,) = combined["comparisons"]
    lo, hi = sps.t.interval(0.95, 2, loc=statistics.fmean(values),
                            scale=statistics.stdev(values) / math.sqrt(3))
    assert c["ci95"] == [pytest.approx(lo), pytest.approx(hi)] and c["n"] == 3
    assert combined["verdict"] == "held" and combined["agreement"] == "held in 3/3 seeds"
    # seeds that disagree in sign: the interval spans zero → inconclusive
    (combined,) = combine_claims([seed_claim(v) for v in (-1.0, 1.0, -0.2)], seed_claim(0.0))
    assert combined["verdict"] == "inconclusive"


def test_report_cells_show_mean_and_std():
    row = {"FD (exact)": 1.234, "values": [1.0, 2.0], "std": {"FD (exact)": 0.0512,
                                                             "values": [None, 0.25]}}
    assert cell(row, "FD (exact)") == "1.23 ± 0.051"
    assert cell({"FD (exact)": 1.5}, "FD (exact)") == 1.5
    assert cells(row, "values") == [1.0, "2 ± 0.25"]


# --------------------------------------------------------------------------- controls
def _cells(diffs: dict[tuple[float, float], tuple[float, float]]) -> list[dict[str, Any]]:
    """Sweep cells with FD(DDPM) = 10 and FD difference ``v`` ± ``half`` (its 95% interval)."""
    return [{"fraction": p, "sigma": s, "FD DDPM": 10.0, "FD difference": v,
             "FD difference ci95": [v - half, v + half], "n": 100}
            for (p, s), (v, half) in diffs.items()]


def test_sweep_onset_needs_an_interval_beyond_the_minimum_effect():
    # m = 5% of FD(DDPM) = 0.5: at σ = 0.1, 1 ± 0.8 reaches below it, 2 ± 0.5 does not
    cells = _cells({(0.0, 0.1): (-2.0, 0.5), (0.3, 0.1): (1.0, 0.8), (0.6, 0.1): (2.0, 0.5),
                    (0.9, 0.1): (3.0, 0.5),
                    (0.0, 0.4): (-2.0, 0.5), (0.3, 0.4): (2.0, 0.5), (0.6, 0.4): (3.0, 0.5),
                    (0.9, 0.4): (4.0, 0.5)})
    assert sweep_onset(cells) == {0.1: 0.6, 0.4: 0.3}
    helps, clean = sweep_claims({"differences": cells})
    assert helps["verdict"] == "held" and (helps["checks_passed"], helps["checks"]) == (2, 2)
    assert "σ = 0.1: from p = 0.6" in helps["evidence"]
    assert clean["verdict"] == "held"  # Robust does not help on clean data (shown: it hurts)
    assert clean["comparisons"][0]["ci95"] == [-2.5, -1.5]


def test_sweep_claims_single_seed_and_no_help():
    cells = _cells({(0.0, 0.2): (2.0, 0.5), (0.9, 0.2): (3.0, 0.5),
                    (0.0, 0.4): (2.0, 0.5), (0.9, 0.4): (-3.0, 0.5)})
    assert sweep_onset(cells) == {0.2: 0.0, 0.4: None}
    assert robust_helps({"fraction": 0.9, "sigma": 0.2, "FD difference": None}) is None
    helps, clean = sweep_claims({"differences": cells})
    assert helps["verdict"] == "partly" and "σ = 0.4: at no p" in helps["evidence"]
    assert clean["verdict"] == "did not hold"
    # an interval straddling the minimum effect: inconclusive, never "held"
    wide = _cells({(0.0, 0.2): (0.0, 1.0), (0.9, 0.2): (0.6, 1.0)})
    assert [c["verdict"] for c in sweep_claims({"differences": wide})] == ["inconclusive"] * 2


def test_sweep_differences_share_the_clean_models():
    rows = [{"fraction": 0.0, "sigma": None, "method": "ddpm", "FD (exact)": 1.0},
            {"fraction": 0.0, "sigma": None, "method": "robust-adv", "FD (exact)": 1.5},
            {"fraction": 0.9, "sigma": 0.2, "method": "ddpm", "FD (exact)": 3.0},
            {"fraction": 0.9, "sigma": 0.2, "method": "robust-adv", "FD (exact)": None}]
    cells = sweep_differences(rows, (0.0, 0.9), (0.1, 0.2),
                              {"p0": {"value": -0.5, "ci95": [-0.7, -0.3], "n": 9}})
    by = {(c["fraction"], c["sigma"]): c["FD difference"] for c in cells}
    assert by == {(0.0, 0.1): -0.5, (0.0, 0.2): -0.5, (0.9, 0.1): None, (0.9, 0.2): None}
    assert cells[0]["FD difference ci95"] == [-0.7, -0.3] and cells[-1]["n"] is None


def _compute_section(adv_fd: float | None, adv_err: float | None) -> dict[str, Any]:
    def row(method, training, steps, fd, err):
        return {"method": method, "training": training, "train_steps": steps, "FD (exact)": fd,
                "subspace error": err, "step_seconds": 0.01, "step_time_total": steps * 0.01}
    matched = {"FD (exact)": 2.5, "subspace error": 2.0}
    effects = {f"{m}: robust-adv − compute-matched ddpm": _effect(v - matched[m], 0.1)
               for m, v in (("FD (exact)", adv_fd), ("subspace error", adv_err))
               if v is not None}
    return {"rows": [row("ddpm", "plan steps", 100, 3.0, 3.0),
                     row("ddpm", "compute-matched", 220, 2.5, 2.0),
                     row("robust-adv", "plan steps", 100, adv_fd, adv_err)],
            "effects": effects}


def test_compute_claim_from_numbers():
    (claim,) = compute_claims(_compute_section(2.0, 1.5))
    assert claim["verdict"] == "held" and claim["checks"] == 2
    assert "220 steps" in claim["evidence"]
    assert compute_claims(_compute_section(2.0, 2.5))[0]["verdict"] == "partly"
    assert compute_claims(_compute_section(2.6, 2.5))[0]["verdict"] == "did not hold"
    assert compute_claims(_compute_section(None, None))[0]["verdict"] == "inconclusive"
    assert compute_claims(_compute_section(2.5, 2.0))[0]["verdict"] == "inconclusive"
    assert matched_steps(2.2, 0.01) == 220 and matched_steps(0.001, 0.01) == 1


def test_sections_and_seeds_are_checked_before_any_work(tmp_path):
    assert resolve_sections(None) == ("subspace", "toy", "attacks", "steps", "adaptive",
                                      "purification")
    assert resolve_sections(None, quick=True) == ("subspace", "toy", "attacks", "steps",
                                                  "adaptive")
    assert resolve_sections(["adaptive"]) == ("subspace", "adaptive")
    assert resolve_sections(["purification"]) == ("purification",)
    assert resolve_sections(["compute", "sweep"]) == ("sweep", "compute")
    assert resolve_sections(["steps"]) == ("subspace", "steps")
    assert resolve_sections(["all"]) == tuple(SECTIONS_BY_NAME)
    with pytest.raises(ConfigError, match="'swep' is not one of"):
        run_demo(tmp_path / "a", sections=["swep"])
    with pytest.raises(ConfigError, match="seeds 0 is not an integer >= 1"):
        run_demo(tmp_path / "b", seeds=0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _controls_plan() -> DemoPlan:
    few = TrainSettings(steps=4, batch_size=64, warmup=1)
    tiny = _tiny_plan()
    return replace(tiny, sweep=SweepPlan(fractions=(0.0, 0.9), sigmas=(0.1, 0.4), train=few,
                                         num_data=200, num_samples=40, sampler_steps=10),
                   compute=ComputePlan(train=few, num_data=200, num_samples=40,
                                       sampler_steps=10))


@pytest.mark.slow
def test_controls_end_to_end_over_two_seeds(tmp_path):
    """The sweep and compute sections at toy size, two seeds: per-seed numbers kept, the
    aggregate is their mean, verdicts count seeds, heatmap and report written."""
    results = run_demo(tmp_path, plan=_controls_plan(), sections=("sweep", "compute"), seeds=2)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["seeds"] == [0, 1] and on_disk["sections_run"] == ["sweep", "compute"]
    assert set(on_disk["sections"]) == {"corruption_sweep", "compute_matched"}
    sweep = on_disk["sections"]["corruption_sweep"]
    # p = 0 trained once per method; 2 × (1 + 2) models per seed
    assert len(sweep["rows"]) == 6 and len(sweep["differences"]) == 4
    for i, cell_ in enumerate(sweep["differences"]):
        per = [p["sections"]["corruption_sweep"]["differences"][i]["FD difference"]
               for p in on_disk["per_seed"]]
        assert cell_["FD difference"] == pytest.approx(statistics.fmean(per))
        assert cell_["std"]["FD difference"] == pytest.approx(statistics.stdev(per))
    rows = {(r["method"], r["training"]): r for r in on_disk["sections"]["compute_matched"]["rows"]}
    for p in on_disk["per_seed"]:
        seed_rows = {(r["method"], r["training"]): r
                     for r in p["sections"]["compute_matched"]["rows"]}
        adv, same = seed_rows["robust-adv", "plan steps"], seed_rows["ddpm", "plan steps"]
        matched = seed_rows["ddpm", "compute-matched"]
        assert matched["train_steps"] == matched_steps(adv["step_seconds"] * 4,
                                                       same["step_seconds"])
        assert (tmp_path / f"seed-{p['seed']}" / "runs" / "compute-ddpm-matched").is_dir()
    assert rows["robust-adv", "plan steps"]["train_steps"] == 4
    ids = [c["id"] for c in on_disk["claims"]]
    assert ids == ["sweep-robust-helps-when-corrupted", "sweep-no-help-on-clean",
                   "robust-beats-compute-matched-ddpm"]
    for c in on_disk["claims"]:
        assert len(c["seed_verdicts"]) == 2 and "/2 seeds" in c["agreement"]
    assert (tmp_path / sweep["figures"]["heatmap"]).stat().st_size > 1000
    text = (tmp_path / "report.md").read_text()
    assert "2 seeds" in text and " ± " in text and "Control: Corruption sweep" in text
    columns, table = headline_rows(results)
    assert table and all(len(r) == len(columns) for r in table)


# --- verdicts from hand-made results (fast) -------------------------------------------------

def _effect(value: float, half: float, n: int = 100) -> dict[str, Any]:
    return {"value": value, "ci95": [value - half, value + half], "n": n}


def _claim_row(claims: list[dict[str, Any]], cid: str) -> dict[str, Any]:
    return next(c for c in claims if c["id"] == cid)


def _damage(mean: float, n: int = 60, seed: int = 0) -> list[float]:
    """Per-sample pixel deviations with this mean (log-normal spread, seeded)."""
    rng = np.random.default_rng(seed)
    x = rng.lognormal(0.0, 0.5, n)
    return list(mean * x / x.mean())


def test_combine_rule_of_a_claim():
    def v(*verdicts: str) -> str:
        return combine([{"verdict": x} for x in verdicts])

    assert v() == "n/a" and v("held", "held") == "held"
    assert v("did not hold", "did not hold") == "did not hold"
    assert v("inconclusive", "inconclusive") == "inconclusive"
    assert v("held", "did not hold") == "partly" and v("held", "inconclusive") == "partly"
    assert v("inconclusive", "did not hold") == "did not hold"


def _table(ddpm: dict[str, float], adv: dict[str, float], percent: float = 50.0
           ) -> dict[str, Any]:
    """One attack-curve table: per model the FGSM and random rows at ``percent`` with
    per-sample pixel deviations of the given means (the same seeds in every arm)."""
    rows = []
    for model, means in (("a-ddpm", ddpm), ("a-robust-adv", adv)):
        for series, key in (("fgsm-mean-spread", "fgsm"), ("random-sign-spread", "random")):
            per = means[key] if isinstance(means[key], list) else _damage(means[key])
            rows.append({"model": model, "series": series, "percents": [0.0, percent],
                         "values": [1.0, 1.0], "improved_under_attack": [None, means.get(
                             "improved", False)],
                         "pixel_deviation_per_sample": [None, per]})
    return {"window": "spread", "num_samples": 60, "rows": rows}


def _attacks(*tables: dict[str, Any]) -> dict[str, Any]:
    return {"subspace": list(tables), "images": [], "settings": {}}


def test_attack_claims_identical_arms_are_inconclusive():
    from dmattack.demo.claims import attack_claims

    same = {"fgsm": _damage(1.0, seed=1), "random": _damage(0.5, seed=2)}
    slow = _claim_row(attack_claims(_attacks(_table(same, dict(same)))), "attack-robust-slower")
    (check_,) = slow["comparisons"]
    assert slow["verdict"] == "inconclusive" and check_["value"] == 0.0
    assert check_["ci95"] == [0.0, 0.0] and check_["n"] == 60


def test_attack_claims_planted_effects_held_opposite_and_mixed():
    from dmattack.demo.claims import attack_claims

    # Robust_adv: attack/random ratio 1.0; DDPM: 3.0 — a large planted effect
    strong, weak = {"fgsm": 3.0, "random": 1.0}, {"fgsm": 1.0, "random": 1.0}
    slow, like = attack_claims(_attacks(_table(strong, weak)))
    assert slow["verdict"] == "held" and slow["comparisons"][0]["ci95"][1] < -0.15
    # "no stronger than random": DDPM's ratio 3 is not, Robust_adv's 1 is → partly
    assert like["verdict"] == "partly" and like["checks"] == 2
    slow, _ = attack_claims(_attacks(_table(weak, strong)))
    assert slow["verdict"] == "did not hold"
    slow, _ = attack_claims(_attacks(_table(strong, weak), _table(weak, strong, 100.0)))
    assert slow["verdict"] == "partly" and (slow["checks_passed"], slow["checks_failed"]) == (1, 1)
    # the same samples in another table (e.g. every window at 100%) are one check, not two
    twice = {"fgsm": _damage(3.0, seed=5), "random": _damage(1.0, seed=6)}
    other = {"fgsm": _damage(1.0, seed=7), "random": _damage(1.0, seed=8)}
    slow, like = attack_claims(_attacks(_table(twice, other), _table(twice, other)))
    assert slow["checks"] == 1 and like["checks"] == 2
    assert slow["comparisons"][0]["same_samples_as"] == [
        "subspace/spread/n60/fgsm-mean-spread at 50%"]


def test_a_falling_metric_under_attack_is_flagged_not_counted():
    from dmattack.demo.claims import attack_claims

    # Robust_adv's FD falls under attack but its damage relative to random equals DDPM's
    same = {"fgsm": _damage(2.0, seed=3), "random": _damage(1.0, seed=4)}
    slow, _ = attack_claims(_attacks(_table(same, {**same, "improved": True})))
    assert slow["verdict"] == "inconclusive"
    assert "fell under attack" in slow["evidence"] and "never counted" in slow["evidence"]


def _subspace_section(adv: dict[str, Any], ddpm: dict[str, Any],
                      effects: dict[str, Any] | None = None) -> dict[str, Any]:
    base = {"num_nonfinite": 0, "train_error": None}
    return {"rows": [{"data": d, "method": m, **base, **vals}
                     for d in ("clean", "corrupted")
                     for m, vals in (("robust-adv", adv), ("ddpm", ddpm))],
            "effects": effects or {}}


def test_robust_smooths_clean_needs_a_variance_ratio_below_one():
    from dmattack.demo.claims import subspace_claims

    def verdict(vr_adv: float, vr_ddpm: float, half: float = 0.02) -> str:
        effects = {"clean: variance ratio: robust-adv − ddpm": _effect(vr_adv - vr_ddpm, half),
                   "clean: variance ratio: robust-adv": _effect(vr_adv, half)}
        section = _subspace_section({"variance ratio": vr_adv}, {"variance ratio": vr_ddpm},
                                    effects)
        return _claim_row(subspace_claims(section), "robust-smooths-clean")["verdict"]

    assert verdict(0.8, 0.95) == "held"
    assert verdict(1.1, 1.3) == "partly"  # below DDPM but not below the data's variance
    assert verdict(0.9, 0.8) == "partly"
    assert verdict(1.2, 1.1) == "did not hold"
    assert verdict(0.8, 0.95, half=0.5) == "inconclusive"  # intervals too wide to tell


def _samples(n: int, shift: float, seed: int) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed)) + shift


def test_set_effects_recompute_the_metric_on_paired_resamples():
    def score_fn(_: str, x: torch.Tensor) -> dict[str, float]:
        return {"mean": float(x.mean())}

    a = _samples(200, 0.0, 0)
    arms = {"a": a, "copy": a.clone(), "b": a + 0.5, "c": _samples(200, 0.0, 1)}
    contrasts = {k: ("mean", ((1.0, k), (-1.0, "a")), 0.0) for k in ("copy", "b", "c")}
    contrasts["missing"] = ("mean", ((1.0, "z"),), 0.0)
    eff = set_effects(score_fn, arms, contrasts, seed=0, n_resamples=1000)
    assert "missing" not in eff
    # identical arms: every resample gives 0 → a zero-width interval → inconclusive
    assert eff["copy"]["value"] == 0.0 and eff["copy"]["ci95"] == [0.0, 0.0]
    assert check("x", eff["copy"], direction="less", min_effect=0.0)["verdict"] == "inconclusive"
    # a constant shift of every paired sample: the difference has no spread at all
    assert eff["b"]["ci95"] == [pytest.approx(0.5), pytest.approx(0.5)]
    # independent arms: the paired bootstrap interval is close to the normal-theory one
    diff = (arms["c"] - a).mean(1)
    half = 1.96 * float(diff.std()) / math.sqrt(200)
    lo, hi = eff["c"]["ci95"]
    assert eff["c"]["value"] == pytest.approx(float(diff.mean()), abs=1e-6)
    assert hi - lo == pytest.approx(2 * half, rel=0.15)


def test_a_robust_row_with_nonfinite_samples_never_wins():
    from dmattack.demo.claims import steps_claims, subspace_claims, toy_claims

    good = {"subspace error": 0.1, "subspace PSNR (dB)": 30.0, "FD (exact)": 1.0,
            "variance ratio": 0.8}
    bad = {"subspace error": 0.5, "subspace PSNR (dB)": 10.0, "FD (exact)": 5.0,
           "variance ratio": 0.95}
    effects = {f"{d}: {m}: robust-adv − ddpm": _effect(good[m] - bad[m], 0.01)
               for d in ("clean", "corrupted") for m in good}
    effects["clean: variance ratio: robust-adv"] = _effect(0.8, 0.01)
    section = _subspace_section(good, bad, effects)
    claims = subspace_claims(section)
    assert _claim_row(claims, "robust-adv-beats-ddpm")["verdict"] == "held"
    assert _claim_row(claims, "robust-smooths-clean")["verdict"] == "held"
    for r in section["rows"]:
        if r["method"] == "robust-adv":
            r["num_nonfinite"] = 3  # metrics of the finite rows alone
    claims = subspace_claims(section)
    assert _claim_row(claims, "robust-adv-beats-ddpm")["verdict"] == "did not hold"
    assert _claim_row(claims, "robust-smooths-clean")["verdict"] == "did not hold"

    toy = {"rows": [{"dataset": "oblique-plane", "corruption": "outliers", "method": m,
                     "plane distance": d, "FD (exact)": 1.0, "num_nonfinite": n}
                    for m, d, n in (("ddpm", 0.5, 0), ("robust-adv", 0.1, 2))],
           "effects": {"oblique-plane/outliers: plane distance: robust-adv − ddpm":
                       _effect(-0.4, 0.01)}}
    assert _claim_row(toy_claims(toy), "toy-robust-beats-ddpm")["verdict"] == "did not hold"

    steps = {"rows": [{"data": "clean", "method": m, "steps": s, "FD (exact)": fd,
                       "num_nonfinite": n}
                      for m, s, fd, n in (("ddpm", 10, 3.0, 0), ("ddpm", 50, 1.0, 0),
                                          ("robust-adv", 10, 1.1, 4),
                                          ("robust-adv", 50, 1.0, 0))],
             "effects": {"clean: FD change: robust-adv − ddpm": _effect(-1.9, 0.2)}}
    assert steps_claims(steps)[0]["verdict"] == "did not hold"
    steps["rows"][2]["num_nonfinite"] = 0
    assert steps_claims(steps)[0]["verdict"] == "held"
    steps["effects"]["clean: FD change: robust-adv − ddpm"] = _effect(0.0, 0.02)
    assert steps_claims(steps)[0]["verdict"] == "inconclusive"  # within ±5% of DDPM's FD


def test_attack_tables_count_the_attacked_steps_and_mark_the_last(tmp_path):
    from types import SimpleNamespace

    from dmattack.demo.experiments import _merge_curves
    from dmattack.demo.report_sections import _curve_table

    def points(series: str, values: dict[float, float]) -> list[dict[str, Any]]:
        return [{"model_name": "m-ddpm", "series": "clean" if q == 0 else series,
                 "percent": q, "metrics": {"variance ratio": 1.0}} for q in values]

    curves = [{"metric": "FD", "percents": [0.0, 50.0, 100.0],
               "steps_attacked": ["0 of 25", "13 of 25", "25 of 25"],
               "rows": [{"model": "m-ddpm", "series": s, "method": m, "values": [1.0, 2.0, 3.0],
                         "last_step_attacked": last}],
               "points": points(s, {0.0: 1, 50.0: 2, 100.0: 3}),
               "protocol": {"sampler": {"label": "respaced-25"}, "seed": 0},
               "csv": str(tmp_path / f"{m}.csv"), "png": str(tmp_path / f"{m}.png"),
               "seconds": 1.0}
              for s, m, last in (("fgsm-mean-first", "fgsm", [False, False, True]),
                                 ("random-sign-first", "random", [False, False, True]))]
    ctx = SimpleNamespace(rel=lambda path: Path(path).relative_to(tmp_path).as_posix())
    table = _merge_curves(ctx, curves)
    assert table["steps_attacked"] == ["0 of 25", "13 of 25", "25 of 25"]
    assert table["rows"][0]["last_step_attacked"] == [False, False, True]
    text = _curve_table({**table, "figure": "f.png"})
    assert "| model | attack | 0% (0 of 25) | 50% (13 of 25) | 100% (25 of 25) |" in text
    assert "| m-ddpm | fgsm-mean-first | 1 | 2 | 3† |" in text
    assert "† the attacked steps include the last reverse step" in text


def _adaptive_section(ddpm: dict[str, Any], adv: dict[str, Any],
                      images: tuple[dict[str, Any], dict[str, Any]] | None = None,
                      converged: bool | None = True) -> dict[str, Any]:
    """Rows of the adaptive section: per data kind and model, the per-sample pixel deviation
    of each attack with the given mean (or list), the same seeds in every arm."""
    rows = []
    for kind, (d, a) in (("subspace", (ddpm, adv)), ("images", images or (ddpm, adv))):
        for model, numbers in (("ddpm", d), ("robust-adv", a)):
            rows.append({"data": kind, "model": model, "method": "clean", "value": 1.0})
            for i, method in enumerate(("pgd-mean", "trajectory", "random")):
                per = numbers[method]
                per = per if isinstance(per, list) else _damage(per, seed=i)
                rows.append({"data": kind, "model": model, "method": method,
                             "pixel deviation mean": float(np.mean(per)),
                             "pixel_deviation_per_sample": per, "increase": 0.0,
                             "converged": converged if method == "trajectory" else None})
    return {"settings": {"metrics": {"subspace": "FD (exact)", "images": "KID (digits-cnn)"}},
            "rows": rows}


def test_adaptive_claims_identical_models_are_inconclusive():
    same = {"pgd-mean": 1.0, "trajectory": 5.0, "random": 1.0}
    slower, strongest = adaptive_claims(_adaptive_section(same, dict(same)))
    assert slower["verdict"] == "inconclusive" and slower["checks"] == 2
    assert all(c["ci95"] == [0.0, 0.0] for c in slower["comparisons"])
    assert strongest["verdict"] == "held" and strongest["checks"] == 8
    # a byte-identical copy of the same run as "the other attack": no effect either
    copy = {"pgd-mean": _damage(5.0, seed=1), "trajectory": _damage(5.0, seed=1),
            "random": 1.0}
    strongest = adaptive_claims(_adaptive_section(copy, copy))[1]
    assert strongest["checks_inconclusive"] == 4 and strongest["checks_passed"] == 4


def test_adaptive_claims_planted_effects_held_opposite_and_mixed():
    ddpm = {"pgd-mean": 1.0, "trajectory": 20.0, "random": 1.0}  # ratio 20
    adv = {"pgd-mean": 0.5, "trajectory": 1.5, "random": 0.8}  # ratio ~1.9
    slower, strongest = adaptive_claims(_adaptive_section(ddpm, adv))
    assert (slower["verdict"], slower["checks"]) == ("held", 2)
    assert slower["comparisons"][0]["ratio DDPM"] == pytest.approx(20.0)
    assert "attack_note" not in slower and strongest["verdict"] == "held"
    assert adaptive_claims(_adaptive_section(adv, ddpm))[0]["verdict"] == "did not hold"
    mixed = adaptive_claims(_adaptive_section(ddpm, adv, images=(adv, ddpm)))[0]
    assert (mixed["verdict"], mixed["checks_passed"], mixed["checks_failed"]) == ("partly", 1, 1)
    # a trajectory attack weaker than the random control
    weak = adaptive_claims(_adaptive_section({**ddpm, "trajectory": 0.1}, adv))[1]
    assert weak["verdict"] == "partly" and weak["checks_failed"] == 4


def test_adaptive_verdicts_on_an_unconverged_attack_say_so():
    ddpm = {"pgd-mean": 1.0, "trajectory": 20.0, "random": 1.0}
    adv = {"pgd-mean": 0.5, "trajectory": 1.5, "random": 0.8}
    for flag, text in ((False, "made on an unconverged attack"),
                       (None, "convergence was not recorded")):
        slower, strongest = adaptive_claims(_adaptive_section(ddpm, adv, converged=flag))
        assert text in slower["claim"] and text in strongest["attack_note"]
        assert slower["verdict"] == "held"  # the verdict stands, labelled


def _purification_section(ddpm: list[float], adv: list[float]) -> dict[str, Any]:
    rows = [{"purifier": "none", "t_star": None, "attack": "pgd-eot", "eval_mode": "single",
             "num_samples": 48, "clean_accuracy": 1.0, "robust_accuracy": 0.0}]
    for name, accs in (("ddpm", ddpm), ("robust-adv", adv)):
        for t_star, acc in zip((0.1, 0.2), accs, strict=True):
            rows += [{"purifier": name, "t_star": t_star, "attack": attack,
                      "eval_mode": "single", "num_samples": 48, "clean_accuracy": 0.9,
                      "robust_accuracy": acc if attack == "pgd-eot" else 0.9}
                     for attack in ("pgd-eot", "bpda-eot")]
    return {"settings": {"t_stars": [0.1, 0.2]}, "rows": rows}


def test_purification_claim_from_numbers():
    (claim,) = purification_claims(_purification_section([0.104, 0.167], [0.146, 0.2]))
    assert claim["verdict"] == "held" and claim["checks"] == 2
    assert "t*=0.1: Robust_adv 14.6% vs DDPM 10.4%" in claim["evidence"]
    # the measured 48-digit run: equal at t* = 0.2, so partly (BPDA rows do not count)
    assert purification_claims(_purification_section([0.104, 0.167], [0.146, 0.167]))[0][
        "verdict"] == "partly"
    assert purification_claims(_purification_section([0.3, 0.3], [0.1, 0.2]))[0][
        "verdict"] == "did not hold"


def test_cli_demo_refuses_bad_seeds_and_sections_in_one_line(tmp_path):
    for args, message in ((["--seeds", "0"], "--seeds"), (["--section", "adaptiv"], "--section"),
                          (["--section", "sweep", "--seeds", "x"], "--seeds")):
        result = CliRunner().invoke(cli.main, ["demo", "--out", str(tmp_path / "r"), *args])
        assert result.exit_code == 2, result.output
        assert len(result.output.strip().splitlines()) == 1 and message in result.output
    assert not (tmp_path / "r").exists()


def test_headline_of_a_purification_only_run():
    section = _purification_section([0.1, 0.2], [0.3, 0.2])
    results = {"sections": {"purification": section}, "seeds": [0]}
    columns, rows = headline_rows(results)
    assert columns[:3] == ["purifier", "t*", "attack"] and len(rows) == len(section["rows"])
    assert "purified" in demo_pkg.headline_title(results)


def test_narrow_ranges_get_a_linear_axis():
    """Issue 20: variance ratios over 0.7–1.05 on a log axis were unreadable."""
    import matplotlib.pyplot as plt

    from dmattack.demo.figures import _y_scale

    fig, ax = plt.subplots()
    _y_scale(ax, [0.7, 0.9, 1.05, None])
    assert ax.get_yscale() == "linear"
    _y_scale(ax, [0.001, 0.5, float("nan")])
    assert ax.get_yscale() == "log"
    plt.close(fig)
