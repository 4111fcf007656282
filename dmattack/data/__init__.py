"""Training data in model space: images in [−1, 1] or vectors, optionally corrupted
(docs/method.md §7).

``load_dataset(name, ...)`` builds any dataset of the DATASETS registry; ``corrupt(ds, ...)``
wraps one with Gaussian noise or outliers; ``ds.truth`` is the known clean distribution of the
synthetic vector sets (a :class:`KnownDistribution`, torch.float64).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ConfigError
from ..core.registry import DATASETS
from .base import DataError, DiffusionDataset, InMemoryDataset, check_choice, check_seed
from .corruption import CorruptedDataset, corrupt
from .images import ImageFolderDataset, load_cifar10, load_digits_images, load_image_folder
from .truth import GaussianMixture, GaussianSubspace, KnownDistribution, ObliquePlane
from .vectors import DEFAULT_PARAMS, load_vectors

KINDS = ("image", "vector")


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset as registered in :data:`~dmattack.core.registry.DATASETS`.

    ``load(data_dir, resolution, num_samples, seed, **params)`` builds it (``resolution`` is
    None for the default, always None for vectors); ``kind`` is ``"image"`` or ``"vector"``;
    ``label`` is one line for listings. ``in_memory``: the whole set is decoded and held in
    memory (an image set's ``--resolution`` is then capped, see
    :data:`~dmattack.training.config.MAX_IN_MEMORY_RESOLUTION`); ``flip_default``: trained with
    random horizontal flips unless ``--flip``/``--no-flip`` says otherwise (Ho et al. 2020
    flip CIFAR-10; not digits, which are not mirror-symmetric; never vector data)."""

    load: Callable[..., DiffusionDataset]
    kind: str
    label: str
    in_memory: bool = False
    flip_default: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"dataset kind {self.kind!r} unknown; allowed: {', '.join(KINDS)}")
        if self.flip_default and self.kind != "image":
            raise ValueError("flip_default needs an image dataset (vector data has nothing to "
                             "mirror)")


def _no_params(load: Callable[..., DiffusionDataset], name: str) -> Callable[..., DiffusionDataset]:
    def build(data_dir, resolution, num_samples, seed, **params):
        if params:
            raise ConfigError(f"unknown parameter {sorted(params)[0]!r} for {name}; it takes "
                              "none")
        return load(data_dir, resolution, num_samples, seed)

    return build


def _register_builtin() -> None:
    DATASETS.register("digits", DatasetEntry(_no_params(
        lambda d, r, n, s: load_digits_images(r, n, s), "digits"), "image",
        "scikit-learn's 8×8 handwritten digits (embedded)", in_memory=True))
    DATASETS.register("cifar10", DatasetEntry(_no_params(load_cifar10, "cifar10"), "image",
                                              "CIFAR-10 under --data-dir", in_memory=True,
                                              flip_default=True))
    for name, side in FOLDER_RESOLUTION.items():
        DATASETS.register(name, DatasetEntry(_no_params(
            lambda d, r, n, s, name=name, side=side: load_image_folder(name, d, r or side, n, s),
            name), "image", f"an image folder under --data-dir ({side}×{side} by default)",
            flip_default=True))
    for name in DEFAULT_PARAMS:
        def load(d, r, n, s, name=name, **params):
            if r is not None:
                raise ConfigError(f"{name} is vector data; resolution must be None, got {r}",
                                  field="resolution")
            return load_vectors(name, n, s, **params)

        DATASETS.register(name, DatasetEntry(load, "vector",
                                             "synthetic vectors with a known distribution",
                                             in_memory=True))


FOLDER_RESOLUTION = {"celeba": 64, "lsun-bedroom": 64, "imagefolder": 32}
_register_builtin()


def is_vector_dataset(name: str) -> bool:
    return DATASETS.get(name, "--dataset").kind == "vector"


def load_dataset(name: str, data_dir: str | Path | None = None, resolution: int | None = None,
                 num_samples: int | None = None, seed: int = 0,
                 **params: float) -> DiffusionDataset:
    """Build the dataset ``name`` (a :data:`~dmattack.core.registry.DATASETS` entry).

    ``data_dir``: where cifar10/celeba/lsun-bedroom/imagefolder live (unused by the embedded
    sets). ``resolution``: image side (defaults: digits 8, cifar10 32, celeba/lsun-bedroom 64,
    imagefolder 32); must be None for vector sets. ``num_samples``: images keep the first N;
    vector sets draw N (defaults 4000, digits-subspace 2000). ``seed`` seeds the vector draws.
    ``params``: distribution parameters of the vector sets (see ``vectors.DEFAULT_PARAMS``).
    """
    entry = DATASETS.get(name, "dataset")
    seed = check_seed(seed)
    if resolution is not None and not (isinstance(resolution, int) and resolution > 0):
        raise ConfigError(f"resolution must be a positive int, got {resolution!r}",
                          field="resolution")
    return entry.load(data_dir, resolution, num_samples, seed, **params)


__all__ = ["DATASETS", "DEFAULT_PARAMS", "CorruptedDataset", "DataError", "DatasetEntry",
           "DiffusionDataset", "GaussianMixture", "GaussianSubspace", "ImageFolderDataset",
           "InMemoryDataset", "KnownDistribution", "ObliquePlane", "check_choice", "corrupt",
           "is_vector_dataset", "load_dataset"]
