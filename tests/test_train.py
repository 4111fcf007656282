"""The trainer: run folder contents, resume equivalence, EMA, each method end to end."""

import json

import pytest
import torch
from safetensors.torch import load_file

from dmattack.objectives import ObjectiveConfig
from dmattack.runs import load_run, newest_run
from dmattack.train import TrainConfig, batch_indices, ema_decay_at, resume_config, train


def _cfg(**kw) -> TrainConfig:
    base = dict(dataset="oblique-plane", preset="mlp-small", num_data=256, steps=20,
                batch_size=32, checkpoint_every=10, sample_every=20, num_preview=16,
                preview_steps=5, log_every=5, warmup=5,
                objective=ObjectiveConfig("robust-adv"))
    base.update(kw)
    return TrainConfig(**base)


def test_run_folder_contents(tmp_path):
    cfg = _cfg(corrupt_fraction=0.5, corrupt_sigma=0.2)
    run = train(cfg, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["objective"]["method"] == "robust-adv"
    assert config["data"]["corruption"]["num_corrupted"] == 128
    assert config["data"]["corruption"]["sigma"] == 0.2
    assert torch.__version__.startswith(config["versions"]["torch"])
    assert config["seed"] == 0 and "git_revision" in config
    assert (run / "checkpoint" / "model.safetensors").exists()
    assert (run / "checkpoint.prev" / "meta.json").exists()
    assert (run / "samples" / "step-0000020.png").exists()
    lines = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [5, 10, 15, 20]
    assert all(torch.isfinite(torch.tensor(l["loss"])) for l in lines)
    # checkpoints are plain tensors: no pickled code is executed when loading them
    state = torch.load(run / "checkpoint" / "state.pt", weights_only=True)
    assert state["step"] == 20
    loaded = load_run(run)
    assert loaded.data_shape == (3,) and loaded.dataset == "oblique-plane"
    assert newest_run(tmp_path) == run


def test_resume_gives_identical_weights(tmp_path):
    straight = train(_cfg(steps=20), tmp_path / "straight")
    part = train(_cfg(steps=10), tmp_path / "part")
    train(resume_config(part, steps=20), part, resume=True)
    for name in ("model", "ema"):
        a = load_file(straight / "checkpoint" / f"{name}.safetensors")
        b = load_file(part / "checkpoint" / f"{name}.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


@pytest.mark.parametrize("method", ["ddpm", "robust-adv", "robust-rand", "invariance",
                                    "ddpm-ip"])
def test_each_method_trains_with_finite_loss(tmp_path, method):
    losses = []
    train(_cfg(steps=6, objective=ObjectiveConfig(method), num_preview=0), tmp_path / method,
          callback=lambda step, stats: losses.append(stats["loss"]))
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))


def test_unet_run_saves_diffusers_folders(tmp_path):
    cfg = _cfg(dataset="digits", preset="tiny", steps=2, batch_size=8, num_preview=4,
               sample_every=2, preview_steps=2)
    run = train(cfg, tmp_path / "digits")
    assert (run / "checkpoint" / "ema" / "diffusion_pytorch_model.safetensors").exists()
    loaded = load_run(run)
    assert loaded.data_shape == (1, 8, 8)
    x = loaded.model(torch.zeros(2, 1, 8, 8), torch.tensor([0, 999]))
    assert x.shape == (2, 1, 8, 8)


def test_batches_are_epoch_permutations():
    seen = torch.cat([batch_indices(s, 100, 25, seed=3) for s in range(4)])
    assert sorted(seen.tolist()) == list(range(100))
    assert not torch.equal(batch_indices(0, 100, 25, 3), batch_indices(4, 100, 25, 3))


def test_ema_warmup():
    cfg = _cfg(ema_decay=0.9999)
    assert ema_decay_at(cfg, 0) == pytest.approx(0.1)
    assert ema_decay_at(cfg, 10**7) == 0.9999
    assert ema_decay_at(_cfg(ema_warmup=False), 0) == 0.9999


@pytest.mark.parametrize("field,value", [("corrupt_fraction", 1.5), ("corrupt_sigma", -0.1),
                                         ("steps", 0), ("dataset", "mnist"), ("preset", "big")])
def test_bad_config_is_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        _cfg(**{field: value}).validate()
