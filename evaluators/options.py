"""The options of the built-in metrics: config dataclasses (:attr:`evaluators.Metric.config`)
whose fields, declared with :func:`~dmattack.core.settings.setting`, are the keywords of
:func:`evaluators.evaluate` and the command line's metric options.

Besides its fields a config may define (all optional; see docs/architecture.md, "Adding an
objective and a metric as plugins"):

- ``resolved(shape) -> config``: "auto" choices made for samples of per-sample ``shape``
  (``()`` when unknown);
- ``unused() -> {field: why}``: fields that were set but the resolved choice ignores;
- ``identity() -> dict``: what the metric's numbers depend on (weights' sha256, ...), merged
  into :func:`evaluators.scoring_identity` (stores key their points by it);
- ``protocol() -> dict``: what a result records about the options.

A config without ``identity`` / ``protocol`` is recorded by its fields
(``metric_options[name]``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmattack.core.settings import check_settings, setting

FEATURE_EXTRACTORS = ("auto", "inception", "digits-cnn")
MEMORIZATION_SPACES = ("auto", "pixels", "digits-cnn", "inception", "dinov2")


def is_image(shape: tuple[int, ...]) -> bool:
    """Per-sample shape (C, H, W) with C in {1, 3}."""
    return len(shape) == 3 and shape[0] in (1, 3)


def is_digits(shape: tuple[int, ...]) -> bool:
    """Per-sample shape 1×8×8 or 1×16×16 (the embedded digits, scored with digits-cnn)."""
    return len(shape) == 3 and shape[0] == 1 and shape[1] == shape[2] and shape[1] in (8, 16)


def _inception_weights() -> Any:
    return setting(None, "Local Inception weights (torch-fidelity's "
                   "weights-inception-2015-12-05-6726825d.pth) for Inception features "
                   "[default: torch-fidelity's cache copy].")


@dataclass(frozen=True)
class NoOptions:
    """The config of a metric without options of its own."""


@dataclass(frozen=True)
class FeatureOptions:
    """Options of fid, is and kid (one feature pass for the three)."""

    feature_extractor: str = setting(
        "auto", "Feature extractor of the set metrics [default: auto: digits-cnn for 1×8×8 "
        "and 1×16×16 images, else inception].", choices=FEATURE_EXTRACTORS)
    inception_weights: str | None = _inception_weights()

    def __post_init__(self) -> None:
        check_settings(self)

    def resolved(self, shape: tuple[int, ...]) -> FeatureOptions:
        if self.feature_extractor != "auto":
            return self
        pick = "digits-cnn" if is_digits(shape) else "inception"
        return dataclasses.replace(self, feature_extractor=pick)

    def weights(self) -> str | None:
        """The Inception weights file, read only by the inception extractor."""
        return self.inception_weights if self.feature_extractor == "inception" else None

    def unused(self) -> dict[str, str]:
        if self.inception_weights is not None and self.feature_extractor != "inception":
            return {"inception_weights": "Inception weights are read with "
                    f"--feature-extractor inception only (here {self.feature_extractor})"}
        return {}

    def identity(self) -> dict[str, Any]:
        """The extractor and its weights' sha256 (MetricError when they are missing)."""
        from .extractors import resolve_weights, weights_sha256

        path = resolve_weights(self.feature_extractor, self.weights())
        return {"feature_extractor": self.feature_extractor,
                "feature_extractor_weights_sha256": weights_sha256(path)}

    def protocol(self) -> dict[str, Any]:
        return {"feature_extractor": self.feature_extractor}


@dataclass(frozen=True)
class MemorizationOptions:
    """Options of memorization: the feature space of the cosine similarities."""

    space: str = setting(
        "auto", "Feature space of the similarities (dinov2: DINOv2 ViT-B/14 from a local "
        "checkout) [default: auto: digits-cnn for digit images, inception for other images, "
        "pixels for vectors].", choices=MEMORIZATION_SPACES, option="--memorization-space")
    inception_weights: str | None = _inception_weights()
    dinov2_dir: str | None = setting(None, "Local facebookresearch/dinov2 checkout with "
                                     "weights, for the dinov2 space [default: torch-hub's "
                                     "cache copy].")

    def __post_init__(self) -> None:
        check_settings(self)

    def resolved(self, shape: tuple[int, ...]) -> MemorizationOptions:
        if self.space != "auto":
            return self
        pick = ("digits-cnn" if is_digits(shape) else "inception" if is_image(shape)
                else "pixels")
        return dataclasses.replace(self, space=pick)

    def weights(self) -> str | None:
        """What the space loads: Inception weights, a DINOv2 checkout, or None."""
        return {"inception": self.inception_weights, "dinov2": self.dinov2_dir}.get(self.space)

    def unused(self) -> dict[str, str]:
        out = {}
        if self.inception_weights is not None and self.space != "inception":
            out["inception_weights"] = ("Inception weights are read in the inception space "
                                        f"only (here {self.space})")
        if self.dinov2_dir is not None and self.space != "dinov2":
            out["dinov2_dir"] = ("a DINOv2 checkout is read in the dinov2 space only "
                                 f"(--memorization-space dinov2; here {self.space})")
        return out

    def identity(self) -> dict[str, Any]:
        """The space and its weights' sha256 (a DINOv2 checkout: its resolved path)."""
        from .extractors import resolve_weights, weights_sha256

        out: dict[str, Any] = {"memorization_space": self.space}
        if self.space in ("digits-cnn", "inception"):
            path = resolve_weights(self.space, self.weights())
            out["memorization_weights_sha256"] = weights_sha256(path)
        elif self.space == "dinov2":
            out["memorization_weights"] = None if self.dinov2_dir is None else str(
                Path(self.dinov2_dir).resolve())
        return out

    def protocol(self) -> dict[str, Any]:
        return {}  # memorization records its space and files itself (protocol["memorization"])
