"""Tests for dmattack.data: loaders, known distributions, corruption (all CPU, small data)."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import multivariate_normal
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from dmattack.data import DATASETS, DataError, corrupt, load_dataset

N_DIGITS = 1797


@pytest.fixture(scope="module")
def digits_raw() -> np.ndarray:
    """Independent reference: sklearn digits in [−1, 1], (1797, 64)."""
    return load_digits().data / 16.0 * 2.0 - 1.0


# ---------------------------------------------------------------- loading


def test_datasets_registry():
    assert DATASETS.names() == ("digits", "cifar10", "celeba", "lsun-bedroom", "imagefolder",
                        "oblique-plane", "3-gaussians", "digits-subspace")


def test_digits(digits_raw):
    ds = load_dataset("digits")
    x = ds.tensor()
    assert (len(ds), ds.shape, ds.kind, ds.truth) == (N_DIGITS, (1, 8, 8), "image", None)
    assert x.shape == (N_DIGITS, 1, 8, 8) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_allclose(x.reshape(N_DIGITS, 64).numpy(), digits_raw, atol=1e-6)
    assert torch.equal(ds[5], x[5])


def test_digits_resize_and_subset():
    ds = load_dataset("digits", resolution=16, num_samples=100)
    x = ds.tensor()
    assert x.shape == (100, 1, 16, 16) and ds.shape == (1, 16, 16)
    assert x.min() >= -1.0 and x.max() <= 1.0
    # Bilinear resizing roughly preserves each image's mean.
    small = load_dataset("digits", num_samples=100).tensor()
    assert torch.allclose(x.mean(dim=(1, 2, 3)), small.mean(dim=(1, 2, 3)), atol=0.05)
    assert ds.describe()["resolution"] == 16


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*digits"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="unknown parameter 'sigma' for oblique-plane"):
        load_dataset("oblique-plane", sigma=0.1)
    with pytest.raises(ValueError, match="resolution must be None"):
        load_dataset("3-gaussians", resolution=8)
    with pytest.raises(ValueError, match="takes none"):
        load_dataset("digits", normal_std=0.1)


@pytest.mark.parametrize("name", ["oblique-plane", "3-gaussians", "digits-subspace"])
def test_vector_sets_are_seeded(name):
    a, b = load_dataset(name, seed=3), load_dataset(name, seed=3)
    c = load_dataset(name, seed=4)
    assert a.kind == "vector" and a.tensor().dtype == torch.float32
    assert len(a) == (2000 if name == "digits-subspace" else 4000)
    assert torch.equal(a.tensor(), b.tensor()) and not torch.equal(a.tensor(), c.tensor())
    assert len(load_dataset(name, num_samples=123)) == 123
    json.dumps(a.describe())


# ---------------------------------------------------------------- known distributions


def test_plane():
    ds = load_dataset("oblique-plane", num_samples=20000)
    truth, x = ds.truth, ds.tensor()
    n = np.ones(3) / math.sqrt(3)
    np.testing.assert_allclose(truth.normal.numpy(), n)
    assert truth.distance(x).abs().max() < 1e-5
    expected = 0.25 * (np.eye(3) - np.outer(n, n))
    np.testing.assert_allclose(truth.covariance().numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(np.cov(x.numpy().T), expected, atol=0.01)
    assert torch.allclose(truth.project(x), x.double(), atol=1e-5)


def test_plane_with_normal_noise():
    ds = load_dataset("oblique-plane", num_samples=20000, normal_std=0.2, in_plane_std=1.0)
    assert ds.describe()["params"]["normal_std"] == 0.2
    n = np.ones(3) / math.sqrt(3)
    expected = np.eye(3) - np.outer(n, n) + 0.04 * np.outer(n, n)
    np.testing.assert_allclose(ds.truth.covariance().numpy(), expected, atol=1e-12)
    d = ds.truth.distance(ds.tensor())
    assert abs(d.std().item() - 0.2) < 0.01 and abs(d.mean().item()) < 0.01


def test_mixture_moments_and_projection():
    ds = load_dataset("3-gaussians", num_samples=30000)
    truth, x = ds.truth, ds.tensor().double()
    assert truth.means.shape == (3, 3) and truth.std == 0.1
    # Means (0,0,−1), (0,0,1), (1.5,0,0): overall mean (0.5,0,0); spread of the means + 0.01 I.
    np.testing.assert_allclose(truth.mean.numpy(), [0.5, 0, 0], atol=1e-12)
    expected = np.diag([0.5, 0.0, 2 / 3]) + 0.01 * np.eye(3)
    np.testing.assert_allclose(truth.covariance().numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(x.mean(0).numpy(), [0.5, 0, 0], atol=0.02)
    np.testing.assert_allclose(np.cov(x.numpy().T), expected, atol=0.02)
    xy = torch.unique(truth.means[:, :2], dim=0)
    assert len(xy) == 2  # two modes coincide in the first two coordinates


def test_mixture_log_prob():
    truth = load_dataset("3-gaussians", num_samples=10, mixture_std=0.3).truth
    x = truth.sample(500, torch.Generator().manual_seed(0))
    comps = [multivariate_normal(m.numpy(), 0.09 * np.eye(3)).logpdf(x.numpy())
             for m in truth.means]
    expected = np.logaddexp.reduce(np.stack(comps), axis=0) - np.log(3)
    np.testing.assert_allclose(truth.log_prob(x).numpy(), expected, rtol=1e-10)
    # The density integrates to 1 (Riemann sum on a grid covering ±6 std of every mode).
    axes = [torch.arange(lo, hi, 0.05, dtype=torch.float64)
            for lo, hi in ((-1.8, 3.3), (-1.8, 1.8), (-2.8, 2.8))]
    grid = torch.cartesian_prod(*axes)
    assert abs(truth.log_prob(grid).exp().sum().item() * 0.05**3 - 1.0) < 1e-3


def test_digits_subspace(digits_raw):
    ds = load_dataset("digits-subspace")
    truth, x = ds.truth, ds.tensor()
    u, s = truth.basis, truth.stds
    assert ds.shape == (64,) and u.shape == (64, 9)
    assert ds.describe()["params"]["num_components"] == 9
    assert torch.allclose(u.T @ u, torch.eye(9, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(truth.project(x), x.double(), atol=1e-4)
    assert truth.distance(x).max() < 1e-4
    pca = PCA(n_components=0.7, svd_solver="full").fit(digits_raw)
    assert pca.n_components_ == 9
    np.testing.assert_allclose(s.numpy() ** 2, pca.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(truth.mean.numpy(), pca.mean_, atol=1e-12)
    np.testing.assert_allclose(np.abs(pca.components_ @ u.numpy()), np.eye(9), atol=1e-8)
    cov = (u * s**2) @ u.T
    assert torch.allclose(truth.covariance(), cov, atol=1e-12)
    big = truth.sample(40000, torch.Generator().manual_seed(1))
    err = torch.linalg.matrix_norm(torch.cov(big.T) - cov) / torch.linalg.matrix_norm(cov)
    assert err < 0.03


# ---------------------------------------------------------------- corruption


def _changed_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nonzero((a != b).flatten(1).any(dim=1)).flatten()


@pytest.mark.parametrize("name,fraction", [("oblique-plane", 0.9), ("digits", 0.3),
                                           ("digits", 0.5)])
def test_gaussian_corruption(name, fraction):
    ds = load_dataset(name)
    clean = ds.tensor()
    cds = corrupt(ds, mode="gaussian", fraction=fraction, sigma=0.2, seed=7)
    x = cds.tensor()
    m = round(fraction * len(ds))
    idx = cds.corrupted_indices
    assert idx.dtype == torch.long and len(idx) == m and len(torch.unique(idx)) == m
    assert torch.equal(idx, torch.sort(idx).values)
    assert torch.equal(_changed_rows(x, clean), idx)
    assert torch.equal(torch.stack([cds[i] for i in range(len(cds))]), x)
    noise = (x - clean)[idx]
    assert abs(noise.std().item() - 0.2) < 0.006 and abs(noise.mean().item()) < 0.006
    assert cds.truth is ds.truth and cds.shape == ds.shape and cds.name == ds.name
    # Same seed → identical; another seed → other indices and noise.
    again = corrupt(ds, "gaussian", fraction, 0.2, seed=7)
    assert torch.equal(again.corrupted_indices, idx) and torch.equal(again.tensor(), x)
    other = corrupt(ds, "gaussian", fraction, 0.2, seed=8)
    assert not torch.equal(other.corrupted_indices, idx)
    common = idx[torch.isin(idx, other.corrupted_indices)]
    assert not torch.equal(other.tensor()[common], x[common])
    record = cds.describe()
    assert record["corruption"] == {"mode": "gaussian", "fraction": fraction, "sigma": 0.2,
                                    "seed": 7, "num_corrupted": m}
    assert record["name"] == name
    json.dumps(record)


def test_outliers():
    ds = load_dataset("3-gaussians")
    clean = ds.tensor()
    cds = corrupt(ds, mode="outliers", fraction=0.25, sigma=5.0, seed=1)
    x, idx = cds.tensor(), cds.corrupted_indices
    assert len(idx) == 1000 and torch.equal(_changed_rows(x, clean), idx)
    low, high = clean.amin(0), clean.amax(0)
    box_low, box_high = low - 0.1 * (high - low), high + 0.1 * (high - low)
    out = x[idx]
    assert (out >= box_low - 1e-6).all() and (out <= box_high + 1e-6).all()
    outside = ((out < low) | (out > high)).any(dim=1).float().mean()
    assert 0.3 < outside < 0.6  # 1 − (1/1.2)³ ≈ 0.42 fall outside the clean box
    assert torch.allclose(out.mean(0), (box_low + box_high) / 2, atol=0.1 * (high - low).max())
    assert cds.describe()["corruption"]["sigma"] is None


def test_corruption_edge_cases():
    ds = load_dataset("oblique-plane", num_samples=50)
    none = corrupt(ds, fraction=0.0, sigma=0.2, seed=0)
    assert len(none.corrupted_indices) == 0 and torch.equal(none.tensor(), ds.tensor())
    assert none.describe()["corruption"]["num_corrupted"] == 0
    every = corrupt(ds, fraction=1.0, sigma=0.2, seed=0)
    assert torch.equal(every.corrupted_indices, torch.arange(50))
    assert len(_changed_rows(every.tensor(), ds.tensor())) == 50
    loader = torch.utils.data.DataLoader(every, batch_size=16)
    assert torch.equal(torch.cat(list(loader)), every.tensor())


@pytest.mark.parametrize("kwargs,message", [
    ({"fraction": -0.1}, "fraction must be in"),
    ({"fraction": 1.5}, "fraction must be in"),
    ({"fraction": float("nan")}, "fraction must be in"),
    ({"sigma": -1.0}, "sigma must be"),
    ({"sigma": float("inf")}, "sigma must be"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"mode": "salt"}, "unknown corruption mode 'salt'; allowed: gaussian, outliers"),
])
def test_corruption_errors(kwargs, message):
    ds = load_dataset("oblique-plane", num_samples=10)
    with pytest.raises(ValueError, match=message):
        corrupt(ds, **{"fraction": 0.5, "sigma": 0.1, **kwargs})


def test_corruption_refusals():
    with pytest.raises(ValueError, match="needs vector data"):
        corrupt(load_dataset("digits", num_samples=10), "outliers", 0.5)
    cds = corrupt(load_dataset("oblique-plane", num_samples=10), fraction=0.5, sigma=0.1)
    with pytest.raises(ValueError, match="already corrupted"):
        corrupt(cds, fraction=0.5, sigma=0.1)


# ---------------------------------------------------------------- image folders and CIFAR-10


def _write_images(folder):
    """Five readable images of mixed modes/sizes (constant colours) and one broken file."""
    (folder / "sub" / "deeper").mkdir(parents=True)
    Image.new("RGB", (40, 30), (255, 0, 128)).save(folder / "a_rgb.png")
    Image.new("L", (20, 20), 100).save(folder / "b_grey.png")
    Image.new("RGBA", (32, 48), (10, 20, 30, 0)).save(folder / "sub" / "c_rgba.png")
    Image.fromarray(np.full((24, 24), 65535, dtype=np.uint16)).save(folder / "sub" / "d16.png")
    Image.new("RGB", (50, 50), (0, 0, 0)).save(folder / "sub" / "deeper" / "e.jpg")
    (folder / "sub" / "broken.png").write_bytes(b"not an image at all")
    (folder / "notes.txt").write_text("ignored")


def test_imagefolder(tmp_path):
    _write_images(tmp_path)
    ds = load_dataset("imagefolder", data_dir=tmp_path, resolution=16)
    assert (len(ds), ds.skipped, ds.shape, ds.kind) == (5, 1, (3, 16, 16), "image")
    assert ds.tensor() is None and ds.describe()["params"]["skipped"] == 1
    items = [ds[i] for i in range(len(ds))]
    for x in items:
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert x.min() >= -1.0 and x.max() <= 1.0
    v = lambda c: c / 127.5 - 1.0  # noqa: E731
    expected = [(v(255), v(0), v(128)), (v(100),) * 3, (v(10), v(20), v(30)), (1.0, 1.0, 1.0)]
    for x, colour in zip(items, expected, strict=False):  # sorted path order
        assert torch.allclose(x, torch.tensor(colour).reshape(3, 1, 1).expand(3, 16, 16),
                              atol=1e-6)
    assert (items[4] + 1).abs().max() < 0.05  # the black JPEG (lossy)
    assert load_dataset("imagefolder", data_dir=tmp_path).shape == (3, 32, 32)
    assert len(load_dataset("imagefolder", data_dir=tmp_path, num_samples=2)) == 2


def test_imagefolder_crop(tmp_path):
    # 64×32 image: red outer quarters, blue middle half. Resize → 32×16, centre crop → blue.
    img = np.zeros((32, 64, 3), dtype=np.uint8)
    img[:, :16, 0] = img[:, 48:, 0] = 255
    img[:, 16:48, 2] = 255
    Image.fromarray(img).save(tmp_path / "wide.png")
    x = load_dataset("imagefolder", data_dir=tmp_path, resolution=16)[0]
    assert x[2].mean() > 0.9 and x[0].mean() < -0.9


def test_celeba_and_lsun_folders(tmp_path):
    _write_images(tmp_path / "img_align_celeba")
    ds = load_dataset("celeba", data_dir=tmp_path)
    assert ds.name == "celeba" and len(ds) == 5 and ds[0].shape == (3, 64, 64)
    assert ds.describe()["params"]["data_dir"].endswith("img_align_celeba")
    lsun = load_dataset("lsun-bedroom", data_dir=tmp_path, resolution=8)
    assert len(lsun) == 5 and lsun[3].shape == (3, 8, 8)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no image folder at"):
        load_dataset("imagefolder", data_dir=tmp_path / "missing")
    (tmp_path / "bad.png").write_bytes(b"xx")
    with pytest.raises(DataError, match="no readable images.*1 unreadable"):
        load_dataset("lsun-bedroom", data_dir=tmp_path)
    with pytest.raises(DataError, match="needs data_dir"):
        load_dataset("celeba")


def test_lazy_corruption_is_fixed(tmp_path):
    _write_images(tmp_path)
    ds = load_dataset("imagefolder", data_dir=tmp_path, resolution=16)
    cds = corrupt(ds, "gaussian", fraction=0.6, sigma=0.2, seed=3)
    idx = cds.corrupted_indices
    assert len(idx) == 3 and cds.tensor() is None
    noise = torch.stack([cds[int(i)] - ds[int(i)] for i in idx])
    again = torch.stack([cds[int(i)] - ds[int(i)] for i in idx])
    assert torch.equal(noise, again)
    assert abs(noise.std().item() - 0.2) < 0.02
    untouched = [i for i in range(len(ds)) if i not in idx.tolist()]
    assert all(torch.equal(cds[i], ds[i]) for i in untouched)


def _write_cifar(root, per_batch=2):
    """A fake torchvision CIFAR-10 folder; returns the images as (N, 3, 32, 32) uint8."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(5 * per_batch, 3072), dtype=np.uint8)
    for b in range(5):
        entry = {"batch_label": f"training batch {b + 1} of 5",
                 "data": data[b * per_batch:(b + 1) * per_batch],
                 "labels": [0] * per_batch, "filenames": [f"{i}.png" for i in range(per_batch)]}
        with open(folder / f"data_batch_{b + 1}", "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    return data.reshape(-1, 3, 32, 32)


def test_cifar10(tmp_path):
    raw = _write_cifar(tmp_path)
    ds = load_dataset("cifar10", data_dir=tmp_path)
    x = ds.tensor()
    assert (len(ds), ds.shape, x.dtype) == (10, (3, 32, 32), torch.float32)
    assert torch.allclose(x, torch.from_numpy(raw).float() / 127.5 - 1.0)
    assert torch.equal(ds[7], x[7])
    inner = load_dataset("cifar10", data_dir=tmp_path / "cifar-10-batches-py", num_samples=4)
    assert torch.equal(inner.tensor(), x[:4])
    assert load_dataset("cifar10", data_dir=tmp_path, resolution=16).tensor().shape[-1] == 16
    cds = corrupt(ds, fraction=0.5, sigma=0.1, seed=0)
    assert torch.equal(_changed_rows(cds.tensor(), x), cds.corrupted_indices)


def test_cifar10_errors(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", data_dir=tmp_path / "nowhere")
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "nowhere") in message
    assert "cifar-10-batches-py" in message
    _write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="invalid CIFAR-10 batch .*data_batch_3"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar10_batch_with_code_is_refused(tmp_path, exploit):
    import pickle

    _write_cifar(tmp_path)
    payload, marker = exploit
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "wb") as f:
        pickle.dump({"data": payload}, f)
    with pytest.raises(DataError, match="refusing to load .*open"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()
