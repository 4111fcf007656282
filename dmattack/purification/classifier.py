"""Classifiers for purification: the defended model f(P(x)), the registered classifiers
(:data:`~dmattack.core.registry.CLASSIFIERS`; built-in ``digits-cnn``) and classifier files,
loaded without pickle. Every classifier here takes images in [0, 1] and returns logits.

Classifier sources (:func:`load_classifier`):

* a registered name: ``digits-cnn`` is the shipped digits classifier (its model-space input is
  fed 2x − 1); a plugin registers its own (docs/architecture.md)::

      CLASSIFIERS.register("my-clf", ClassifierEntry(load=my_loader, description="..."))

  ``my_loader()`` returns ``(module, info)``: a module taking (B, C, H, W) images in [0, 1]
  and returning (B, classes) logits, and what to record (``info["name"]`` is the registered
  name; ``info["sha256"]``, which keys the stored units, defaults to a hash of the module's
  tensors).
* ``*.safetensors``: weights of the digits-cnn architecture (1×8×8 inputs, 10 classes), e.g. a
  retrained or adversarially trained digits-cnn; fed 2x − 1 like ``digits-cnn``.
* any other file: a TorchScript archive (``torch.jit.save`` of a scripted or traced model) that
  takes (B, C, H, W) images in [0, 1] and returns (B, classes) logits. Any normalisation belongs
  inside it. TorchScript archives hold code as TorchScript, not Python pickles, so loading one
  runs no Python code; a ``torch.save`` pickle is refused.
"""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..core.errors import ConfigError, InputFileError, first_line
from ..core.hashing import sha256_file
from ..core.registry import CLASSIFIERS
from .labelled import NamesOrFile
from .purifier import Purifier

DIGITS_CNN = "digits-cnn"
CLASSIFIER_FILES = "a TorchScript file taking [0, 1] images or digits-cnn .safetensors weights"


@dataclass(frozen=True)
class ClassifierEntry:
    """A registered classifier: ``load()`` returns ``(module taking (B, C, H, W) images in
    [0, 1] and returning (B, classes) logits, info to record)`` (see the module docstring);
    ``description``: one line for the docs and ``dmattack plugins``."""

    load: Callable[[], tuple[nn.Module, dict[str, Any]]]
    description: str


def is_classifier_file(value: str) -> bool:
    """True for a value naming a file rather than a classifier: an existing file, or a name
    with a suffix or a folder (a missing file is refused, one line, when loading)."""
    path = Path(value)
    return bool(path.suffix) or path.name != value or path.is_file()


def classifier_choices() -> NamesOrFile:
    """The allowed values of ``--classifier``: registered classifiers or a classifier file."""
    return NamesOrFile(tuple(CLASSIFIERS.names()), CLASSIFIER_FILES, is_classifier_file)


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
    """``(classifier taking [0, 1] images, description)`` for a registered name or a file (see
    the module docstring). The classifier is in eval mode with frozen parameters. Raises
    :class:`InputFileError` for a missing, pickled or malformed file."""
    if spec in CLASSIFIERS:
        model, info = _registered(spec)
    else:
        model, info = _from_file(Path(spec), device)
    for p in model.parameters():  # (ScriptModules refuse requires_grad_)
        p.requires_grad_(False)
    return model.to(device).eval(), info


def _registered(name: str) -> tuple[nn.Module, dict[str, Any]]:
    """The registered classifier ``name`` and its record: ``name`` first, then the loader's
    info, with ``sha256`` (the stored units' key) a hash of its tensors if the loader gave none."""
    entry: ClassifierEntry = CLASSIFIERS[name]
    model, info = entry.load()
    if not isinstance(model, nn.Module):
        raise InputFileError(f"classifier {name}: its loader returned {type(model).__name__}, "
                             "not a torch module")
    info = {"name": name, **{k: v for k, v in info.items() if k != "name"}}
    return model, info if "sha256" in info else {**info, "sha256": tensors_sha256(model)}


def tensors_sha256(model: nn.Module) -> str:
    """Hex sha256 of a module's state_dict: each tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _digits_cnn() -> tuple[nn.Module, dict[str, Any]]:
    """The shipped digits-cnn (1×8×8 inputs, 10 classes), fed 2x − 1."""
    from evaluators.digits_model import DEFAULT_WEIGHTS, load_digits_cnn

    info = {"path": str(DEFAULT_WEIGHTS), "sha256": sha256_file(DEFAULT_WEIGHTS),
            "format": "safetensors"}
    return FromUnitInterval(load_digits_cnn()), info


def _from_file(path: Path, device: torch.device | str) -> tuple[nn.Module, dict[str, Any]]:
    """A digits-cnn ``.safetensors`` or TorchScript classifier file and its record."""
    if not path.is_file():
        names = ", ".join(CLASSIFIERS.names())
        raise InputFileError(f"classifier {str(path)!r} is neither a registered classifier "
                             f"({names}) nor an existing file (a TorchScript archive or "
                             "digits-cnn safetensors weights)")
    info = {"name": path.name, "path": str(path.resolve()), "sha256": sha256_file(path)}
    if path.suffix == ".safetensors":
        return _digits_cnn_weights(path), {**info, "format": "safetensors (digits-cnn "
                                                             "architecture)"}
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # torch >= 2.10 flags TorchScript as deprecated
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(path), map_location=device)
        except (RuntimeError, torch.jit.Error, ValueError, OSError) as e:
            from evaluators.inception import torchscript_reason

            raise InputFileError(f"classifier {path}: cannot load the TorchScript archive: "
                                 f"{torchscript_reason(e)}") from None
        return ScriptedClassifier(model, path), {**info, "format": "torchscript"}
    raise InputFileError(f"classifier {path} is not a TorchScript archive or safetensors "
                         "weights (a pickled torch.save file is refused: it can run code "
                         "when loaded); export it with torch.jit.script(model).save(path)")


def _digits_cnn_weights(path: Path) -> nn.Module:
    from evaluators.digits_model import DigitsCNN

    net = DigitsCNN()
    try:
        net.load_state_dict(load_file(str(path)))
    except (SafetensorError, RuntimeError, OSError, ValueError) as e:
        raise InputFileError(f"classifier {path}: not digits-cnn safetensors weights "
                             f"({first_line(e)}); other architectures must be TorchScript"
                             ) from None
    return FromUnitInterval(net)


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


CLASSIFIERS.register(DIGITS_CNN, ClassifierEntry(
    load=_digits_cnn, description="the shipped digits classifier (1×8×8 images, 10 classes)"))
