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
