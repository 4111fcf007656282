"""Content-addressed curve points (issue: "no silent wrong number"): a point is reused only when
everything that determines its value is unchanged: the model's weights and config, the sampler,
the scoring (metrics, reference) and the attack's exact settings."""

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli

ROOT = Path(__file__).resolve().parents[1]
DDPM, ROBUST = ROOT / "checkpoints" / "digits-ddpm", ROOT / "checkpoints" / "digits-robust-adv"
CURVE = ["--dataset", "digits", "--method", "random", "--steps-attacked", "0,50",
         "--num-samples", "16", "--batch-size", "16", "--sampler", "respaced", "--steps", "10"]


def run(*args: str):
    result = CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def points(folder: Path) -> list[dict]:
    return json.loads((folder / "curve.json").read_text())["points"]


def values(folder: Path, label: str = "variance ratio") -> list[float]:
    return [p["metrics"][label] for p in points(folder)]


def test_pipeline_replaced_by_other_weights_is_recomputed(tmp_path):
    pipe, out = tmp_path / "pipe", tmp_path / "c"
    run("export", "--run", DDPM, "--out", pipe)
    run("curve", "--pipeline", pipe, *CURVE, "--metrics", "variance-ratio", "--out", out)
    before = values(out)
    shutil.rmtree(pipe)
    run("export", "--run", ROBUST, "--out", pipe)
    second = run("curve", "--pipeline", pipe, *CURVE, "--metrics", "variance-ratio",
                 "--out", out)
    assert "resumed" not in second.output
    after = values(out)
    fresh = tmp_path / "fresh"
    run("curve", "--pipeline", pipe, *CURVE, "--metrics", "variance-ratio", "--out", fresh)
    assert after == values(fresh) and after != before
    # the same weights again: every point is read back, not recomputed
    run("curve", "--pipeline", pipe, *CURVE, "--metrics", "variance-ratio", "--out", out)
    assert values(out) == after
    assert len((out / "points.jsonl").read_text().splitlines()) == 2 * 2


def test_run_with_edited_diffusion_config_is_recomputed(tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "c"
    shutil.copytree(DDPM, run_dir)
    run("curve", "--run", run_dir, *CURVE, "--metrics", "variance-ratio", "--out", out)
    before = values(out)
    cfg = json.loads((run_dir / "config.json").read_text())
    new = "fixed_large" if cfg["diffusion"]["variance_type"] == "fixed_small" else "fixed_small"
    cfg["diffusion"]["variance_type"] = cfg["train"]["variance_type"] = new
    (run_dir / "config.json").write_text(json.dumps(cfg))
    run("curve", "--run", run_dir, *CURVE, "--metrics", "variance-ratio", "--out", out)
    after = values(out)
    fresh = tmp_path / "fresh"
    run("curve", "--run", run_dir, *CURVE, "--metrics", "variance-ratio", "--out", fresh)
    assert after == values(fresh) and after != before


def test_other_metrics_into_the_same_folder_are_recomputed(tmp_path):
    out = tmp_path / "c"
    run("curve", "--run", DDPM, *CURVE, "--metrics", "fid", "--allow-small-fid", "--out", out)
    fid = json.loads((out / "curve.json").read_text())
    second = run("curve", "--run", DDPM, *CURVE, "--metrics", "variance-ratio", "--out", out)
    curve = json.loads((out / "curve.json").read_text())
    assert curve["metric"] == "variance ratio"
    assert all("variance ratio" in p["metrics"] for p in curve["points"])
    assert all(0 < v < 5 for row in curve["rows"] for v in row["values"])
    assert [r["values"] for r in curve["rows"]] != [r["values"] for r in fid["rows"]]
    assert "resumed" not in second.output
    assert all(p["scoring"]["metrics"] == ["variance-ratio"] for p in curve["points"])


def test_near_equal_percents_never_share_a_point(tmp_path):
    out = tmp_path / "c"
    base = [a for a in CURVE if a not in ("0,50",)]
    i = base.index("--steps-attacked")
    # counting all 10 steps (the former counting), so that 5% is exactly half a step
    run("curve", "--run", DDPM, *base[:i + 1], "5", *base[i + 1:], "--metrics",
        "variance-ratio", "--step-counting", "all", "--out", out)
    five = [p for p in points(out) if p["label"] != "clean"]
    run("curve", "--run", DDPM, *base[:i + 1], "4.9999999", *base[i + 1:], "--metrics",
        "variance-ratio", "--step-counting", "all", "--out", out)
    near = [p for p in points(out) if p["label"] != "clean"]
    assert five[0]["key"] != near[0]["key"]
    assert near[0]["percent"] == pytest.approx(4.9999999, abs=0) and five[0]["percent"] == 5.0
    # 5% of 10 steps rounds half up to one attacked step; 4.9999999% attacks none
    assert five[0]["attacked_steps"] == [5] and near[0]["attacked_steps"] == []
