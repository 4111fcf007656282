"""Labelled evaluation data of ``dmattack purify`` (docs/method.md §13): the registry entries
(:data:`~dmattack.core.registry.LABELLED_DATA`; built-ins ``digits`` and ``cifar10``) and the
``.safetensors`` file form. Every set gives images (N, C, H, W) float32 in [0, 1] and labels (N,)
int64.

A new labelled set is one registration (a plugin's too; docs/architecture.md)::

    LABELLED_DATA.register("my-set", LabelledSet(load=my_loader, description="..."))

where ``my_loader(data_dir)`` returns ``(images, labels, info)``; ``info`` is recorded in the
result under ``data`` (its ``source`` is the registered name). The results' unit keys hold a
hash of the decoded images and labels, never a name or a path.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..core.errors import ConfigError, InputFileError, first_line
from ..core.hashing import sha256_file
from ..core.registry import LABELLED_DATA, Registry

Labelled = tuple[torch.Tensor, torch.Tensor, dict[str, Any]]
"""``(images (N, C, H, W) in [0, 1], labels (N,) integers, info)``."""
Seen = tuple[bool | None, str]
"""Whether a purifier's training images include the evaluation images, and why we say so."""
LABELLED_FILES = "a .safetensors file with 'images' and 'labels'"
DIGITS_TOTAL = 1797


@dataclass(frozen=True)
class LabelledSet:
    """A registered labelled test set.

    ``load(data_dir)`` returns :data:`Labelled` (images float in [0, 1] or uint8, labels
    integers); ``data_dir`` is the ``--data-dir`` folder for a set with ``data_dir`` (what the
    folder must hold; the set refuses to load without one), else always None (the option is
    ignored). ``description``: one line for the docs and ``dmattack plugins``.
    ``seen_by(dataset, data)``: whether a purifier trained on registered dataset ``dataset``
    with data settings ``data`` (its config.json's ``data``) saw these images, as ``(answer,
    reason)``, or None when it cannot tell (recorded per purifier).
    """

    load: Callable[[Path | None], Labelled]
    description: str
    data_dir: str | None = None
    seen_by: Callable[[str | None, dict[str, Any]], Seen | None] | None = None


class NamesOrFile(tuple):
    """The allowed values of a setting naming a registry entry or a file: the registered names,
    then a phrase saying which files are accepted (shown in ``--help`` and in the one-line
    refusal). ``value in allowed`` is True for a registered name or a value ``is_file`` takes
    for a file path."""

    is_file: Callable[[str], bool]

    def __new__(cls, names: tuple[str, ...], files: str, is_file: Callable[[str], bool]
                ) -> NamesOrFile:
        self = super().__new__(cls, (*names, files))
        self.is_file = is_file
        return self

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and (value in self[:-1] or self.is_file(value))


def names_or_file(registry: Registry[Any], files: str, is_file: Callable[[str], bool]
                  ) -> Callable[[], NamesOrFile]:
    """The ``choices`` of such a setting, looked up when checked (so plugin entries count)."""
    return lambda: NamesOrFile(tuple(registry.names()), files, is_file)


def is_labelled_file(value: str) -> bool:
    """True for a value naming a labelled ``.safetensors`` file (read when loading)."""
    return value.endswith(".safetensors")


def data_choices() -> NamesOrFile:
    """The allowed values of ``--data``: registered labelled sets or a labelled file."""
    return names_or_file(LABELLED_DATA, LABELLED_FILES, is_labelled_file)()


def load_labeled_data(source: str, data_dir: str | os.PathLike | None = None,
                      num_samples: int | None = None) -> Labelled:
    """``(images (N, C, H, W) float32 in [0, 1], labels (N,) int64, description)``: the first
    ``num_samples`` of a registered labelled set (``digits``: the 360 held-out sklearn digits of
    digits-cnn's fixed split, 1×8×8; ``cifar10``: the CIFAR-10 test batch under ``data_dir``,
    10 000 images 3×32×32) or of a ``.safetensors`` file with ``images`` ((N, C, H, W) float
    in [0, 1] or uint8) and ``labels`` ((N,) integers)."""
    if source in LABELLED_DATA:
        x, y, info = _registered(source, data_dir)
    else:
        x, y, info = _safetensors_data(Path(source))
    if num_samples is not None:
        if not 1 <= num_samples <= len(x):
            raise ConfigError(f"num_samples (--num-samples) = {num_samples} is outside "
                              f"1..{len(x)} (the size of {source})", field="num_samples")
        x, y = x[:num_samples], y[:num_samples]
    return x.float().contiguous(), y.long(), {**info, "num_samples": len(x)}


def _registered(name: str, data_dir: str | os.PathLike | None) -> Labelled:
    """Load the registered set ``name`` and check what it returned (a plugin's loader too)."""
    entry: LabelledSet = LABELLED_DATA[name]
    if entry.data_dir is not None and data_dir is None:
        raise ConfigError(f"data {name} needs --data-dir: {entry.data_dir}", field="data_dir")
    x, y, info = entry.load(None if entry.data_dir is None else Path(data_dir).expanduser())
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dim() == 4
            and y.dim() == 1 and len(x) == len(y) and len(x) > 0 and not y.is_floating_point()):
        raise InputFileError(f"labelled data {name} did not give images (N, C, H, W) and "
                             "integer labels (N,) for the same N > 0")
    if x.dtype == torch.uint8:
        x = x.float() / 255
    elif not (x.is_floating_point() and float(x.min()) >= 0 and float(x.max()) <= 1):
        raise InputFileError(f"labelled data {name}: images must be uint8 or floats in [0, 1]")
    return x, y, {"source": name, **{k: v for k, v in info.items() if k != "source"}}


def _digits(data_dir: Path | None) -> Labelled:
    """digits-cnn's held-out split of the sklearn digits, mapped from [−1, 1] to [0, 1]."""
    from evaluators.digits_model import digits_split

    _, _, x, y = digits_split()
    return (x + 1) / 2, y, {"split": "digits-cnn held-out (20%, random_state=0)"}


def _digits_seen(dataset: str | None, data: dict[str, Any]) -> Seen | None:
    if dataset != "digits":
        return None
    if data.get("num_samples") == DIGITS_TOTAL:
        return True, ("the purifier was trained on all 1797 sklearn digits; digits-cnn's "
                      "held-out split (the evaluation images) is among them")
    return None, "the purifier was trained on a subset of the digits; overlap not checked"


def _cifar10_seen(dataset: str | None, data: dict[str, Any]) -> Seen | None:
    if dataset != "cifar10":
        return None
    return False, "CIFAR-10 training reads data_batch_1..5; the evaluation reads test_batch"


def _cifar10_test(data_dir: Path | None) -> Labelled:
    """The CIFAR-10 test batch (10 000 uint8 images 3×32×32) under ``data_dir``."""
    from ..data.images import CIFAR_FOLDER, _ArrayUnpickler

    root = Path(data_dir)
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
    return x, torch.from_numpy(labels), {"path": str(path.resolve())}


def _safetensors_data(path: Path) -> Labelled:
    if not is_labelled_file(str(path)) or not path.is_file():
        allowed = ", ".join(data_choices())
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


LABELLED_DATA.register("digits", LabelledSet(
    load=_digits, description="digits-cnn's 360 held-out sklearn digits (1×8×8)",
    seen_by=_digits_seen))
LABELLED_DATA.register("cifar10", LabelledSet(
    load=_cifar10_test, description="the CIFAR-10 test batch (10 000 images 3×32×32)",
    data_dir="a folder holding 'cifar-10-batches-py'", seen_by=_cifar10_seen))
