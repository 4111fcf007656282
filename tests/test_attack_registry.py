"""Extending dmattack's attacks without touching its source: a registered per-step attack, a
user's factory and ChainAttack subclass, a whole-chain attack, a StepLoss; all through
run_attack / run_curve with paired seeds, resume and shards. Also the torchattacks surface."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial

import pytest
import torch
import torchattacks
from safetensors.torch import load_file

from dmattack.attacks import (
    AttackEntry,
    AttackPlan,
    AttackSpec,
    ChainAttack,
    ChainPGD,
    ChainRandom,
    StepLoss,
    WholeChainAttack,
    attacked_steps,
)
from dmattack.core.errors import ConfigError
from dmattack.core.registry import ATTACKS
from dmattack.core.seeding import (
    ATTACK,
    CHAIN_NOISE,
    generators,
    rand_per_sample,
    randn_per_sample,
    sample_seeds,
)
from dmattack.core.settings import check_settings, setting
from dmattack.diffusion.gaussian import GaussianDiffusion
from dmattack.diffusion.sampling import SamplerConfig, SamplingChain, sample_batched
from dmattack.evaluation.attack_eval import run_attack, run_curve
from dmattack.models import build_model
from dmattack.runs.checkpoints import LoadedModel

DIM = 4
K = 10
SAMPLER = SamplerConfig("respaced", K)


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel(build_model("mlp-small", (DIM,)).eval(), GaussianDiffusion.from_schedule(),
                       (DIM,), source="/runs/toy", dataset="toy",
                       config={"model": {"preset": "mlp-small"}})


def norm_metric(samples: torch.Tensor) -> dict[str, float]:
    return {"norm": float(samples.norm(dim=1).mean())}


def kw(out, **over):
    return {**dict(num_samples=6, seed=3, sampler=SAMPLER, batch_size=4, metric_fn=norm_metric,
                   device="cpu", out_dir=out), **over}


# ----------------------------------------------------------------------------- user attacks
class ChainPush(ChainAttack):
    """Pushes every coordinate by ``strength``·ε_t along the sign of ∂ Σ ε_θ(x)/∂x: needs a
    gradient, so it only works if the base class enables gradients inside no_grad."""

    def __init__(self, model, diffusion, strength=1.0, eps_scale=1.0, generator=None):
        super().__init__("ChainPush", model, diffusion, eps_scale, generator)
        self.strength = strength

    def perturb(self, x_t, t, budget):
        x = x_t.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(self.model(x, t).sum(), x)
        return x_t + self.strength * budget * g.sign()


@dataclass(frozen=True)
class PushConfig:
    """The push attack's own option (a name a built-in attack uses too: they share --pgd-steps)."""

    pgd_steps: int = setting(1, "Strength in halves of ε_t.", low=1)

    def __post_init__(self) -> None:
        check_settings(self)


@pytest.fixture
def push_registered():
    """A per-step attack registered from outside dmattack (one entry, no source change)."""
    ATTACKS.register("push", AttackEntry(
        config=PushConfig,  # label: the name, then each option off its default
        make=lambda s: partial(ChainPush, strength=0.5 * s.pgd_steps, eps_scale=s.eps_scale)))
    yield
    ATTACKS.unregister("push")


def test_registered_attack_runs_with_paired_seeds_resume_and_its_settings(
        loaded, push_registered, tmp_path):
    spec = AttackSpec("push", 50, pgd_steps=2)
    assert spec.describe() == "push-spread-50%-pgd_steps2"
    with pytest.raises(ConfigError, match="loss .* not used by attack 'push'"):
        AttackSpec("push", 50, loss="eps")

    res = run_attack(loaded, spec, **kw(tmp_path / "a"))
    assert res["label"] == "push-spread-50%-pgd_steps2" and res["attack"]["method"] == "push"
    assert res["attack"]["pgd_steps"] == 2 and res["attack"]["kind"] == "per-step"
    assert res["attacked_steps"] == attacked_steps(K, 50) and res["steps_attacked"] == "5 of 10"
    assert res["last_step_attacked"] is False  # spread 50% of the 9 with a budget: 0, 2, …, 8
    saved = load_file(str(tmp_path / "a" / "samples.safetensors"))
    delta = saved["attacked"] - saved["clean"]
    assert delta.abs().max() > 0 and res["damage"]["pixel deviation"]["mean"] > 0

    zero = run_attack(loaded, AttackSpec("push", 0), **kw(tmp_path / "z"))
    zs = load_file(str(tmp_path / "z" / "samples.safetensors"))
    assert torch.equal(zs["clean"], zs["attacked"])
    assert zero["damage"]["pixel deviation"]["mean"] == 0

    specs = [AttackSpec("push", p, pgd_steps=2) for p in (0, 50, 100)]
    calls = []

    def metric(samples):
        calls.append(1)
        return norm_metric(samples)

    first = run_curve([loaded], specs, **kw(tmp_path / "c", metric_fn=metric))
    assert len(calls) == 3  # clean + 50% + 100% (0% is the clean point)
    assert [r["series"] for r in first["rows"]] == ["push-spread-pgd_steps2"]
    point = next(p for p in first["points"] if p["percent"] == 50)
    assert point["attack"]["pgd_steps"] == 2 and point["num_attacked_steps"] == 5
    assert point["metrics"] == res["metrics"]["attacked"]  # same seeds, same samples
    assert point["damage"] == res["damage"]
    calls.clear()
    again = run_curve([loaded], specs, **kw(tmp_path / "c", metric_fn=metric))
    assert calls == [] and again["rows"] == first["rows"]


def test_user_factory_and_subclass_record_their_own_settings(loaded, tmp_path):
    strong = AttackPlan(partial(ChainPush, strength=2.0), 50, name="push-strong")
    res = run_attack(loaded, strong, **kw(tmp_path / "f"))
    assert res["label"] == "push-strong-spread-50%"
    assert res["attack"]["strength"] == 2.0 and res["attack"]["eps_scale"] == 1.0
    assert "loss" not in res["attack"] and "pgd_steps" not in res["attack"]

    sub = AttackPlan(ChainPush, 50)  # the class itself is a factory; its name labels it
    res2 = run_attack(loaded, sub, **kw(tmp_path / "s"))
    assert res2["label"] == "ChainPush-spread-50%" and res2["attack"]["strength"] == 1.0
    a = load_file(str(tmp_path / "f" / "samples.safetensors"))["attacked"]
    b = load_file(str(tmp_path / "s" / "samples.safetensors"))["attacked"]
    assert not torch.equal(a, b)

    # distinct settings are distinct curve points; under one name they are refused
    weak = AttackPlan(partial(ChainPush, strength=1.0), 50, name="push-weak")
    curve = run_curve([loaded], [strong, weak], **kw(tmp_path / "c"))
    vals = [p["metrics"]["norm"] for p in curve["points"] if p["percent"] == 50]
    assert len(vals) == 2 and vals[0] != vals[1]
    assert vals[0] == res["metrics"]["attacked"]["norm"]
    assert [r["series"] for r in curve["rows"]] == ["push-strong-spread", "push-weak-spread"]
    same_name = AttackPlan(partial(ChainPush, strength=1.0), 50, name="push-strong")
    with pytest.raises(ConfigError, match="share the label 'push-strong-spread-50%'"):
        run_curve([loaded], [strong, same_name], **kw(tmp_path / "d"))

    with pytest.raises(ConfigError, match="name=' *my-attack"):
        AttackPlan(lambda model, diffusion, generator=None: ChainPush(model, diffusion), 50)
    with pytest.raises(ConfigError, match="percent"):
        AttackPlan(ChainPush, float("nan"))


def test_subclass_samples_inside_no_grad(loaded):
    seeds = sample_seeds(0, 4)
    chain = SamplingChain(loaded.diffusion, SAMPLER)
    sd = chain.walk
    hooks = AttackPlan(ChainPush, 100).hook_factory(loaded.model, chain)
    with torch.no_grad():
        clean = sample_batched(loaded.model, loaded.diffusion, (DIM,), seeds, 4, SAMPLER)
        attacked = sample_batched(loaded.model, loaded.diffusion, (DIM,), seeds, 4, SAMPLER,
                                  hooks)
        x_t = torch.randn(4, DIM)
        t = torch.full((4,), 5)
        x_adv = ChainPush(loaded.model, sd)(x_t, t)
    assert not torch.equal(clean, attacked)
    # the perturbation is exactly ε_t·sign(∂Σε/∂x), from an independent gradient
    x = x_t.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loaded.model(x, t).sum(), x)
    torch.testing.assert_close(x_adv - x_t, sd.attack_std(t, x_t) * g.sign())
    assert all(p.grad is None for p in loaded.model.parameters())


# ----------------------------------------------------------------------------- whole chain
class WholeChainRandom:
    """A whole-chain attack that reproduces ChainRandom (sign) at the attacked steps: an
    independent re-implementation of the sampling loop, to prove the whole-chain route."""

    label = "wc-random"

    def __init__(self, eps_scale: float = 1.0) -> None:
        self.eps_scale = eps_scale
        self.batches: list[int] = []

    def settings(self):
        return {"eps_scale": self.eps_scale}

    def sample_attacked(self, model, diffusion, sampler, shape, seeds, steps, device):
        assert not torch.is_grad_enabled() and steps
        self.batches.append(len(seeds))
        chain = generators(seeds, CHAIN_NOISE, device)
        attack = generators(seeds, ATTACK, device)
        x = randn_per_sample(shape, chain, device)
        for step, i in enumerate(reversed(range(diffusion.num_timesteps))):
            t = torch.full((len(seeds),), i, dtype=torch.long)
            if step in steps:
                u = rand_per_sample(shape, attack, device, x.dtype)
                x = x + self.eps_scale * diffusion.attack_std(t, x) * torch.where(u < 0.5, -1., 1.)
            x = diffusion.p_sample(model, x, t, randn_per_sample(shape, chain, device),
                                   sampler.clip_denoised)
        return x


def test_whole_chain_attack_routes_with_paired_seeds_shards_and_resume(loaded, tmp_path):
    wc = WholeChainRandom(eps_scale=0.5)
    assert isinstance(wc, WholeChainAttack)
    res = run_attack(loaded, AttackPlan(wc, 50), **kw(tmp_path / "w"))
    ref = run_attack(loaded, AttackPlan(partial(ChainRandom, eps_scale=0.5), 50, name="r"),
                     **kw(tmp_path / "r"))
    w = load_file(str(tmp_path / "w" / "samples.safetensors"))
    r = load_file(str(tmp_path / "r" / "samples.safetensors"))
    assert torch.equal(w["clean"], r["clean"]) and torch.equal(w["attacked"], r["attacked"])
    assert wc.batches == [4, 2]  # batched like the per-step attacks
    assert len(res["attack"].pop("code_key")) == 64  # a user's attack is keyed by its code
    assert res["attack"] == {"method": "wc-random", "label": "wc-random-spread-50%",
                             "series": "wc-random-spread", "kind": "whole-chain",
                             "percent": 50, "window": "spread", "eps_scale": 0.5}
    assert res["damage"] == ref["damage"] and res["damage"]["pixel deviation"]["mean"] > 0

    # a shard (samples 2..5) is the matching rows of the whole run (other batches: round-off)
    run_attack(loaded, AttackPlan(wc, 50), **kw(tmp_path / "s", num_samples=4), first_sample=2)
    s = load_file(str(tmp_path / "s" / "samples.safetensors"))
    torch.testing.assert_close(s["attacked"], w["attacked"][2:], rtol=1e-5, atol=1e-5)

    zero = run_attack(loaded, AttackPlan(wc, 0), **kw(tmp_path / "z"))
    assert zero["metrics"]["attacked"] == zero["metrics"]["clean"]

    plans = [AttackPlan(wc, p) for p in (0, 50, 100)]
    first = run_curve([loaded], plans, **kw(tmp_path / "c"))
    n = len(wc.batches)
    again = run_curve([loaded], plans, **kw(tmp_path / "c"))
    assert len(wc.batches) == n and again["rows"] == first["rows"]  # resumed, not resampled
    assert first["rows"][0]["values"][1] == res["metrics"]["attacked"]["norm"]
    last = first["points"][-1]
    assert last["attack"]["kind"] == "whole-chain"
    assert last["last_step_attacked"] is False and last["steps_attacked"] == "9 of 10"


def test_whole_chain_attack_returning_a_wrong_shape_is_refused(loaded, tmp_path):
    class Broken(WholeChainRandom):
        def sample_attacked(self, *args):
            return torch.zeros(1)

    with pytest.raises(TypeError, match=r"returned \(1,\), expected a tensor \(4, 4\)"):
        run_attack(loaded, AttackPlan(Broken(), 50), **kw(tmp_path))


def test_registered_whole_chain_attack_through_a_spec(loaded, tmp_path):
    ATTACKS.register("wc-random", AttackEntry(make=lambda s: WholeChainRandom(s.eps_scale),
                                              head=lambda s: "wc-random"))
    try:
        res = run_attack(loaded, AttackSpec("wc-random", 50, eps_scale=0.5), **kw(tmp_path))
        assert res["attack"]["kind"] == "whole-chain"
        assert res["label"] == "wc-random-spread-50%-x0.5"
        with pytest.raises(ConfigError, match="attacks the whole chain"):
            AttackSpec("wc-random", 50).make_attack(loaded.model, loaded.diffusion)
    finally:
        ATTACKS.unregister("wc-random")


# ----------------------------------------------------------------------------- losses
def test_step_loss_reference_is_computed_once_per_step(loaded):
    sd = SamplingChain(loaded.diffusion, SAMPLER).walk
    counts = {"reference": 0, "call": 0}

    class EpsL1(StepLoss):
        def reference(self, x_t, t):
            counts["reference"] += 1
            assert not torch.is_grad_enabled()
            return sd.predict_eps(loaded.model, x_t, t)

        def __call__(self, x_adv, t, ref):
            counts["call"] += 1
            return (sd.predict_eps(loaded.model, x_adv, t) - ref).abs().flatten(1).mean(1)

    def plain(x_adv, x_t, t):  # the same loss, reference recomputed by hand every call
        with torch.no_grad():
            ref = sd.predict_eps(loaded.model, x_t, t)
        return (sd.predict_eps(loaded.model, x_adv, t) - ref).abs().flatten(1).mean(1)

    x, t = torch.randn(5, DIM), torch.full((5,), 6)
    with torch.no_grad():
        a = ChainPGD(loaded.model, sd, loss=EpsL1(), steps=5,
                     generator=torch.Generator().manual_seed(1))(x, t)
    b = ChainPGD(loaded.model, sd, loss=plain, steps=5,
                 generator=torch.Generator().manual_seed(1))(x, t)
    assert counts == {"reference": 1, "call": 5 + 1}  # + the last iterate, scored for the trace
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert "loss=EpsL1" in repr(ChainPGD(loaded.model, sd, loss=EpsL1()))


# ----------------------------------------------------------------------------- torchattacks
def test_torchattacks_classifier_surface_raises_a_clear_error(loaded):
    atk = ChainPGD(loaded.model, loaded.diffusion, steps=2)
    x, t = torch.randn(3, DIM), torch.full((3,), 500)
    for call in (lambda: atk.get_logits(x), lambda: atk.set_normalization_used([0.5], [0.5]),
                 lambda: atk.set_mode_targeted_random(), lambda: atk.save(None),
                 lambda: torchattacks.MultiAttack(
                     [atk, ChainRandom(loaded.model, loaded.diffusion)])(x, t)):
        with pytest.raises(TypeError, match="ε-model, eps = model\\(x_t, t\\), not a classifier"):
            call()
    assert atk(x, t).shape == x.shape  # the attack itself still works afterwards
    assert not loaded.model.training


def test_records_are_json(loaded, tmp_path):
    res = run_attack(loaded, AttackPlan(ChainPush, 30), **kw(tmp_path))
    assert json.loads((tmp_path / "results.json").read_text())["attack"] == res["attack"]
