"""Stacked draws (docs/method.md §13): EOT / evaluation draws batched into one purifier call use
bit for bit the noise of the sequential loop; the APGD port follows torchattacks 3.5.1 step for
step; skipping APGD-DLR where APGD-CE fooled every selection draw changes nothing."""

from __future__ import annotations

import torch
import torchattacks
from test_purification import TinyClassifier, images, tiny_purifier
from torch import nn

from dmattack.core.seeding import sample_seeds
from dmattack.purification import PurifiedClassifier
from dmattack.purification import draws as draws_mod
from dmattack.purification.apgd import apgd
from dmattack.purification.attacks import (
    AttackSettings,
    autoattack_candidates,
    fooled_counts,
    image_generators,
    parse_attack,
    run_purify_attack,
)
from dmattack.purification.draws import eot_logits, seeded_logits


def purified() -> PurifiedClassifier:
    net = TinyClassifier().requires_grad_(False)
    return PurifiedClassifier(tiny_purifier(checkpoint_steps=False), net)


class Looped(nn.Module):
    """The same classifier without ``advance_generators``: called once per draw (the old way)."""

    def __init__(self, model: PurifiedClassifier) -> None:
        super().__init__()
        self.model, self.deterministic = model, model.deterministic

    def forward(self, x, generators=None):
        return self.model(x, generators)


def test_stacked_eot_draws_use_the_noise_of_the_loop_and_advance_the_generators():
    model, x = purified(), images(5)
    seeds = sample_seeds(2, 5)
    gens_a, gens_b = (image_generators(seeds, 7, 0, x.device) for _ in range(2))
    stacked = torch.cat(list(eot_logits(model, x, gens_a, 6)))
    looped = torch.stack([model(x, gens_b) for _ in range(6)])
    assert stacked.shape == (6, 5, 10)
    torch.testing.assert_close(stacked, looped, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(gens_a, gens_b,
                                                                          strict=True))
    assert not torch.allclose(looped[0], looped[1])  # the draws do differ


def test_groups_split_whole_draws_and_seeded_logits_match(monkeypatch):
    monkeypatch.setattr(draws_mod, "MAX_STACK", 10 * 64)  # 5 images of 64 values: 2 draws a call
    model, x = purified(), images(5)
    seeds = sample_seeds(4, 5)
    groups = list(eot_logits(model, x, image_generators(seeds, 7, 0, x.device), 5))
    assert [len(g) for g in groups] == [2, 2, 1]
    gens = [image_generators(seeds, 8, j, x.device) for j in range(3)]
    one_by_one = torch.stack([model(x, image_generators(seeds, 8, j, x.device))
                              for j in range(3)])
    torch.testing.assert_close(seeded_logits(model, x, gens), one_by_one, rtol=1e-5,
                               atol=1e-6)


class _Seeded(nn.Module):
    def __init__(self, model, gens):
        super().__init__()
        self.model, self.gens = model, gens

    def forward(self, x):
        return self.model(x, self.gens)


def test_apgd_port_follows_torchattacks_step_for_step():
    """Our APGD with stacked EOT draws against torchattacks' attack_single_run (a loop of EOT
    calls) with the same noise and the same random start."""
    model, x = purified(), images(6)
    with torch.no_grad():
        y = model.classifier(x).argmax(1)
    seeds = sample_seeds(0, 6)
    for loss in ("ce", "dlr"):
        torch.manual_seed(3)
        start = 2 * torch.rand(x.shape) - 1
        ours = apgd(model, x, y, image_generators(seeds, 1, 0, x.device), 0.2, 12, 3, loss,
                    start)
        stock = torchattacks.APGD(_Seeded(Looped(model), image_generators(seeds, 1, 0,
                                                                           x.device)),
                                  eps=0.2, steps=12, loss=loss, eot_iter=3)
        torch.manual_seed(3)
        best, _, _, best_adv = stock.attack_single_run(x, y)
        torch.testing.assert_close(ours[0], best, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours[1], best_adv, rtol=0, atol=1e-5)
        assert (ours[0] - x).abs().max() <= 0.2 + 1e-6


EPS = 0.1


def test_skipping_dlr_where_ce_fooled_every_selection_draw_changes_nothing(monkeypatch):
    model, x = purified(), images(8)
    with torch.no_grad():
        y = model.classifier(x).argmax(1)
    seeds = sample_seeds(1, 8)
    settings = AttackSettings(eps=EPS, select_draws=4)
    spec = parse_attack("autoattack-rand-6x2", 10, 4)
    fast, info = run_purify_attack(spec, model, model, x, y, seeds, settings, batch_seed=5)
    real = autoattack_candidates

    def full(*args):  # every image attacked by APGD-DLR (the CE counts still recorded)
        skip = args[8]
        return real(*args[:8], lambda ce: skip(ce) & False)

    monkeypatch.setattr("dmattack.purification.attacks.autoattack_candidates", full)
    slow, info_slow = run_purify_attack(spec, model, model, x, y, seeds, settings, batch_seed=5)
    assert 0 < sum(f == 4 for f in info["fooled"]) < 8  # some images skipped, not all
    assert info["chosen"] == info_slow["chosen"] and info["fooled"] == info_slow["fooled"]
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6)
    assert torch.equal(fooled_counts(model, fast, y, seeds, 4), torch.tensor(info["fooled"]))
