"""`dmattack demo --quick` end to end: every section present with finite numbers, a report
that embeds existing figures, and the progress callback (run once per module)."""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import cli
import dmattack.demo as demo_pkg
from dmattack.demo import headline_rows, run_demo
from dmattack.demo.plan import (
    AttackPlan,
    CurvePlan,
    DemoPlan,
    StepsPlan,
    SubspacePlan,
    ToyPlan,
    TrainSettings,
    quick_plan,
)
from dmattack.demo.pool import TaskPool

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
    for kind, metric in (("subspace", "FD (exact)"), ("images", "FID (digits-cnn)")):
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
    assert on_disk["timings"]["total"] > 0
    assert on_disk["provenance"]["versions"]["torch"]
    assert results["sections"].keys() == on_disk["sections"].keys()


@pytest.mark.slow
def test_report_embeds_existing_figures(demo):
    out, _, _ = demo
    text = (out / "report.md").read_text()
    for heading in ("What held and what did not", "1. Corrupted", "2. 3-D", "3. Attacks",
                    "4. Fewer sampling steps", "Timings"):
        assert heading in text
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
    with pytest.raises(ValueError, match="not empty"):
        run_demo(tmp_path, quick=True)


def _tiny_plan() -> DemoPlan:
    """Every section at toy size (seconds): for checking the CLI's wiring, not the numbers."""
    few = TrainSettings(steps=4, batch_size=64, warmup=1)
    return DemoPlan(
        True, SubspacePlan(train=few, num_data=200, num_samples=40, sampler_steps=20),
        ToyPlan(datasets=("oblique-plane",), train=few, num_data=200, num_samples=40,
                sampler_steps=10, num_trajectories=2),
        AttackPlan(subspace=(CurvePlan(("fgsm",), ("spread",), (100.0,), 40, 10),),
                   images=(CurvePlan(("random",), ("spread",), (100.0,), 16, 5),),
                   image_train=TrainSettings(preset="tiny", steps=3, batch_size=16, warmup=1)),
        StepsPlan(steps=(20, 10)))


def test_cli_demo_prints_headline_and_report(tmp_path, monkeypatch):
    """The CLI end to end on a toy-size plan, retraining the digits U-Nets (--train-images)."""
    monkeypatch.setattr(demo_pkg, "quick_plan", _tiny_plan)
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


# --- verdicts from hand-made results (fast) -------------------------------------------------

def _curve_row(model: str, series: str, at: dict[int, float | None]) -> dict[str, Any]:
    return {"model": model, "series": series, "percents": list(at), "values": list(at.values())}


def _attacks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"subspace": [{"rows": rows}], "images": [], "settings": {}}


def _claim_row(claims: list[dict[str, Any]], cid: str) -> dict[str, Any]:
    return next(c for c in claims if c["id"] == cid)


def test_attack_like_random_compares_the_percents_both_ran():
    from dmattack.demo.claims import attack_claims

    # PGD runs at 50% only, random at 25-100%. Here PGD (+0.5) is weaker than random at 50%
    # (+1.0): "held", with the shared percent named.
    rows = []
    for model in ("a-ddpm", "a-robust-adv"):
        rows.append(_curve_row(model, "pgd", {0: 1.0, 50: 1.5}))
        rows.append(_curve_row(model, "random", {0: 1.0, 25: 1.1, 50: 2.0, 100: 4.0}))
    like = _claim_row(attack_claims(_attacks(rows)), "attack-like-random")
    assert (like["verdict"], like["checks"]) == ("held", 2)
    assert "at 50%: +0.5 vs random +1" in like["evidence"]
    # PGD +2 is twice random's +1 at 50%: "did not hold". Random's mean over its own percents
    # (+0.5, +1, +6: +2.5) would have called PGD no stronger than random.
    rows = []
    for model in ("a-ddpm", "a-robust-adv"):
        rows.append(_curve_row(model, "pgd", {0: 1.0, 50: 3.0}))
        rows.append(_curve_row(model, "random", {0: 1.0, 25: 1.5, 50: 2.0, 100: 7.0}))
    like = _claim_row(attack_claims(_attacks(rows)), "attack-like-random")
    assert like["verdict"] == "did not hold"


def test_attack_robust_slower_uses_shared_percents():
    from dmattack.demo.claims import attack_claims

    rows = [_curve_row("a-ddpm", "fgsm", {0: 1.0, 50: 2.0, 100: 9.0}),
            _curve_row("a-robust-adv", "fgsm", {0: 1.0, 50: 2.5, 100: None})]
    slow = _claim_row(attack_claims(_attacks(rows)), "attack-robust-slower")
    # shared: 50% only (Robust's 100% point is missing): +1 vs +1.5 → Robust degrades faster
    assert slow["verdict"] == "did not hold" and "at 50%" in slow["evidence"]


def _subspace_section(adv: dict[str, Any], ddpm: dict[str, Any]) -> dict[str, Any]:
    base = {"num_nonfinite": 0, "train_error": None}
    return {"rows": [{"data": d, "method": m, **base, **vals}
                     for d in ("clean", "corrupted")
                     for m, vals in (("robust-adv", adv), ("ddpm", ddpm))]}


def test_robust_smooths_clean_needs_a_variance_ratio_below_one():
    from dmattack.demo.claims import subspace_claims

    def verdict(vr_adv: float, vr_ddpm: float) -> str:
        section = _subspace_section({"variance ratio": vr_adv}, {"variance ratio": vr_ddpm})
        return _claim_row(subspace_claims(section), "robust-smooths-clean")["verdict"]

    assert verdict(0.8, 0.95) == "held"
    assert verdict(1.1, 1.3) == "partly"  # below DDPM but not below the data's variance
    assert verdict(0.9, 0.8) == "partly"
    assert verdict(1.2, 1.1) == "did not hold"


def test_a_robust_row_with_nonfinite_samples_never_wins():
    from dmattack.demo.claims import steps_claims, subspace_claims, toy_claims

    good = {"subspace error": 0.1, "subspace PSNR (dB)": 30.0, "FD (exact)": 1.0,
            "variance ratio": 0.8}
    bad = {"subspace error": 0.5, "subspace PSNR (dB)": 10.0, "FD (exact)": 5.0,
           "variance ratio": 0.95}
    section = _subspace_section(good, bad)
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
                    for m, d, n in (("ddpm", 0.5, 0), ("robust-adv", 0.1, 2))]}
    assert _claim_row(toy_claims(toy), "toy-robust-beats-ddpm")["verdict"] == "did not hold"

    steps = {"rows": [{"data": "clean", "method": m, "steps": s, "FD (exact)": fd,
                       "num_nonfinite": n}
                      for m, s, fd, n in (("ddpm", 10, 3.0, 0), ("ddpm", 50, 1.0, 0),
                                          ("robust-adv", 10, 1.1, 4),
                                          ("robust-adv", 50, 1.0, 0))]}
    assert steps_claims(steps)[0]["verdict"] == "did not hold"
    steps["rows"][2]["num_nonfinite"] = 0
    assert steps_claims(steps)[0]["verdict"] == "held"
