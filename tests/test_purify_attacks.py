"""The attacks of `dmattack purify` (docs/method.md §13): PGD-EOT's per-image randomness,
restarts, margin loss and convergence flag; AutoAttack for randomised defences against a toy
classifier that answers at random half of the time; the weaker-than-PGD flag; the surrogate."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
import torchattacks
from test_purification import TinyClassifier, images, tiny_loaded
from torch import nn

from dmattack.core.seeding import sample_seeds
from dmattack.purification import PurifyConfig, run_purification
from dmattack.purification import evaluate as evaluate_mod
from dmattack.purification.attacks import (
    AttackSettings,
    attack_loss,
    converged,
    fooled_counts,
    image_generators,
    parse_attack,
    pgd_eot,
    run_purify_attack,
)
from dmattack.purification.results import accuracies, weaker_check


class Randomised(nn.Module):
    """A toy randomised defence: for each image and call, with probability ``p`` its logits
    are random (a random label), else the classifier's. Randomness from per-image generators
    (or torch's global generator without them)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.net, self.p, self.deterministic = TinyClassifier(), p, False
        for q in self.net.parameters():
            q.requires_grad_(False)

    def forward(self, x: torch.Tensor, generators=None) -> torch.Tensor:
        n = len(x)
        if generators is None:
            coin, noise = torch.rand(n), torch.randn(n, 10)
        else:
            coin = torch.stack([torch.rand((), generator=g) for g in generators])
            noise = torch.stack([torch.randn(10, generator=g) for g in generators])
        random = (coin < self.p).float()[:, None]
        return (1 - random) * self.net(x) + random * 100 * noise


def labelled(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and the toy classifier's own labels (clean accuracy 100% without noise)."""
    x = images(n)
    with torch.no_grad():
        return x, TinyClassifier()(x).argmax(1)


def robust_per_image(model, x, x_adv, y, seeds, draws=16) -> np.ndarray:
    """Per-image robust accuracy over ``draws`` evaluation draws (a stream no attack uses)."""
    def preds(inp):
        with torch.no_grad():
            return torch.stack([model(inp, image_generators(seeds, 999, j, x.device)).argmax(1)
                                for j in range(draws)])
    return np.array(accuracies(preds(x), preds(x_adv), y)["robust_per_image"])


# ----------------------------------------------------------------------------- PGD-EOT
def test_pgd_eot_does_not_depend_on_batching_or_the_global_generator():
    model, (x, y) = Randomised(), labelled(6)
    seeds = sample_seeds(3, 6)
    settings = AttackSettings(eps=0.2, restarts=2, select_draws=4)
    spec = parse_attack("pgd-eot", 3, 2)
    state = torch.get_rng_state()
    whole, info = run_purify_attack(spec, model, model, x, y, seeds, settings)
    assert torch.equal(state, torch.get_rng_state())  # nothing drawn from the global one
    torch.manual_seed(12345)  # a different global state changes nothing
    halves = [run_purify_attack(spec, model, model, x[s], y[s], seeds[s], settings)[0]
              for s in (slice(0, 2), slice(2, 6))]
    assert torch.equal(whole, torch.cat(halves))
    assert (whole - x).abs().max() <= 0.2 + 1e-6 and whole.min() >= 0 and whole.max() <= 1
    assert len(info["traces"]) == 2 and len(info["traces"][0]) == 3 + 1


def test_restarts_keep_the_candidate_that_fools_the_most_selection_draws():
    model, (x, y) = Randomised(0.3), labelled(12)
    seeds = sample_seeds(0, 12)
    spec = parse_attack("pgd-eot", 2, 1)
    one, info1 = run_purify_attack(spec, model, model, x, y, seeds, AttackSettings(0.1, restarts=1))
    three, info3 = run_purify_attack(spec, model, model, x, y, seeds,
                                     AttackSettings(0.1, restarts=3))
    # restart 0 is the same candidate in both runs, judged on the same selection draws
    assert all(b >= a for a, b in zip(info1["fooled"], info3["fooled"], strict=True))
    assert torch.equal(fooled_counts(model, three, y, seeds, 8), torch.tensor(info3["fooled"]))
    assert set(info3["chosen"]) <= {0, 1, 2}


def test_margin_loss_closed_form():
    logits = torch.tensor([[2.0, 5.0, 1.0], [3.0, -1.0, 0.5]])
    y = torch.tensor([0, 0])
    torch.testing.assert_close(attack_loss(logits, y, "margin"), torch.tensor([3.0, -2.5]))
    torch.testing.assert_close(attack_loss(logits, y, "ce"),
                               nn.functional.cross_entropy(logits, y, reduction="none"))
    # positive exactly when misclassified
    assert ((attack_loss(logits, y, "margin") > 0) == (logits.argmax(1) != y)).all()


def test_margin_loss_attack_fools_an_undefended_classifier():
    net = TinyClassifier()

    class Plain(nn.Module):
        deterministic = True

        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, generators=None):
            return self.net(x)

    x, y = labelled(8)
    gens = image_generators(sample_seeds(0, 8), 1302, 0, x.device)
    adv, trace = pgd_eot(Plain(), x, y, gens, eps=0.3, alpha=0.05, steps=10, eot=1,
                         loss="margin")
    assert trace[-1] == 1.0 and (net(adv).argmax(1) != y).all()


def test_converged_flag():
    assert converged([0.0, 0.5, 0.9, 0.9, 0.9, 0.91]) is True  # 5 iterations: last 1 rose .01
    assert converged([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]) is False
    assert converged([0.0] * 6 + [0.1, 0.2, 0.3, 0.3, 0.3]) is True  # window of 2: +0
    assert converged([0.0, 0.5]) is None


# ----------------------------------------------------------------------------- AutoAttack
def test_parse_attack_labels_lighter_autoattack():
    assert parse_attack("autoattack-rand", 10, 4).label == "autoattack-rand-100x20"
    assert parse_attack("autoattack-rand", 10, 4).standard
    light = parse_attack("autoattack-rand-10x4", 10, 4)
    assert (light.iterations, light.eot, light.standard) == (10, 4, False)
    assert parse_attack("pgd-eot", 7, 3).label == "pgd-eot"


def test_autoattack_rand_is_not_weaker_than_pgd_eot_on_a_randomised_classifier():
    """Stock AutoAttack keeps the clean image of every point whose one noisy forward pass was
    wrong (half of them here); ours decides over several draws and is at least as strong as
    PGD-EOT (the weaker-than flag does not fire), while the stock one is flagged."""
    model, (x, y) = Randomised(0.5), labelled(16)
    seeds = sample_seeds(1, 16)
    settings = AttackSettings(eps=0.3, select_draws=8)
    pgd, _ = run_purify_attack(parse_attack("pgd-eot", 20, 8), model, model, x, y, seeds, settings)
    aa, info = run_purify_attack(parse_attack("autoattack-rand", 20, 8), model, model, x, y, seeds,
                          settings)
    assert info["converged"] is None and len(set(info["chosen"])) >= 1
    torch.manual_seed(0)
    stock = torchattacks.AutoAttack(model, norm="Linf", eps=0.3, version="rand", n_classes=10,
                                    seed=0)
    for apgd in stock._autoattack.attacks:
        apgd.steps, apgd.eot_iter = 20, 8
    old = stock(x, y)
    rows = [{"purifier": "toy", "t_star": None, "attack": name, "attack_name": name,
             "surrogate": None, "robust_per_image": robust_per_image(model, x, a, y, seeds)}
            for name, a in (("pgd-eot", pgd), ("autoattack-rand", aa), ("stock", old))]
    weaker_check(rows)
    pgd_r, aa_r, old_r = (r["robust_per_image"].mean() for r in rows)
    assert aa_r <= pgd_r + 0.05, (aa_r, pgd_r)
    assert rows[1]["weaker_than"] is None
    assert rows[2]["weaker_than"] == "pgd-eot" and old_r > pgd_r + 0.2, (old_r, pgd_r)


# ----------------------------------------------------------------------------- in a run
def small(**kw) -> PurifyConfig:
    return PurifyConfig(**{"t_star": "0.5", "purify_steps": 2, "attacks": "pgd-eot,bpda-eot",
                           "eps": 0.3, "iterations": 3, "eot": 2, "draws": 4,
                           "num_samples": 12, "batch_size": 12, **kw})


def test_weaker_than_flag_fires_on_a_planted_weak_attack(tmp_path, monkeypatch):
    real = evaluate_mod.run_purify_attack

    def planted(spec, *args, **kwargs):
        x_adv, info = real(spec, *args, **kwargs)
        if spec.name == "bpda-eot":  # the planted weak attack: hands back the clean images
            return args[2], info
        return x_adv, info

    monkeypatch.setattr(evaluate_mod, "run_purify_attack", planted)
    result = run_purification(small(), [tiny_loaded()], tmp_path)
    rows = {(r["purifier"], r["attack"]): r for r in result["rows"]}
    assert rows["none", "bpda-eot"]["weaker_than"] == "pgd-eot"
    assert rows["none", "pgd-eot"]["weaker_than"] is None
    flagged = rows["none", "bpda-eot"]["vs_pgd_eot"]
    assert flagged["verdict"] == "held" and flagged["ci95"][0] > 0
    saved = json.loads((tmp_path / "purify.json").read_text())
    assert [r["weaker_than"] for r in saved["rows"]] == [r["weaker_than"]
                                                         for r in result["rows"]]
    from dmattack.purification.results import table_notes, table_rows
    assert any("weaker than pgd-eot" in str(cell) for row in table_rows(result) for cell in row)
    assert any(n.startswith("WARNING none") for n in table_notes(result))


def test_surrogate_is_attacked_the_defence_is_evaluated(tmp_path, monkeypatch):
    seen = []
    real = evaluate_mod.run_purify_attack

    def spy(spec, attack_model, evaluator, *args, **kwargs):
        if attack_model.purifier is not None:
            seen.append((attack_model.purifier.num_reverse_steps,
                         attack_model.purifier.sampler, evaluator.purifier.num_reverse_steps))
        return real(spec, attack_model, evaluator, *args, **kwargs)

    monkeypatch.setattr(evaluate_mod, "run_purify_attack", spy)
    cfg = small(attacks="pgd-eot", purify_steps=3, attack_purify_steps=1, attack_sampler="ddim")
    result = run_purification(cfg, [tiny_loaded()], tmp_path)
    assert seen == [(1, "ddim", 3)]
    row = [r for r in result["rows"] if r["purifier"] == "tiny"][0]
    assert row["attack"] == "pgd-eot via surrogate(K=1,ddim,full)"
    assert row["surrogate"]["reverse_steps"] == 1 and row["reverse_steps"] == 3
    purifier = result["purifiers"][0]
    assert purifier["reverse_steps"] == 3
    assert purifier["attacked_purification"]["reverse_steps"] == 1
    # the surrogate is in the unit key: the same defence attacked directly is a new unit
    direct = run_purification(small(attacks="pgd-eot", purify_steps=3), [tiny_loaded()],
                              tmp_path)
    assert [r["attack"] for r in direct["rows"]] == ["pgd-eot", "pgd-eot"]
    assert direct["rows"][1]["surrogate"] is None


def test_defaults_are_the_standard_protocol():
    cfg = PurifyConfig()
    assert cfg.draws >= 8 and not cfg.surrogate
    assert PurifyConfig(attacks="autoattack-rand").attack_names() == ("autoattack-rand-100x20",)
    assert math.isclose(cfg.attack_settings().eps, 0.25)
