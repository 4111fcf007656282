"""Cost of a full-gradient purification: FLOPs of one network evaluation and the memory the
backward pass keeps, with and without per-step checkpointing (device independent: counted with
torch's FLOP counter and saved-tensor hooks, so a CPU run sizes a GPU protocol).

    python benchmarks/purification_cost.py --preset ddpm-cifar10 --steps 4

Prints one JSON object: GFLOPs per network call (forward), bytes saved for backward per image
by a K-step purification with and without checkpointing, and the ratio. Random weights (cost
does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from dmattack.diffusion.gaussian import GaussianDiffusion
from dmattack.models import build_model
from dmattack.purification import Purifier

SHAPES = {"ddpm-cifar10": (3, 32, 32), "ddpm-64": (3, 64, 64), "tiny": (1, 8, 8)}


def saved_bytes(purifier: Purifier, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of P(x) (each storage once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        purifier(x.clone().requires_grad_(True))
    return sum(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ddpm-cifar10", choices=tuple(SHAPES))
    parser.add_argument("--steps", type=int, default=4, help="reverse steps K")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    shape = SHAPES[args.preset]
    model = build_model(args.preset, shape).eval()
    diffusion = GaussianDiffusion.from_schedule("linear", 1000)
    x = torch.rand(args.batch, *shape)
    t = torch.zeros(args.batch, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(2 * x - 1, t)
    gflops = counter.get_total_flops() / args.batch / 1e9
    tic = time.perf_counter()
    out = {"preset": args.preset, "data_shape": shape, "reverse_steps": args.steps,
           "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
           "gflops_per_call_per_image": round(gflops, 3)}
    for ckpt in (True, False):
        p = Purifier(model, diffusion, shape, t_star=0.1, steps=args.steps, gradient="full",
                     checkpoint_steps=ckpt)
        out[f"saved_MiB_per_image_{'checkpointed' if ckpt else 'plain'}"] = round(
            saved_bytes(p, x) / args.batch / 2**20, 3)
    out["memory_ratio_plain_over_checkpointed"] = round(
        out["saved_MiB_per_image_plain"] / out["saved_MiB_per_image_checkpointed"], 1)
    out["seconds"] = round(time.perf_counter() - tic, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
