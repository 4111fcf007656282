"""Per-step attacks against the adaptive attacks on the shipped digits U-Nets: paired damage.

For each run folder, the same seeds, the same attacked steps (``--percent`` of the respaced
chain, window ``spread``) and the same budgets ε_s = √β̃_s, this measures how far each attack
moves the final sample from the clean sample with the same seeds:

* pixel deviation: per-sample mean of (x0_adv − x0_clean)² (model space [-1, 1]); mean and
  median over samples;
* class change: share of samples whose digits-cnn class differs from the clean sample's.

Attacks: per-step PGD-k with the ``mean`` loss and with the ``eps`` loss, the random-sign
control, TrajectoryPGD (pixel D, k iterations) and LookaheadPGD (pixel D, ``--eot`` draws,
``--horizon`` steps, k iterations), all through ``AttackPlan.sample`` (what ``run_attack`` runs).
Writes a JSON record (config, seeds, versions, numbers, seconds) and prints a table.

    python benchmarks/adaptive_vs_perstep.py --samples 64 --out adaptive_vs_perstep.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from dmattack.attacks import AttackPlan, AttackSpec
from dmattack.attacks.lookahead import LookaheadPGD
from dmattack.attacks.trajectory import TrajectoryPGD
from dmattack.core.seeding import sample_seeds
from dmattack.diffusion.sampling import SamplerConfig, sample_batched
from dmattack.runs.checkpoints import load_run
from evaluators.digits_model import DEFAULT_WEIGHTS, load_digits_cnn

RUNS = ("checkpoints/digits-ddpm", "checkpoints/digits-robust-adv")


def paired(x: torch.Tensor, clean: torch.Tensor, classify) -> dict[str, float]:
    dev = (x - clean).flatten(1).pow(2).mean(1)
    changed = (classify(x) != classify(clean)).float().mean()
    return {"pixel_mean": float(dev.mean()), "pixel_median": float(dev.median()),
            "class_changed": float(changed), "finite": int(torch.isfinite(dev).sum())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default=",".join(RUNS))
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=25, help="respaced sampler steps")
    p.add_argument("--percent", type=float, default=50)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--eot", type=int, default=4)
    p.add_argument("--horizon", default="5")
    p.add_argument("--lookahead-iterations", type=int, default=None,
                   help="PGD iterations of the look-ahead attack [default: --iterations]")
    p.add_argument("--methods", default="pgd-mean,pgd-eps,random,trajectory,lookahead")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    horizon = a.horizon if a.horizon == "end" else int(a.horizon)
    sampler = SamplerConfig("respaced", a.steps)
    seeds = sample_seeds(a.seed, a.samples)
    cnn = load_digits_cnn(DEFAULT_WEIGHTS)

    def classify(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return cnn(x).argmax(1)

    plans = {
        "pgd-mean": AttackPlan.of(AttackSpec("pgd", a.percent, loss="mean",
                                             pgd_steps=a.iterations)),
        "pgd-eps": AttackPlan.of(AttackSpec("pgd", a.percent, loss="eps",
                                            pgd_steps=a.iterations)),
        "random": AttackPlan.of(AttackSpec("random", a.percent)),
        "trajectory": AttackPlan(TrajectoryPGD(iterations=a.iterations), a.percent),
        "lookahead": AttackPlan(LookaheadPGD(eot=a.eot, horizon=horizon,
                                             iterations=a.lookahead_iterations or a.iterations),
                                a.percent),
    }
    methods = a.methods.split(",")
    record = {"config": vars(a), "sampler": sampler.describe(1000), "num_seeds": len(seeds),
              "first_seed": seeds[0], "torch": torch.__version__,
              "python": platform.python_version(), "measured": "paired per-sample damage "
              "between clean and attacked samples with the same seeds", "runs": {}}
    for run in a.runs.split(","):
        lm = load_run(run)
        t0 = time.perf_counter()
        with torch.no_grad():
            clean = sample_batched(lm.model, lm.diffusion, lm.data_shape, seeds, a.batch, sampler)
        rows = {"clean": {"seconds": time.perf_counter() - t0}}
        for m in methods:
            t0 = time.perf_counter()
            plan = plans[m]
            with torch.no_grad():
                x = plan.sample(lm.model, lm.diffusion, lm.data_shape, seeds, a.batch, sampler)
            rows[m] = {**paired(x, clean, classify), "seconds": time.perf_counter() - t0,
                       "label": plan.label, "settings": plan.attack_settings(lm.model, None)}
            print(f"{run:32s} {m:11s} pixel mean {rows[m]['pixel_mean']:.4f} median "
                  f"{rows[m]['pixel_median']:.4f} class changed {rows[m]['class_changed']:.3f}"
                  f"  ({rows[m]['seconds']:.0f} s)", flush=True)
        record["runs"][run] = rows
    if a.out:
        with open(a.out, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
