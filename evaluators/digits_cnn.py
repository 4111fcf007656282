"""Small CNN classifier of sklearn digits, used as the domain feature extractor ``digits-cnn``.

Input: (N, 1, 8, 8) float images in model space [-1, 1] (sklearn value v in 0..16 maps to
v/16*2-1). Features: the 64-D penultimate activation (after ReLU). Logits: 10 classes.

Train and ship the weights with
``python -m evaluators.digits_cnn --out checkpoints/digits_cnn.safetensors``
(also writes ``checkpoints/digits_cnn.json``: accuracy, split, seed, command, sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from dmattack.io import atomic_path, write_json

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "checkpoints" / "digits_cnn.safetensors"
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
        return float((model(x).argmax(1) == y).float().mean())


def train(seed: int = 0, epochs: int = 30, batch_size: int = 64, lr: float = 1e-3) -> DigitsCNN:
    """Train on the fixed training split with Adam; single-threaded for reproducibility."""
    x, y, _, _ = digits_split()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = DigitsCNN()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=gen).split(batch_size):
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_digits_cnn(path: str | Path = DEFAULT_WEIGHTS) -> DigitsCNN:
    """Load weights written by :func:`main` (safetensors only) into an eval-mode model."""
    model = DigitsCNN()
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> None:
    """CLI: train, save the safetensors weights and the JSON metadata beside them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    model = train(seed=args.seed, epochs=args.epochs)
    seconds = time.perf_counter() - start
    _, _, x_te, y_te = digits_split()
    acc = accuracy(model, x_te, y_te)

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    with atomic_path(args.out) as tmp:
        save_file(state, str(tmp))
    meta = {
        "architecture": DigitsCNN.__doc__,
        "feature_dim": FEATURE_DIM,
        "input": "(N, 1, 8, 8) float in [-1, 1] = sklearn digits v/16*2-1",
        "heldout_accuracy": acc,
        "split": f"sklearn train_test_split(test_size={HELDOUT_FRACTION}, stratify=target, "
                 f"random_state={SPLIT_SEED})",
        "seed": args.seed,
        "epochs": args.epochs,
        "train_seconds": round(seconds, 2),
        "torch_version": torch.__version__,
        "command": "python -m evaluators.digits_cnn " + " ".join(sys.argv[1:] if argv is None
                                                               else argv),
        "sha256": sha256_file(args.out),
    }
    write_json(args.out.with_suffix(".json"), meta)
    print(json.dumps({k: meta[k] for k in ("heldout_accuracy", "train_seconds", "sha256")}))


if __name__ == "__main__":
    main()
