"""The scoring identity of the built-in metrics is the store key of curve points, reference
caches and card records: it must stay byte for byte what it was before the metrics owned their
options (the expected dicts were computed on main before that change, issue 19)."""

from __future__ import annotations

import json

import pytest
import torch_fidelity

from evaluators import scoring_identity

DIGITS_CNN = "e97a40fd62c4772b39860933c0368caeeb7a5e16705aea00e4e3bf1efb1d9f11"
TF = torch_fidelity.__version__

CASES = [
    ((["fid", "variance-ratio"], (1, 8, 8), {}),
     {"metrics": ["fid", "variance-ratio"], "torch_fidelity_version": TF,
      "feature_extractor": "digits-cnn", "feature_extractor_weights_sha256": DIGITS_CNN}),
    ((["fd-exact", "variance-ratio"], (2,), {}),
     {"metrics": ["fd-exact", "variance-ratio"], "torch_fidelity_version": TF}),
    ((["memorization"], (1, 8, 8), {"memorization_space": "pixels"}),
     {"metrics": ["memorization"], "torch_fidelity_version": TF,
      "memorization_space": "pixels"}),
    ((["memorization"], (1, 8, 8), {}),
     {"metrics": ["memorization"], "torch_fidelity_version": TF,
      "memorization_space": "digits-cnn", "memorization_weights_sha256": DIGITS_CNN}),
    ((["memorization", "fid", "kid"], (1, 16, 16), {"memorization_space": "digits-cnn"}),
     {"metrics": ["memorization", "fid", "kid"], "torch_fidelity_version": TF,
      "feature_extractor": "digits-cnn", "feature_extractor_weights_sha256": DIGITS_CNN,
      "memorization_space": "digits-cnn", "memorization_weights_sha256": DIGITS_CNN}),
    ((["is", "kid"], (1, 8, 8), {"feature_extractor": "digits-cnn"}),
     {"metrics": ["is", "kid"], "torch_fidelity_version": TF,
      "feature_extractor": "digits-cnn", "feature_extractor_weights_sha256": DIGITS_CNN}),
]


@pytest.mark.parametrize(("args", "want"), CASES)
def test_builtin_scoring_identity_is_unchanged(args, want):
    """Same keys, values and order (its JSON, hashed into store names, is byte-identical)."""
    metrics, shape, options = args
    got = scoring_identity(metrics, shape, **options)
    assert json.dumps(got) == json.dumps(want)


# ----------------------------------------------------------------------------- options routing
@pytest.fixture
def powered():
    """A metric with an option of its own (``power``), registered for one test."""
    from dataclasses import dataclass

    from dmattack.core.registry import METRICS
    from dmattack.core.settings import check_settings, setting
    from evaluators import Metric

    @dataclass(frozen=True)
    class PowerOptions:
        power: float = setting(1.0, "Power p.", low=0, low_open=True)

        def __post_init__(self):
            check_settings(self)

    METRICS.register("mean-pow", Metric(
        "mean |x|^p", lambda x, ref, c: {"mean |x|^p": float(x.abs().pow(c.options.power).mean())},
        ("mean |x|^p",), config=PowerOptions))
    yield
    METRICS.unregister("mean-pow")


def test_a_plugin_option_is_routed_recorded_and_keyed(powered):
    """evaluate hands the option to its metric only (value against the closed form), records
    it, and the scoring identity adds it without touching the built-in part."""
    import torch

    from evaluators import evaluate

    x = torch.full((4, 2), 3.0)
    res = evaluate(x, torch.randn(4, 2), ["mean-pow", "variance-ratio"], power=2)
    assert res["mean |x|^p"] == 9.0
    assert res["protocol"]["metric_options"] == {"mean-pow": {"power": 2}}
    ident = scoring_identity(["fd-exact", "mean-pow"], (2,), power=2)
    assert ident == {"metrics": ["fd-exact", "mean-pow"], "torch_fidelity_version": TF,
                     "metric_options": {"mean-pow": {"power": 2}}}
    assert scoring_identity(["fd-exact", "variance-ratio"], (2,)) == CASES[1][1]


@pytest.mark.parametrize(("metrics", "options", "message"), [
    (["variance-ratio"], {"feature_extractor": "inception"},
     "feature_extractor (--feature-extractor) = 'inception' is not used by metric "
     "'variance-ratio'; it is read by: fid, is, kid"),
    (["fid"], {"memorization_space": "pixels"}, "is not used by metric 'fid'; it is read by: "
     "memorization"),
    (["fid"], {"bogus": 1}, "bogus = 1 is no metric option"),
    (["fid"], {"inception_weights": "w.pth"}, "would be ignored by fid: Inception weights are "
     "read with --feature-extractor inception only (here digits-cnn)"),
    (["memorization"], {"dinov2_dir": "d"}, "would be ignored by memorization: a DINOv2 "
     "checkout is read in the dinov2 space only"),
    (["fid"], {"feature_extractor": "vgg"}, "feature_extractor (--feature-extractor) = 'vgg' "
     "is invalid"),
])
def test_an_option_no_requested_metric_uses_is_one_line(metrics, options, message):
    from dmattack.core.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        scoring_identity(metrics, (1, 8, 8), **options)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_inception_weights_used_by_one_reader_are_accepted(tmp_path):
    """fid on digits ignores them but memorization in the inception space reads them: kept
    (as the former check did), and only memorization's identity names the file."""
    from evaluators.errors import MetricError

    with pytest.raises(MetricError, match="nope.pth"):  # located: memorization reads it
        scoring_identity(["fid", "memorization"], (1, 8, 8), memorization_space="inception",
                         inception_weights=str(tmp_path / "nope.pth"))


def test_entry_fields_give_the_former_name_lists():
    """default_metrics, the set metrics' directions and the card protocol's feature metrics
    come from entry fields now and equal the lists they replace."""
    from dmattack.card.protocol_check import feature_metrics
    from dmattack.evaluation.damage import set_metric_directions
    from dmattack.evaluation.metrics import default_metrics
    from evaluators import metric_labels

    assert default_metrics((1, 8, 8), None) == ("fid", "variance-ratio")
    assert default_metrics((3, 32, 32), object()) == ("fid", "variance-ratio")
    assert default_metrics((2,), object()) == ("fd-exact", "variance-ratio")
    assert default_metrics((2,), None) == ("variance-ratio",)
    assert set_metric_directions() == {"FID": "lower", "KID": "lower", "FD": "lower",
                                       "IS": "higher"}
    assert sorted(feature_metrics()) == ["fid", "is", "kid"]
    assert metric_labels("fid", (1, 8, 8)) == ["FID (digits-cnn)"]
    assert metric_labels("fid") == ["FID"]
    assert metric_labels("memorization", (1, 8, 8))[-1] == "memorization mean max-sim (digits-cnn)"
    assert metric_labels("memorization")[-1] == "memorization mean max-sim (pixels)"
