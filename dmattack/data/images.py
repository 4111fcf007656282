"""Image datasets: sklearn digits and CIFAR-10 (in memory), folders of image files (lazy)."""

from __future__ import annotations

import functools
import logging
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, PILToTensor, Resize
from torchvision.transforms import functional as TF

from ..core.errors import ConfigError, first_line
from .base import DataError, DiffusionDataset, InMemoryDataset, uint8_to_model

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# PIL modes with a well-defined 8-bit RGB conversion; 16-bit grey ("I;16*", and "I" read as
# 16-bit) is scaled by 1/257. Anything else (e.g. float "F") is skipped.
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_CONVERTIBLE = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                "LAB", "HSV", *_SIXTEEN_BIT)
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
log = logging.getLogger("dmattack")


def _resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of an (N, C, H, W) float or uint8 batch to r×r."""
    if images.shape[-2:] == (resolution, resolution):
        return images
    return TF.resize(images, [resolution, resolution], InterpolationMode.BILINEAR, antialias=True)


def _first(data: torch.Tensor, num_samples: int | None, name: str) -> torch.Tensor:
    """The first ``num_samples`` rows (all when None)."""
    if num_samples is None:
        return data
    if not 0 < num_samples <= len(data):
        raise ConfigError(f"num_samples={num_samples} out of range for {name}: 1..{len(data)}")
    return data[:num_samples]


@functools.lru_cache(maxsize=1)
def digits_pixels() -> np.ndarray:
    """The 1797 sklearn digits as a (1797, 64) float64 array in [−1, 1] (x/16·2 − 1)."""
    from sklearn.datasets import load_digits  # imported here: sklearn.datasets loads slowly

    return load_digits().data.astype(np.float64) / 8.0 - 1.0


def load_digits_images(resolution: int | None, num_samples: int | None,
                       seed: int) -> InMemoryDataset:
    """sklearn digits: (1, r, r) images in [−1, 1]; r defaults to 8 (others: bilinear resize)."""
    resolution = resolution or 8
    x = torch.from_numpy(digits_pixels()).to(torch.float32).reshape(-1, 1, 8, 8)
    x = _resize(_first(x, num_samples, "digits"), resolution).clamp_(-1.0, 1.0)
    return InMemoryDataset("digits", x.contiguous(), "image", seed=seed, resolution=resolution)


def _cifar_error(path: Path) -> DataError:
    return DataError(
        f"no CIFAR-10 found at {path}: expected the torchvision '{CIFAR_FOLDER}' folder "
        f"({', '.join(CIFAR_BATCHES)}; download it with torchvision on a machine with internet)")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts, lists, bytes and numpy arrays) and refuses every other
    global, so a crafted batch file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> np.ndarray:
    """One torchvision/CIFAR pickle batch → (n, 3, 32, 32) uint8 (restricted unpickling)."""
    try:
        with open(path, "rb") as f:
            data = np.asarray(_ArrayUnpickler(f, encoding="latin1").load()["data"])
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"invalid CIFAR-10 batch {path}: {type(e).__name__}: {e}") from e
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"invalid CIFAR-10 batch {path}: expected (n, 3072) uint8 'data', "
                        f"got {data.shape} {data.dtype}")
    return data.reshape(-1, 3, 32, 32)


def load_cifar10(data_dir: str | Path | None, resolution: int | None, num_samples: int | None,
                 seed: int) -> InMemoryDataset:
    """CIFAR-10 training set (50K) as (3, r, r) images in [−1, 1], r defaults to 32.

    ``data_dir`` is the torchvision root holding ``cifar-10-batches-py/`` (or that folder itself).
    The five training batches are read directly (torchvision's pickle format) and held as uint8.
    """
    if data_dir is None:
        raise DataError(f"cifar10 needs data_dir: a folder holding '{CIFAR_FOLDER}'")
    root = Path(data_dir).expanduser()
    folder = root / CIFAR_FOLDER if (root / CIFAR_FOLDER).is_dir() else root
    if not all((folder / b).is_file() for b in CIFAR_BATCHES):
        raise _cifar_error(root)
    x = torch.from_numpy(np.concatenate([_read_cifar_batch(folder / b) for b in CIFAR_BATCHES]))
    resolution = resolution or 32
    x = _resize(_first(x, num_samples, "cifar10"), resolution).contiguous()
    return InMemoryDataset("cifar10", x, "image", seed=seed, resolution=resolution,
                           params={"data_dir": str(folder.resolve())})


def _to_rgb8(image: Image.Image) -> Image.Image:
    """8-bit RGB version of a PIL image (alpha dropped, 16-bit grey scaled by 1/257)."""
    if image.mode in _SIXTEEN_BIT:
        grey = np.clip(np.round(np.asarray(image, dtype=np.float64) / 257.0), 0, 255)
        image = Image.fromarray(grey.astype(np.uint8), "L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


_READ_ERRORS = (OSError, SyntaxError, ValueError, TypeError, EOFError, MemoryError,
                Image.DecompressionBombError)


def _readable(path: Path, resolution: int) -> bool:
    """Whether ``path`` decodes completely (a truncated file does not) in a mode with a
    well-defined RGB conversion. JPEGs are decoded at a reduced scale (≥ the target size)."""
    try:
        with Image.open(path) as image:
            if image.mode not in _CONVERTIBLE:
                return False
            image.draft("RGB", (resolution, resolution))
            image.load()
            _to_rgb8(image)
        return True
    except _READ_ERRORS:
        return False


class ImageFolderDataset(DiffusionDataset):
    """Images read lazily from a folder tree: resized (shorter side, bilinear) and centre-cropped
    to (3, r, r), RGB, values in [−1, 1].

    Files are taken in sorted relative-path order. When the folder is indexed every file is
    decoded once; those that cannot be (unreadable, truncated, an image mode without a
    well-defined RGB conversion) are skipped, counted in ``skipped`` and logged. Grayscale,
    palette, RGBA (alpha dropped) and 16-bit images are converted; any size is resized. With
    ``num_samples`` only the first ``num_samples`` readable files are used (and only those are
    checked). A file that breaks after indexing raises a one-line :class:`DataError` naming it.
    """

    def __init__(self, name: str, root: Path, resolution: int, num_samples: int | None,
                 seed: int) -> None:
        if not root.is_dir():
            raise DataError(f"no image folder at {root}: expected a directory (searched "
                            f"recursively) of {'/'.join(IMAGE_EXTENSIONS)} files")
        candidates = sorted((p for p in root.rglob("*")
                             if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                            key=lambda p: p.relative_to(root).as_posix())
        self.files: list[Path] = []
        self.skipped = 0
        for path in candidates:
            if num_samples is not None and len(self.files) == num_samples:
                break
            if _readable(path, resolution):
                self.files.append(path)
            else:
                self.skipped += 1
                if self.skipped <= 3:
                    log.warning("skipping unreadable image %s", path)
        if self.skipped:
            log.warning("skipped %d unreadable image file(s) under %s", self.skipped, root)
        if not self.files:
            raise DataError(f"no readable images found under {root} ({len(candidates)} "
                            f"{'/'.join(IMAGE_EXTENSIONS)} files, {self.skipped} unreadable)")
        if num_samples is not None and len(self.files) < num_samples:
            raise ConfigError(f"num_samples={num_samples} but only {len(self.files)} readable "
                             f"images under {root}")
        super().__init__(name, (3, resolution, resolution), "image", seed=seed,
                         resolution=resolution,
                         params={"data_dir": str(root.resolve()), "skipped": self.skipped})
        self._transform = Compose([
            Resize(resolution, InterpolationMode.BILINEAR, antialias=True),
            CenterCrop(resolution),
            PILToTensor(),
        ])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.files[index]
        try:
            with Image.open(path) as image:
                return uint8_to_model(self._transform(_to_rgb8(image)))
        except _READ_ERRORS as e:  # changed on disk since the folder was indexed
            raise DataError(f"cannot read image {path}: {first_line(e)}") from None


def load_image_folder(name: str, data_dir: str | Path | None, resolution: int,
                      num_samples: int | None, seed: int) -> ImageFolderDataset:
    """``celeba`` (``img_align_celeba/`` inside data_dir, or data_dir itself), ``lsun-bedroom``
    (exported images) or ``imagefolder`` (any images), all searched recursively."""
    if data_dir is None:
        raise DataError(f"{name} needs data_dir: a folder of {'/'.join(IMAGE_EXTENSIONS)} images")
    root = Path(data_dir).expanduser()
    if name == "celeba" and (root / "img_align_celeba").is_dir():
        root = root / "img_align_celeba"
    return ImageFolderDataset(name, root, resolution, num_samples, seed)
