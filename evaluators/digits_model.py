"""The digits CNN classifier (model, fixed data split, weights loading) behind ``digits-cnn``.

Input: (N, 1, 8, 8) float images in model space [-1, 1] (sklearn value v in 0..16 maps to
v/16*2-1). Features: the 64-D penultimate activation (after ReLU). Logits: 10 classes.
Weights are made by ``python -m evaluators.digits_cnn`` (see that module).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from dmattack.core.checkout import CHECKPOINTS

DEFAULT_WEIGHTS = CHECKPOINTS / "digits_cnn.safetensors"
FEATURE_DIM = 64
HELDOUT_FRACTION = 0.2
SPLIT_SEED = 0


class DigitsCNN(nn.Module):
    """conv(1→32) → conv(32→64) → maxpool → fc(1024→64) → fc(64→10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 8, 8) in [-1, 1] → (N, 64) non-negative penultimate features."""
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 8, 8) in [-1, 1] → (N, 10) logits."""
        return self.fc2(self.features(x))


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed stratified split of sklearn digits: (x_train, y_train, x_heldout, y_heldout).

    Images are (N, 1, 8, 8) float32 in [-1, 1]; 20% held out, ``random_state=0``.
    """
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0 * 2.0 - 1.0)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, digits.target, test_size=HELDOUT_FRACTION, stratify=digits.target,
        random_state=SPLIT_SEED)
    return (torch.from_numpy(x_tr), torch.from_numpy(y_tr).long(),
            torch.from_numpy(x_te), torch.from_numpy(y_te).long())


def accuracy(model: DigitsCNN, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` (N, 1, 8, 8) classified as ``y`` (N,)."""
    with torch.no_grad():
        return int((model(x).argmax(1) == y).sum()) / len(y)


def load_digits_cnn(path: str | Path = DEFAULT_WEIGHTS) -> DigitsCNN:
    """Load weights written by :func:`main` (safetensors only) into an eval-mode model."""
    model = DigitsCNN()
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)
