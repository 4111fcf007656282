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
from dmattack.attacks.convergence import convergence, rise_last_fifth
from dmattack.attacks.differentiable import DifferentiableChain, draw_chain_noise
from dmattack.attacks.distances import pixel_distance
from dmattack.attacks.lookahead import LookaheadPGD
from dmattack.attacks.trajectory import TrajectoryPGD
from dmattack.core.errors import ConfigError
from dmattack.core.seeding import ATTACK, generators, sample_seeds
from dmattack.diffusion.gaussian import GaussianDiffusion
from dmattack.diffusion.sampling import SamplerConfig, SamplingChain, sample, sample_batched
from dmattack.models import build_model
from dmattack.runs.checkpoints import load_run

SHAPE = (1, 8, 8)
SEEDS = sample_seeds(3, 3)
SAMPLERS = [SamplerConfig("ddpm"), SamplerConfig("respaced", 5), SamplerConfig("ddim", 5)]


PLUGIN_SAMPLER = "heun"  # a sampler a plugin could register; the chain cannot differentiate it


@pytest.fixture
def plugin_sampler():
    from dmattack.core.registry import SAMPLERS
    from dmattack.diffusion.sampling import Sampler, ancestral_step

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
    chain = SamplingChain(diffusion, sampler)
    k, budgets = chain.num_steps, chain.budgets
    steps = attacked_steps(k, 50, window)
    model.train()
    r = attack.attack(model, diffusion, sampler, SHAPE, SEEDS, steps)
    assert model.training and all(m.training for m in model.modules())  # mode restored
    assert all(p.grad is None for p in model.parameters())
    with_budget = [s for s in steps if budgets[s] > 0]
    assert sorted(r.deltas) == with_budget and with_budget
    for s, d in r.deltas.items():
        eps = float(budgets[s])
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
    chain = SamplingChain(diffusion, sampler)
    with torch.no_grad():
        clean = sample(model, chain, shape, seeds)
        dev = {}
        for name, spec in {"random": AttackSpec("random", 50),
                           "pgd-mean": AttackSpec("pgd", 50, pgd_steps=3)}.items():
            x = sample_batched(model, chain, shape, seeds, 4,
                               hook_factory=make_hook_factory(spec, model, chain))
            dev[name] = float(pixel_distance(x, clean).mean())
    traj = TrajectoryPGD(iterations=3).sample_attacked(
        model, diffusion, sampler, shape, seeds, attacked_steps(chain.num_steps, 50))
    dev["trajectory"] = float(pixel_distance(traj, clean).mean())
    assert dev["trajectory"] > 2 * max(dev["random"], dev["pgd-mean"]), dev


def test_lookahead_horizon_zero_is_per_step_pgd_with_x0_loss(digits):
    """Horizon 0, one EOT draw, pixel D and the last iterate: the objective is the per-step
    ``x0`` loss, the random starts come from the same ATTACK streams, so the samples agree."""
    model, diffusion = digits
    sampler, seeds = SamplerConfig("respaced", 8), sample_seeds(1, 3)
    chain = SamplingChain(diffusion, sampler)
    spec = AttackSpec("pgd", 50, loss="x0", pgd_steps=3)
    with torch.no_grad():
        ref = sample_batched(model, chain, SHAPE, seeds, 3,
                             hook_factory=make_hook_factory(spec, model, chain))
    atk = LookaheadPGD(iterations=3, eot=1, horizon=0, keep="last")
    out = atk.sample_attacked(model, diffusion, sampler, SHAPE, seeds,
                              attacked_steps(chain.num_steps, 50))
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
    lambda: TrajectoryPGD(restarts=0),
    lambda: LookaheadPGD(restarts=1.5),
    lambda: AttackSpec("trajectory", restarts=0),
    lambda: AttackSpec("random", restarts=2),
], ids=["distance", "extractor", "extractor-without-features", "iterations", "eps-scale",
        "keep", "eot", "horizon-negative", "horizon-name", "restarts-zero", "restarts-float",
        "spec-restarts-zero", "spec-restarts-unused"])
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
    chain = SamplingChain(diffusion, sampler)
    direct = atk.sample_attacked(model, chain, sampler, SHAPE, SEEDS, attacked_steps(5, 50))
    assert torch.equal(planned, direct)
    record = plan.record(model, chain)
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


# ----------------------------------------------------------------------------- convergence
RESPACED = SamplerConfig("respaced", 5)


def old_trajectory(model, diffusion, steps, iterations):
    """Trajectory PGD as written before restarts and traces (keep="best"), from the public
    pieces: the reference that ``restarts=1`` must reproduce bit for bit."""
    atk = TrajectoryPGD(iterations=iterations)
    chain = DifferentiableChain(model, diffusion, RESPACED)
    with torch.no_grad():
        clean = sample(model, diffusion, SHAPE, SEEDS, RESPACED)
    budgets = atk.budgets(chain, steps, len(SEEDS), SHAPE, "cpu")
    noise = draw_chain_noise(SHAPE, SEEDS, chain.num_steps)
    gens = generators(SEEDS, ATTACK)
    deltas = {s: atk.random_start(eps, SHAPE, gens) for s, eps in budgets.items()}
    best = {s: d.clone() for s, d in deltas.items()}
    best_d = torch.full((len(SEEDS),), -torch.inf)
    for _ in range(iterations):
        d, grads = atk._value_and_grad(chain, noise, deltas, clean, pixel_distance)
        atk.keep_best(best, best_d, deltas, d)
        for s, g in grads.items():
            alpha = 0.125 * budgets[s]
            deltas[s] = torch.clamp(deltas[s] + alpha * g.sign(), -budgets[s], budgets[s])
    with torch.no_grad():
        d = pixel_distance(chain.run(noise.x_T, noise.z, deltas=deltas), clean)
    atk.keep_best(best, best_d, deltas, d)
    x0, _ = replay(model, diffusion, RESPACED, best)
    return x0, best


def test_trajectory_trace_and_restarts(tiny):
    """The trace: N + 1 values, non-decreasing, its last entry the mean returned distance;
    restarts=1 is the attack without restarts bit for bit; restarts=2 draws new starts, never
    does worse per sample, and is reproducible."""
    model, diffusion = tiny
    steps = attacked_steps(5, 60)
    with torch.no_grad():
        one = TrajectoryPGD(iterations=3).attack(model, diffusion, RESPACED, SHAPE, SEEDS, steps)
        two = [TrajectoryPGD(iterations=3, restarts=2).attack(model, diffusion, RESPACED, SHAPE,
                                                              SEEDS, steps) for _ in range(2)]
    old_x0, old_deltas = old_trajectory(model, diffusion, steps, 3)
    assert torch.equal(one.x0, old_x0)
    assert all(torch.equal(one.deltas[s], old_deltas[s]) for s in old_deltas)
    for r, restarts in ((one, 1), (two[0], 2)):
        assert r.progress.shape == (restarts, 4, len(SEEDS))
        assert len(r.trace) == 4 and len(r.trace_per_restart) == restarts
        assert sorted(r.trace) == r.trace
        assert r.trace[-1] == pytest.approx(r.distance.mean().item(), rel=1e-6)
        for tr in r.trace_per_restart:
            assert sorted(tr) == tr and max(tr) <= r.trace[-1] + 1e-7
    assert torch.equal(two[0].progress[0], one.progress[0])  # restart 0 is the single run
    assert not torch.equal(two[0].progress[1, 0], two[0].progress[0, 0])  # new random starts
    assert (two[0].distance >= one.distance).all()
    assert (two[0].distance > one.distance).any()
    assert torch.equal(two[0].x0, two[1].x0) and torch.equal(two[0].progress, two[1].progress)


def test_lookahead_trace_and_restarts(tiny):
    """Look-ahead: one column per (attacked step, sample); restart 0 of the first attacked step
    is the single run's; restarts change the label only when > 1."""
    model, diffusion = tiny
    steps = attacked_steps(5, 60)
    runs = {}
    for restarts in (1, 2):
        atk = LookaheadPGD(iterations=2, eot=2, horizon=2, restarts=restarts)
        with torch.no_grad():
            runs[restarts] = atk.attack(model, diffusion, RESPACED, SHAPE, SEEDS, steps)
    n = len(runs[1].deltas) * len(SEEDS)
    assert runs[1].progress.shape == (1, 3, n) and runs[2].progress.shape == (2, 3, n)
    assert torch.equal(runs[2].progress[0, :, :len(SEEDS)], runs[1].progress[0, :, :len(SEEDS)])
    assert sorted(runs[2].trace) == runs[2].trace
    assert LookaheadPGD(iterations=2).label == "lookahead-pgd2-eot4-h5-pixel"
    assert LookaheadPGD(iterations=2, restarts=3).label == "lookahead-pgd2-eot4-h5-pixel-r3"
    assert AttackSpec("trajectory", iterations=2, restarts=2).describe() == \
        "trajectory-pgd2-pixel-spread-50%-r2"


def test_plan_diagnostics_pool_the_batches(tiny):
    """AttackPlan.sample fills ``diagnostics`` with the convergence record of all batches:
    the same as one batch holding every sample; its last entry the mean returned D."""
    model, diffusion = tiny
    atk = TrajectoryPGD(iterations=2, restarts=2)
    plan = AttackPlan(atk, percent=60)
    diags = []
    for batch in (2, 3):
        diags.append({})
        with torch.no_grad():
            x = plan.sample(model, diffusion, SHAPE, SEEDS, batch, RESPACED,
                            diagnostics=diags[-1])
    a, b = diags
    assert set(a) == {"trace", "trace_per_restart", "converged", "iterations", "restarts",
                      "tolerance", "rise_last_fifth"}
    assert a["iterations"] == 2 and a["restarts"] == 2 and a["tolerance"] == 0.01
    assert len(a["trace"]) == 3 and len(a["trace_per_restart"]) == 2
    np.testing.assert_allclose(a["trace"], b["trace"], rtol=1e-5)
    np.testing.assert_allclose(a["trace_per_restart"], b["trace_per_restart"], rtol=1e-5)
    with torch.no_grad():
        clean = sample(model, diffusion, SHAPE, SEEDS, RESPACED)
    assert a["trace"][-1] == pytest.approx(pixel_distance(x, clean).mean().item(), rel=1e-5)
    assert a == convergence(a["trace"], 2, 2, trace_per_restart=a["trace_per_restart"])
    empty = {}
    with torch.no_grad():
        AttackPlan(atk, percent=0).sample(model, diffusion, SHAPE, SEEDS, 3, RESPACED,
                                          diagnostics=empty)
    assert empty == {}


@pytest.mark.parametrize("trace, iterations, rise, converged", [
    ([0.1, 0.5, 0.9, 1.0, 1.1, 1.2], 5, 0.1 / 1.1, False),  # still rising: last 1 of 5
    ([0.1, 0.5, 1.0, 1.0, 1.0, 1.0], 5, 0.0, True),  # flat
    ([0.2] + [1.0] * 9 + [1.005], 10, 0.005, True),  # +0.5% over the last 2 of 10: within 1%
    ([0.2] + [1.0] * 8 + [1.02, 1.02], 10, 0.02, False),  # +2% over the last 2 of 10
    ([0.5, 1.0], 1, 1.0, False),  # one iteration: the last fifth is that iteration
    ([0.0, 0.0, 0.0], 2, 0.0, True),  # nothing found, nothing rising
    ([0.0, 0.0, 0.3], 2, None, False),  # from 0: infinite rise
])
def test_convergence_rule_on_hand_made_traces(trace, iterations, rise, converged):
    c = convergence(trace, iterations, 1)
    assert c["converged"] is converged and c["trace_per_restart"] == [trace]
    assert c["rise_last_fifth"] == (None if rise is None else pytest.approx(rise))
    assert rise_last_fifth(trace, iterations) == (float("inf") if rise is None
                                                  else pytest.approx(rise))


def test_convergence_rule_tolerance_and_bad_input():
    trace = [0.0, 1.0, 1.03]
    assert not convergence(trace, 2, 1)["converged"]
    assert convergence(trace, 2, 1, tolerance=0.05)["converged"]
    with pytest.raises(ConfigError, match="tolerance"):
        convergence(trace, 2, 1, tolerance=-0.1)
    with pytest.raises(ValueError, match="3 values"):
        convergence(trace[:2], 2, 1)
    with pytest.raises(ValueError, match="per-restart"):
        convergence(trace, 2, 2, trace_per_restart=[trace])
