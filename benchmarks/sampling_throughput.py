"""Sampling throughput: reverse steps × images per second, clean and with every step attacked
by FGSM or PGD-k, through the library path the CLI uses (``sample_batched`` with per-sample
seeds and the attack hooks of ``make_hook_factory``).

Clean sampling runs under ``torch.no_grad()``; attacked steps take gradients with respect to
the input only (the model's parameters are frozen while sampling). The model has random
weights: the cost does not depend on them. One untimed warm-up pass per job; jobs are
interleaved over ``--repeats`` rounds and the median is reported. The analytic cost of an
attacked step, in clean steps, is FGSM ≈ 4 (clean term, forward + input backward, the step)
and PGD-k ≈ 2k + 2 (docs/method.md §11; docs/reproduce.md §5). The job ``clean-stepnoise`` is clean
sampling with the chain noise drawn one ``randn`` per sample and step (the loop before block
draws, bit-identical output): its time over ``clean`` is the speed-up of block-drawn noise.

    python benchmarks/sampling_throughput.py --preset tiny --device cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import torch
from common import device_name, sync  # benchmarks/common.py

from dmattack.attacks import AttackSpec, make_hook_factory
from dmattack.core.seeding import randn_per_sample, sample_seeds
from dmattack.diffusion import sampling
from dmattack.diffusion.gaussian import GaussianDiffusion
from dmattack.diffusion.sampling import SamplerConfig, SamplingChain, sample_batched
from dmattack.models import PRESETS, build_model

STEPNOISE = "clean-stepnoise"


def step_by_step_draws(shape, gens, count, device, dtype=torch.float32, **_):
    """The chain noise as drawn before block draws: one randn per sample and step."""
    for _ in range(count):
        yield randn_per_sample(shape, gens, device, dtype)


SHAPES = {"tiny": (1, 8, 8), "ddpm-cifar10": (3, 32, 32), "ddpm-64": (3, 64, 64),
          "mlp": (64,), "mlp-small": (64,)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cuda = torch.cuda.is_available()
    ap.add_argument("--preset", default=None, choices=PRESETS,
                    help="[default: ddpm-cifar10 on CUDA, tiny on CPU]")
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    ap.add_argument("--num-samples", type=int, default=None,
                    help="[default: 256 on CUDA, 64 on CPU]")
    ap.add_argument("--batch-size", type=int, default=None, help="[default: --num-samples]")
    ap.add_argument("--sampler-steps", type=int, default=10, help="respaced reverse steps")
    ap.add_argument("--pgd-steps", type=int, default=20)
    ap.add_argument("--loss", default="mean", choices=("mean", "eps", "x0"))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    preset = args.preset or ("ddpm-cifar10" if device.type == "cuda" else "tiny")
    n = args.num_samples or (256 if device.type == "cuda" else 64)
    batch = args.batch_size or n
    shape = SHAPES[preset]
    torch.manual_seed(0)
    model = build_model(preset, shape).to(device).eval()
    diffusion = GaussianDiffusion.from_schedule()
    sampler = SamplerConfig("respaced", args.sampler_steps)
    chain = SamplingChain(diffusion, sampler)
    sd = chain.walk
    specs = {"clean": None, STEPNOISE: None, "fgsm": AttackSpec("fgsm", 100, loss=args.loss),
             f"pgd{args.pgd_steps}": AttackSpec("pgd", 100, loss=args.loss,
                                                pgd_steps=args.pgd_steps)}

    def run(name: str, spec: AttackSpec | None, seeds: list[int]) -> float:
        factory = None if spec is None else make_hook_factory(spec, model, chain, device)
        old_noise = (mock.patch.object(sampling, "randn_steps", step_by_step_draws)
                     if name == STEPNOISE else nullcontext())
        sync(device)
        start = time.perf_counter()
        with torch.no_grad(), old_noise:
            sample_batched(model, diffusion, shape, seeds, batch, sampler, factory, device)
        sync(device)
        return time.perf_counter() - start

    seeds = sample_seeds(0, n)
    for name, spec in specs.items():  # warm-up
        run(name, spec, seeds[:batch])
    seconds: dict[str, list[float]] = {k: [] for k in specs}
    for _ in range(args.repeats):
        for name, spec in specs.items():
            seconds[name].append(run(name, spec, seeds))
    med = {k: statistics.median(v) for k, v in seconds.items()}
    work = n * sd.num_timesteps
    rows = [{"job": k, "step_images_per_s": work / s, "seconds": s,
             "cost_vs_clean": s / med["clean"]} for k, s in med.items()]
    result = {"benchmark": "sampling_throughput", "device": device_name(device),
              "device_type": device.type,
              "preset": preset, "num_samples": n, "batch_size": batch,
              "sampler_steps": sd.num_timesteps, "loss": args.loss, "repeats": args.repeats,
              "torch": torch.__version__, "rows": rows}
    print(f"sampling throughput: preset {preset}, {n} samples in batches of {batch}, "
          f"{sd.num_timesteps} respaced steps (all attacked), loss {args.loss}, median of "
          f"{args.repeats}, {result['device']}")
    print(f"  {'job':15s} {'steps×images/s':>15s} {'seconds':>9s} {'× clean':>8s}")
    for r in rows:
        print(f"  {r['job']:15s} {r['step_images_per_s']:15.1f} {r['seconds']:9.2f} "
              f"{r['cost_vs_clean']:8.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
