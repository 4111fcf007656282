"""Tests of the evaluators package: exact metrics, torch-fidelity metrics, caching, memorisation."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tfi
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits

import evaluators.inception
from evaluators import METRICS, MetricError, evaluate, exact, metric_labels
from evaluators.digits_cnn import train
from evaluators.digits_model import DEFAULT_WEIGHTS, accuracy, digits_split, load_digits_cnn
from evaluators.extractors import DigitsCNNExtractor, weights_sha256
from evaluators.fidelity import PROVENANCE_KEYS, reference_key
from evaluators.images import to_uint8
from evaluators.memorization import max_cosine_similarity, memorization

CHECKPOINT_JSON = DEFAULT_WEIGHTS.with_suffix(".json")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The test machine's cores are shared: one torch / BLAS thread is much faster there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """All 1797 sklearn digits, (N, 1, 8, 8) float32 in [-1, 1]."""
    return torch.from_numpy(load_digits().images).float()[:, None] / 16 * 2 - 1


def _noisy(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    return x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


# --- exact metrics -------------------------------------------------------------------------


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    for d in (1, 3, 10):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        c1, c2 = _random_spd(rng, d), _random_spd(rng, d)
        ref = (np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2)
               - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2)).real)
        assert exact.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-8)
        assert exact.frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_singular_covariance_and_torch_inputs():
    c = torch.diag(torch.tensor([1.0, 0.0, 0.0]))
    z = torch.zeros(3)
    assert exact.frechet_distance(z, c, z, c) == pytest.approx(0, abs=1e-12)
    assert exact.frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2)) == pytest.approx(2)
    with pytest.raises(ValueError, match="shape mismatch"):
        exact.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_frechet_to_gaussian_of_its_own_samples_is_near_zero():
    rng = np.random.default_rng(1)
    mean, cov = rng.normal(size=4), _random_spd(rng, 4)
    x = rng.multivariate_normal(mean, cov, size=200_000)
    assert exact.frechet_to_gaussian(x, mean, cov) < 5e-3
    assert exact.frechet_to_gaussian(x + 1.0, mean, cov) == pytest.approx(4.0, rel=0.01)


def _subspace(d: int = 6, k: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return rng.normal(size=d), q[:, :k], q[:, k]  # mean, basis U, a unit vector ⟂ U


def test_subspace_error_zero_on_subspace_and_psnr_capped():
    mean, u, _ = _subspace()
    x = mean + np.random.default_rng(2).normal(size=(50, 2)) @ u.T
    assert exact.subspace_error(x, mean, u) == pytest.approx(0, abs=1e-20)
    assert exact.subspace_psnr(x, mean, u) == exact.PSNR_CAP_DB


def test_subspace_error_and_psnr_closed_form_for_known_offset():
    mean, u, v = _subspace()
    c = 0.3
    x = mean + np.random.default_rng(3).normal(size=(40, 2)) @ u.T + c * v
    assert exact.subspace_error(x, mean, u) == pytest.approx(c**2, rel=1e-9)
    psnr = 10 * np.log10(2.0**2 / (c**2 / len(mean)))
    assert exact.subspace_psnr(x, mean, u) == pytest.approx(psnr, rel=1e-9)
    with pytest.raises(ValueError, match="orthonormal"):
        exact.subspace_error(x, mean, 2 * u)


def test_plane_distance():
    normal = np.array([1.0, 1.0, 1.0])  # not unit: normalised inside
    n = normal / np.linalg.norm(normal)
    rng = np.random.default_rng(4)
    on_plane = rng.normal(size=(100, 3))
    on_plane -= np.outer(on_plane @ n, n)
    dist = rng.uniform(-1, 1, size=100)
    x = on_plane + dist[:, None] * n
    assert exact.plane_distance(on_plane, normal) == pytest.approx(0, abs=1e-12)
    assert exact.plane_distance(x, normal) == pytest.approx(np.abs(dist).mean())
    assert exact.plane_distance(x + 0.5 * n, normal, offset=0.5) == pytest.approx(
        np.abs(dist).mean())


def test_mixture_loglik_matches_scipy():
    rng = np.random.default_rng(5)
    means, std = rng.normal(size=(3, 3)) * 2, 0.4
    x = rng.normal(size=(30, 3)) * 2
    dens = np.mean([scipy.stats.multivariate_normal(m, std**2 * np.eye(3)).pdf(x) for m in means],
                   axis=0)
    assert exact.mixture_loglik(x, means, std) == pytest.approx(np.log(dens).mean(), rel=1e-10)


def test_variance_ratio_images_and_vectors(digits):
    assert exact.variance_ratio(0.5 * digits, digits) == pytest.approx(0.25)
    v = np.random.default_rng(6).normal(size=(100, 3))
    assert exact.variance_ratio(v, v) == pytest.approx(1.0)


def test_finite_rows_drops_and_counts():
    x = np.zeros((5, 2, 2))
    x[1, 0, 0], x[3, 1, 1] = np.nan, -np.inf
    rows, dropped = exact.finite_rows(x)
    assert rows.shape == (3, 4) and dropped == 2
    with pytest.raises(ValueError, match="finite samples"):
        exact.plane_distance(np.full((2, 3), np.inf), np.ones(3))


# --- image conversion and digits CNN -----------------------------------------------------


def test_to_uint8_conversion():
    x = torch.tensor([-1.0, -2.0, 0.0, 1.0, 3.0, float("inf")]).view(1, 1, 1, 6)
    u = to_uint8(x)
    assert u.shape == (1, 3, 1, 6) and u.dtype == torch.uint8
    assert u[0, 0, 0].tolist() == [0, 0, 128, 255, 255, 255]
    assert torch.equal(u[:, 0], u[:, 2])
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(torch.full((1, 1, 2, 2), float("nan")))


def test_digits_cnn_shipped_weights_accuracy_and_hash():
    meta = json.loads(CHECKPOINT_JSON.read_text())
    assert weights_sha256(DEFAULT_WEIGHTS) == meta["sha256"]
    _, _, x_te, y_te = digits_split()
    model = load_digits_cnn()
    assert accuracy(model, x_te, y_te) >= 0.97
    assert meta["heldout_accuracy"] >= 0.97
    ext = DigitsCNNExtractor("digits-cnn", ["logits_unbiased"])  # the uint8 path
    (logits,) = ext(to_uint8(x_te))
    assert (logits.argmax(1) == y_te).float().mean() >= 0.97


@pytest.mark.slow
def test_digits_cnn_training_reaches_accuracy_quickly():
    start = time.perf_counter()
    model = train()
    assert time.perf_counter() - start < 60
    _, _, x_te, y_te = digits_split()
    assert accuracy(model, x_te, y_te) >= 0.97


def test_digits_extractor_resizes_16x16(digits):
    ext = DigitsCNNExtractor("digits-cnn", ["64"])
    big = digits[:20].repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(ext(to_uint8(big))[0], ext(to_uint8(digits[:20]))[0])


# --- torch-fidelity metrics -----------------------------------------------------------------


def test_fid_digits_cnn_zero_on_itself_and_monotone_in_noise(digits, tmp_path):
    fids = []
    for sigma in (0.0, 0.1, 0.3, 0.6):
        res = evaluate(_noisy(digits, sigma), digits, ["fid"], cache_dir=tmp_path,
                       reference_name="sklearn digits")
        fids.append(res["FID (digits-cnn)"])
        assert res["protocol"]["feature_extractor"] == "digits-cnn"
    assert fids[0] == pytest.approx(0, abs=1e-4)
    assert all(a < b for a, b in zip(fids, fids[1:], strict=False)), fids


def test_is_kid_digits_and_protocol(digits, tmp_path):
    res = evaluate(digits[:50], digits[50:300], ["is", "kid", "variance-ratio"],
                   cache_dir=tmp_path, reference_name="digits 50:300",
                   protocol={"sampler": "ddpm", "steps": 1000, "ema": True})
    json.dumps(res, allow_nan=False)
    p = res["protocol"]
    assert p["kid_subset_size"] == 50 and p["num_samples"] == 50 and p["num_reference"] == 250
    assert p["sampler"] == "ddpm" and p["ema"] is True and p["torch_fidelity_version"]
    assert p["feature_extractor_weights_sha256"] == weights_sha256(DEFAULT_WEIGHTS)
    assert 1.0 <= res["IS (digits-cnn)"] <= 10.0
    assert np.isfinite(res["KID (digits-cnn)"]) and "KID std (digits-cnn)" in res
    assert res["variance ratio"] > 0
    labels = [x for m in ("is", "kid", "variance-ratio")
              for x in metric_labels(m, feature_extractor="digits-cnn")]
    assert sorted(labels + ["protocol"]) == sorted(res)


def test_reference_cache_written_once_and_keyed(digits, tmp_path, monkeypatch):
    seen: list[int] = []
    forward = DigitsCNNExtractor.forward

    def spy(self, x):
        seen.append(len(x))
        return forward(self, x)

    monkeypatch.setattr(DigitsCNNExtractor, "forward", spy)
    samples, ref = _noisy(digits[:100], 0.2), digits[100:1300]
    first = evaluate(samples, ref, ["fid", "kid"], cache_dir=tmp_path)
    assert sum(seen) == 100 + 1200  # exactly N and N_ref images, the partial batch included
    files = {f: f.stat().st_mtime_ns for f in tmp_path.rglob("*.pt")}
    assert files and all(first["protocol"]["reference_cache_key"] in f.name for f in files)

    seen.clear()
    second = evaluate(samples, ref, ["fid", "kid"], cache_dir=tmp_path)
    assert sum(seen) == 100  # reference not recomputed
    assert {f: f.stat().st_mtime_ns for f in tmp_path.rglob("*.pt")} == files
    assert second["FID (digits-cnn)"] == first["FID (digits-cnn)"]

    seen.clear()
    third = evaluate(samples, digits[100:1299], ["fid"], cache_dir=tmp_path)
    assert sum(seen) == 100 + 1199
    assert third["protocol"]["reference_cache_key"] != first["protocol"]["reference_cache_key"]
    assert len(list(tmp_path.rglob("*.pt"))) > len(files)


def test_reference_key_changes_with_every_input(digits):
    ref = to_uint8(digits[:10])
    base = reference_key(ref, "digits", "digits-cnn", "abc")
    assert base == reference_key(ref.clone(), "digits", "digits-cnn", "abc")
    changed = [
        reference_key(to_uint8(digits[1:11]), "digits", "digits-cnn", "abc"),
        reference_key(ref.view(10, 3, 4, 16), "digits", "digits-cnn", "abc"),
        reference_key(ref, "digits-train", "digits-cnn", "abc"),
        reference_key(ref, "digits", "inception-v3-compat", "abc"),
        reference_key(ref, "digits", "digits-cnn", "abd"),
    ]
    assert len({base, *changed}) == 6


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory) -> Path:
    """torch-fidelity's InceptionV3 with He-normal convs (default init gives degenerate
    features), saved as a state dict; nothing is downloaded."""
    import unittest.mock as mock

    with mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict",
                              lambda self, *a, **k: None):
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
    path = tmp_path_factory.mktemp("inception") / "inception_random.pth"
    torch.save(net.state_dict(), path)
    return path


def _check_inception_run(weights: Path, cache: Path) -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(16, 3, 32, 32, generator=g) * 2 - 1
    b = torch.rand(16, 3, 32, 32, generator=g) * 0.5
    res = evaluate(a, b, ["fid", "kid", "is"], inception_weights=weights, cache_dir=cache)
    assert np.isfinite(res["FID"]) and res["FID"] >= 0
    assert np.isfinite(res["KID"]) and np.isfinite(res["IS"])
    p = res["protocol"]
    assert p["feature_extractor"] == "inception" and p["kid_subset_size"] == 16
    assert set(PROVENANCE_KEYS) <= set(p)
    assert p["feature_extractor_weights_sha256"] == weights_sha256(weights)
    json.dumps(res, allow_nan=False)


def test_inception_end_to_end_small_input(random_inception_weights, tmp_path, monkeypatch):
    # Same code path as the real run but Inception's internal resize is 75 px (its minimum)
    # instead of 299 px, to stay fast on CPU; the 299 px run is the slow test below.
    monkeypatch.setattr(tfi.FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 75)
    _check_inception_run(random_inception_weights, tmp_path)
    train = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    res = memorization(train[[4, 1]], train, space="inception", weights=random_inception_weights)
    np.testing.assert_allclose(res["max_similarity"], 1.0, atol=1e-5)
    assert res["nearest_index"].tolist() == [4, 1]


@pytest.mark.slow
def test_inception_end_to_end_native_299(random_inception_weights, tmp_path):
    _check_inception_run(random_inception_weights, tmp_path)


def test_missing_inception_weights_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(evaluators.inception, "fid_helper_weights", lambda: None)  # no extra
    x = torch.zeros(4, 3, 32, 32)
    with pytest.raises(MetricError) as err:
        evaluate(x, x, ["fid"], cache_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and tfi.URL_INCEPTION_V3 in msg and "--inception-weights" in msg
    assert str(tmp_path / "empty-torch-home") in msg
    with pytest.raises(MetricError, match="not found at"):
        evaluate(x, x, ["is"], inception_weights=tmp_path / "nope.pth")
    assert not (tmp_path / "empty-torch-home").exists()  # nothing downloaded or created


# --- memorisation ---------------------------------------------------------------------------


def test_max_cosine_similarity_blocked_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(37, 5, generator=g), torch.randn(53, 5, generator=g)
    best, idx = max_cosine_similarity(q, k, query_batch=8, key_batch=10)
    sims = torch.nn.functional.normalize(q.double(), dim=1) @ \
        torch.nn.functional.normalize(k.double(), dim=1).T
    torch.testing.assert_close(best, sims.max(1).values, atol=1e-6, rtol=0)
    assert torch.equal(idx, sims.argmax(1))


@pytest.mark.parametrize("space", ["pixels", "digits-cnn"])
def test_memorization_training_sample_has_similarity_one(digits, tmp_path, space):
    samples = torch.cat([digits[:5], _noisy(digits[5:25], 0.5)])
    png = tmp_path / "hist.png"
    res = memorization(samples, digits, space=space, histogram_path=png)
    np.testing.assert_allclose(res["max_similarity"][:5], 1.0, atol=1e-6)
    for t in (0.9, 0.95):
        assert 0.0 <= res[f"frac_above_{t}"] <= 1.0
    assert res["frac_above_0.9"] >= 5 / 25
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["hist.png"]  # no temp file left behind


def test_memorization_through_evaluate_and_dinov2_missing(digits, tmp_path, monkeypatch):
    samples = digits[:10].clone()
    samples[3] = float("nan")
    res = evaluate(samples, digits, ["memorization"], train_set=digits, out_dir=tmp_path)
    assert res["memorization >0.95 (digits-cnn)"] == 1.0
    info = res["protocol"]["memorization"]
    assert np.load(info["max_similarity_file"], allow_pickle=False).shape == (9,)
    assert Path(info["histogram"]).is_file() and res["protocol"]["num_nonfinite"] == 1
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    with pytest.raises(MetricError, match="DINOv2") as err:
        memorization(digits[:2], digits[:4], space="dinov2")
    assert "\n" not in str(err.value)


def test_memorization_dinov2_from_local_hub_dir(digits, tmp_path, monkeypatch):
    repo = tmp_path / "dinov2"
    repo.mkdir()
    (repo / "hubconf.py").write_text(
        "import torch\n"
        "def dinov2_vitb14(pretrained=True):\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.AvgPool2d(28), torch.nn.Flatten(),\n"
        "                               torch.nn.Linear(3 * 8 * 8, 16))\n")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    ckpt = tmp_path / "home" / "hub" / "checkpoints" / "dinov2_vitb14_pretrain.pth"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"stand-in weights")
    res = memorization(digits[:3], digits[:40], space="dinov2", weights=repo)
    np.testing.assert_allclose(res["max_similarity"], 1.0, atol=1e-6)
    assert res["weights_sha256"] == weights_sha256(ckpt)


# --- evaluate: dispatch, errors, non-finite samples ----------------------------------------


class _Plane:
    normal = np.array([0.0, 0.0, 1.0])
    mean = np.zeros(3)
    basis = np.eye(3)[:, :2]
    means = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    std = 0.5

    def covariance(self) -> np.ndarray:
        return np.diag([1.0, 1.0, 0.0])


def test_evaluate_vector_metrics_and_nonfinite_rows():
    rng = np.random.default_rng(7)
    x = np.c_[rng.normal(size=(500, 2)), 0.1 * rng.normal(size=500)]
    bad = x.copy()
    bad[[4, 9]] = np.nan
    bad[11, 1] = np.inf
    names = ["fd-exact", "subspace", "plane", "loglik", "variance-ratio"]
    res = evaluate(torch.from_numpy(bad), torch.from_numpy(x), names, truth=_Plane())
    clean = evaluate(torch.from_numpy(np.delete(x, [4, 9, 11], axis=0)), torch.from_numpy(x),
                     names, truth=_Plane())
    assert res["protocol"]["num_nonfinite"] == 3 and res["protocol"]["num_evaluated"] == 497
    for k in ("FD (exact)", "subspace error", "subspace PSNR (dB)", "plane distance",
              "loglik (nats)", "variance ratio"):
        assert res[k] == pytest.approx(clean[k])
    assert res["protocol"]["feature_extractor"] is None
    json.dumps(res, allow_nan=False)

    none = evaluate(torch.full((4, 3), float("nan")), torch.from_numpy(x), names, truth=_Plane())
    assert none["protocol"]["num_evaluated"] == 0
    assert all(none[k] is None for k in none if k != "protocol")
    assert set(none) == set(res)  # the labels of metric_labels are the computed ones


def test_evaluate_rejects_unknown_and_impossible_metrics(digits):
    v = torch.zeros(10, 3)
    with pytest.raises(ValueError, match="unknown metric 'fidd'; allowed: fid, is") as err:
        evaluate(v, v, ["fidd"])
    assert "\n" not in str(err.value) and all(m in str(err.value) for m in METRICS)
    with pytest.raises(ValueError, match="fid needs images"):
        evaluate(v, v, ["fid"])
    with pytest.raises(ValueError, match="fd-exact needs a known distribution"):
        evaluate(v, v, ["fd-exact"])
    with pytest.raises(ValueError, match="memorization needs train_set"):
        evaluate(v, v, ["memorization"])
    with pytest.raises(ValueError, match="feature_extractor .* is invalid"):
        evaluate(digits[:4], digits[:4], ["fid"], feature_extractor="vgg")
    with pytest.raises(ValueError, match="reserved"):
        evaluate(v, v, ["variance-ratio"], protocol={"num_samples": 3})


def test_inception_weights_with_pickled_code_are_refused(tmp_path, exploit):
    payload, marker = exploit
    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "payload": payload}, evil)
    x = torch.zeros(4, 3, 32, 32)
    with pytest.raises(MetricError, match="refusing Inception weights"):
        evaluate(x, x, ["fid"], inception_weights=evil, cache_dir=tmp_path)
    assert not marker.exists()


def test_planted_cache_file_is_deleted_not_unpickled(tmp_path, exploit):
    x = torch.from_numpy(load_digits().images[:40]).float().div(8).sub(1).unsqueeze(1)
    first = evaluate(x, x, ["fid"], cache_dir=tmp_path)
    cached = sorted((tmp_path / "torch-fidelity").glob("*.pt"))
    assert cached
    payload, marker = exploit
    torch.save({"mu": payload}, cached[0])
    again = evaluate(x, x, ["fid"], cache_dir=tmp_path)
    assert not marker.exists()
    assert again["FID (digits-cnn)"] == pytest.approx(first["FID (digits-cnn)"], abs=1e-6)
