"""Seconds per attacked reverse step (FGSM, PGD-20) against the analytic cost of the same run.

Analytic cost, from one forward (no grad) and one forward+backward (gradient with respect to the
input only) of the ε-model measured here at the same batch: PGD-k = k·(fwd+bwd) + 1·fwd (the
clean reference term); FGSM = 1·(fwd+bwd) + 1·fwd. The ratio measured/analytic is the attack's
overhead (random draws, sign, projection); target ≤ 1.15. Measurements are interleaved and the
median over repeats is reported, so a busy machine slows all terms alike.

``--end-to-end`` also times the paired clean/attacked run (``run_attack``, PGD-20 on 50% of the
steps, ``spread``) with the preset's default protocol and a trivial metric.

    python benchmarks/attack_cost.py --preset tiny --batch 128 --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from common import timed  # benchmarks/common.py

from dmattack.attacks import AttackSpec, ChainFGSM, ChainPGD
from dmattack.core.seeding import ATTACK, generators
from dmattack.diffusion.gaussian import GaussianDiffusion
from dmattack.evaluation.attack_eval import default_protocol, run_attack
from dmattack.models import PRESETS, build_model
from dmattack.runs.checkpoints import LoadedModel

DEFAULT_SHAPES = {"tiny": (1, 8, 8), "ddpm-cifar10": (3, 32, 32), "ddpm-64": (3, 64, 64),
                  "mlp": (64,), "mlp-small": (64,)}
TARGET = 1.15


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny", choices=PRESETS)
    ap.add_argument("--shape", type=int, nargs="+", help="per-sample shape (default by preset)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--loss", default="mean", choices=("mean", "eps", "x0"))
    ap.add_argument("--pgd-steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--timestep", type=int, default=500, help="attacked timestep (of 1000)")
    ap.add_argument("--end-to-end", action="store_true",
                    help="also time run_attack with the preset's default protocol (PGD, 50%%)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    shape = tuple(args.shape or DEFAULT_SHAPES[args.preset])
    torch.manual_seed(0)
    model = build_model(args.preset, shape).to(device).eval()
    diffusion = GaussianDiffusion.from_schedule()
    x = torch.randn(args.batch, *shape, device=device)
    t = torch.full((args.batch,), args.timestep, device=device, dtype=torch.long)
    gen = generators(range(args.batch), ATTACK, device)  # per-sample, as in attacked sampling
    fgsm = ChainFGSM(model, diffusion, args.loss, generator=gen)
    pgd = ChainPGD(model, diffusion, args.loss, steps=args.pgd_steps, generator=gen)

    def fwd() -> None:
        with torch.no_grad():
            model(x, t)

    def fwd_bwd() -> None:
        xg = x.detach().requires_grad_(True)
        torch.autograd.grad(model(xg, t).square().sum(), xg)

    jobs = {"fwd": fwd, "fwd+bwd": fwd_bwd, "fgsm": lambda: fgsm(x, t), "pgd": lambda: pgd(x, t)}
    for job in jobs.values():  # warm-up
        job()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(args.repeats):
        for name, job in jobs.items():
            times[name].append(timed(job, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    analytic = {"fgsm": med["fwd+bwd"] + med["fwd"],
                "pgd": args.pgd_steps * med["fwd+bwd"] + med["fwd"]}

    print(f"preset {args.preset} {shape}, batch {args.batch}, device {device}, "
          f"loss {args.loss}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"  fwd {med['fwd']:.4f} s   fwd+bwd {med['fwd+bwd']:.4f} s")
    for name, label in (("fgsm", "FGSM"), ("pgd", f"PGD-{args.pgd_steps}")):
        ratio = med[name] / analytic[name]
        verdict = "ok" if ratio <= TARGET else f"over the {TARGET} target"
        print(f"  {label:7s} {med[name]:.4f} s/step   analytic {analytic[name]:.4f} s   "
              f"ratio {ratio:.3f} ({verdict})")

    if args.end_to_end:
        loaded = LoadedModel(model, diffusion, shape, f"benchmark:{args.preset}",
                             config={"model": {"preset": args.preset}})
        proto = default_protocol(loaded)
        spec = AttackSpec("pgd", 50, loss=args.loss, pgd_steps=args.pgd_steps)
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            result = run_attack(loaded, spec, num_samples=proto.num_samples, seed=0,
                                sampler=proto.sampler, batch_size=proto.batch_size,
                                metric_fn=lambda s: {"std": float(s.std())}, device=device,
                                out_dir=out)
            total = time.perf_counter() - start
        print(f"  end-to-end {spec.describe()} with the default protocol ({proto.num_samples} "
              f"samples, {proto.sampler.describe(diffusion.num_timesteps)}): {total:.1f} s "
              f"(clean {result['seconds']['clean']:.1f} s, attacked "
              f"{result['seconds']['attacked']:.1f} s)")


if __name__ == "__main__":
    main()
