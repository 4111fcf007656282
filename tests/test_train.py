"""The trainer: run folder contents, resume equivalence, EMA, each method end to end."""

import json

import pytest
import torch
from safetensors.torch import load_file

from dmattack.core.errors import ConfigError
from dmattack.runs.checkpoints import load_run, newest_run
from dmattack.training.objectives import ObjectiveConfig
from dmattack.training.train import TrainConfig, batch_indices, ema_decay_at, resume_config, train


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


# ------------------------------------------------------------------ random horizontal flips
def _image_folder(root, n: int = 16):
    """``n`` random-noise RGB 8×8 PNGs (no image equals its mirror)."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    root.mkdir()
    for i in range(n):
        pixels = torch.randint(0, 256, (8, 8, 3), generator=g, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(root / f"{i:02d}.png")
    return root


def _record_batches(monkeypatch) -> list[torch.Tensor]:
    """Every x0 the trainer's loss sees, in order (one per micro-batch)."""
    import dmattack.training.train as train_mod

    seen: list[torch.Tensor] = []
    real = train_mod.training_loss

    def loss_fn(model, diffusion, x0, cfg, draws=None):
        seen.append(x0.detach().cpu().clone())
        return real(model, diffusion, x0, cfg, draws)

    monkeypatch.setattr(train_mod, "training_loss", loss_fn)
    return seen


def _image_cfg(**kw) -> TrainConfig:
    return _cfg(**{"preset": "tiny", "num_data": None, "steps": 4, "batch_size": 8,
                   "num_preview": 0, "objective": ObjectiveConfig("ddpm"), **kw})


def test_flip_default_follows_the_dataset():
    for name in ("cifar10", "celeba", "lsun-bedroom", "imagefolder"):
        assert TrainConfig(dataset=name).resolved().flip is True, name
    for name in ("digits", "oblique-plane", "digits-subspace"):
        assert TrainConfig(dataset=name).resolved().flip is False, name
    assert TrainConfig(dataset="cifar10", flip=False).resolved().flip is False
    assert TrainConfig(dataset="digits", flip=True).resolved().flip is True
    with pytest.raises(ConfigError, match=r"flip \(--flip\) = True is invalid for "
                       "oblique-plane"):
        TrainConfig(dataset="oblique-plane", flip=True)
    # a run written before flips existed trained without them, and resumes so
    saved = TrainConfig(dataset="cifar10").resolved().to_dict()
    del saved["flip"]
    assert TrainConfig.from_dict(saved).flip is False


def test_flip_mask_is_half_the_rows_and_seeded():
    from dmattack.training.train import flip_mask

    big = flip_mask(3, 20_000, seed=1)
    assert abs(big.double().mean().item() - 0.5) < 0.02
    assert torch.equal(flip_mask(3, 64, 1), flip_mask(3, 64, 1))
    assert not torch.equal(flip_mask(3, 64, 1), flip_mask(4, 64, 1))


def test_image_folder_batches_are_flipped_on_about_half_the_rows(tmp_path, monkeypatch):
    from dmattack.data import load_dataset
    from dmattack.training.train import flip_mask

    root = _image_folder(tmp_path / "images")
    seen = _record_batches(monkeypatch)
    cfg = _image_cfg(dataset="imagefolder", data_dir=str(root), resolution=8)
    run = train(cfg, tmp_path / "run")
    assert json.loads((run / "config.json").read_text())["train"]["flip"] is True
    data = load_dataset("imagefolder", data_dir=str(root), resolution=8)
    flipped = 0
    for step, x0 in enumerate(seen):
        original = torch.stack([data[i] for i in batch_indices(step, 16, 8, cfg.seed)])
        mask = flip_mask(step, 8, cfg.seed)
        assert torch.equal(x0[mask], torch.flip(original[mask], dims=[-1]))
        assert torch.equal(x0[~mask], original[~mask])
        flipped += int(mask.sum())
    assert len(seen) == 4 and 0.25 <= flipped / 32 <= 0.75


def test_digits_are_not_flipped(tmp_path, monkeypatch):
    from dmattack.data import load_dataset

    seen = _record_batches(monkeypatch)
    run = train(_image_cfg(dataset="digits", steps=2), tmp_path / "run")
    assert json.loads((run / "config.json").read_text())["train"]["flip"] is False
    data = load_dataset("digits").tensor()
    for step, x0 in enumerate(seen):
        assert torch.equal(x0, data[batch_indices(step, len(data), 8, 0)])


def test_flips_are_split_exactly_by_micro_batches_and_resume(tmp_path, monkeypatch):
    seen = _record_batches(monkeypatch)
    cfg = _image_cfg(dataset="digits", flip=True, checkpoint_every=2)
    straight = train(cfg, tmp_path / "straight")
    whole = list(seen)
    seen.clear()
    train(_image_cfg(dataset="digits", flip=True, grad_accum=2, steps=2), tmp_path / "accum")
    assert torch.equal(torch.cat(seen), torch.cat(whole[:2]))  # 2 micro-batches per step
    seen.clear()
    part = train(_image_cfg(dataset="digits", flip=True, steps=2), tmp_path / "part")
    train(resume_config(part, steps=4), part, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(seen, whole, strict=True))
    for name in ("model", "ema"):
        folder = f"checkpoint/{name}/diffusion_pytorch_model.safetensors"
        a, b = load_file(straight / folder), load_file(part / folder)
        assert all(torch.equal(a[k], b[k]) for k in a), name
