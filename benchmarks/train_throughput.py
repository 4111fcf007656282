"""Training throughput (images/s) of dmattack's loop and of a plain reference loop, in one run.

Jobs: ``dmattack train`` (the library's :func:`dmattack.training.train.train`, run folder included)
with
the methods ``ddpm``, ``robust-rand`` and ``robust-adv``; and ``reference``, the loop a
diffusers user writes: ``UNet2DModel`` of the same preset, ``DDPMScheduler.add_noise``, fp32,
``torch.optim.AdamW`` with its defaults, grad clipping at 1 and diffusers' ``EMAModel``; the
batch is indexed from a CPU tensor and copied each step. Each job trains ``--warmup`` untimed
steps, then ``--steps`` timed ones; every step ends in a device sync in both loops (the loss is
read). Jobs are interleaved over ``--repeats`` rounds and the median is reported, so a busy
machine slows all alike.

Targets (docs/performance.md): on one GPU with ``ddpm-cifar10``, dmattack ``ddpm`` ≥ 2× the
reference and a ``robust-adv`` step ≤ 2.3× a ``ddpm`` step; on CPU, dmattack ``ddpm`` not
slower than the reference.

    python benchmarks/train_throughput.py --preset tiny --device cpu --steps 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import device_name, sync  # benchmarks/common.py

from dmattack.data import InMemoryDataset
from dmattack.models import UNET_PRESETS, build_unet
from dmattack.training.objectives import ObjectiveConfig
from dmattack.training.train import TrainConfig, build_data, train

METHODS = ("ddpm", "robust-rand", "robust-adv")
SHAPES = {"tiny": (1, 8, 8), "ddpm-cifar10": (3, 32, 32), "ddpm-64": (3, 64, 64)}
SYNTHETIC_SAMPLES = 50_000  # CIFAR-10's size, for the GPU presets (random uint8 images)


def make_data(preset: str):
    """The embedded digits for ``tiny``; random images of the preset's size otherwise."""
    if preset == "tiny":
        return build_data(TrainConfig(dataset="digits"))
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (SYNTHETIC_SAMPLES, *SHAPES[preset]), generator=g,
                           dtype=torch.uint8)
    return InMemoryDataset("cifar10", pixels, "image", seed=0)


def dmattack_job(method: str, args: argparse.Namespace, data) -> float:
    """Seconds of ``args.steps`` steps of ``dmattack.training.train.train`` after the warm-up."""
    stamps: dict[int, float] = {}
    cfg = TrainConfig(dataset="digits" if args.preset == "tiny" else "cifar10",
                      preset=args.preset, objective=ObjectiveConfig(method),
                      steps=args.warmup + args.steps, batch_size=args.batch_size,
                      device=args.device, num_preview=0, log_every=10**6,
                      checkpoint_every=10**6, compile=args.compile)
    with tempfile.TemporaryDirectory() as out:
        train(cfg, Path(out) / "run", data=data,
              callback=lambda step, _: stamps.__setitem__(step, time.perf_counter()))
    return stamps[args.warmup + args.steps] - stamps[args.warmup]


def reference_job(args: argparse.Namespace, data) -> float:
    """Seconds of ``args.steps`` steps of the plain diffusers loop after the warm-up."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    device = torch.device(args.device)
    torch.manual_seed(0)
    images = data.tensor()  # float32 in [-1, 1], on CPU
    unet = build_unet(args.preset, images.shape[1], images.shape[2]).unet.to(device).train()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-4)
    ema = EMAModel(unet.parameters(), decay=0.9999)

    def step() -> None:
        x = images[torch.randint(0, len(images), (args.batch_size,))].to(device)
        noise = torch.randn(x.shape, device=device)
        t = torch.randint(0, 1000, (len(x),), device=device)
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(x, noise, t), t).sample,
                                            noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(unet.parameters())
        loss.item()

    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cuda = torch.cuda.is_available()
    ap.add_argument("--preset", default=None, choices=tuple(UNET_PRESETS),
                    help="model preset [default: ddpm-cifar10 on CUDA, tiny on CPU]")
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="[default: 128 for ddpm-cifar10, 64 otherwise]")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per job")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per job")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved rounds (median)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma list of dmattack methods")
    ap.add_argument("--compile", action="store_true", help="torch.compile dmattack's model")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    args.preset = args.preset or ("ddpm-cifar10" if args.device.startswith("cuda") else "tiny")
    args.batch_size = args.batch_size or (128 if args.preset == "ddpm-cifar10" else 64)
    device = torch.device(args.device)
    data = make_data(args.preset)

    jobs: dict[str, Callable[[], float]] = {"reference": lambda: reference_job(args, data)}
    for method in args.methods.split(","):
        jobs[method] = lambda m=method: dmattack_job(m, args, data)
    seconds: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(args.repeats):
        for name, job in jobs.items():
            seconds[name].append(job())
    step_s = {k: statistics.median(v) / args.steps for k, v in seconds.items()}
    rows = [{"job": k, "images_per_s": args.batch_size / s, "step_ms": 1000 * s,
             "speedup_vs_reference": step_s["reference"] / s,
             "step_vs_ddpm": s / step_s["ddpm"] if "ddpm" in step_s else None}
            for k, s in step_s.items()]
    result = {"benchmark": "train_throughput", "device": device_name(device),
              "device_type": device.type,
              "preset": args.preset, "batch_size": args.batch_size, "steps": args.steps,
              "warmup": args.warmup, "repeats": args.repeats, "compile": args.compile,
              "torch": torch.__version__, "rows": rows}
    print(f"training throughput: preset {args.preset}, batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup}, median of {args.repeats}, "
          f"{result['device']}")
    print(f"  {'job':12s} {'images/s':>10s} {'ms/step':>9s} {'× reference':>12s} "
          f"{'step × ddpm':>12s}")
    for r in rows:
        vs_ddpm = "" if r["step_vs_ddpm"] is None else f"{r['step_vs_ddpm']:.2f}"
        print(f"  {r['job']:12s} {r['images_per_s']:10.1f} {r['step_ms']:9.1f} "
              f"{r['speedup_vs_reference']:12.2f} {vs_ddpm:>12s}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
