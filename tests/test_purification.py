"""Diffusion purification: gradients of the purifier, torchattacks on the purified classifier,
the evaluation's invariants, resumption and bad input."""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
import torchattacks
from torch import nn

from dmattack.core.errors import ConfigError, InputFileError
from dmattack.core.seeding import generators
from dmattack.diffusion.gaussian import GaussianDiffusion
from dmattack.purification import (
    PurifiedClassifier,
    Purifier,
    PurifyConfig,
    load_classifier,
    run_purification,
)
from dmattack.purification import evaluate as evaluate_mod
from dmattack.runs.checkpoints import LoadedModel

T = 20
SHAPE = (1, 8, 8)


class TinyEps(nn.Module):
    """A small nonlinear noise predictor eps(x_t, t) for 1×8×8 images."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 1, 3, padding=1)
        self.emb = nn.Embedding(T, 4)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv1(x) + self.emb(t)[:, :, None, None])
        return self.conv2(h)


class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                                 nn.Linear(4 * 64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tiny_diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(np.linspace(1e-3, 0.2, T))


def tiny_purifier(**kw) -> Purifier:
    return Purifier(TinyEps(), tiny_diffusion(), SHAPE, **{"t_star": 0.5, "steps": 4, **kw})


def tiny_loaded(shape=SHAPE) -> LoadedModel:
    return LoadedModel(model=TinyEps(), diffusion=tiny_diffusion(), data_shape=shape,
                       source="/models/tiny", fingerprint="tiny-0")


def images(n: int = 3) -> torch.Tensor:
    return torch.rand((n, *SHAPE), generator=torch.Generator().manual_seed(5))


# ----------------------------------------------------------------------------- the purifier
@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_full_gradient_equals_non_checkpointed_reference(sampler):
    x = images()
    grads = []
    for checkpoint_steps in (True, False):
        own = {"eta": 0.5} if sampler == "ddim" else {}  # (ancestral refuses an η)
        p = tiny_purifier(sampler=sampler, checkpoint_steps=checkpoint_steps, **own)
        xi = x.clone().requires_grad_(True)
        out = p(xi, generators(range(3), 0))
        (out * torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)).sum().backward()
        grads.append(xi.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_bpda_returns_classifier_gradient_at_purified_point():
    x, clf = images(), TinyClassifier()
    y = torch.tensor([1, 2, 3])
    bpda = PurifiedClassifier(tiny_purifier(gradient="bpda"), clf)
    xi = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(bpda(xi, generators(range(3), 0)), y).backward()
    purified = tiny_purifier(gradient="none")(x, generators(range(3), 0)).requires_grad_(True)
    nn.functional.cross_entropy(clf(purified), y).backward()
    torch.testing.assert_close(xi.grad, purified.grad, rtol=1e-5, atol=1e-7)


def test_t_star_zero_is_identity_and_output_range():
    x = images()
    assert torch.equal(tiny_purifier(t_star=0, steps=None)(x), x)
    out = tiny_purifier()(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


def test_noise_fresh_by_default_fixed_with_seed_or_generators():
    x = images()
    p = tiny_purifier(gradient="none")
    assert not torch.equal(p(x), p(x))
    fixed = tiny_purifier(gradient="none", seed=3)
    assert torch.equal(fixed(x), fixed(x)) and fixed.deterministic
    # per-sample generators: a sample's purification does not depend on its batch
    together = p(x, generators([7, 8, 9], 0))
    alone = p(x[1:2], generators([8], 0))
    torch.testing.assert_close(together[1:2], alone)


def test_clipping_follows_the_data_a_pipeline_and_an_explicit_setting():
    x = images()
    default, on, off = (tiny_purifier(seed=3, **kw) for kw in
                        ({}, {"clip_denoised": True}, {"clip_denoised": False}))
    assert default.clip_denoised is True and default.describe()["clip_denoised"] is True
    assert torch.equal(default(x), on(x)) and not torch.equal(on(x), off(x))
    assert Purifier.from_loaded(tiny_loaded()).clip_denoised is True
    pipe = tiny_loaded()
    pipe.config = {"kind": "diffusers-pipeline", "clip_sample": False}
    assert Purifier.from_loaded(pipe).clip_denoised is False
    assert Purifier.from_loaded(pipe, clip_denoised=True).clip_denoised is True


def test_t_star_fraction_and_timestep():
    assert tiny_purifier(t_star=0.5).n == 10
    assert tiny_purifier(t_star=7, steps=None).num_reverse_steps == 7
    assert tiny_purifier(t_star=T, steps=3).num_reverse_steps == 3


# ----------------------------------------------------------------------------- torchattacks
@pytest.mark.parametrize("name", ["PGD", "EOTPGD", "APGD", "AutoAttack"])
def test_stock_torchattacks_run_on_purified_classifier(name):
    model = PurifiedClassifier(tiny_purifier(steps=2), TinyClassifier())
    x, y = images(4), torch.tensor([0, 1, 2, 3])
    eps = 0.1
    atk = {"PGD": lambda: torchattacks.PGD(model, eps=eps, alpha=0.05, steps=2),
           "EOTPGD": lambda: torchattacks.EOTPGD(model, eps=eps, alpha=0.05, steps=2,
                                                 eot_iter=2),
           "APGD": lambda: torchattacks.APGD(model, eps=eps, steps=2, eot_iter=2),
           "AutoAttack": lambda: torchattacks.AutoAttack(model, eps=eps, version="rand",
                                                         n_classes=10, seed=0)}[name]()
    if name == "AutoAttack":
        for apgd in atk._autoattack.attacks:
            apgd.steps, apgd.eot_iter = 2, 2
    adv = atk(x, y)
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= eps + 1e-6


# ----------------------------------------------------------------------------- evaluation
def tiny_config(**kw) -> PurifyConfig:
    return PurifyConfig(**{"t_star": "0,0.5", "purify_steps": 2, "attacks": "pgd-eot,bpda-eot",
                           "eps": 0.2, "iterations": 2, "eot": 2, "draws": 3,
                           "num_samples": 12, "batch_size": 6, **kw})


def rows_by(result):
    return {(r["purifier"], r["t_star"], r["attack"]): r for r in result["rows"]}


AGGREGATES = ("mean", "majority", "worst")


def value(acc, how):
    return acc["mean"] if how == "mean" else acc[how]["value"]


def test_evaluation_invariants(tmp_path):
    result = run_purification(tiny_config(), [tiny_loaded()], tmp_path)
    rows = rows_by(result)
    assert len(rows) == 3 * 2  # (undefended + 2 t*) × attacks
    for r in result["rows"]:
        for how in AGGREGATES:
            assert value(r["robust"], how) <= value(r["clean"], how)
            assert value(r["robust"], how) <= value(r["adversarial"], how)
        # worst of R ≤ every draw; the mean is the mean of the per-draw accuracies
        assert r["robust"]["worst"]["value"] <= min(r["robust"]["per_draw"]) + 1e-12
        assert r["robust"]["mean"] == pytest.approx(np.mean(r["robust"]["per_draw"]))
        correct = np.array(r["correct"]["clean"]) & np.array(r["correct"]["adversarial"])
        assert correct.shape == (3, 12)
        assert r["robust"]["per_draw"] == pytest.approx(correct.mean(1).tolist())
        assert r["robust"]["worst"]["value"] == pytest.approx(correct.all(0).mean())
        lo, hi = r["robust"]["ci95"]
        assert lo <= r["robust"]["mean"] <= hi
    for (name, t_star, attack), r in rows.items():
        if name == "tiny" and t_star == 0:  # the identity reproduces the undefended numbers
            base = rows[("none", None, attack)]
            for k in ("clean", "robust", "adversarial", "correct"):
                assert r[k] == base[k]
    # BPDA through the identity is the exact attack (same seeds)
    assert rows[("none", None, "pgd-eot")]["correct"] == \
        rows[("none", None, "bpda-eot")]["correct"]
    saved = json.loads((tmp_path / "purify.json").read_text())
    assert saved["config"]["eps"] == 0.2 and "versions" in saved["provenance"]
    assert [p["clip_denoised"] for p in saved["purifiers"]] == [True, True]  # images: clipped
    assert len(saved["seeds"]["sample_seeds"]) == 12
    csv_lines = (tmp_path / "purify.csv").read_text().splitlines()
    assert csv_lines[0].startswith("purifier,t_star") and len(csv_lines) == 1 + 6


def test_purification_clipping_can_be_turned_off_and_is_recorded(tmp_path):
    cfg = tiny_config(t_star="0.5", attacks="pgd-eot", num_samples=6)
    run_purification(cfg, [tiny_loaded()], tmp_path / "on")
    run_purification(replace(cfg, clip_denoised=False), [tiny_loaded()], tmp_path / "off")
    on, off = (json.loads((tmp_path / k / "purify.json").read_text()) for k in ("on", "off"))
    assert on["purifiers"][0]["clip_denoised"] is True
    assert off["purifiers"][0]["clip_denoised"] is False
    assert off["config"]["clip_denoised"] is False and on["config"]["clip_denoised"] is None


def test_resume_reuses_finished_units(tmp_path, monkeypatch):
    cfg = tiny_config(t_star="0.5", attacks="pgd-eot")
    calls = []
    real = evaluate_mod.run_purify_attack

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_mod, "run_purify_attack", counting)

    def interrupt(done, total, label):
        if done == 5:
            raise KeyboardInterrupt  # killed after 5 of the 8 units

    with pytest.raises(KeyboardInterrupt):
        run_purification(cfg, [tiny_loaded()], tmp_path, progress=interrupt)
    first = len(calls)
    resumed = run_purification(cfg, [tiny_loaded()], tmp_path)
    fresh = run_purification(cfg, [tiny_loaded()], tmp_path / "fresh")
    # 8 units: 2 models (undefended, tiny) × (clean, pgd-eot) × 2 batches, in that order; the
    # interrupted run finished 5 (2 attacked), the resumed one attacks only tiny's 2 batches
    assert first == 2 and len(calls) == first + 2 + 4
    def numbers(result):
        return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in result["rows"]]

    assert numbers(resumed) == numbers(fresh)
    # a changed attack setting recomputes the attacked units only (their key holds eps)
    run_purification(tiny_config(t_star="0.5", attacks="pgd-eot", eps=0.1),
                     [tiny_loaded()], tmp_path)
    assert len(calls) == first + 2 + 4 + 4


def test_majority_and_worst_of_draws():
    from dmattack.purification.results import accuracies

    preds = torch.tensor([[1, 2, 0], [1, 0, 0], [3, 0, 1]])  # (draws, B)
    labels = torch.tensor([1, 0, 1])
    acc = accuracies(preds, preds, labels)["clean"]
    assert acc["per_draw"] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert acc["worst"]["value"] == 0  # no image right in all 3 draws
    assert acc["majority"]["value"] == pytest.approx(2 / 3)  # images 0 and 1
    tie = accuracies(preds[:2, 1:], preds[:2, 1:], labels[1:])["clean"]
    assert tie["majority"]["value"] == 0.5  # a 1–1 tie (2 vs 0) goes to the lower class: 0
    assert acc["sd"] == pytest.approx(float(np.std([1 / 3, 2 / 3, 2 / 3], ddof=1)))


def test_deprecated_eval_mode_sets_the_draws():
    with pytest.warns(DeprecationWarning):
        assert PurifyConfig(eval_modes="single,worst:5,majority:3").draws == 5
    with pytest.warns(DeprecationWarning):
        assert PurifyConfig(eval_modes="single").draws == 1


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw, match", [
    ({"eps": -0.1}, "eps"), ({"eps": math.nan}, "eps"), ({"eps": math.inf}, "eps"),
    ({"attacks": "pgd-eot,fgsm"}, "fgsm"), ({"eval_modes": "worst:0"}, "worst:0"),
    ({"attacks": "autoattack-rand-0x4"}, "autoattack-rand-0x4"), ({"loss": "dlr"}, "loss"),
    ({"draws": 0}, "draws"), ({"attack_gradient": "none"}, "attack_gradient"),
    ({"eval_modes": "best"}, "best"), ({"t_star": "-1"}, "t_star"), ({"t_star": "x"}, "t_star"),
    ({"iterations": 0}, "iterations")])
def test_bad_settings_are_one_line_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match) as e:
        PurifyConfig(**kw)
    assert "\n" not in str(e.value)


def test_t_star_outside_chain(tmp_path):
    with pytest.raises(ConfigError, match="outside the chain") as e:
        run_purification(tiny_config(t_star="50"), [tiny_loaded()], tmp_path)
    assert "1..20" in str(e.value)
    with pytest.raises(ConfigError, match="outside the chain"):
        tiny_purifier(t_star=2.5)


def test_shape_mismatch(tmp_path):
    with pytest.raises(ConfigError, match="shape"):
        run_purification(tiny_config(), [tiny_loaded((1, 4, 4))], tmp_path)
    clf = torch.jit.script(TinyClassifier().eval())
    path = tmp_path / "clf.pt"
    clf.save(str(path))
    wrong = LoadedModel(model=TinyEps(), diffusion=tiny_diffusion(), data_shape=(1, 8, 8),
                        source="/m", fingerprint="f")
    bad_data = tmp_path / "d.safetensors"
    from safetensors.torch import save_file
    save_file({"images": torch.rand(4, 3, 8, 8), "labels": torch.zeros(4, dtype=torch.long)},
              str(bad_data))
    with pytest.raises(ConfigError, match="does not accept images of shape"):
        run_purification(tiny_config(classifier=str(path), data=str(bad_data), num_samples=4),
                         [wrong], tmp_path / "o")


def test_pickled_classifier_refused(tmp_path):
    path = tmp_path / "clf.pt"
    torch.save(TinyClassifier(), path)  # a full pickle of the module
    with pytest.raises(InputFileError, match="pickled"):
        load_classifier(str(path))
    raw = tmp_path / "clf.pkl"
    raw.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(InputFileError, match="pickled"):
        load_classifier(str(raw))
    with pytest.raises(InputFileError, match="neither"):
        load_classifier(str(tmp_path / "missing.pt"))


def test_torchscript_and_safetensors_classifiers(tmp_path):
    from safetensors.torch import save_file

    from evaluators.digits_model import load_digits_cnn

    scripted = torch.jit.script(TinyClassifier().eval())
    scripted.save(str(tmp_path / "clf.pt"))
    model, info = load_classifier(str(tmp_path / "clf.pt"))
    x = images(2)
    torch.testing.assert_close(model(x), scripted(x))
    assert info["format"] == "torchscript"
    net = load_digits_cnn()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(tmp_path / "w.safetensors"))
    model, _ = load_classifier(str(tmp_path / "w.safetensors"))
    torch.testing.assert_close(model(x), net(2 * x - 1))


def _fake_row(name, t_star, attack, per_image):
    acc = {"mean": float(np.mean(per_image)), "sd": 0.0, "ci95": [0.0, 1.0],
           "majority": {"value": float(np.mean(per_image)), "ci95": [0.0, 1.0]},
           "worst": {"value": 0.0, "ci95": [0.0, 0.0]}}
    return {"purifier": name, "t_star": t_star, "attack": attack, "draws": 8,
            "num_samples": len(per_image), "clean": {**acc, "mean": 1.0}, "robust": acc,
            "robust_per_image": list(per_image), "weaker_than": None}


def test_purification_section_verdict_follows_the_numbers(monkeypatch, tmp_path):
    from dmattack.demo import purification as demo

    low, high = [0.0] * 5 + [0.25] * 5, [1.0] * 8 + [0.5] * 2

    def fake(robust_adv):
        def run(cfg, models, out_dir, device):
            rows = [_fake_row("none", None, a, [0.0] * 10) for a in ("pgd-eot", "bpda-eot")]
            for name, acc in (("digits-ddpm", [low, low]), ("digits-robust-adv", robust_adv)):
                rows += [_fake_row(name, t_star, attack, a)
                         for t_star, a in zip((0.1, 0.2), acc, strict=True)
                         for attack in ("pgd-eot", "bpda-eot")]
            return {"rows": rows, "config": {},
                    "purifiers": [{"name": "digits-ddpm", "eval_images_in_training": True}]}
        return run

    for acc, verdict in (([high, high], "held"), ([[0.0] * 10, [0.0] * 10], "did not hold"),
                         ([high, [0.0] * 10], "partly"), ([low, low], "inconclusive")):
        monkeypatch.setattr(demo, "run_purification", fake(acc))
        section = demo.purification_section(tmp_path)
        assert section["claim"]["verdict"] == verdict, section["claim"]
        assert section["accuracy"]["robust-adv t*=0.1 pgd-eot"]["robust"] == np.mean(acc[0])
        assert "95% [" in section["claim"]["evidence"]
        assert "saw these digits in training" in section["claim"]["evidence"]
