"""diffusers pipeline import/export: schedule, one ancestral step, round trip, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from dmattack.core.errors import InputFileError
from dmattack.diffusion.gaussian import GaussianDiffusion
from dmattack.evaluation.attack_eval import default_protocol
from dmattack.models import build_model
from dmattack.runs.checkpoints import LoadedModel, load_run
from dmattack.runs.pipeline import export_pipeline, load_pipeline

T = 50


def small_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)


def save_pipeline(path, variance_type="fixed_small", **sched_kw):
    scheduler = DDPMScheduler(num_train_timesteps=T, variance_type=variance_type,
                              clip_sample=False, **sched_kw)
    DDPMPipeline(unet=small_unet(), scheduler=scheduler).save_pretrained(path)
    return scheduler


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_schedule_matches_scheduler(tmp_path, schedule):
    scheduler = save_pipeline(tmp_path / "p", beta_schedule=schedule)
    loaded = load_pipeline(tmp_path / "p")
    assert loaded.data_shape == (1, 8, 8)
    assert loaded.diffusion.num_timesteps == T
    np.testing.assert_allclose(loaded.diffusion.betas, scheduler.betas.double().numpy(),
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(loaded.diffusion.alphas_cumprod,
                               scheduler.alphas_cumprod.double().numpy(), rtol=1e-5, atol=1e-8)
    assert not loaded.model.training


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_one_ancestral_step_matches_scheduler_step(tmp_path, variance_type):
    scheduler = save_pipeline(tmp_path / "p", variance_type=variance_type)
    loaded = load_pipeline(tmp_path / "p")
    assert loaded.diffusion.variance_type == variance_type
    scheduler.set_timesteps(T)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for t_int in (T - 1, 17, 1, 0):
        t = torch.full((2,), t_int, dtype=torch.long)
        with torch.no_grad():
            eps = loaded.model(x, t)
            ref = scheduler.step(eps, t_int, x, generator=torch.Generator().manual_seed(5))
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
            ours = loaded.diffusion.p_sample(loaded.model, x, t, noise)
        torch.testing.assert_close(ours, ref.prev_sample, rtol=1e-4, atol=1e-5)


def test_export_reload_round_trip(tmp_path):
    save_pipeline(tmp_path / "p")
    first = load_pipeline(tmp_path / "p")
    export_pipeline(first, tmp_path / "out")
    again = load_pipeline(tmp_path / "out")
    np.testing.assert_array_equal(again.diffusion.betas, first.diffusion.betas)
    assert again.diffusion.variance_type == first.diffusion.variance_type
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([0, 20, 49])
    with torch.no_grad():
        assert torch.equal(first.model(x, t), again.model(x, t))
    meta = json.loads((tmp_path / "out" / "dmattack.json").read_text())
    assert meta["source"] == first.source
    # exporting over an existing folder replaces it
    export_pipeline(first, tmp_path / "out")
    assert load_pipeline(tmp_path / "out").data_shape == (1, 8, 8)


def test_export_of_a_run_keeps_dataset(tmp_path):
    torch.manual_seed(0)
    loaded = LoadedModel(build_model("tiny", (1, 8, 8)).eval(),
                         GaussianDiffusion.from_schedule("linear", T), (1, 8, 8), "run-x",
                         dataset="digits")
    export_pipeline(loaded, tmp_path / "pipe")
    back = load_pipeline(tmp_path / "pipe")
    assert back.dataset == "digits" and back.ema is True
    np.testing.assert_array_equal(back.diffusion.betas, loaded.diffusion.betas)


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="missing"):
        load_pipeline(tmp_path / "nowhere")
    save_pipeline(tmp_path / "v", prediction_type="v_prediction")
    with pytest.raises(ValueError, match="prediction_type"):
        load_pipeline(tmp_path / "v")
    save_pipeline(tmp_path / "l", variance_type="learned_range")
    with pytest.raises(ValueError, match="variance_type"):
        load_pipeline(tmp_path / "l")
    mlp = LoadedModel(build_model("mlp-small", (3,)), GaussianDiffusion.from_schedule(), (3,),
                      "run-mlp")
    with pytest.raises(ValueError, match="vector"):
        export_pipeline(mlp, tmp_path / "mlp")


def test_exported_weights_keep_their_protocol(tmp_path):
    """The shipped digits weights get FID-256 on 25 respaced steps, before and after export."""
    run = load_run(Path(__file__).parents[1] / "checkpoints" / "digits-ddpm")
    export_pipeline(run, tmp_path / "pipe")
    back = load_pipeline(tmp_path / "pipe")
    assert back.preset == run.preset == "tiny"
    assert (back.dataset, back.data_shape) == (run.dataset, run.data_shape)
    assert default_protocol(back) == default_protocol(run)
    assert default_protocol(back).label == "FID-256"
    # a pipeline without dmattack.json (e.g. from the Hub) keeps the paper-sized protocol
    (tmp_path / "pipe" / "dmattack.json").unlink()
    assert default_protocol(load_pipeline(tmp_path / "pipe")).label == "FID-10k"


@pytest.mark.parametrize("meta, match", [
    ({"data_shape": [3, 8, 8]}, "data_shape"),
    ({"model": {"preset": "huge"}}, "preset 'huge' is unknown"),
    ({"model": {"preset": "tiny", "data_shape": [1, 16, 16]}}, "model data_shape"),
    ([1, 2], "JSON object"),
])
def test_export_meta_must_match_the_unet(tmp_path, meta, match):
    save_pipeline(tmp_path / "p")
    (tmp_path / "p" / "dmattack.json").write_text(json.dumps(meta))
    with pytest.raises(InputFileError, match=match) as err:  # one line, exit 2 from the CLI
        load_pipeline(tmp_path / "p")
    assert "\n" not in str(err.value)
