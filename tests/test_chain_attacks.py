"""Reverse-chain attacks: budgets, losses, schedule, paired randomness, torchattacks behaviour."""

from __future__ import annotations

import pytest
import torch

from dmattack.attacks import (
    AttackSpec,
    ChainFGSM,
    ChainPGD,
    ChainRandom,
    PredictionGap,
    attacked_steps,
    make_hook_factory,
)
from dmattack.attacks.schedule import steps_with_budget
from dmattack.core.errors import ConfigError
from dmattack.core.seeding import ATTACK, generators, sample_seeds
from dmattack.diffusion.gaussian import GaussianDiffusion, respace
from dmattack.diffusion.sampling import SamplerConfig, SamplingChain, sample, sample_batched
from dmattack.models import build_model

DIM = 8
K = 20
SAMPLER = SamplerConfig("respaced", K)


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion.from_schedule("linear", 1000)


@pytest.fixture(scope="module")
def model(diffusion):
    """mlp-small after 40 Adam steps on data near a 2-D subspace of R^8 (so its Jacobian is far
    from ∝ I and the attack direction matters); its chain stays bounded."""
    torch.manual_seed(0)
    net = build_model("mlp-small", (DIM,))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(2, DIM, generator=g) / 2
    for _ in range(40):
        x0 = torch.randn(128, 2, generator=g) @ basis + 0.05 * torch.randn(128, DIM, generator=g)
        t = torch.randint(0, diffusion.num_timesteps, (128,), generator=g)
        noise = torch.randn(128, DIM, generator=g)
        loss = (net(diffusion.q_sample(x0, t, noise), t) - noise).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def sd(diffusion):
    return respace(diffusion, K)


def state(n=32, seed=0):
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))


def gens(n, seed=7):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def all_attacks(model, sd):
    return {
        "fgsm": ChainFGSM(model, sd, loss="eps"),
        "fgsm-proj": ChainFGSM(model, sd, loss="eps", project=True),
        "pgd": ChainPGD(model, sd, loss="eps", steps=5),
        "pgd-end": ChainPGD(model, sd, loss="eps", steps=5, project="end"),
        "random-sign": ChainRandom(model, sd),
        "random-uniform": ChainRandom(model, sd, dist="uniform"),
    }


# ----------------------------------------------------------------------------- budgets
@pytest.mark.parametrize("name", ["fgsm", "fgsm-proj", "pgd", "pgd-end", "random-sign",
                                  "random-uniform"])
def test_perturbation_stays_in_ball_at_every_step(model, diffusion, sd, name):
    atk = all_attacks(model, sd)[name]
    radii = []

    def hook(x, t, step):
        x_adv = atk(x, t)
        delta = (x_adv - x).abs().amax(dim=1)
        budget = sd.attack_std(t, x).flatten()
        assert (delta <= budget * (1 + 1e-5) + 1e-6).all(), (name, step)
        radii.append((delta / budget.clamp(min=1e-12)).mean().item())
        if t[0] == 0:
            assert torch.equal(x_adv, x)  # σ = 0 at the last step: unchanged
        return x_adv

    with torch.no_grad():
        sample(model, diffusion, (DIM,), sample_seeds(0, 8), SAMPLER, hook=hook)
    assert len(radii) == K
    assert min(radii[:-1]) > 0.3  # the attack uses its budget


def test_fgsm_steps_onto_the_sphere_and_sign_step(model, sd):
    x, t = state(), torch.full((32,), 9)
    budget = sd.attack_std(t, x)
    d = ChainFGSM(model, sd, loss="eps")(x, t) - x
    torch.testing.assert_close(d.abs(), budget.expand_as(d), rtol=1e-5, atol=1e-6)
    d = ChainRandom(model, sd)(x, t) - x
    torch.testing.assert_close(d.abs(), budget.expand_as(d), rtol=1e-5, atol=1e-6)


def test_eps_scale_scales_the_budget(model, sd):
    x, t = state(), torch.full((32,), 5)
    d = ChainRandom(model, sd, eps_scale=0.5)(x, t) - x
    torch.testing.assert_close(d.abs(), 0.5 * sd.attack_std(t, x).expand_as(d), rtol=1e-5,
                               atol=1e-6)


# ----------------------------------------------------------------------------- losses
@pytest.mark.parametrize("loss", ["mean", "eps", "x0"])
def test_attacks_raise_the_loss(sd, loss):
    torch.manual_seed(0)
    model = build_model("mlp-small", (DIM,)).eval()  # random init: a Jacobian far from ∝ I
    x = state(64)
    fn = PredictionGap(loss, model, sd)
    for t_int in (15, 8, 2):
        t = torch.full((64,), t_int)
        budget = sd.attack_std(t, x)
        start = x + (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) - 1) \
            * budget
        l_start = fn.evaluate(start, x, t)
        l_fgsm = fn.evaluate(
            ChainFGSM(model, sd, loss, generator=torch.Generator().manual_seed(3))(x, t), x, t)
        l_pgd = fn.evaluate(
            ChainPGD(model, sd, loss, generator=torch.Generator().manual_seed(3))(x, t), x, t)
        l_rand = fn.evaluate(
            ChainRandom(model, sd, generator=torch.Generator().manual_seed(4))(x, t), x, t)
        assert l_fgsm.mean() > l_start.mean()
        assert l_pgd.mean() > l_start.mean()
        assert l_pgd.mean() >= l_fgsm.mean() * (1 - 1e-3)
        if loss == "eps":
            assert l_pgd.mean() > 1.5 * l_rand.mean()
            assert l_fgsm.mean() > l_rand.mean()


def test_user_loss_fn_is_used(model, sd):
    calls = []

    def toward_plus(x_adv, x_t, t):
        calls.append(model.training)
        return x_adv.sum(dim=1)

    x, t = state(), torch.full((32,), 9)
    for atk in (ChainFGSM(model, sd, loss=toward_plus), ChainPGD(model, sd, loss=toward_plus)):
        d = atk(x, t) - x
        torch.testing.assert_close(d, sd.attack_std(t, x).expand_as(d), rtol=1e-5, atol=1e-6)
    # FGSM: 1; PGD: 20 iterations + the last iterate scored for its trace (§12 convergence)
    assert len(calls) == 1 + 20 + 1 and not any(calls)
    assert "loss=toward_plus" in repr(ChainPGD(model, sd, loss=toward_plus))


# ----------------------------------------------------------------------------- torchattacks
def test_model_mode_gradients_and_repr():
    torch.manual_seed(0)
    net = build_model("mlp-small", (DIM,), dropout=0.1)
    sd = respace(GaussianDiffusion.from_schedule(), K)
    seen = []
    x, t = state(), torch.full((32,), 9)

    def probe(x_adv, x_t, t):
        seen.append(net.training)
        return net(x_adv, t).pow(2).sum(1)

    net.train()
    with torch.no_grad():  # the attack takes its own gradients
        x_adv = ChainPGD(net, sd, loss=probe, steps=2)(x, t)
    assert not any(seen) and net.training and all(m.training for m in net.modules())
    assert not torch.equal(x_adv, x)
    assert all(p.grad is None for p in net.parameters())

    net.eval()
    atk = ChainFGSM(net, sd, loss=probe)
    atk.set_model_training_mode(model_training=True)
    seen.clear()
    atk(x, t)
    assert seen == [True] and not any(m.training for m in net.modules())

    text = repr(ChainPGD(net, sd, loss="eps", steps=20, project="end"))
    for part in ("ChainPGD(", "model_name=MLPEps", "loss=eps", "steps=20", "alpha_scale=0.125",
                 "project=end", "eps_scale=1.0", "T=20"):
        assert part in text
    assert "ChainFGSM(" in repr(ChainFGSM(net, sd)) and "dist=sign" in repr(ChainRandom(net, sd))


def test_invalid_arguments(model, sd):
    with pytest.raises(ValueError, match="unknown attack loss 'l2'"):
        ChainFGSM(model, sd, loss="l2")
    with pytest.raises(ValueError, match="project"):
        ChainPGD(model, sd, project=False)
    with pytest.raises(ValueError, match="dist"):
        ChainRandom(model, sd, dist="gauss")
    with pytest.raises(ValueError, match="per-sample generators"):
        ChainRandom(model, sd, generator=gens(3))(state(4), torch.full((4,), 3))


def test_per_sample_generators_make_rows_independent(model, sd):
    x, t = state(8), torch.full((8,), 12)
    for make in (lambda g: ChainPGD(model, sd, "eps", steps=3, generator=g),
                 lambda g: ChainRandom(model, sd, generator=g)):
        full = make(gens(8))(x, t)
        part = make(gens(3))(x[:3], t[:3])
        torch.testing.assert_close(full[:3], part, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("num_steps", [10, 20, 37, 1000])
@pytest.mark.parametrize("window", ["first", "last", "spread"])
@pytest.mark.parametrize("counting", ["budget", "all"])
def test_attacked_step_count_and_window(num_steps, window, counting):
    # closed form: "budget" chooses among the K−1 steps with a positive budget (the last step,
    # t = 0, has √β̃ = 0), "all" among all K steps (the former counting)
    candidates = num_steps - 1 if counting == "budget" else num_steps
    for percent in (0, 10, 25, 50, 75, 100):
        steps = attacked_steps(num_steps, percent, window, counting)
        count = int(percent / 100 * candidates + 0.5)
        assert len(steps) == count == len(set(steps)) and steps == sorted(steps)
        assert all(0 <= s < candidates for s in steps)
        if window == "first":
            assert steps == list(range(count))
        elif window == "last":
            assert steps == list(range(candidates - count, candidates))
        elif count:
            gaps = {b - a for a, b in zip(steps, steps[1:], strict=False)}
            assert max(gaps, default=0) - min(gaps, default=0) <= 1  # evenly strided
    assert attacked_steps(num_steps, 100, window, counting) == list(range(candidates))
    assert steps_with_budget(num_steps) == list(range(num_steps - 1))


def test_steps_with_budget_are_those_whose_sqrt_beta_tilde_is_positive():
    full = GaussianDiffusion.from_schedule()
    for k in (4, 25, 1000):
        chain = SamplingChain(full, SamplerConfig("respaced", k))
        sd = chain.walk
        # reverse step i is at t = K−1−i; its budget is √β̃_t
        positive = [i for i in range(k) if sd.attack_std_table[k - 1 - i] > 0]
        assert steps_with_budget(k) == positive == chain.attackable_steps


def test_spread_indices():
    # budget counting: M = K−1 candidates, count = round(p·M), step ⌊(i + ½)·M/count⌋
    assert attacked_steps(20, 25, "spread") == [1, 5, 9, 13, 17]  # M 19, count 5
    assert attacked_steps(10, 50, "spread") == [0, 2, 4, 6, 8]  # M 9, count round(4.5) = 5
    assert attacked_steps(25, 50, "spread") == list(range(1, 24, 2))  # 12 real steps
    assert attacked_steps(4, 50) == [0, 2]  # M 3, count ⌊1.5 + ½⌋ = 2: ⌊0.75⌋, ⌊2.25⌋
    # the former counting (all K steps): 13 steps of 25 for 50%, the last among them
    assert attacked_steps(20, 25, "spread", "all") == [2, 6, 10, 14, 18]
    assert attacked_steps(10, 50, "spread", "all") == [1, 3, 5, 7, 9]
    assert attacked_steps(25, 50, "spread", "all")[-1] == 24


def test_schedule_validation():
    with pytest.raises(ValueError, match=r"\[0, 100\], got 101"):
        attacked_steps(10, 101)
    with pytest.raises(ValueError, match="'middle'; allowed: spread, first, last"):
        attacked_steps(10, 50, "middle")
    with pytest.raises(ValueError, match="'every'; allowed: budget, all"):
        attacked_steps(10, 50, "spread", "every")
    with pytest.raises(ValueError, match="method .--method. = 'cw' is invalid; allowed: fgsm, pgd"):
        AttackSpec("cw", 50)
    with pytest.raises(ValueError, match="project"):
        AttackSpec("fgsm", 50, project="end")


def test_spec_labels():
    assert AttackSpec("pgd", 50).describe() == "pgd20-mean-spread-50%"
    assert AttackSpec("fgsm", 25, "last", loss="eps").describe() == "fgsm-eps-last-25%"
    assert AttackSpec("random", 75).describe(with_percent=False) == "random-sign-spread"
    assert AttackSpec("pgd", 50, project="end", eps_scale=2).describe() == \
        "pgd20-mean-spread-50%-projend-x2"
    d = AttackSpec("pgd", 50, loss="x0").to_dict()
    assert d["label"] == "pgd20-x0-spread-50%" and d["pgd_steps"] == 20
    # exact numbers: near-equal settings never share a label (or a curve point)
    assert AttackSpec("pgd", 4.9999999).describe() == "pgd20-mean-spread-4.9999999%"
    assert AttackSpec("random", 5, eps_scale=8 / 255).describe() == \
        f"random-sign-spread-5%-x{8 / 255!r}"
    assert AttackSpec("fgsm", 10, project="on").describe() == "fgsm-mean-spread-10%-proj"
    assert AttackSpec("pgd", 10, alpha_scale=0.25).describe().endswith("-alpha0.25")


@pytest.mark.parametrize("bad, message", [
    (dict(eps_scale=float("nan")), r"eps_scale \(--eps-scale\) = nan is invalid"),
    (dict(eps_scale=float("inf")), r"eps_scale \(--eps-scale\) = inf"),
    (dict(percent=float("nan")), r"percent \(--steps-attacked\) = nan"),
    (dict(percent=-1), r"percent \(--steps-attacked\) = -1"),
    (dict(alpha_scale=0.0), r"alpha_scale \(--alpha-scale\) = 0.0"),
    (dict(pgd_steps=0), r"pgd_steps \(--pgd-steps\) = 0 is invalid; allowed: an integer >= 1"),
    (dict(method="random", loss="eps"), r"loss \(--loss\) = 'eps' is not used by attack "
                                        "'random'"),
    (dict(method="fgsm", pgd_steps=5), "pgd_steps .* not used by attack 'fgsm'"),
    (dict(method="pgd", project="off"), r"project \(--project\) = 'off' is invalid; allowed: "
                                        "auto, on, end"),
    (dict(window=""), "window"),
])
def test_spec_refuses_bad_and_unused_settings(bad, message):
    with pytest.raises(ConfigError, match=message):
        AttackSpec(**bad)


def test_spec_refuses_the_former_project_spelling():
    """The 0.1 spelling (None/True/False) is gone: one of the named values is required."""
    for old in (True, False, None):
        with pytest.raises(ConfigError, match=r"project \(--project\) = .* is invalid; allowed: "
                           "auto, off, on"):
            AttackSpec("fgsm", 50, project=old)


# ----------------------------------------------------------------------------- paired sampling
def run(model, diffusion, spec, seeds, batch_size):
    chain = SamplingChain(diffusion, SAMPLER)
    factory = None if spec is None else make_hook_factory(spec, model, chain)
    with torch.no_grad():
        return sample_batched(model, diffusion, (DIM,), seeds, batch_size, SAMPLER, factory)


def test_zero_percent_is_the_clean_run_bit_for_bit(model, diffusion):
    seeds = sample_seeds(1, 12)
    clean = run(model, diffusion, None, seeds, 12)
    for window in ("first", "last", "spread"):
        assert torch.equal(run(model, diffusion, AttackSpec("pgd", 0, window), seeds, 12), clean)


@pytest.mark.parametrize("window", ["first", "last", "spread"])
def test_hook_attacks_exactly_the_scheduled_steps(model, diffusion, sd, window):
    spec = AttackSpec("random", 25, window)
    factory = make_hook_factory(spec, model, SamplingChain(diffusion, SAMPLER))
    changed = []

    def counting(seeds):
        hook = factory(seeds)

        def wrapped(x, t, step):
            out = hook(x, t, step)
            if not torch.equal(out, x):
                changed.append(step)
            return out

        return wrapped

    with torch.no_grad():
        sample_batched(model, diffusion, (DIM,), sample_seeds(0, 4), 4, SAMPLER, counting)
    expected = [s for s in attacked_steps(K, 25, window) if s != K - 1]  # σ = 0 at step K−1
    assert changed == expected


@pytest.mark.parametrize("spec", [None, AttackSpec("fgsm", 50, loss="eps"),
                                  AttackSpec("pgd", 50, loss="eps", pgd_steps=3),
                                  AttackSpec("random", 100)],
                         ids=["clean", "fgsm", "pgd", "random"])
def test_samples_do_not_depend_on_batch_size(model, diffusion, spec):
    seeds = sample_seeds(2, 12)
    whole = run(model, diffusion, spec, seeds, 12)
    chunked = run(model, diffusion, spec, seeds, 5)
    # equal up to float32 round-off of differently sized matmuls (random draws are identical)
    torch.testing.assert_close(whole, chunked, rtol=1e-4, atol=1e-4)
    alone = run(model, diffusion, spec, seeds[7:8], 1)
    torch.testing.assert_close(whole[7:8], alone, rtol=1e-4, atol=1e-4)


def test_samples_do_not_depend_on_other_samples_being_attacked(model, diffusion, sd):
    seeds = sample_seeds(3, 8)
    spec = AttackSpec("pgd", 50, loss="eps", pgd_steps=3)
    steps = set(attacked_steps(K, 50))
    mask = torch.tensor([i % 2 == 0 for i in range(8)])

    def half(chunk_seeds):
        picked = [s for s, m in zip(chunk_seeds, mask.tolist(), strict=True) if m]
        atk = spec.make_attack(model, sd, generators(picked, ATTACK, "cpu"))

        def hook(x, t, step):
            if step not in steps:
                return x
            x = x.clone()
            x[mask] = atk(x[mask], t[mask])
            return x

        return hook

    with torch.no_grad():
        mixed = sample_batched(model, diffusion, (DIM,), seeds, 8, SAMPLER, half)
    clean = run(model, diffusion, None, seeds, 8)
    attacked = run(model, diffusion, spec, seeds, 8)
    assert torch.equal(mixed[~mask], clean[~mask])
    torch.testing.assert_close(mixed[mask], attacked[mask], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(attacked[mask], clean[mask])


def test_mean_loss_fgsm_follows_the_random_start(model, sd):
    """docs/method.md §11: ∂μ_θ/∂x ≈ (1/√α_t) I, so FGSM with the ``mean`` loss steps along
    sign(u)."""
    x, t = state(64), torch.full((64,), 10)
    budget = sd.attack_std(t, x)
    u = (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) - 1) * budget
    x_adv = ChainFGSM(model, sd, "mean", generator=torch.Generator().manual_seed(3))(x, t)
    agree = ((x_adv - x).sign() == u.sign()).float().mean().item()
    assert agree > 0.95


# ----------------------------------------------------------------------------- restarts, trace
def old_pgd(model, sd, x, t, steps, generator):
    """ChainPGD (loss ``eps``, projection every iteration) as written before restarts: the
    reference that ``restarts=1`` must reproduce bit for bit."""
    atk = ChainPGD(model, sd, loss="eps", steps=steps, generator=generator)
    budget = atk.budget(x, t)
    loss = atk.bound_loss(x, t)
    delta = (2 * atk.uniform(x) - 1) * budget
    for _ in range(steps):
        delta = torch.clamp(delta + 0.125 * budget * atk.grad_sign(loss, x + delta),
                            -budget, budget)
    return x + delta


def test_pgd_restarts_and_progress(model, sd):
    """restarts=1 is the PGD without restarts bit for bit; its progress is the best loss so
    far after each iterate (steps + 1 values, the last one ≥ the returned iterate's loss);
    restarts=2 returns per sample the better restart (never a lower loss) and is
    reproducible; the label says -r2 only then."""
    x, t = state(6), torch.full((6,), 12)
    one = ChainPGD(model, sd, loss="eps", steps=3, generator=gens(6))
    with torch.no_grad():
        x1 = one(x, t)
    assert torch.equal(x1, old_pgd(model, sd, x, t, 3, gens(6)))
    (p1,) = one.pop_progress()
    assert p1.shape == (1, 4, 6) and one.pop_progress() == []
    assert (p1[:, 1:] >= p1[:, :-1]).all()
    loss = one.bound_loss(x, t)
    with torch.no_grad():
        assert (p1[0, -1] >= loss(x1)).all()
        twos = [ChainPGD(model, sd, loss="eps", steps=3, generator=gens(6), restarts=2)
                for _ in range(2)]
        x2, x2b = (atk(x, t) for atk in twos)
        assert torch.equal(x2, x2b)
        assert (loss(x2) >= loss(x1)).all() and (loss(x2) > loss(x1)).any()
    (p2,) = twos[0].pop_progress()
    assert p2.shape == (2, 4, 6) and torch.equal(p2[0], p1[0])
    assert not torch.equal(p2[1, 0], p2[0, 0])  # restart 1 starts elsewhere
    assert "restarts=2" in repr(twos[0]) and ChainPGD(model, sd).settings()["restarts"] == 1
    assert AttackSpec("pgd", 50).describe() == "pgd20-mean-spread-50%"
    assert AttackSpec("pgd", 50, restarts=2).describe() == "pgd20-mean-spread-50%-r2"
    with pytest.raises(ConfigError, match="restarts"):
        ChainPGD(model, sd, restarts=0)


def test_pgd_plan_diagnostics(model, diffusion):
    """Per-step PGD through AttackPlan.sample: the trace pools every attacked step with a
    budget of every batch (mean over steps and samples of the best loss so far)."""
    from dmattack.attacks import AttackPlan

    seeds = sample_seeds(2, 6)
    spec = AttackSpec("pgd", 25, loss="eps", pgd_steps=2, restarts=2)
    diagnostics = {}
    with torch.no_grad():
        planned = AttackPlan.of(spec).sample(model, diffusion, (DIM,), seeds, 4, SAMPLER,
                                             diagnostics=diagnostics)
    assert torch.equal(planned, run(model, diffusion, spec, seeds, 4))
    assert diagnostics["iterations"] == 2 and diagnostics["restarts"] == 2
    assert len(diagnostics["trace"]) == 3 and len(diagnostics["trace_per_restart"]) == 2
    assert sorted(diagnostics["trace"]) == diagnostics["trace"]
    for per in diagnostics["trace_per_restart"]:
        assert all(a <= b + 1e-6 for a, b in zip(per, diagnostics["trace"], strict=True))
    random = {}
    with torch.no_grad():
        AttackPlan.of(AttackSpec("random", 25)).sample(model, diffusion, (DIM,), seeds, 4,
                                                       SAMPLER, diagnostics=random)
    assert random == {}  # no trace: nothing is optimised
