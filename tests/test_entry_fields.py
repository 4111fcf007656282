"""Behaviour that belongs to a dataset or a model preset is a field of its registry entry
(flips and in-memory images, architecture, channels-last layout, evaluation protocol), so a
plugin's entry sets its own and nothing names the built-in ones."""

from __future__ import annotations

import pytest
import torch

from dmattack.core.errors import ConfigError
from dmattack.data import DATASETS, DatasetEntry, load_dataset
from dmattack.diffusion.gaussian import GaussianDiffusion
from dmattack.evaluation.attack_eval import default_protocol
from dmattack.models import PRESETS, EvalProtocol, ModelPreset, build_model
from dmattack.runs.checkpoints import LoadedModel
from dmattack.training.config import MAX_IN_MEMORY_RESOLUTION, TrainConfig
from dmattack.training.train import _memory_format, _run_config


@pytest.fixture
def entries():
    """Register entries for one test; removed afterwards."""
    added: list[tuple] = []

    def add(registry, name, entry):
        registry.register(name, entry)
        added.append((registry, name))

    yield add
    for registry, name in added:
        registry.unregister(name)


def _digits(d, r, n, s):
    return load_dataset("digits", resolution=r, num_samples=n, seed=s)


def test_builtin_flips_follow_ho_et_al():
    """Ho et al. 2020 flip CIFAR-10 (and the other natural-image sets); digits are not
    mirror-symmetric and vectors have nothing to mirror."""
    flips = {n for n in DATASETS.names() if DATASETS[n].flip_default}
    assert flips == {"cifar10", "celeba", "lsun-bedroom", "imagefolder"}
    for name in DATASETS.names():
        assert TrainConfig(dataset=name).resolved().flip is (name in flips)
        assert TrainConfig(dataset=name, flip=False).resolved().flip is False


def test_a_plugin_dataset_sets_its_flips_and_memory(entries):
    entries(DATASETS, "flipped-digits", DatasetEntry(_digits, "image", "digits, flipped",
                                                     in_memory=True, flip_default=True))
    entries(DATASETS, "streamed-digits", DatasetEntry(_digits, "image", "digits, streamed"))
    assert TrainConfig(dataset="flipped-digits").resolved().flip is True
    assert TrainConfig(dataset="streamed-digits").resolved().flip is False
    big = MAX_IN_MEMORY_RESOLUTION + 1
    with pytest.raises(ConfigError, match=f"resolution .* = {big} is invalid; allowed: an image "
                                          "side in 1..256 for flipped-digits \\(held in memory"):
        TrainConfig(dataset="flipped-digits", resolution=big)
    assert TrainConfig(dataset="streamed-digits", resolution=big).resolution == big
    with pytest.raises(ValueError, match="flip_default needs an image dataset"):
        DatasetEntry(_digits, "vector", "x", flip_default=True)
    with pytest.raises(ValueError, match="dataset kind 'audio' unknown"):
        DatasetEntry(_digits, "audio", "x")


def _loaded(preset: str, shape=(1, 8, 8)) -> LoadedModel:
    return LoadedModel(build_model("tiny", shape), GaussianDiffusion.from_schedule(), shape,
                       "/runs/p", config={"model": {"preset": preset}})


def test_builtin_protocols():
    """CPU presets: tiny 256 samples on 25 respaced steps, mlp* 2000 on 50; the GPU presets
    take the paper's (10k samples on all T ancestral steps)."""
    assert PRESETS["tiny"].evaluation == EvalProtocol(256, "respaced", 25, 256, "FID-256")
    for name in ("mlp", "mlp-small"):
        assert PRESETS[name].evaluation == EvalProtocol(2000, "respaced", 50, 2000, "FD-2k")
    for name in ("ddpm-cifar10", "ddpm-64"):
        p = default_protocol(_loaded(name, (3, 32, 32)))
        assert (p.num_samples, p.sampler.name, p.batch_size, p.label) == (
            10_000, "ddpm", 256, "FID-10k")
    assert {n: PRESETS[n].architecture for n in PRESETS.names()} == {
        "ddpm-cifar10": "diffusers.UNet2DModel", "ddpm-64": "diffusers.UNet2DModel",
        "tiny": "diffusers.UNet2DModel", "mlp": "dmattack.MLPEps",
        "mlp-small": "dmattack.MLPEps"}


def test_a_plugin_preset_brings_its_protocol_layout_and_architecture(entries):
    build = PRESETS["tiny"].build
    entries(PRESETS, "tiny-fast", ModelPreset(
        build, "image", 10, 8, 0, "tiny, quick protocol", "my.TinyNet", channels_last=False,
        evaluation=EvalProtocol(64, "ddim", 10, 32, "FID-64")))
    p = default_protocol(_loaded("tiny-fast"))
    assert (p.num_samples, p.sampler.name, p.sampler.steps, p.batch_size, p.label) == (
        64, "ddim", 10, 32, "FID-64")
    assert p.sampler.clip_denoised is True  # images: clipped, whoever sets the protocol
    cuda = torch.device("cuda")
    cfg = TrainConfig(preset="tiny-fast").resolved()
    assert _memory_format(cfg, cuda) == torch.contiguous_format
    assert _memory_format(TrainConfig(preset="tiny").resolved(), cuda) == torch.channels_last
    data = load_dataset("digits", num_samples=4)
    assert _run_config(cfg, data)["model"]["architecture"] == "my.TinyNet"
