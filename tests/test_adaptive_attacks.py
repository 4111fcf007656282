"""Adaptive attacks on the whole chain: checkpointed gradients, budgets, pairing, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmattack.attacks import (
    AttackPlan,
    AttackSpec,
    WholeChainAttack,
    attacked_steps,
    make_hook_factory,
)
from dmattack.attacks.differentiable import DifferentiableChain, draw_chain_noise
from dmattack.attacks.distances import pixel_distance
from dmattack.attacks.lookahead import LookaheadPGD
from dmattack.attacks.trajectory import TrajectoryPGD
from dmattack.diffusion import GaussianDiffusion
from dmattack.errors import ConfigError
from dmattack.models import build_model
from dmattack.runs import load_run
from dmattack.sampling import SamplerConfig, sample, sample_batched, sampling_diffusion
from dmattack.seeding import sample_seeds

SHAPE = (1, 8, 8)
SEEDS = sample_seeds(3, 3)
SAMPLERS = [SamplerConfig("ddpm"), SamplerConfig("respaced", 5), SamplerConfig("ddim", 5)]


PLUGIN_SAMPLER = "heun"  # a sampler a plugin could register; the chain cannot differentiate it


@pytest.fixture
def plugin_sampler():
    from dmattack.registry import SAMPLERS
    from dmattack.sampling import Sampler, ancestral_step

    SAMPLERS.register(PLUGIN_SAMPLER, Sampler("a plugin's sampler (test)", ancestral_step,
                                              differentiable=False))
    yield PLUGIN_SAMPLER
    SAMPLERS.unregister(PLUGIN_SAMPLER)


@pytest.fixture(scope="module")
def tiny():
    """A random tiny U-Net on an 8-step schedule (the ``ddpm`` sampler walks all 8)."""
    torch.manual_seed(0)
    return build_model("tiny", SHAPE).eval(), GaussianDiffusion(np.linspace(0.01, 0.3, 8))


@pytest.fixture(scope="module")
def digits():
    lm = load_run("checkpoints/digits-ddpm")
    return lm.model, lm.diffusion


def delta_grads(model, diffusion, sampler, checkpoint):
    chain = DifferentiableChain(model, diffusion, sampler, checkpoint=checkpoint)
    noise = draw_chain_noise(SHAPE, SEEDS, chain.num_steps)
    clean = chain.run(noise.x_T, noise.z)
    g = torch.Generator().manual_seed(1)
    deltas = {k: (0.1 * torch.randn(len(SEEDS), *SHAPE, generator=g)).requires_grad_(True)
              for k in range(chain.num_steps - 1)}
    out = chain.run(noise.x_T, noise.z, deltas=deltas)
    return torch.autograd.grad(pixel_distance(out, clean).sum(), list(deltas.values()))


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: s.name)
def test_checkpointed_gradient_equals_plain_gradient(tiny, sampler):
    model, diffusion = tiny
    plain = delta_grads(model, diffusion, sampler, checkpoint=False)
    ckpt = delta_grads(model, diffusion, sampler, checkpoint=True)
    assert all(g.abs().sum() > 0 for g in plain)  # every δ_k reaches the output
    for a, b in zip(plain, ckpt, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: s.name)
def test_unperturbed_chain_is_sample_bit_for_bit(tiny, sampler):
    model, diffusion = tiny
    chain = DifferentiableChain(model, diffusion, sampler)
    noise = draw_chain_noise(SHAPE, SEEDS, chain.num_steps)
    with torch.no_grad():
        assert torch.equal(chain.run(noise.x_T, noise.z),
                           sample(model, diffusion, SHAPE, SEEDS, sampler))


@pytest.mark.parametrize("attack", [TrajectoryPGD(), LookaheadPGD(horizon="end")])
def test_no_attacked_step_is_the_clean_run(tiny, attack):
    """0% attacked, or only the last step (budget √β̃ = 0): the clean run, bit for bit."""
    model, diffusion = tiny
    sampler = SamplerConfig("respaced", 5)
    with torch.no_grad():
        clean = sample(model, diffusion, SHAPE, SEEDS, sampler)
    assert isinstance(attack, WholeChainAttack)
    for steps in ([], [4]):
        out = attack.sample_attacked(model, diffusion, sampler, SHAPE, SEEDS, steps)
        assert torch.equal(out, clean)
    plan = AttackPlan(attack, percent=0)
    with torch.no_grad():
        assert torch.equal(plan.sample(model, diffusion, SHAPE, SEEDS, 3, sampler), clean)


def replay(model, diffusion, sampler, deltas):
    """``sample()`` with ``deltas`` added at their steps; records which steps were touched."""
    touched = []

    def hook(x, t, step):
        if step in deltas:
            touched.append(step)
            return x + deltas[step]
        return x

    with torch.no_grad():
        return sample(model, diffusion, SHAPE, SEEDS, sampler, hook=hook), touched


@pytest.mark.parametrize("attack, window", [
    (TrajectoryPGD(iterations=3), "spread"),
    (TrajectoryPGD(iterations=2, keep="last", checkpoint=False), "last"),
    (LookaheadPGD(iterations=2, eot=2, horizon=2), "spread"),
], ids=["trajectory", "trajectory-last", "lookahead"])
@pytest.mark.parametrize("sampler", SAMPLERS[1:], ids=lambda s: s.name)
def test_budget_holds_and_only_attacked_steps_move(tiny, attack, window, sampler):
    model, diffusion = tiny
    sd = sampling_diffusion(diffusion, sampler)
    k = sd.num_timesteps
    steps = attacked_steps(k, 50, window)
    model.train()
    r = attack.attack(model, diffusion, sampler, SHAPE, SEEDS, steps)
    assert model.training and all(m.training for m in model.modules())  # mode restored
    assert all(p.grad is None for p in model.parameters())
    with_budget = [s for s in steps if sd.attack_std_table[k - 1 - s] > 0]
    assert sorted(r.deltas) == with_budget and with_budget
    for s, d in r.deltas.items():
        eps = float(sd.attack_std_table[k - 1 - s])
        assert d.abs().max() <= eps * (1 + 1e-6)
        assert d.abs().max() > 0.5 * eps
    x0, touched = replay(model, diffusion, sampler, r.deltas)
    assert touched == with_budget
    assert torch.equal(r.x0, x0)  # true noise; nothing but the returned δ_s differs
    with torch.no_grad():
        assert torch.equal(r.clean, sample(model, diffusion, SHAPE, SEEDS, sampler))
    torch.testing.assert_close(r.distance, pixel_distance(r.x0, r.clean))


def test_trajectory_beats_random_and_per_step_mean(digits):
    """On the shipped digits DDPM the joint attack moves the final sample far more than the
    random control or the per-step PGD with the ``mean`` loss at the same steps and budgets."""
    model, diffusion = digits
    sampler, seeds, shape = SamplerConfig("respaced", 10), sample_seeds(0, 4), SHAPE
    sd = sampling_diffusion(diffusion, sampler)
    with torch.no_grad():
        clean = sample(model, diffusion, shape, seeds, sampler)
        dev = {}
        for name, spec in {"random": AttackSpec("random", 50),
                           "pgd-mean": AttackSpec("pgd", 50, pgd_steps=3)}.items():
            x = sample_batched(model, diffusion, shape, seeds, 4, sampler,
                               make_hook_factory(spec, model, sd, sd.num_timesteps))
            dev[name] = float(pixel_distance(x, clean).mean())
    traj = TrajectoryPGD(iterations=3).sample_attacked(
        model, diffusion, sampler, shape, seeds, attacked_steps(sd.num_timesteps, 50))
    dev["trajectory"] = float(pixel_distance(traj, clean).mean())
    assert dev["trajectory"] > 2 * max(dev["random"], dev["pgd-mean"]), dev


def test_lookahead_horizon_zero_is_per_step_pgd_with_x0_loss(digits):
    """Horizon 0, one EOT draw, pixel D and the last iterate: the objective is the per-step
    ``x0`` loss, the random starts come from the same ATTACK streams, so the samples agree."""
    model, diffusion = digits
    sampler, seeds = SamplerConfig("respaced", 8), sample_seeds(1, 3)
    sd = sampling_diffusion(diffusion, sampler)
    spec = AttackSpec("pgd", 50, loss="x0", pgd_steps=3)
    with torch.no_grad():
        ref = sample_batched(model, diffusion, SHAPE, seeds, 3, sampler,
                             make_hook_factory(spec, model, sd, sd.num_timesteps))
    atk = LookaheadPGD(iterations=3, eot=1, horizon=0, keep="last")
    out = atk.sample_attacked(model, diffusion, sampler, SHAPE, seeds,
                              attacked_steps(sd.num_timesteps, 50))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_user_and_feature_distances(digits):
    model, diffusion = digits
    sampler, seeds = SamplerConfig("ddim", 4), sample_seeds(2, 2)

    def l1(a, b):
        return (a - b).abs().flatten(1).sum(1)

    steps = [0, 2]
    r = TrajectoryPGD(iterations=1, distance=l1).attack(model, diffusion, sampler, SHAPE, seeds,
                                                        steps)
    torch.testing.assert_close(r.distance, l1(r.x0, r.clean))
    assert TrajectoryPGD(distance=l1).settings()["distance"] == "l1"
    r = LookaheadPGD(iterations=1, eot=1, horizon=1, distance="features",
                     feature_extractor="digits-cnn").attack(model, diffusion, sampler, SHAPE,
                                                            seeds, steps)
    assert torch.isfinite(r.distance).all() and (r.distance >= 0).all()


@pytest.mark.parametrize("make", [
    lambda: TrajectoryPGD(distance="ssim"),
    lambda: TrajectoryPGD(distance="features", feature_extractor="vgg"),
    lambda: TrajectoryPGD(distance="pixel", feature_extractor="digits-cnn"),
    lambda: TrajectoryPGD(iterations=0),
    lambda: TrajectoryPGD(eps_scale=-1),
    lambda: TrajectoryPGD(keep="first"),
    lambda: LookaheadPGD(eot=0),
    lambda: LookaheadPGD(horizon=-1),
    lambda: LookaheadPGD(horizon="forever"),
], ids=["distance", "extractor", "extractor-without-features", "iterations", "eps-scale",
        "keep", "eot", "horizon-negative", "horizon-name"])
def test_bad_settings_raise_config_error(make):
    with pytest.raises(ConfigError) as e:
        make()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("attack, sampler, shape, steps", [
    (LookaheadPGD(horizon=6), ("respaced", 5), SHAPE, [0]),
    (TrajectoryPGD(), (PLUGIN_SAMPLER, 5), SHAPE, [0]),
    (TrajectoryPGD(distance=lambda a, b: a.sum()), ("respaced", 5), SHAPE, [0]),
    (TrajectoryPGD(distance="features", feature_extractor="digits-cnn"),
     ("respaced", 5), (3, 8, 8), [0]),
    (TrajectoryPGD(), ("respaced", 5), SHAPE, [0, 5]),
], ids=["horizon-longer-than-chain", "sampler", "user-distance-shape", "extractor-shape",
        "step-outside-chain"])
def test_bad_runs_raise_config_error(tiny, plugin_sampler, attack, sampler, shape, steps):
    model, diffusion = tiny
    sampler = SamplerConfig(*sampler)
    if shape != SHAPE:
        model = build_model("tiny", shape).eval()
    with pytest.raises(ConfigError) as e:
        attack.attack(model, diffusion, sampler, shape, SEEDS, steps)
    assert "\n" not in str(e.value)


def test_runs_as_an_attack_plan(tiny):
    """Through AttackPlan (what run_attack / run_curve use): same samples as a direct call,
    a record without reserved keys, a label naming the settings."""
    model, diffusion = tiny
    sampler = SamplerConfig("ddim", 5)
    atk = LookaheadPGD(iterations=1, eot=1, horizon="end", eps_scale=2)
    plan = AttackPlan(atk, percent=50, window="spread")
    with torch.no_grad():
        planned = plan.sample(model, diffusion, SHAPE, SEEDS, 3, sampler)
    direct = atk.sample_attacked(model, sampling_diffusion(diffusion, sampler), sampler, SHAPE,
                                 SEEDS, attacked_steps(5, 50))
    assert torch.equal(planned, direct)
    record = plan.record(model, sampling_diffusion(diffusion, sampler))
    assert record["label"] == "lookahead-pgd1-eot1-hend-pixel-x2-spread-50%"
    assert record["eot"] == 1 and record["horizon"] == "end" and record["kind"] == "whole-chain"


def test_inception_embedding_matches_torch_fidelity(monkeypatch):
    """The differentiable Inception path equals torch-fidelity's uint8 forward on images whose
    pixels are exact uint8 values (random weights: the check is of the layers, not the weights)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    import evaluators.extractors
    from dmattack.attacks.distances import InceptionEmbedding

    monkeypatch.setattr(evaluators.extractors, "resolve_weights", lambda name, w: "unused")
    monkeypatch.setattr(torch, "load", lambda *a, **k: {})
    monkeypatch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    torch.manual_seed(0)
    embed = InceptionEmbedding().eval()
    u8 = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    x = u8.float() / 127.5 - 1
    with torch.no_grad():
        (ref,) = embed.net(u8)
        torch.testing.assert_close(embed(x), ref, rtol=1e-4, atol=1e-4)
