"""Speed features of training and sampling: forward passes per step, grad accumulation,
channels-last, torch.compile, data placement, U-Net resume, gradients while sampling, and the
benchmark scripts."""

from __future__ import annotations

import functools
import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import dmattack.training.train as train_mod
from dmattack.attacks import AttackSpec, attacked_steps
from dmattack.core.seeding import sample_seeds
from dmattack.diffusion.gaussian import GaussianDiffusion
from dmattack.diffusion.sampling import SamplerConfig, sample_batched
from dmattack.evaluation.attack_eval import run_attack
from dmattack.models import build_model
from dmattack.runs.checkpoints import LoadedModel, load_run
from dmattack.training.objectives import ObjectiveConfig
from dmattack.training.train import (
    TrainConfig,
    batch_indices,
    data_fits_on_device,
    fused_adamw,
    resume_config,
    train,
)

ROOT = Path(__file__).resolve().parents[1]


def _cfg(**kw) -> TrainConfig:
    base = dict(dataset="oblique-plane", preset="mlp-small", num_data=256, steps=3,
                batch_size=16, warmup=1, checkpoint_every=100, log_every=100, num_preview=0,
                device="cpu", objective=ObjectiveConfig("ddpm"))
    return TrainConfig(**{**base, **kw})


def _unet_cfg(**kw) -> TrainConfig:
    return _cfg(**{"dataset": "digits", "preset": "tiny", "batch_size": 8, **kw})


def _weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = run / "checkpoint"
    if (ckpt / "model").is_dir():  # U-Net: diffusers folders
        return {f"{n}.{k}": v for n in ("model", "ema") for k, v in
                load_file(ckpt / n / "diffusion_pytorch_model.safetensors").items()}
    return {f"{n}.{k}": v for n in ("model", "ema")
            for k, v in load_file(ckpt / f"{n}.safetensors").items()}


def _record_calls(monkeypatch) -> list:
    """Wrap the trainer's loss so that every model forward records (rows, grad enabled), and
    each loss call ("loss", channels-last conv weights, the net's type)."""
    calls: list = []
    real = train_mod.training_loss

    def loss_fn(model, diffusion, x0, cfg, draws=None):
        def counted(x, t):
            calls.append((len(x), torch.is_grad_enabled()))
            return model(x, t)

        channels_last = any(p.dim() == 4 and p.shape[1] > 1 and not p.is_contiguous()
                            for p in model.parameters())
        calls.append(("loss", channels_last, type(model).__name__))
        return real(counted, diffusion, x0, cfg, draws)

    monkeypatch.setattr(train_mod, "training_loss", loss_fn)
    return calls


@pytest.mark.parametrize("method, per_micro", [
    ("ddpm", [(4, True)]),
    ("robust-rand", [(8, True)]),  # clean and perturbed in one forward of 2 × 4 rows
    ("robust-adv", [(4, True)] * 3),  # clean, FGSM (input gradient only), perturbed
])
def test_forward_passes_per_step_with_grad_accumulation(tmp_path, monkeypatch, method,
                                                        per_micro):
    calls = _record_calls(monkeypatch)
    train(_cfg(steps=2, batch_size=8, grad_accum=2, objective=ObjectiveConfig(method)),
          tmp_path / "run")
    forwards = [c for c in calls if c[0] != "loss"]
    assert forwards == per_micro * 4  # 2 steps × 2 micro-batches of 4 rows


def test_grad_accumulation_matches_one_batch(tmp_path):
    one = train(_cfg(objective=ObjectiveConfig("robust-rand")), tmp_path / "one")
    four = train(_cfg(grad_accum=4, objective=ObjectiveConfig("robust-rand")), tmp_path / "four")
    a, b = _weights(one), _weights(four)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


def test_channels_last_forced_on_cpu_matches_contiguous(tmp_path, monkeypatch):
    losses: dict[bool, list[float]] = {True: [], False: []}
    calls = _record_calls(monkeypatch)
    for on in (False, True):
        calls.clear()
        run = train(_unet_cfg(channels_last=on, objective=ObjectiveConfig("robust-adv")),
                    tmp_path / str(on), callback=lambda step, s, on=on: losses[on].append(
                        s["loss"]))
        assert {c[1] for c in calls if c[0] == "loss"} == {on}  # the weights' layout
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-4, atol=1e-6)
    # Adam's first steps move a weight by ≈ lr·sign(gradient) (lr = 2e-4): convolution
    # round-off can flip the sign of a near-zero gradient, so weights agree to below lr
    a, b = _weights(tmp_path / "False"), _weights(run)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-4, msg=k)
    assert load_run(run).model.unet.conv_in.weight.is_contiguous()  # saved plainly


def test_compile_trains_the_compiled_model_and_saves_plain_weights(tmp_path, monkeypatch):
    # aot_eager runs dynamo's capture and AOT autograd without generating code (fast);
    # test_compile_with_inductor runs the real backend
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    calls = _record_calls(monkeypatch)
    plain = train(_cfg(), tmp_path / "plain")
    assert {c[2] for c in calls if c[0] == "loss"} == {"MLPEps"}
    calls.clear()
    compiled = train(_cfg(compile=True), tmp_path / "compiled")
    assert {c[2] for c in calls if c[0] == "loss"} == {"OptimizedModule"}
    a, b = _weights(plain), _weights(compiled)
    assert a.keys() == b.keys() and not any("_orig_mod" in k for k in b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    assert json.loads((compiled / "config.json").read_text())["train"]["compile"] is True


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="inductor generates C++ for the CPU: no C++ compiler on this machine")
def test_compile_with_inductor(tmp_path):
    """The real torch.compile (inductor, C++ code generated for the CPU): ~30 s."""
    plain = train(_cfg(steps=2), tmp_path / "plain")
    compiled = train(_cfg(steps=2, compile=True), tmp_path / "compiled")
    a, b = _weights(plain), _weights(compiled)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)


def test_unet_resume_keeps_training(tmp_path):
    """A resumed U-Net run trains on (its optimiser follows the reloaded weights) and matches
    an uninterrupted run bit for bit."""
    straight = train(_unet_cfg(steps=4), tmp_path / "straight")
    part = train(_unet_cfg(steps=2), tmp_path / "part")
    at_2 = _weights(part)
    train(resume_config(part, steps=4), part, resume=True)
    a, b = _weights(straight), _weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(at_2[k], b[k]) for k in a if k.startswith("model."))


def test_resume_in_another_memory_layout(tmp_path):
    """Adam moments saved channels-last are re-laid out for contiguous weights on resume (the
    fused update pairs elements by memory position: without that the weights drift ~3e-3)."""
    straight = train(_unet_cfg(steps=4, channels_last=True, lr=1e-3), tmp_path / "straight")
    part = train(_unet_cfg(steps=2, channels_last=True, lr=1e-3), tmp_path / "part")
    train(resume_config(part, steps=4, channels_last=False), part, resume=True)
    a, b = _weights(straight), _weights(part)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-4, msg=k)


@pytest.mark.parametrize("field, value", [("grad_accum", 0), ("grad_accum", 3),
                                          ("grad_accum", 32), ("compile", "yes"),
                                          ("channels_last", 1)])
def test_speed_fields_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        _cfg(**{field: value}).resolved().validate()


def test_speed_settings_can_change_on_resume(tmp_path):
    run = train(_cfg(steps=1), tmp_path / "run")
    cfg = resume_config(run, steps=2, grad_accum=2, compile=True, channels_last=None)
    assert (cfg.grad_accum, cfg.compile, cfg.channels_last, cfg.steps) == (2, True, None, 2)
    with pytest.raises(ValueError, match="seed cannot change on resume"):
        resume_config(run, seed=3)


def test_batch_plan_is_batch_indices_cut_to_rows():
    cfg = _cfg(batch_size=16, seed=5)
    from dmattack.training.data import _BatchPlan

    plan = _BatchPlan(100, cfg, 4, 12)
    for step in range(20):  # several epochs of 6 batches
        assert torch.equal(plan(step), batch_indices(step, 100, 16, 5)[4:12])


def test_data_stays_on_the_gpu_when_it_fits(monkeypatch):
    assert data_fits_on_device(1 << 40, torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (16 << 30, 80 << 30))
    cuda = torch.device("cuda", 0)
    assert data_fits_on_device(600 << 20, cuda)  # CIFAR-10 in float32
    assert not data_fits_on_device(5 << 30, cuda)  # more than a quarter of the free memory
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 << 30, 80 << 30))
    assert not data_fits_on_device(9 << 30, cuda)  # over the 8 GiB cap
    assert fused_adamw(torch.device("cpu")) and fused_adamw(cuda)


class Probe(nn.Module):
    """Records, per forward: grad enabled, input requires grad, any parameter requires grad."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inner = build_model("mlp-small", (2,))
        self.seen: list[tuple[bool, bool, bool]] = []

    def forward(self, x, t):
        self.seen.append((torch.is_grad_enabled(), x.requires_grad,
                          any(p.requires_grad for p in self.parameters())))
        return self.inner(x, t)


def test_clean_steps_without_autograd_attacked_steps_grad_for_the_input_only(tmp_path):
    probe = Probe().eval()
    loaded = LoadedModel(probe, GaussianDiffusion.from_schedule(), (2,), source="/runs/probe")
    sampler = SamplerConfig("respaced", 6)
    spec = AttackSpec("pgd", 50, loss="eps", pgd_steps=3)
    run_attack(loaded, spec, num_samples=4, seed=0, sampler=sampler, batch_size=4,
               metric_fn=lambda s: {"std": float(s.std())}, device="cpu", out_dir=tmp_path)
    with_grad = [s for s in probe.seen if s[0]]
    # PGD-3 on the attacked steps: one no-grad clean reference + 3 gradient forwards each;
    # the last step (t = 0) has no budget and is left alone
    attacked = sum(1 for step in attacked_steps(6, 50, "spread") if step < 5)
    assert len(with_grad) == 3 * attacked
    assert set(with_grad) == {(True, True, False)}  # input gradient only, parameters frozen
    assert set(probe.seen) - set(with_grad) == {(False, False, False)}
    assert all(p.requires_grad and p.grad is None for p in probe.parameters())  # restored
    # and a clean loop inside torch.no_grad(), as `dmattack sample` runs it
    probe.seen.clear()
    with torch.no_grad():
        sample_batched(probe, loaded.diffusion, (2,), sample_seeds(0, 3), 3, sampler)
    assert set(probe.seen) == {(False, False, False)}


@pytest.fixture
def benchmarks(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    yield lambda name: importlib.import_module(name)
    for name in ("train_throughput", "sampling_throughput", "summary", "common"):
        sys.modules.pop(name, None)


def test_benchmark_scripts_run_and_summarise(benchmarks, tmp_path, capsys):
    train_json, sampling_json = tmp_path / "train.json", tmp_path / "sampling.json"
    result = benchmarks("train_throughput").main(
        ["--device", "cpu", "--preset", "tiny", "--batch-size", "8", "--steps", "1",
         "--warmup", "1", "--methods", "ddpm,robust-adv", "--json", str(train_json)])
    assert [r["job"] for r in result["rows"]] == ["reference", "ddpm", "robust-adv"]
    assert all(r["images_per_s"] > 0 for r in result["rows"])
    result = benchmarks("sampling_throughput").main(
        ["--device", "cpu", "--preset", "mlp-small", "--num-samples", "4", "--sampler-steps",
         "3", "--pgd-steps", "2", "--json", str(sampling_json)])
    assert [r["job"] for r in result["rows"]] == ["clean", "clean-stepnoise", "fgsm", "pgd2"]
    benchmarks("summary").main([str(train_json), str(sampling_json)])
    table = capsys.readouterr().out
    assert "| train     | ddpm" in table and "speed >= 1" in table and "| sampling  | pgd2" in table
