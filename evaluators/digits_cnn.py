"""Train the digits CNN and ship its weights (``digits-cnn`` feature extractor).

``python -m evaluators.digits_cnn --out checkpoints/digits_cnn.safetensors`` trains on the fixed
split (:func:`evaluators.digits_model.digits_split`), writes the safetensors weights and, beside
them, ``digits_cnn.json`` (held-out accuracy, split, seed, command, sha256). Single-threaded and
seeded, so the file is bitwise reproducible on the same platform and torch version.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from dmattack.core.io import atomic_path, write_json

from .digits_model import (
    DEFAULT_WEIGHTS,
    FEATURE_DIM,
    HELDOUT_FRACTION,
    SPLIT_SEED,
    DigitsCNN,
    accuracy,
    digits_split,
)
from .extractors import weights_sha256


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
        "sha256": weights_sha256(args.out),
    }
    write_json(args.out.with_suffix(".json"), meta)
    print(json.dumps({k: meta[k] for k in ("heldout_accuracy", "train_seconds", "sha256")}))


if __name__ == "__main__":
    main()
