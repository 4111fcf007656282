"""Input checks of the command line (issue 18 items 3–4, issue 21 item 5): parsing never ends
in a traceback, checks that can run before sampling do, and a Fréchet distance from fewer
samples than its feature dimension is refused unless --allow-small-fid."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from dmattack.core.errors import ConfigError
from dmattack.core.option_types import OutOfRange, parse_number, parse_t_star
from dmattack.purification.evaluate import PurifyConfig

ROOT = Path(__file__).resolve().parent.parent
DDPM = str(ROOT / "checkpoints" / "digits-ddpm")
TINY = ["--sampler", "respaced", "--sampler-steps", "2", "--batch-size", "8"]


def one_line_refusal(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2, (args, result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: ") and needle in lines[-1], result.output
    assert "Traceback" not in result.output and len(lines) == 1, result.output


@pytest.fixture
def no_sampling(monkeypatch):
    """Sampling fails the test: the refusals below must come before it."""
    def boom(*a, **k):
        raise AssertionError("sampled before the check")

    for where in ("dmattack.commands.workflows.sample_batched",
                  "dmattack.evaluation.attack_eval.run_attack",
                  "dmattack.evaluation.attack_eval.run_curve"):
        monkeypatch.setattr(where, boom)


# ---------------------------------------------------------------------------- number parsing
def test_parse_number_exact_and_bounded():
    assert parse_number("8/255") == 8 / 255 and parse_number(" 1e-4 ") == 1e-4
    assert parse_number("1e-400/1") == 0.0
    for text in ("1e400/1", "1/1e-400", "-1e309/1"):
        with pytest.raises(OutOfRange, match="overflows a float"):
            parse_number(text)
    start = time.perf_counter()  # 10**999999999 is never built
    with pytest.raises(OutOfRange, match="exponent"):
        parse_number("1e999999999/3")
    assert time.perf_counter() - start < 1


@pytest.mark.parametrize("text,value", [("0", 0.0), ("0.1", 0.1), ("0.999", 0.999), ("1", 1),
                                        ("2.0", 2), ("100", 100), ("1/10", 0.1)])
def test_t_star_fraction_or_integer(text, value):
    v = parse_t_star(text)
    assert v == value and type(v) is type(value)


@pytest.mark.parametrize("text", ["1.5", "2.25", "-0.1", "nan", "inf", "1e400/1", "x"])
def test_t_star_neither_is_refused(text):
    with pytest.raises(ValueError):
        parse_t_star(text)
    with pytest.raises(ConfigError, match="t_star"):
        PurifyConfig(t_star=f"0.1,{text}")


BIG = "1" + "0" * 400
OVERFLOW = [
    (["train", "--lr", "1e400/1"], "overflows"),
    (["attack", "--run", DDPM, "--eps-scale", "1e400/1"], "overflows"),
    (["attack", "--run", DDPM, "--eps-scale", "1e999999999/1"], "exponent"),
    (["attack", "--run", DDPM, "--seed", BIG], "seed"),
    (["curve", "--run", DDPM, "--steps-attacked", "0,1e400/1"], "1e400/1"),
    (["purify", "--eps", "1e400/1"], "overflows"),
    (["purify", "--t-star", "1e400/1"], "1e400/1"),
    (["purify", "--t-star", "1.5"], "'1.5'"),
    (["purify", "--num-samples", BIG], "num_samples"),
    (["demo", "--seed", "-5"], "seed"),
    (["demo", "--seed", str(2**63 - 1), "--seeds", "2"], "seed"),
]


@pytest.mark.parametrize("args,needle", OVERFLOW, ids=[" ".join(a)[:60] for a, _ in OVERFLOW])
def test_bad_numbers_are_one_line_and_create_nothing(args, needle, tmp_path, no_sampling):
    out = tmp_path / "out"
    one_line_refusal([*args, "--out", str(out)], needle)
    assert not out.exists()


# ---------------------------------------------------------------------------- before sampling
def test_is_without_logits_fails_before_sampling(tmp_path, no_sampling):
    from evaluators import MetricError
    from evaluators.extractors import resolve_weights, weights_sha256
    from evaluators.inception import FID_HELPER_SHA256

    try:
        has_logits = weights_sha256(resolve_weights("inception", None)) != FID_HELPER_SHA256
    except MetricError:
        pytest.skip("no Inception weights here")
    if has_logits:
        pytest.skip("torch-fidelity's Inception (with logits) is installed: IS works")
    one_line_refusal(["evaluate", "--run", DDPM, "--metrics", "is", "--feature-extractor",
                      "inception", "--num-samples", "8", "--out", str(tmp_path / "e")],
                     "IS needs Inception logits")
    assert not (tmp_path / "e").exists()


def test_dinov2_without_checkout_fails_before_sampling(tmp_path, no_sampling):
    (tmp_path / "empty").mkdir()
    one_line_refusal(["evaluate", "--run", DDPM, "--metrics", "memorization",
                      "--memorization-space", "dinov2", "--dinov2-dir", str(tmp_path / "empty"),
                      "--num-samples", "8", "--out", str(tmp_path / "e")], "DINOv2 needs")
    assert not (tmp_path / "e").exists()


# ---------------------------------------------------------------------------- small FID
@pytest.mark.parametrize("command", ["evaluate", "attack", "curve"])
def test_fid_below_feature_dimension_is_refused(command, tmp_path, no_sampling):
    """The done-when of issue 21: 16 digits with 64-D digits-cnn features."""
    args = [command, "--run", DDPM, "--metrics", "fid", "--num-samples", "16",
            "--out", str(tmp_path / "o")]
    one_line_refusal(args, "at least --num-samples 65")
    one_line_refusal(args, "kid")
    # the default metric of images is fid too
    one_line_refusal([command, "--run", DDPM, "--num-samples", "64"], "at least --num-samples 65")
    assert not (tmp_path / "o").exists()


def test_feature_dimension_is_the_extractors():
    """d comes from the extractor: digits-cnn's FID features really are that wide."""
    import torch

    from dmattack.evaluation.scoring import frechet_dimension
    from evaluators.extractors import extract_features, resolve_weights

    x = torch.rand(5, 1, 8, 8) * 2 - 1
    feats = extract_features(x, "digits-cnn", resolve_weights("digits-cnn", None))
    assert frechet_dimension("fid", (1, 8, 8)) == (feats.shape[1], "digits-cnn "
                                                                  "feature")
    assert frechet_dimension("fid", (3, 32, 32))[0] == 2048
    assert frechet_dimension("fd-exact", (3,)) == (3, "data")
    assert frechet_dimension("kid", (1, 8, 8)) is None


def test_allow_small_fid_scores_and_is_recorded(tmp_path):
    out = tmp_path / "e"
    result = CliRunner().invoke(cli.main, ["evaluate", "--run", DDPM, "--metrics", "fid",
                                           "--num-samples", "8", *TINY, "--allow-small-fid",
                                           "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    assert metrics["protocol"]["allow_small_fid"] is True
    assert metrics["FID (digits-cnn)"] is not None


def test_allow_small_fid_is_recorded_by_attack(tmp_path):
    out = tmp_path / "a"
    result = CliRunner().invoke(cli.main, [
        "attack", "--run", DDPM, "--metrics", "fid", "--num-samples", "4", *TINY,
        "--method", "random", "--steps-attacked", "50", "--allow-small-fid", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = (out / "results.json").read_text()
    assert '"allow_small_fid": true' in text


def test_large_enough_fid_needs_no_flag():
    from dmattack.evaluation.scoring import check_sample_size

    check_sample_size(["fid", "kid"], (1, 8, 8), 65)
    with pytest.raises(ConfigError, match="65"):
        check_sample_size(["kid", "fid"], (1, 8, 8), 64)
    check_sample_size(["fid"], (1, 8, 8), 64, allow_small=True)
    check_sample_size(["kid", "is", "variance-ratio"], (1, 8, 8), 2)


def test_a_metric_entry_owns_its_checks_before_sampling():
    """``sample_dimension`` and ``check`` are entry fields: a plugin metric's are applied by
    check_scoring like the built-ins' (fid's extractor choice changes d; a check that fails
    stops scoring before any sampling)."""
    from dmattack.core.registry import METRICS
    from dmattack.evaluation.scoring import check_scoring, frechet_dimension
    from evaluators import Metric
    from evaluators.options import FeatureOptions

    assert frechet_dimension("fid", (1, 8, 8), FeatureOptions("inception"))[0] == 2048
    seen = []

    def check(options):
        seen.append(options)
        raise ConfigError("plugin check failed")

    METRICS.register("cov-10", Metric("test", lambda x, r, c: {"v": 0.0}, ("v",),
                                      sample_dimension=lambda o, shape: (10, "test"),
                                      check=check))
    try:
        with pytest.raises(ConfigError, match="cov-10 from 10 samples: its 10-D test"):
            check_scoring(["cov-10"], (3,), 10)
        with pytest.raises(ConfigError, match="plugin check failed"):
            check_scoring(["cov-10"], (3,), 11)
        assert len(seen) == 1
    finally:
        METRICS.unregister("cov-10")
