"""`dmattack card` and card comparisons (issue 23 items 2 and 3; docs/card.md, method.md §14)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cli
from dmattack.card import check_card, load_protocol
from dmattack.card import compute as card_compute
from dmattack.card.compare import compare_cards
from dmattack.card.headline import headline_numbers, per_sample_auc
from dmattack.card.protocol import PROTOCOL_DIR, _read
from dmattack.card.report import merged_curve
from dmattack.core import stats
from dmattack.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DDPM = ROOT / "checkpoints" / "digits-ddpm"
ROBUST = ROOT / "checkpoints" / "digits-robust-adv"
QUICK = load_protocol("digits-quick-v2")


# --------------------------------------------------------------------------- helpers
def reduced_protocol(folder: Path, seed: int = 0) -> Path:
    """digits-quick-v2 cut to seconds (3 steps, 72 samples, 2 PGD steps, adaptive attacks on
    2 samples × 2 iterations, purification of 8 images, 2 draws), registered in ``folder``."""
    text = (PROTOCOL_DIR / "digits-quick-v2.toml").read_text()
    for old, new in [(r'name = "digits-quick"', 'name = "digits-tiny"'),
                     (r"version = 2", "version = 1"),
                     (r"steps = 10 ", "steps = 3 "), (r"num_samples = 128 ", "num_samples = 72 "),
                     (r"pgd_steps = 20 ", "pgd_steps = 2 "),
                     (r"iterations = 100 ", "iterations = 2 "),
                     (r"resamples = 2000", "resamples = 200"),
                     (r"num_samples = 16\nbatch_size = 16", "num_samples = 8\nbatch_size = 8"),
                     (r"iterations = 20 +(#.*)?\neot = 2", "iterations = 1\neot = 1"),
                     (r"draws = 4 ", "draws = 2 "),
                     (r"seed = 0 ", f"seed = {seed} ")]:
        text, count = re.subn(old, new, text)
        assert count >= 1, old
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "digits-tiny-v1.toml"
    path.write_text(text)
    (folder / "HASHES.json").write_text(json.dumps({"digits-tiny-v1": _read(path).hash}))
    return folder


def synthetic_per_sample(rng: np.random.Generator, n: int = 40, scale: float = 1.0) -> dict:
    """A card's per_sample block with known means: AUCs per attack, class changes at 100%."""
    auc = {"random": rng.uniform(0.5, 1.5, n) * scale, "fgsm": rng.uniform(1, 3, n) * scale,
           "pgd": rng.uniform(2, 4, n) * scale, "trajectory": rng.uniform(1, 2, n // 4) * scale}
    changed = {k: (rng.uniform(0, 1, len(v)) < 0.3).astype(float) for k, v in auc.items()}
    replicates = rng.normal(40 * scale, 2, 200)
    return {"auc": {k: v.tolist() for k, v in auc.items()},
            "class_change_at_100": {k: v.tolist() for k, v in changed.items()},
            "num_samples": n, "strongest": "pgd", "clean_quality_value": 40.0 * scale,
            "clean_quality_replicates": replicates.tolist()}


def synthetic_card(per_sample: dict, protocol_hash: str = QUICK.hash, name: str = "m") -> dict:
    quality = {"label": "FID", "value": per_sample["clean_quality_value"],
               "ci95": [35.0, 45.0], "n": per_sample["num_samples"], "better": "lower"}
    return {"card_format": 1,
            "protocol": {"name": QUICK.name, "version": QUICK.version, "hash": protocol_hash},
            "model": {"name": name, "source": name, "fingerprint": "0" * 64},
            "headline": headline_numbers(QUICK, per_sample, quality),
            "measurements": {"per_sample": per_sample}, "convergence": {}, "provenance": {},
            "seeds": list(range(per_sample["num_samples"])), "seconds": {"total": 1.0},
            "files": {"md": "card.md", "curves": "curves.png"}}


def write_card(folder: Path, card: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "card.json").write_text(json.dumps(card))
    return folder / "card.json"


# --------------------------------------------------------------------------- headline numbers
def test_auc_is_the_trapezoid_over_the_fraction_attacked():
    # damage constant D up to 100%: area D; damage linear in x: area 1/2; 0% ignored
    d = np.array([2.0, 3.0])
    assert np.allclose(per_sample_auc([0, 50, 100], [np.zeros(2), d, d]), [1.5, 2.25])
    assert np.allclose(per_sample_auc([0, 25, 50, 75, 100], [np.zeros(1), *(
        np.array([x]) for x in (0.25, 0.5, 0.75, 1.0))]), [0.5])
    assert np.allclose(per_sample_auc([50, 100], [d, d]), 0.5 * d / 2 + 0.5 * d)


def test_headline_numbers_pick_the_strongest_attack_and_divide_by_the_control():
    per_sample = synthetic_per_sample(np.random.default_rng(0))
    head = headline_numbers(QUICK, per_sample, {"label": "FID", "value": 1.0,
                                                "ci95": [0.5, 2.0], "n": 40, "better": "lower"})
    pgd, rand = np.array(per_sample["auc"]["pgd"]), np.array(per_sample["auc"]["random"])
    assert "pgd" in head["damage_auc_strongest"]["label"]
    assert head["damage_auc_strongest"]["value"] == pytest.approx(pgd.mean())
    assert head["damage_auc_relative_to_random"]["value"] == pytest.approx(
        pgd.mean() / rand.mean())
    ratio = stats.ratio_of_means(pgd, rand, n_resamples=2000)
    assert head["damage_auc_relative_to_random"]["ci95"] == pytest.approx(list(ratio.ci95))
    assert head["class_change_at_100"]["value"] == pytest.approx(
        np.mean(per_sample["class_change_at_100"]["pgd"]))
    for e in head.values():
        assert e["ci95"][0] <= e["value"] <= e["ci95"][1]
    check_card(synthetic_card(per_sample))


# --------------------------------------------------------------------------- comparisons
def test_a_card_compared_with_an_identical_copy_is_inconclusive_on_every_row(tmp_path):
    card = synthetic_card(synthetic_per_sample(np.random.default_rng(1)))
    a = write_card(tmp_path / "a", card)
    b = write_card(tmp_path / "b", {**card, "model": {**card["model"], "name": "copy"}})
    result = compare_cards([a, b])
    rows = result["pairs"][0]["rows"]
    assert [r["headline"] for r in rows] == list(QUICK.headline)
    assert all(r["verdict"] == "inconclusive" and r["difference"] == 0 for r in rows)


def test_a_clearly_better_model_is_held_and_the_reverse_did_not_hold(tmp_path):
    rng = np.random.default_rng(2)
    good = synthetic_card(synthetic_per_sample(rng, scale=0.5), name="good")
    bad = synthetic_card(synthetic_per_sample(np.random.default_rng(2), scale=1.0), name="bad")
    # the same seeds: bad's class changes are good's plus more
    changed = np.array(good["measurements"]["per_sample"]["class_change_at_100"]["pgd"])
    bad["measurements"]["per_sample"]["class_change_at_100"]["pgd"] = np.maximum(
        changed, np.arange(len(changed)) % 2).tolist()
    paths = [write_card(tmp_path / "g", good), write_card(tmp_path / "b", bad)]
    rows = {r["headline"]: r for r in compare_cards(paths)["pairs"][0]["rows"]}
    for key in ("clean_quality", "damage_auc_strongest", "class_change_at_100"):
        assert rows[key]["verdict"] == "held", rows[key]
    assert rows["damage_auc_relative_to_random"]["verdict"] == "inconclusive"  # scale cancels
    rows = {r["headline"]: r for r in compare_cards(paths[::-1])["pairs"][0]["rows"]}
    assert rows["damage_auc_strongest"]["verdict"] == "did not hold"


def test_cards_of_different_protocols_are_refused_in_one_line(tmp_path):
    per_sample = synthetic_per_sample(np.random.default_rng(3))
    a = write_card(tmp_path / "a", synthetic_card(per_sample))
    b = write_card(tmp_path / "b", synthetic_card(per_sample, protocol_hash="1" * 64))
    with pytest.raises(ConfigError, match="different protocols"):
        compare_cards([a, b])
    result = CliRunner().invoke(cli.main, ["compare", str(a), str(b)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "never compared" in lines[0] and str(b) in lines[0]
    ok = CliRunner().invoke(cli.main, ["compare", str(a), str(a), "--out", str(tmp_path / "c")])
    assert ok.exit_code == 0 and (tmp_path / "c" / "comparison.json").is_file(), ok.output


def test_a_card_without_per_sample_values_is_refused(tmp_path):
    card = synthetic_card(synthetic_per_sample(np.random.default_rng(4)))
    bare = copy.deepcopy(card)
    del bare["measurements"]["per_sample"]
    paths = [write_card(tmp_path / "a", card), write_card(tmp_path / "b", bare)]
    with pytest.raises(ConfigError, match="per_sample is missing"):
        compare_cards(paths)


# --------------------------------------------------------------------------- parts
def test_clean_quality_matches_torch_fidelity_fid():
    from sklearn.datasets import load_digits

    from evaluators import evaluate

    x = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8 - 1
    samples, reference = x[:100], x[100:]
    q = card_compute.clean_quality(samples, reference, "digits-cnn", QUICK, None)
    fid = evaluate(samples, reference, ("fid",), feature_extractor="digits-cnn")
    assert q["value"] == pytest.approx(fid["FID (digits-cnn)"], rel=1e-4)
    assert len(q["replicates"]) == card_compute.SET_METRIC_RESAMPLES and q["n"] == 100
    assert q["ci95"][0] < q["ci95"][1]


def test_card_markdown_states_the_purification_draws_of_either_protocol_version():
    from dmattack.card.report import _purification_lines

    row = {"purifier": "digits-ddpm", "t_star": 0.1, "attack": "pgd-eot", "draws": 8,
           "clean": {"mean": 0.95, "ci95": [0.9, 0.98]}, "converged": True,
           "robust": {"mean": 0.1, "ci95": [0.07, 0.14], "worst": {"mean": 0.0,
                                                                   "ci95": [0.0, 0.0]}}}
    v2 = "\n".join(_purification_lines({"draws": 8, "rows": [row]}))
    v1 = "\n".join(_purification_lines({"eval_modes": ["single", "worst:8"], "draws": 8,
                                         "rows": [row]}))
    assert "8 evaluation draws per image" in v2 and "| digits-ddpm | 0.1 | pgd-eot | 8 |" in v2
    assert "Evaluation modes single, worst:8" in v1


def test_merged_curve_unites_percents():
    a = {"metric": "FID", "percents": [0.0, 25.0, 100.0], "steps_attacked": [None, "1", "3"],
         "rows": [{"values": [1, 2, 3], "damage": [None, "d25", "d100"]}]}
    b = {"metric": None, "percents": [0.0, 50.0, 100.0], "steps_attacked": [None, "2", "3"],
         "rows": [{"values": [None] * 3, "damage": [None, "e50", "e100"]}]}
    m = merged_curve([a, b])
    assert m["percents"] == [0.0, 25.0, 50.0, 100.0] and m["steps_attacked"] == [
        None, "1", "2", "3"]
    assert m["rows"][0]["damage"] == [None, "d25", None, "d100"]
    assert m["rows"][1]["damage"] == [None, None, "e50", "e100"]


def test_card_command_refuses_bad_input_in_one_line(tmp_path):
    for args, needle in [(["--protocol", "digits-v9"], "unknown protocol"),
                         (["--protocol", "digits-quick-v2", "--protocol-dir", str(tmp_path)],
                          "--protocol-dir"),
                         (["--protocol", "digits-quick-v2"], "at least one --run")]:
        result = CliRunner().invoke(cli.main, ["card", *args, "--out", str(tmp_path / "o")])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], result.output


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_card_resumes_and_an_identical_copy_is_inconclusive(tmp_path, monkeypatch):
    """Killed after its curves (a failure injected into the purification stage) and rerun, a
    card recomputes no finished point; a byte-identical copy of the model is inconclusive on
    every comparison row."""
    protos = reduced_protocol(tmp_path / "protocols")
    p = load_protocol("digits-tiny-v1", protos)
    twin = tmp_path / "digits-ddpm-copy"
    shutil.copytree(DDPM, twin)
    models = card_compute.load_models([str(DDPM), str(twin)], [], p, "cpu")
    out = tmp_path / "cards"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(card_compute, "_purify", killed)
        with pytest.raises(KeyboardInterrupt):
            card_compute.make_cards(models, p, out)
    store = out / "digits-ddpm" / "store"
    points = {f: f.read_bytes() for f in store.glob("curve-*/points.jsonl")}
    assert len(points) == 2 and not (out / "digits-ddpm" / "card.json").exists()
    paths = card_compute.make_cards(models, p, out)
    assert {f: f.read_bytes() for f in store.glob("curve-*/points.jsonl")} == points
    cards = [json.loads(path.read_text()) for path in paths]
    for card in cards:
        check_card(card)
    assert all(c["computed"] == 0 for c in cards[0]["measurements"]["points_resumed"].values())
    assert cards[0]["model"]["fingerprint"] == cards[1]["model"]["fingerprint"]
    assert cards[0]["headline"] == cards[1]["headline"]
    result = json.loads((out / "comparison.json").read_text())
    assert [r["verdict"] for r in result["pairs"][0]["rows"]] == ["inconclusive"] * len(
        p.headline)
    assert (out / "digits-ddpm" / "curves.png").stat().st_size > 0
    assert "Headline numbers" in (out / "digits-ddpm" / "card.md").read_text()


@pytest.mark.slow
def test_card_command_writes_both_cards_and_the_comparison(tmp_path):
    protos = reduced_protocol(tmp_path / "protocols")
    out = tmp_path / "cards"
    cmd = [sys.executable, "-m", "cli", "card", "--run", str(DDPM), "--run", str(ROBUST),
           "--protocol", "digits-tiny-v1", "--protocol-dir", str(protos), "--out", str(out),
           "--device", "cpu"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.split()
    assert printed == [str(out / "digits-ddpm" / "card.json"),
                       str(out / "digits-robust-adv" / "card.json")]
    for path in printed:
        card = json.loads(Path(path).read_text())
        check_card(card)
        assert card["measurements"]["purification"]["rows"]
        assert set(card["convergence"]) == {"random", "fgsm", "pgd", "trajectory", "lookahead"}
    comparison = json.loads((out / "comparison.json").read_text())
    assert {r["verdict"] for r in comparison["pairs"][0]["rows"]} <= set(stats.VERDICTS)
    missing = subprocess.run([sys.executable, "-m", "cli", "compare", printed[0],
                              str(tmp_path / "missing.json")], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
