"""Paired clean/attacked evaluation, resumable curves and default protocols."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dmattack.attacks import AttackSpec, attacked_steps
from dmattack.attacks.plan import AttackPlan
from dmattack.core.seeding import sample_seeds
from dmattack.diffusion.gaussian import GaussianDiffusion
from dmattack.diffusion.sampling import SamplerConfig, sample_batched
from dmattack.evaluation.attack_eval import (
    POINTS,
    curve_specs,
    default_protocol,
    run_attack,
    run_curve,
)
from dmattack.models import build_model
from dmattack.runs.checkpoints import LoadedModel

SAMPLER = SamplerConfig("respaced", 10)


def mlp_model(name: str, seed: int = 0, dim: int = 2) -> LoadedModel:
    torch.manual_seed(seed)
    return LoadedModel(build_model("mlp-small", (dim,)).eval(), GaussianDiffusion.from_schedule(),
                       (dim,), source=f"/runs/{name}", dataset="toy",
                       config={"model": {"preset": "mlp-small"}})


def counting_metric(calls: list):
    def metric_fn(samples: torch.Tensor) -> dict[str, float]:
        calls.append(len(samples))
        return {"norm": float(samples.norm(dim=1).mean()), "std": float(samples.std())}

    return metric_fn


def test_run_attack_writes_protocol_samples_and_pictures(tmp_path):
    loaded = mlp_model("a")
    spec = AttackSpec("fgsm", 50, loss="eps")
    ticks = []
    result = run_attack(loaded, spec, num_samples=12, seed=4, sampler=SAMPLER, batch_size=5,
                        metric_fn=counting_metric([]), device="cpu", out_dir=tmp_path,
                        progress=lambda done, total: ticks.append((done, total)))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["attack"]["label"] == "fgsm-eps-spread-50%" and saved["window"] == "spread"
    assert saved["attacked_steps"] == attacked_steps(10, 50, "spread")
    assert saved["sampler"]["num_steps"] == 10 and saved["sampler"]["label"] == "respaced-10"
    assert saved["seed"] == 4 and saved["num_samples"] == 12
    assert saved["model"]["source"] == "/runs/a" and saved["model"]["ema"] is True
    assert set(saved["metrics"]) == {"clean", "attacked"}
    assert "torch" in saved["provenance"]["versions"]
    assert ticks[-1] == (2 * 3 * 10, 2 * 3 * 10)  # 3 chunks × 10 steps, clean + attacked

    samples = load_file(str(tmp_path / "samples.safetensors"))
    with torch.no_grad():
        clean = sample_batched(loaded.model, loaded.diffusion, (2,), sample_seeds(4, 12), 5,
                               SAMPLER)
    assert torch.equal(samples["clean"], clean)
    assert not torch.allclose(samples["attacked"], clean)
    assert (tmp_path / "clean.png").stat().st_size > 0
    assert (tmp_path / "attacked.png").stat().st_size > 0


def test_zero_percent_attacked_is_the_clean_run(tmp_path):
    result = run_attack(mlp_model("a"), AttackSpec("pgd", 0), num_samples=6, seed=1,
                        sampler=SAMPLER, batch_size=6, metric_fn=counting_metric([]),
                        device="cpu", out_dir=tmp_path)
    samples = load_file(str(tmp_path / "samples.safetensors"))
    assert torch.equal(samples["clean"], samples["attacked"])
    assert result["metrics"]["clean"] == result["metrics"]["attacked"]
    assert result["num_attacked_steps"] == 0


def test_run_curve_resumes_only_missing_points(tmp_path):
    models = [mlp_model("a", 0), mlp_model("b", 1)]
    specs = curve_specs(["fgsm", "random"], [0, 50, 100])
    kw = dict(num_samples=8, seed=2, sampler=SAMPLER, batch_size=8, device="cpu",
              out_dir=tmp_path)
    calls: list = []
    first = run_curve(models, specs, metric_fn=counting_metric(calls), **kw)
    assert len(calls) == 2 * (1 + 4)  # the 0% point is each model's clean point, computed once
    assert first["metric"] == "norm" and first["percents"] == [0.0, 50.0, 100.0]
    assert [(r["series"], r["model"]) for r in first["rows"]] == [
        ("fgsm-mean-spread", "a"), ("random-sign-spread", "a"),
        ("fgsm-mean-spread", "b"), ("random-sign-spread", "b")]
    clean_a = next(p for p in first["points"] if p["label"] == "clean" and p["model"] == "/runs/a")
    assert first["rows"][0]["values"][0] == clean_a["metrics"]["norm"]
    rows = list(csv.DictReader((tmp_path / "curve.csv").open()))
    assert list(rows[0])[:7] == ["series", "model", "metric", "0% = 0 of 10 steps",
                                 "50% = 5 of 10 steps", "100% = 9 of 10 steps",
                                 "last step attacked at"] and len(rows) == 4
    # counting the 9 steps with a budget: 50% spread is steps 0, 2, 4, 6, 8; never the last
    assert all(r["last step attacked at"] == "none" for r in rows)
    for r, row in zip(rows, first["rows"], strict=True):
        d = row["damage"][1]["pixel deviation"]
        assert [float(r[f"pixel deviation 50% {k}"]) for k in ("mean", "ci lo", "ci hi")] == [
            d["mean"], *d["ci95"]]
        assert r["pixel deviation 0% mean"] == ""  # the clean point has no damage
    assert (tmp_path / "curve.png").stat().st_size > 0

    # a killed run: one point lost, and the last line cut mid-write
    store = tmp_path / POINTS
    lines = store.read_text().splitlines(keepends=True)
    lost = [json.loads(lines[3])["key"], json.loads(lines[-1])["key"]]
    store.write_text("".join(lines[:3] + lines[4:-1]) + lines[-1][: len(lines[-1]) // 2])
    calls.clear()
    progress = []
    again = run_curve(models, specs, metric_fn=counting_metric(calls),
                      progress=lambda done, total, rec: progress.append(rec), **kw)
    assert len(calls) == 2
    assert sorted(r["key"] for r in progress if not r["resumed"]) == sorted(lost)
    assert again["rows"] == first["rows"]
    def untimed(points):
        return [{k: v for k, v in p.items() if k != "seconds"} for p in points]

    assert untimed(again["points"]) == untimed(first["points"])
    assert [json.loads(line) for line in store.read_text().splitlines()]  # all lines parse
    calls.clear()
    run_curve(models, specs, metric_fn=counting_metric(calls), **kw)
    assert calls == []


def test_default_protocol():
    tiny = LoadedModel(build_model("tiny", (1, 8, 8)), GaussianDiffusion.from_schedule(),
                       (1, 8, 8), "/runs/t", config={"model": {"preset": "tiny"}})
    p = default_protocol(tiny)
    assert p.sampler.name == "respaced" and p.sampler.steps < 1000 and p.num_samples < 10_000
    mlp = default_protocol(mlp_model("m"))
    assert mlp.sampler.name == "respaced"
    pipe = LoadedModel(build_model("tiny", (3, 32, 32)), GaussianDiffusion.from_schedule(),
                       (3, 32, 32), "/pipes/p", config={"kind": "diffusers-pipeline",
                                                        "clip_sample": True})
    p = default_protocol(pipe)
    assert (p.num_samples, p.sampler.name, p.label) == (10_000, "ddpm", "FID-10k")
    assert p.sampler.num_steps(1000) == 1000 and p.sampler.clip_denoised
    assert p.to_dict()["sampler"]["name"] == "ddpm"


def test_default_protocol_clips_images_not_vectors_and_a_pipeline_decides():
    tiny = LoadedModel(build_model("tiny", (1, 8, 8)), GaussianDiffusion.from_schedule(),
                       (1, 8, 8), "/runs/t", config={"model": {"preset": "tiny"}})
    assert default_protocol(tiny).sampler.clip_denoised is True
    assert default_protocol(mlp_model("m")).sampler.clip_denoised is False
    pipe = LoadedModel(tiny.model, tiny.diffusion, (1, 8, 8), "/pipes/p",
                       config={"kind": "diffusers-pipeline", "clip_sample": False})
    assert default_protocol(pipe).sampler.clip_denoised is False


class ConvEps(torch.nn.Module):
    """A small image ε-model (B, 1, 4, 4) → (B, 1, 4, 4) whose x̂_0 leaves [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_attack_on_images_clips_by_default_and_records_it(tmp_path):
    loaded = LoadedModel(ConvEps().eval(), GaussianDiffusion.from_schedule(), (1, 4, 4),
                         "/runs/img", dataset="toy", config={})
    spec = AttackSpec("fgsm", 50, loss="eps")
    seeds = sample_seeds(2, 6)
    for clip, expect in ((None, True), (False, False), (True, True)):
        sampler = SamplerConfig("respaced", 6, clip_denoised=clip)
        out = tmp_path / str(clip)
        res = run_attack(loaded, spec, num_samples=6, seed=2, sampler=sampler, batch_size=3,
                         metric_fn=counting_metric([]), device="cpu", out_dir=out)
        saved = json.loads((out / "results.json").read_text())
        assert saved["sampler"]["clip_denoised"] is expect is res["sampler"]["clip_denoised"]
        assert saved["sampler"]["label"] == "respaced-6" + ("-clip" if expect else "")
        # clean and attacked use the same resolved sampler: the clean samples are those of an
        # explicit setting, and the attacked ones are the attack plan's with that setting
        resolved = SamplerConfig("respaced", 6, clip_denoised=expect)
        x = load_file(str(out / "samples.safetensors"))
        with torch.no_grad():
            clean = sample_batched(loaded.model, loaded.diffusion, (1, 4, 4), seeds, 3,
                                   resolved)
            attacked = AttackPlan.of(spec).sample(loaded.model, loaded.diffusion, (1, 4, 4),
                                                  seeds, 3, resolved)
        assert torch.equal(x["clean"], clean) and torch.equal(x["attacked"], attacked)
    on = load_file(str(tmp_path / "None" / "samples.safetensors"))["clean"]
    off = load_file(str(tmp_path / "False" / "samples.safetensors"))["clean"]
    assert not torch.allclose(on, off)
    # vectors: no clipping unless asked
    res = run_attack(mlp_model("v"), spec, num_samples=4, seed=1, sampler=SAMPLER,
                     batch_size=4, metric_fn=counting_metric([]), device="cpu",
                     out_dir=tmp_path / "vec")
    assert res["sampler"]["clip_denoised"] is False and res["sampler"]["label"] == "respaced-10"


def test_paired_damage_closed_forms():
    from dmattack.evaluation.attack_eval import paired_damage
    from dmattack.evaluation.damage import damage_per_sample
    from evaluators.digits_model import digits_split, load_digits_cnn

    clean = torch.zeros(6, 3)
    attacked = clean + torch.tensor([0.1, 0.1, 0.1, 0.2, 0.2, 0.2]).unsqueeze(1)
    attacked[5, 0] = float("nan")
    per = damage_per_sample(clean, attacked)
    assert list(per) == ["pixel deviation"] and per["pixel deviation"][5] is None
    assert [round(v, 7) for v in per["pixel deviation"][:5]] == [0.01] * 3 + [0.04] * 2
    d = paired_damage(clean, attacked)
    assert d["num_samples"] == 5 and d["num_nonfinite"] == 1
    pix = d["pixel deviation"]
    assert set(pix) == {"mean", "median", "ci95", "n"} and pix["n"] == 5
    assert abs(pix["mean"] - (3 * 0.01 + 2 * 0.04) / 5) < 1e-7
    assert abs(pix["median"] - 0.01) < 1e-7
    lo, hi = pix["ci95"]  # the mean of resamples of {0.01, 0.04} stays within their range
    assert 0.01 - 1e-9 <= lo < pix["mean"] < hi <= 0.04 + 1e-9
    assert "class changed (digits-cnn)" not in d

    _, _, x, _ = digits_split()
    net = load_digits_cnn()
    a, b = x[:40], x[40:80]
    with torch.no_grad():
        expected = (net(a).argmax(1) != net(b).argmax(1)).double()
    changed = paired_damage(a, b)["class changed (digits-cnn)"]
    assert changed["mean"] == float(expected.mean()) > 0 and changed["n"] == 40
    assert changed["ci95"][0] < changed["mean"] < changed["ci95"][1]
    assert damage_per_sample(a, b)["class changed (digits-cnn)"] == expected.tolist()
    same = paired_damage(a, a.clone())
    assert same["class changed (digits-cnn)"]["mean"] == 0
    assert same["pixel deviation"] == {"mean": 0.0, "median": 0.0, "ci95": [0.0, 0.0], "n": 40}


def test_feature_distance_is_measured_when_the_attack_used_features():
    from dmattack.evaluation.damage import damage_feature_extractor, damage_per_sample
    from evaluators.digits_model import digits_split, load_digits_cnn

    _, _, x, _ = digits_split()
    a, b = x[:6], x[6:12]
    assert damage_feature_extractor({"distance": "pixel"}, (1, 8, 8)) is None
    name = damage_feature_extractor({"distance": "features", "feature_extractor": None},
                                    (1, 8, 8))
    assert name == "digits-cnn"
    per = damage_per_sample(a, b, name, batch_size=4)
    cnn = load_digits_cnn()
    with torch.no_grad():  # ‖φ(attacked) − φ(clean)‖², φ the 64-D penultimate layer
        expected = (cnn.features(b) - cnn.features(a)).pow(2).sum(1)
    torch.testing.assert_close(torch.tensor(per["feature distance (digits-cnn)"],
                                            dtype=torch.float64),
                               expected.double(), rtol=1e-5, atol=1e-6)


def test_improved_under_attack_flags_set_metrics_that_get_better():
    from dmattack.evaluation.damage import improved_under_attack

    clean = {"FID (digits-cnn)": 246.0, "KID (digits-cnn)": 0.1, "KID std": 0.01, "IS": 2.0,
             "FD (exact)": 1.0, "variance ratio": 0.5}
    attacked = {"FID (digits-cnn)": 200.0, "KID (digits-cnn)": 0.2, "KID std": 0.001,
                "IS": 2.5, "FD (exact)": None, "variance ratio": 0.9}
    assert improved_under_attack(clean, attacked) == {
        "FID (digits-cnn)": True, "KID (digits-cnn)": False, "IS": True}


def test_attack_results_record_the_attacked_steps(tmp_path):
    kw = dict(num_samples=4, seed=1, sampler=SAMPLER, batch_size=4,
              metric_fn=counting_metric([]), device="cpu", out_dir=tmp_path)
    res = run_attack(mlp_model("a"), AttackSpec("random", 100, window="first"), **kw)
    # 100% of the 9 steps with a budget: the zero-budget last step is not spent
    assert res["steps_attacked"] == "9 of 10" and res["last_step_attacked"] is False
    assert res["num_steps"] == 10 and res["attacked_steps"] == list(range(9))
    assert res["steps_with_budget"] == 9 and res["zero_budget_steps_attacked"] == []
    assert res["step_counting"] == "budget"
    assert res["attack"]["kind"] == "per-step" and res["attack"]["random_dist"] == "sign"
    assert res["damage"]["pixel deviation"]["mean"] > 0
    assert res["trace"] is None and res["converged"] is None  # a per-step attack has no trace
    # the former counting, kept for earlier numbers: all 10 steps, the last one included
    res = run_attack(mlp_model("a"), AttackSpec("random", 100, window="first",
                                                step_counting="all"), **kw)
    assert res["steps_attacked"] == "10 of 10" and res["last_step_attacked"] is True
    assert res["zero_budget_steps_attacked"] == [9] and res["step_counting"] == "all"
    assert res["label"] == "random-sign-first-100%-countall"
    res = run_attack(mlp_model("a"), AttackSpec("random", 30, window="first"), **kw)
    assert res["steps_attacked"] == "3 of 10" and res["last_step_attacked"] is False


def test_curve_tables_count_the_attacked_steps_and_mark_the_last(tmp_path):
    from dmattack.evaluation.attack_eval.render import (
        LAST_STEP_MARK,
        marked_values,
        percent_headers,
    )

    # the former counting (all steps), under which the zero-budget last step can be attacked
    specs = curve_specs(["random"], [30, 100], windows=("first", "last"), step_counting="all")
    curve = run_curve([mlp_model("a")], specs, num_samples=4, seed=0, sampler=SAMPLER,
                      batch_size=4, metric_fn=counting_metric([]), device="cpu",
                      out_dir=tmp_path)
    assert curve["steps_attacked"] == ["0 of 10", "3 of 10", "10 of 10"]
    first, last = curve["rows"]
    assert first["series"] == "random-sign-first-countall"
    assert last["series"] == "random-sign-last-countall"
    # `first` reaches the last step only at 100%; `last` always does
    assert first["last_step_attacked"] == [False, False, True]
    assert last["last_step_attacked"] == [False, True, True]
    assert first["steps_attacked"] == ["0 of 10", "3 of 10", "10 of 10"]
    assert percent_headers(curve) == ["0% = 0 of 10 steps", "30% = 3 of 10 steps",
                                      "100% = 10 of 10 steps"]
    marked = marked_values(last)
    assert marked[0] == last["values"][0]
    assert marked[1] == f"{last['values'][1]:.4g}{LAST_STEP_MARK}"
    rows = list(csv.reader((tmp_path / "curve.csv").open()))
    assert rows[0][3:7] == [*percent_headers(curve), "last step attacked at"]
    assert [r[6] for r in rows[1:]] == ["100%", "30% 100%"]
    assert [float(v) for v in rows[2][3:6]] == last["values"]  # numbers stay numbers


# ----------------------------------------------------------------------------- damage first
def _point(model, series, damage, control=False, percent=50.0):
    return {"model": model, "model_name": model, "label": f"{series}-{percent:g}%",
            "series": series, "control": control, "percent": percent,
            "attacked_steps": [1, 3], "attack": {"eps_scale": 1.0},
            "damage_per_sample": {"pixel deviation": list(damage)}}


def test_relative_to_random_and_model_comparisons_closed_forms():
    import numpy as np

    from dmattack.evaluation.damage import curve_comparisons, with_random_baselines

    rng = np.random.default_rng(0)
    rand = 1 + 0.1 * rng.random(20)
    strong, weak = 0.5 * rand + 0.01 * rng.random(20), 2.0 * rand
    records = [{"model": m, "model_name": m, "label": "clean", "series": "clean",
                "control": False, "percent": 0.0, "damage_per_sample": None} for m in "AB"]
    records += [_point("A", "pgd", strong), _point("A", "random", rand, control=True),
                _point("B", "pgd", weak), _point("B", "random", rand, control=True)]
    out = with_random_baselines(records)
    rel = out[2]["relative_to_random"]["pixel deviation"]
    assert rel["random"] == "random-50%" and rel["n"] == 20
    assert rel["value"] == pytest.approx(strong.mean() / rand.mean(), rel=1e-12)
    assert rel["ci95"][0] < rel["value"] < rel["ci95"][1]
    assert "relative_to_random" not in out[3]  # the control itself
    # a control at other attacked steps is no baseline
    other = with_random_baselines([_point("A", "pgd", strong),
                                   {**_point("A", "random", rand, control=True),
                                    "attacked_steps": [0, 2]}])
    assert other[0]["relative_to_random"] is None

    comps = curve_comparisons(out)
    pgd = next(c for c in comps if c["series"] == "pgd")
    assert (pgd["model_a"], pgd["model_b"]) == ("A", "B")
    assert pgd["raw"]["value"] == pytest.approx(strong.mean() - weak.mean())
    assert pgd["raw"]["verdict"] == "held" and pgd["ratio"]["verdict"] == "held"
    assert pgd["raw"]["min_effect"] == pytest.approx(0.05 * weak.mean())
    assert pgd["ratio"]["value"] == pytest.approx(strong.mean() / rand.mean() - 2.0)
    rnd = next(c for c in comps if c["series"] == "random")
    assert rnd["raw"]["verdict"] == "inconclusive" and rnd["ratio"] is None
    # the other order of the models: the claim "B is more robust than A" did not hold
    flipped = curve_comparisons(with_random_baselines([records[1], records[0], *records[4:],
                                                       *records[2:4]]))
    pgd = next(c for c in flipped if c["series"] == "pgd")
    assert (pgd["model_a"], pgd["raw"]["verdict"], pgd["ratio"]["verdict"]) == (
        "B", "did not hold", "did not hold")


def test_a_set_metric_better_under_attack_is_flagged(tmp_path):
    from dmattack.evaluation.attack_eval.render import IMPROVED_MARK, marked_values

    def falling_fid():
        calls = []

        def metric_fn(samples):  # planted: the first call (clean) scores worse
            calls.append(1)
            return {"FID": 10.0 if len(calls) == 1 else 5.0, "variance ratio": 1.0}

        return metric_fn

    res = run_attack(mlp_model("a"), AttackSpec("random", 50), num_samples=4, seed=0,
                     sampler=SAMPLER, batch_size=4, metric_fn=falling_fid(), device="cpu",
                     out_dir=tmp_path / "a")
    assert res["improved_under_attack"] == {"FID": True}
    curve = run_curve([mlp_model("a")], [AttackSpec("random", 50)], num_samples=4, seed=0,
                      sampler=SAMPLER, batch_size=4, metric_fn=falling_fid(), device="cpu",
                      out_dir=tmp_path / "c")
    assert curve["points"][1]["improved_under_attack"] == {"FID": True}
    row = curve["rows"][0]
    assert row["improved_under_attack"] == [None, True]
    assert marked_values(row) == [10.0, f"5{IMPROVED_MARK}"]
    csv_row = next(csv.DictReader((tmp_path / "c" / "curve.csv").open()))
    assert csv_row["improved under attack at"] == "50%"


def test_convergence_diagnostics_are_recorded_when_the_attack_fills_them(tmp_path):
    from dataclasses import dataclass

    from dmattack.commands.output import convergence_warning

    diag = {"trace": [0.1, 0.2, 0.3], "converged": False, "iterations": 2, "restarts": 1,
            "tolerance": 0.01, "rise_last_fifth": 0.25}

    @dataclass(frozen=True)
    class Traced(AttackPlan):
        def sample(self, *args, diagnostics=None, **kw):
            if diagnostics is not None:
                diagnostics.update(diag)
            return super().sample(*args, **kw)

    from dmattack.attacks.chain import ChainRandom

    plan = Traced(ChainRandom, 50, name="traced")
    res = run_attack(mlp_model("a"), plan, num_samples=4, seed=0, sampler=SAMPLER,
                     batch_size=4, metric_fn=counting_metric([]), device="cpu",
                     out_dir=tmp_path / "a")
    assert res["trace"] == diag["trace"] and res["converged"] is False
    assert res["convergence"] == diag
    curve = run_curve([mlp_model("a")], [plan], num_samples=4, seed=0, sampler=SAMPLER,
                      batch_size=4, metric_fn=counting_metric([]), device="cpu",
                      out_dir=tmp_path / "c")
    assert curve["points"][1]["convergence"] == diag and curve["points"][0]["trace"] is None
    assert convergence_warning("traced-spread-50%", diag) == (
        "warning: traced-spread-50% did not converge (its objective's best-so-far rose 25.0% "
        "over the last fifth of 2 iterations); raise --iterations (per-step pgd: --pgd-steps) "
        "or --restarts")
    assert convergence_warning("x", {**diag, "converged": True}) is None


DIGITS_DDPM = Path(__file__).resolve().parents[1] / "checkpoints" / "digits-ddpm"
TINY_RUN = ["--num-samples", "8", "--sampler-steps", "6", "--batch-size", "8"]


def test_attack_trajectory_on_digits_prints_the_damage_with_its_interval(tmp_path):
    from conftest import invoke_cli

    result = invoke_cli("attack", "--run", str(DIGITS_DDPM), "--method", "trajectory",
                        "--iterations", "2", "--steps-attacked", "50", "--metrics",
                        "variance-ratio", *TINY_RUN, "--out", str(tmp_path / "t"))
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "t" / "results.json").read_text())
    pix = res["damage"]["pixel deviation"]
    assert set(pix) == {"mean", "median", "ci95", "n"} and pix["n"] == 8
    assert pix["ci95"][0] < pix["mean"] < pix["ci95"][1]
    changed = res["damage"]["class changed (digits-cnn)"]
    assert changed["n"] == 8 and 0 <= changed["mean"] <= 1
    per = res["damage_per_sample"]["pixel deviation"]
    assert len(per) == 8 and sum(per) / 8 == pytest.approx(pix["mean"], rel=1e-12)
    assert res["steps_with_budget"] == 5 and res["num_attacked_steps"] == 3  # ⌊2.5 + ½⌋
    assert res["zero_budget_steps_attacked"] == []
    assert "trace" in res and "converged" in res  # None until the attack records a trace
    printed = " ".join(result.output.split())
    lo, hi = pix["ci95"]
    assert f"{pix['mean']:.3g} [{lo:.3g}, {hi:.3g}]" in printed
    assert "class changed (digits-cnn) (%)" in printed


def test_curve_of_a_run_and_its_byte_identical_copy_is_inconclusive(tmp_path):
    import shutil

    from conftest import invoke_cli

    a, b = tmp_path / "A", tmp_path / "A_copy"
    shutil.copytree(DIGITS_DDPM, a)
    shutil.copytree(DIGITS_DDPM, b)
    result = invoke_cli("curve", "--run", str(a), "--run", str(b), "--method", "pgd,random",
                        "--pgd-steps", "2", "--steps-attacked", "50", "--metrics",
                        "variance-ratio", *TINY_RUN, "--out", str(tmp_path / "c"))
    assert result.exit_code == 0, result.output
    curve = json.loads((tmp_path / "c" / "curve.json").read_text())
    pgd = [p for p in curve["points"] if p["method"] == "pgd"]
    rnd = {p["model"]: p for p in curve["points"] if p["method"] == "random"}
    for p in pgd:
        rel = p["relative_to_random"]["pixel deviation"]
        ctl = rnd[p["model"]]
        assert rel["random"] == ctl["label"]
        assert rel["value"] == pytest.approx(
            sum(p["damage_per_sample"]["pixel deviation"])
            / sum(ctl["damage_per_sample"]["pixel deviation"]), rel=1e-12)
        assert rel["ci95"][0] <= rel["value"] <= rel["ci95"][1]
    comps = curve["comparisons"]
    assert {(c["series"], c["measure"]) for c in comps} == {
        (s, m) for s in ("pgd2-mean-spread", "random-sign-spread")
        for m in ("pixel deviation", "class changed (digits-cnn)")}
    verdicts = [c[k]["verdict"] for c in comps for k in ("raw", "ratio") if c[k]]
    assert any(c["ratio"] for c in comps) and set(verdicts) == {"inconclusive"}
    assert all(c["raw"]["value"] == 0 for c in comps)
    lines = [line for line in result.output.splitlines() if line.startswith("A vs A_copy ·")]
    assert len(lines) == len(comps)
    assert all(line.count("inconclusive") == (2 if "random-sign" not in line else 1)
               and " held" not in line and "did not hold" not in line for line in lines)


def test_the_step_counting_is_part_of_every_point_key(tmp_path):
    specs = [AttackSpec("random", 50, window="last"),
             AttackSpec("random", 50, window="last", step_counting="all")]
    curve = run_curve([mlp_model("a")], specs, num_samples=4, seed=0, sampler=SAMPLER,
                      batch_size=4, metric_fn=counting_metric([]), device="cpu",
                      out_dir=tmp_path)
    budget, every = curve["points"][1:]
    assert budget["key"] != every["key"] and budget["series"] != every["series"]
    # 50% of the 9 steps with a budget (⌊4.5 + ½⌋ = 5) vs of all 10 steps (5, the last included)
    assert budget["attacked_steps"] == [4, 5, 6, 7, 8] and budget["step_counting"] == "budget"
    assert every["attacked_steps"] == [5, 6, 7, 8, 9] and every["zero_budget_steps_attacked"] == [9]
