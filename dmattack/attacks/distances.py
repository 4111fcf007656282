"""Distances D(x0_adv, x0_clean) -> (B,) between attacked and clean samples (docs/method.md §12).

Both inputs are (B, *shape) samples in model space ([-1, 1] for images); the result is one
differentiable, non-negative value per sample (higher = more damage). The adaptive attacks
ascend it.

* ``pixel``: per-sample mean of (x0_adv − x0_clean)² over all dimensions (model-space units²).
* ``features``: squared Euclidean distance ‖φ(x0_adv) − φ(x0_clean)‖² of a feature extractor's
  embedding φ: ``digits-cnn`` (the 64-D penultimate layer of the digits classifier; 1-channel
  8×8 or 16×16 images, area-resized to 8×8) or ``inception`` (Inception-v3 pool3, 2048-D, the
  space of FID; torch-fidelity's network, weights from the local cache, never downloaded). The
  embedding sees the sample as the metric does, minus the uint8 rounding, which has no gradient.
* any callable ``D(x0_adv, x0_clean) -> (B,)``, recorded by its name and keyed by its code
  (:func:`distance_key`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError, MissingResourceError

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``D(x0_adv, x0_clean) -> (B,)``, differentiable in ``x0_adv``."""

DISTANCES = ("pixel", "features")
FEATURE_EXTRACTORS = ("digits-cnn", "inception")


def pixel_distance(x0_adv: torch.Tensor, x0_clean: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared difference, shape (B,)."""
    return (x0_adv - x0_clean).flatten(1).pow(2).mean(1)


class DigitsCNNEmbedding(nn.Module):
    """(B, 1, H, W) digits in [-1, 1] (H = W ∈ {8, 16}) → (B, 64) digits-cnn features."""

    def __init__(self) -> None:
        super().__init__()
        from evaluators.digits_model import DEFAULT_WEIGHTS, load_digits_cnn

        if not DEFAULT_WEIGHTS.is_file():
            raise MissingResourceError(f"digits-cnn weights not found at {DEFAULT_WEIGHTS}; make "
                                       "them with `python -m evaluators.digits_cnn`")
        self.cnn = load_digits_cnn(DEFAULT_WEIGHTS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (8, 8):
            x = F.interpolate(x, size=(8, 8), mode="area")
        return self.cnn.features(x)


class InceptionEmbedding(nn.Module):
    """(B, C, H, W) images in [-1, 1] (C ∈ {1, 3}) → (B, 2048) Inception-v3 pool3 features,
    the layers of torch-fidelity's FID extractor applied to the float image (x + 1)·127.5."""

    def __init__(self) -> None:
        super().__init__()
        from evaluators.errors import MetricError
        from evaluators.extractors import resolve_weights

        try:
            path = resolve_weights("inception", None)
        except MetricError as e:
            raise MissingResourceError(str(e)) from None
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                               feature_extractor_weights_path=str(path))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch_fidelity.interpolate_compat_tensorflow import (
            interpolate_bilinear_2d_like_tensorflow1x,
        )

        n = self.net
        x = (x.clamp(-1, 1) + 1) * 127.5
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        size = (n.INPUT_IMAGE_SIZE, n.INPUT_IMAGE_SIZE)
        x = interpolate_bilinear_2d_like_tensorflow1x(x, size=size, align_corners=False)
        x = (x - 128) / 128
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1",
                     "Conv2d_3b_1x1", "Conv2d_4a_3x3", "MaxPool_2", "Mixed_5b", "Mixed_5c",
                     "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                     "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool"):
            x = getattr(n, name)(x)
        return x.flatten(1)


_EMBEDDINGS: dict[str, Callable[[], nn.Module]] = {
    "digits-cnn": DigitsCNNEmbedding, "inception": InceptionEmbedding,
}


@lru_cache(maxsize=4)
def _embedding(name: str, device: str) -> nn.Module:
    return _EMBEDDINGS[name]().to(device).eval().requires_grad_(False)


def default_extractor(shape: Sequence[int]) -> str:
    """``digits-cnn`` for 1-channel 8×8/16×16 digits, ``inception`` for other images."""
    return "digits-cnn" if _is_digits(shape) else "inception"


def _is_digits(shape: Sequence[int]) -> bool:
    return len(shape) == 3 and shape[0] == 1 and shape[1] == shape[2] and shape[1] in (8, 16)


class FeatureDistance:
    """‖φ(x0_adv) − φ(x0_clean)‖² per sample for the named extractor (see module docstring)."""

    def __init__(self, extractor: str, shape: Sequence[int], device: torch.device | str) -> None:
        check_feature_shape(extractor, shape)
        self.extractor = extractor
        self.embed = _embedding(extractor, str(torch.device(device)))

    def __call__(self, x0_adv: torch.Tensor, x0_clean: torch.Tensor) -> torch.Tensor:
        return (self.embed(x0_adv) - self.embed(x0_clean)).pow(2).sum(1)


def check_distance(distance: str | Distance, feature_extractor: str | None) -> None:
    """ConfigError for an unknown distance or extractor, or an extractor given without
    ``distance="features"``."""
    if callable(distance):
        if feature_extractor is not None:
            raise ConfigError("feature_extractor applies to distance 'features' only, not to a "
                              "user distance", field="feature_extractor")
        return
    if distance not in DISTANCES:
        raise ConfigError(f"unknown distance {distance!r}; allowed: {', '.join(DISTANCES)} or a "
                          "callable D(x0_adv, x0_clean) -> (B,)", field="distance")
    if feature_extractor is not None:
        if distance != "features":
            raise ConfigError(f"feature_extractor={feature_extractor!r} applies to distance "
                              f"'features' only, not {distance!r}", field="feature_extractor")
        check_extractor(feature_extractor)


def check_feature_shape(extractor: str, shape: Sequence[int]) -> None:
    """ConfigError unless ``extractor`` is known and embeds samples of per-sample ``shape``."""
    check_extractor(extractor)
    shape = tuple(shape)
    if extractor == "digits-cnn" and not _is_digits(shape):
        raise ConfigError(f"feature extractor 'digits-cnn' needs 1-channel 8×8 or 16×16 "
                          f"digits, got samples of shape {shape}", field="feature_extractor")
    if extractor == "inception" and not (len(shape) == 3 and shape[0] in (1, 3)):
        raise ConfigError(f"feature extractor 'inception' needs (C, H, W) images with C in "
                          f"1, 3, got samples of shape {shape}", field="feature_extractor")


def check_extractor(name: str) -> None:
    if name not in FEATURE_EXTRACTORS:
        raise ConfigError(f"unknown feature extractor {name!r}; allowed: "
                          f"{', '.join(FEATURE_EXTRACTORS)}", field="feature_extractor")


def make_distance(distance: str | Distance, feature_extractor: str | None,
                  shape: Sequence[int], device: torch.device | str = "cpu") -> Distance:
    """The distance for samples of per-sample ``shape``; a user callable is returned checked
    (its output must be (B,))."""
    check_distance(distance, feature_extractor)
    if callable(distance):
        return _checked_user_distance(distance)
    if distance == "pixel":
        return pixel_distance
    return FeatureDistance(feature_extractor or default_extractor(shape), shape, device)


def _checked_user_distance(fn: Distance) -> Distance:
    def checked(x0_adv: torch.Tensor, x0_clean: torch.Tensor) -> torch.Tensor:
        d = fn(x0_adv, x0_clean)
        if not isinstance(d, torch.Tensor) or d.shape != (len(x0_adv),):
            got = tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
            raise ConfigError(f"user distance {distance_name(fn)} must return a (B,) = "
                              f"({len(x0_adv)},) tensor, got {got}", field="distance")
        return d

    return checked


def distance_key(distance: str | Distance) -> str | None:
    """What keys a distance's numbers besides its name: None for a built-in one, the
    :func:`~dmattack.core.keys.callable_key` of a user callable (its code, constants, closure);
    raises :class:`~dmattack.core.keys.UnkeyableError` for one that cannot be keyed."""
    if isinstance(distance, str):
        return None
    from ..core.keys import callable_key

    return callable_key(distance)


def distance_name(distance: str | Distance) -> str:
    """A name for records: the built-in name, or the callable's ``__name__``."""
    if isinstance(distance, str):
        return distance
    return getattr(distance, "__name__", type(distance).__name__)
