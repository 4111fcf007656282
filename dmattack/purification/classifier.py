"""Classifiers for purification: the defended model f(P(x)), classifier loading (no pickle) and
the labelled evaluation data. Every classifier here takes images in [0, 1] and returns logits.

Classifier sources (:func:`load_classifier`):

* ``digits-cnn``: the shipped digits classifier (its model-space input is fed 2x − 1).
* ``*.safetensors``: weights of the digits-cnn architecture (1×8×8 inputs, 10 classes), e.g. a
  retrained or adversarially trained digits-cnn; fed 2x − 1 like ``digits-cnn``.
* any other file: a TorchScript archive (``torch.jit.save`` of a scripted or traced model) that
  takes (B, C, H, W) images in [0, 1] and returns (B, classes) logits. Any normalisation belongs
  inside it. TorchScript archives hold code as TorchScript, not Python pickles, so loading one
  runs no Python code; a ``torch.save`` pickle is refused.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..core.errors import ConfigError, InputFileError, first_line
from ..runs.checkpoints import sha256_file
from .purifier import Purifier

DIGITS_CNN = "digits-cnn"
DATA_SOURCES = ("digits", "cifar10")


class PurifiedClassifier(nn.Module):
    """f(P(x)): (B, *shape) images in [0, 1] → (B, classes) logits.

    ``purifier`` None is the undefended classifier. Stock torchattacks attacks (PGD, EOTPGD,
    APGD, AutoAttack) accept it as their model: it has parameters (for the device), takes [0, 1]
    inputs and is stochastic when the purifier draws fresh noise, so their EOT loops average
    over purifications.
    """

    def __init__(self, purifier: Purifier | None, classifier: nn.Module) -> None:
        super().__init__()
        self.purifier = purifier
        self.classifier = classifier

    @property
    def deterministic(self) -> bool:
        return self.purifier is None or self.purifier.deterministic

    def advance_generators(self, generators) -> None:
        """Draw from each generator exactly the noise one call ``self(x, generators)`` draws
        (so the EOT draws can be stacked: :mod:`dmattack.purification.draws`)."""
        p = self.purifier
        if p is not None and p.n > 0:
            like = torch.empty(0, device=generators[0].device if generators else "cpu")
            p._noise(len(generators), like, generators)  # (the purifier's own draw)

    def forward(self, x: torch.Tensor, generators=None) -> torch.Tensor:
        """``generators`` (one per sample) make the purification reproducible."""
        if self.purifier is not None:
            x = self.purifier(x, generators)
        return self.classifier(x)


class FromUnitInterval(nn.Module):
    """A model-space classifier (inputs in [−1, 1]) fed images in [0, 1] as 2x − 1."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(2 * x - 1)


def _is_torchscript(path: Path) -> bool:
    """A zip whose members include TorchScript code (``<archive>/code/``) and constants."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def load_classifier(spec: str, device: torch.device | str = "cpu"
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """``(classifier taking [0, 1] images, description)`` for ``digits-cnn`` or a file (see the
    module docstring). The classifier is in eval mode with frozen parameters. Raises
    :class:`InputFileError` for a missing, pickled or malformed file."""
    from evaluators.digits_model import DEFAULT_WEIGHTS, DigitsCNN, load_digits_cnn

    if spec == DIGITS_CNN:
        net = load_digits_cnn()
        info = {"name": DIGITS_CNN, "path": str(DEFAULT_WEIGHTS),
                "sha256": sha256_file(DEFAULT_WEIGHTS), "format": "safetensors"}
        return FromUnitInterval(net).to(device).eval(), info
    path = Path(spec)
    if not path.is_file():
        raise InputFileError(f"classifier {spec!r} is neither {DIGITS_CNN!r} nor an existing "
                             "file (a TorchScript archive or digits-cnn safetensors weights)")
    info = {"name": path.name, "path": str(path.resolve()), "sha256": sha256_file(path)}
    if path.suffix == ".safetensors":
        net = DigitsCNN()
        try:
            net.load_state_dict(load_file(str(path)))
        except (SafetensorError, RuntimeError, OSError, ValueError) as e:
            raise InputFileError(f"classifier {path}: not digits-cnn safetensors weights "
                                 f"({first_line(e)}); other architectures must be TorchScript"
                                 ) from None
        model: nn.Module = FromUnitInterval(net)
        info["format"] = "safetensors (digits-cnn architecture)"
    elif _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # torch >= 2.10 flags TorchScript as deprecated
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(path), map_location=device)
        except (RuntimeError, torch.jit.Error, ValueError, OSError) as e:
            from evaluators.inception import torchscript_reason

            raise InputFileError(f"classifier {path}: cannot load the TorchScript archive: "
                                 f"{torchscript_reason(e)}") from None
        model = ScriptedClassifier(model, path)
        info["format"] = "torchscript"
    else:
        raise InputFileError(f"classifier {path} is not a TorchScript archive or safetensors "
                             "weights (a pickled torch.save file is refused: it can run code "
                             "when loaded); export it with torch.jit.script(model).save(path)")
    for p in model.parameters():  # (ScriptModules refuse requires_grad_)
        p.requires_grad_(False)
    return model.to(device).eval(), info


class ScriptedClassifier(nn.Module):
    """A TorchScript classifier whose failure on any batch is one line naming the file and the
    exception its code raised (TorchScript's own message is a many-line traceback)."""

    def __init__(self, scripted: nn.Module, path: Path) -> None:
        super().__init__()
        self.scripted, self.path = scripted, path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.scripted(x)
        except torch.jit.Error as e:
            from evaluators.inception import torchscript_reason

            raise ClassifierFailure(self.path, tuple(x.shape), torchscript_reason(e)) from None


class ClassifierFailure(InputFileError):
    """A TorchScript classifier's code raised on a batch: ``reason`` is its exception's line."""

    def __init__(self, path: Path, shape: tuple[int, ...], reason: str) -> None:
        super().__init__(f"classifier {path} failed on a batch of shape {shape}: {reason}")
        self.reason = reason


def check_classifier(classifier: nn.Module, data_shape: tuple[int, ...], what: str,
                     device: torch.device | str = "cpu") -> int:
    """The number of classes of ``classifier`` on (1, *data_shape) inputs; a one-line
    :class:`ConfigError` when it refuses that shape or returns something other than logits."""
    try:
        with torch.no_grad():
            out = classifier(torch.full((2, *data_shape), 0.5, device=device))
    except (RuntimeError, torch.jit.Error, ValueError, IndexError, TypeError) as e:
        from evaluators.inception import torchscript_reason  # (TorchScript's message: many lines)

        reason = e.reason if isinstance(e, ClassifierFailure) else torchscript_reason(e)
        raise ConfigError(f"classifier {what} does not accept images of shape {data_shape} "
                          f"(the purifier's data): {reason}",
                          field="classifier") from None
    if not (isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == 2
            and out.shape[1] >= 2):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"classifier {what} returns {shape} for a batch of 2 images of shape "
                          f"{data_shape}; expected (2, classes) logits", field="classifier")
    return int(out.shape[1])


# ----------------------------------------------------------------------------- labelled data
def load_labeled_data(source: str, data_dir: str | os.PathLike | None = None,
                      num_samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(images (N, C, H, W) float32 in [0, 1], labels (N,) int64, description)``: the first
    ``num_samples`` of

    * ``digits``: the 360 held-out sklearn digits of digits-cnn's fixed split (1×8×8);
    * ``cifar10``: the CIFAR-10 test batch under ``data_dir`` (torchvision's
      ``cifar-10-batches-py``; 10 000 images 3×32×32);
    * a ``.safetensors`` file with ``images`` ((N, C, H, W) float in [0, 1] or uint8) and
      ``labels`` ((N,) integers).
    """
    if source == "digits":
        from evaluators.digits_model import digits_split

        _, _, x, y = digits_split()
        x = (x + 1) / 2
        info = {"source": "digits", "split": "digits-cnn held-out (20%, random_state=0)"}
    elif source == "cifar10":
        x, y, info = _cifar10_test(data_dir)
    else:
        x, y, info = _safetensors_data(Path(source))
    if num_samples is not None:
        if not 1 <= num_samples <= len(x):
            raise ConfigError(f"num_samples (--num-samples) = {num_samples} is outside "
                              f"1..{len(x)} (the size of {source})", field="num_samples")
        x, y = x[:num_samples], y[:num_samples]
    return x.float().contiguous(), y.long(), {**info, "num_samples": len(x)}


def _cifar10_test(data_dir: str | os.PathLike | None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    from ..data.images import CIFAR_FOLDER, _ArrayUnpickler

    if data_dir is None:
        raise ConfigError(f"data cifar10 needs --data-dir: a folder holding '{CIFAR_FOLDER}'",
                          field="data_dir")
    root = Path(data_dir).expanduser()
    path = (root / CIFAR_FOLDER if (root / CIFAR_FOLDER).is_dir() else root) / "test_batch"
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="latin1").load()
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise InputFileError(f"cannot read the CIFAR-10 test batch {path}: {first_line(e)}"
                             ) from None
    x = torch.from_numpy(data).float() / 255
    return x, torch.from_numpy(labels), {"source": "cifar10", "path": str(path.resolve())}


def _safetensors_data(path: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    allowed = "digits, cifar10 or a .safetensors file with 'images' and 'labels'"
    if path.suffix != ".safetensors" or not path.is_file():
        raise ConfigError(f"data (--data) = {str(path)!r} is invalid; allowed: {allowed}",
                          field="data")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise InputFileError(f"cannot read {path}: {first_line(e)}") from None
    x, y = tensors.get("images"), tensors.get("labels")
    if x is None or y is None or x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
        raise InputFileError(f"{path} must hold 'images' (N, C, H, W) and 'labels' (N,)")
    if x.dtype == torch.uint8:
        x = x.float() / 255
    elif not (x.is_floating_point() and float(x.min()) >= 0 and float(x.max()) <= 1):
        raise InputFileError(f"{path}: 'images' must be uint8 or floats in [0, 1]")
    return x, y.long(), {"source": str(path.resolve()), "sha256": sha256_file(path)}
