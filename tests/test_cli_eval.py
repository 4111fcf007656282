"""`dmattack attack / curve / evaluate / export`: happy paths, resume and bad input."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import cli

SMALL = ["--num-samples", "24", "--batch-size", "12", "--sampler", "respaced", "--steps", "8",
         "--allow-small-fid"]  # FD (exact) of 64-D digits-subspace from 24 samples: fast, biased


def run(*args: str):
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method in ("ddpm", "robust-adv"):
        out[method] = root / method
        result = run("train", "--dataset", "digits-subspace", "--num-data", "256", "--preset",
                     "mlp-small", "--method", method, "--steps", "30", "--batch-size", "64",
                     "--out", str(out[method]))
        assert result.exit_code == 0, result.output
    return out


def test_attack_writes_paired_results(runs, tmp_path):
    result = run("attack", "--run", str(runs["ddpm"]), "--method", "pgd", "--steps-attacked",
                 "50", "--pgd-steps", "3", *SMALL, "--out", str(tmp_path / "a"))
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert res["window"] == "spread" and res["num_attacked_steps"] == 4
    assert res["attack"]["method"] == "pgd" and res["attack"]["pgd_steps"] == 3
    clean, attacked = res["metrics"]["clean"], res["metrics"]["attacked"]
    assert set(clean) >= {"FD (exact)", "variance ratio"}
    assert clean["protocol"]["evaluation"] == "FD (exact)-24"
    assert attacked["FD (exact)"] != clean["FD (exact)"]
    x = load_file(tmp_path / "a" / "samples.safetensors")
    assert x["clean"].shape == x["attacked"].shape == (24, 64)
    assert "FD (exact)" in result.output and "window spread" in result.output


def test_attack_zero_percent_equals_clean(runs, tmp_path):
    result = run("attack", "--run", str(runs["ddpm"]), "--method", "fgsm", "--steps-attacked",
                 "0", *SMALL, "--out", str(tmp_path / "z"))
    assert result.exit_code == 0, result.output
    x = load_file(tmp_path / "z" / "samples.safetensors")
    assert torch.equal(x["clean"], x["attacked"])


def test_first_sample_shards_concatenate(runs, tmp_path):
    common = ["--run", str(runs["ddpm"]), "--sampler", "respaced", "--steps", "6"]
    assert run("sample", *common, "--num-samples", "6", "--out", str(tmp_path / "all")
               ).exit_code == 0
    assert run("evaluate", *common, "--num-samples", "3", "--metrics", "fd-exact",
               "--allow-small-fid", "--out", str(tmp_path / "e")).exit_code == 0
    whole = load_file(tmp_path / "all" / "samples.safetensors")["samples"]
    res = run("attack", *common, "--num-samples", "3", "--first-sample", "3", "--method",
              "random", "--steps-attacked", "0", "--metrics", "variance-ratio",
              "--out", str(tmp_path / "s2"))
    assert res.exit_code == 0, res.output
    second = load_file(tmp_path / "s2" / "samples.safetensors")["clean"]
    torch.testing.assert_close(second, whole[3:], rtol=1e-4, atol=1e-4)  # batch round-off


def test_curve_resumes_finished_points(runs, tmp_path):
    args = ["curve", "--run", str(runs["ddpm"]), "--run", str(runs["robust-adv"]),
            "--method", "fgsm,random", "--steps-attacked", "0,50,100", *SMALL,
            "--out", str(tmp_path / "c")]
    first = run(*args)
    assert first.exit_code == 0, first.output
    curve = json.loads((tmp_path / "c" / "curve.json").read_text())
    assert curve["percents"] == [0.0, 50.0, 100.0] and len(curve["rows"]) == 4
    assert curve["steps_attacked"] == ["0 of 8", "4 of 8", "7 of 8"]
    header = (tmp_path / "c" / "curve.csv").read_text().splitlines()[0]
    assert "50% = 4 of 8 steps,100% = 7 of 8 steps,last step attacked at" in header
    # the percents count the 7 steps with a budget: the last step (budget 0) is never spent
    assert "include the last reverse step" not in " ".join(first.output.split())
    assert "paired damage per point" in first.output
    assert (tmp_path / "c" / "curve.png").exists() and (tmp_path / "c" / "curve.csv").exists()
    store = tmp_path / "c" / "points.jsonl"
    lines = store.read_text().splitlines()
    assert len(lines) == 2 * (1 + 2 * 2)
    store.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # a kill mid-write
    second = run(*args)
    assert second.exit_code == 0, second.output
    again = json.loads((tmp_path / "c" / "curve.json").read_text())
    assert again["rows"] == curve["rows"]
    after = store.read_text().splitlines()
    assert after[:-1] == lines[:-1]  # finished points kept as they were, not recomputed
    assert json.loads(after[-1])["key"] == json.loads(lines[-1])["key"]  # the lost one redone


def test_evaluate_metrics_and_sample_files(runs, tmp_path):
    result = run("evaluate", "--run", str(runs["robust-adv"]), "--metrics",
                 "fd-exact,subspace,variance-ratio,memorization", *SMALL,
                 "--out", str(tmp_path / "e"))
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "e" / "results.json").read_text())["metrics"]
    assert {"FD (exact)", "subspace error", "subspace PSNR (dB)", "variance ratio"} <= set(res)
    assert res["protocol"]["num_samples"] == 24
    assert (tmp_path / "e" / "memorization_pixels.png").exists()
    assert run("sample", "--run", str(runs["robust-adv"]), "--num-samples", "5", "--out",
               str(tmp_path / "s")).exit_code == 0
    files = [str(tmp_path / "s" / "samples.safetensors")] * 2
    result = run("evaluate", "--run", str(runs["robust-adv"]), "--metrics", "fd-exact",
                 "--samples", files[0], "--samples", files[1], "--allow-small-fid",
                 "--out", str(tmp_path / "f"))
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "f" / "results.json").read_text())["metrics"]
    assert res["protocol"]["num_samples"] == 10


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("img") / "run"
    assert run("train", "--steps", "1", "--batch-size", "4", "--num-preview", "0", "--out",
               str(run_dir)).exit_code == 0
    return run_dir


def test_export_round_trip(image_run, tmp_path):
    result = run("export", "--run", str(image_run), "--out", str(tmp_path / "pipe"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pipe" / "unet").is_dir() and (tmp_path / "pipe" / "scheduler").is_dir()
    # the run samples its images with x̂_0 clipped: so does the exported pipeline
    sched = json.loads((tmp_path / "pipe" / "scheduler" / "scheduler_config.json").read_text())
    assert sched["clip_sample"] is True
    result = run("sample", "--pipeline", str(tmp_path / "pipe"), "--num-samples", "2",
                 "--sampler", "respaced", "--steps", "3", "--out", str(tmp_path / "ps"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ps" / "samples.json").read_text())["sampler"][
        "clip_denoised"] is True


@pytest.mark.parametrize("flag,clip", [(None, True), ("--no-clip-denoised", False),
                                       ("--clip-denoised", True)])
def test_image_evaluation_clips_by_default_and_records_it(image_run, tmp_path, flag, clip):
    args = ["evaluate", "--run", str(image_run), "--metrics", "variance-ratio",
            "--num-samples", "4", "--batch-size", "4", "--sampler", "respaced",
            "--sampler-steps", "3", "--out", str(tmp_path / "e"), *([flag] if flag else [])]
    result = run(*args)
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "e" / "results.json").read_text())["metrics"]
    source = res["protocol"]["samples_from"]
    assert source["sampler"]["clip_denoised"] is clip
    assert source["sampler_label"] == "respaced-3" + ("-clip" if clip else "")


@pytest.mark.parametrize("flag,clip", [(None, False), ("--clip-denoised", True)])
def test_vector_attack_does_not_clip_unless_asked(runs, tmp_path, flag, clip):
    result = run("attack", "--run", str(runs["ddpm"]), "--method", "fgsm", "--steps-attacked",
                 "50", *SMALL, "--out", str(tmp_path / "a"), *([flag] if flag else []))
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert res["sampler"]["clip_denoised"] is clip
    assert res["sampler"]["label"] == "respaced-8" + ("-clip" if clip else "")


BAD = [
    (["attack", "--steps-attacked", "150"], "150"),
    (["attack", "--steps-attacked", "-5"], "-5"),
    (["attack", "--method", "cw"], "cw"),
    (["attack", "--window", "middle"], "middle"),
    (["attack", "--loss", "kl"], "kl"),
    (["attack", "--metric", "lpips"], "lpips"),
    (["curve", "--method", "fgsm,deepfool"], "deepfool"),
    (["curve", "--steps-attacked", "0,abc"], "abc"),
    (["evaluate", "--metrics", "fid"], "fid"),
    (["attack", "--dataset", "digits"], "shape"),
    (["evaluate", "--samples", "/nonexistent.safetensors"], "/nonexistent.safetensors"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_exits_2(args, needle, runs):
    result = CliRunner().invoke(cli.main, [*args, "--run", str(runs["ddpm"])])
    assert result.exit_code == 2, result.output
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and needle in lines[0], result.output
