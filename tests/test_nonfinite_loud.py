"""Non-finite output is loud: `sample`, `attack` and `curve` print one warning line with the
count of non-finite samples and record it in their results; a `.bin`-only pipeline is refused
before diffusers is asked to load it."""

import json
import shutil
from pathlib import Path

import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import cli
from dmattack.runs.checkpoints import sha256_file

DDPM = Path(__file__).resolve().parents[1] / "checkpoints" / "digits-ddpm"
SMALL = ["--num-samples", "6", "--batch-size", "6", "--sampler", "respaced", "--sampler-steps", "4"]


def nan_run(tmp_path: Path) -> Path:
    """A copy of digits-ddpm whose EMA output layer is NaN (meta.json's sha256 updated, so the
    checkpoint loads: the weights are 'valid', the model diverged)."""
    run_dir = tmp_path / "nan-run"
    shutil.copytree(DDPM, run_dir)
    ckpt = run_dir / "checkpoint"
    rel = "ema/diffusion_pytorch_model.safetensors"
    weights = load_file(ckpt / rel)
    key = next(k for k in weights if k.startswith("conv_out") and k.endswith("bias"))
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, ckpt / rel, metadata={"format": "pt"})
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"][rel] = sha256_file(ckpt / rel)
    (ckpt / "meta.json").write_text(json.dumps(meta))
    return run_dir


def invoke(caplog, *args):
    """Run the command; its warning lines (the CLI prints each as one ``warning: ...`` line)."""
    caplog.clear()
    result = CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert all("\n" not in w for w in warnings)
    return result, warnings


def test_sample_attack_curve_warn_and_record(tmp_path, caplog):
    run_dir = nan_run(tmp_path)
    _, warnings = invoke(caplog, "sample", "--run", run_dir, *SMALL, "--out", tmp_path / "s")
    assert len(warnings) == 1 and "6 of 6 samples" in warnings[0]
    assert json.loads((tmp_path / "s" / "samples.json").read_text())["num_nonfinite"] == 6

    _, warnings = invoke(caplog, "attack", "--run", run_dir, *SMALL, "--method", "random",
                         "--steps-attacked", "50", "--metrics", "variance-ratio",
                         "--out", tmp_path / "a")
    assert len(warnings) == 2 and all("6 of 6" in w for w in warnings)
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert res["num_nonfinite"] == {"clean": 6, "attacked": 6}

    _, warnings = invoke(caplog, "curve", "--run", run_dir, *SMALL, "--method", "random",
                         "--steps-attacked", "0,50", "--metrics", "variance-ratio",
                         "--out", tmp_path / "c")
    assert len(warnings) == 2
    points = json.loads((tmp_path / "c" / "curve.json").read_text())["points"]
    assert [p["num_nonfinite"] for p in points] == [6, 6]


def test_finite_samples_print_no_warning(tmp_path, caplog):
    _, warnings = invoke(caplog, "sample", "--run", DDPM, *SMALL, "--out", tmp_path / "s")
    assert warnings == []
    assert json.loads((tmp_path / "s" / "samples.json").read_text())["num_nonfinite"] == 0


def test_bin_only_pipeline_is_refused_before_diffusers(tmp_path, caplog):
    pipe = tmp_path / "pipe"
    invoke(caplog, "export", "--run", DDPM, "--out", pipe)
    weights = load_file(pipe / "unet" / "diffusion_pytorch_model.safetensors")
    (pipe / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(weights, pipe / "unet" / "diffusion_pytorch_model.bin")
    result = CliRunner().invoke(cli.main, ["sample", "--pipeline", str(pipe), *SMALL])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "diffusion_pytorch_model.bin" in result.output and "safetensors" in result.output
    assert "unsafe" not in result.output.lower()
