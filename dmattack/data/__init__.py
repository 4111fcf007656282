"""Training data in model space: images in [−1, 1] or vectors, optionally corrupted (METHOD §7).

``load_dataset(name, ...)`` builds any dataset in :data:`DATASETS`; ``corrupt(ds, ...)`` wraps
one with Gaussian noise or outliers; ``ds.truth`` is the known clean distribution of the
synthetic vector sets (a :class:`KnownDistribution`, torch.float64).
"""

from __future__ import annotations

from pathlib import Path

from .base import DataError, DiffusionDataset, InMemoryDataset, check_choice, check_seed
from .corruption import CorruptedDataset, corrupt
from .images import ImageFolderDataset, load_cifar10, load_digits_images, load_image_folder
from .truth import GaussianMixture, GaussianSubspace, KnownDistribution, ObliquePlane
from .vectors import DEFAULT_PARAMS, load_vectors

DATASETS = ("digits", "cifar10", "celeba", "lsun-bedroom", "imagefolder",
            "oblique-plane", "3-gaussians", "digits-subspace")
FOLDER_RESOLUTION = {"celeba": 64, "lsun-bedroom": 64, "imagefolder": 32}


def load_dataset(name: str, data_dir: str | Path | None = None, resolution: int | None = None,
                 num_samples: int | None = None, seed: int = 0,
                 **params: float) -> DiffusionDataset:
    """Build the dataset ``name`` (one of :data:`DATASETS`).

    ``data_dir``: where cifar10/celeba/lsun-bedroom/imagefolder live (unused by the embedded
    sets). ``resolution``: image side (defaults: digits 8, cifar10 32, celeba/lsun-bedroom 64,
    imagefolder 32); must be None for vector sets. ``num_samples``: images keep the first N;
    vector sets draw N (defaults 4000, digits-subspace 2000). ``seed`` seeds the vector draws.
    ``params``: distribution parameters of the vector sets (see ``vectors.DEFAULT_PARAMS``).
    """
    check_choice("dataset", name, DATASETS)
    seed = check_seed(seed)
    if resolution is not None and not (isinstance(resolution, int) and resolution > 0):
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    if name in DEFAULT_PARAMS:
        if resolution is not None:
            raise ValueError(f"{name} is vector data; resolution must be None, got {resolution}")
        return load_vectors(name, num_samples, seed, **params)
    if params:
        raise ValueError(f"unknown parameter {sorted(params)[0]!r} for {name}; it takes none")
    if name == "digits":
        return load_digits_images(resolution, num_samples, seed)
    if name == "cifar10":
        return load_cifar10(data_dir, resolution, num_samples, seed)
    return load_image_folder(name, data_dir, resolution or FOLDER_RESOLUTION[name], num_samples,
                             seed)


__all__ = ["DATASETS", "DEFAULT_PARAMS", "CorruptedDataset", "DataError", "DiffusionDataset",
           "GaussianMixture", "GaussianSubspace", "ImageFolderDataset", "InMemoryDataset",
           "KnownDistribution", "ObliquePlane", "corrupt", "load_dataset"]
