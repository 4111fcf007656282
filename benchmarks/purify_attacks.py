"""Speed-up of the purify attacks (docs/purification.md §3): the previous implementation (one
purifier call per EOT / selection draw; torchattacks' APGD; APGD-DLR on every image) against
the current one (draws stacked into the batch, our APGD port, APGD-DLR only where APGD-CE did
not fool every selection draw), measured in one run on the same images, seeds and purifier.

    python benchmarks/purify_attacks.py --run checkpoints/digits-ddpm --num-samples 16 \\
        --eps 0.25 --attack autoattack-rand-10x4

Prints one JSON object: wall and CPU seconds of each implementation (one thread; CPU seconds
are the steadier figure on a shared machine), the ratios old/new, and robust accuracy
over R evaluation draws of each (mean ± sd over draws, 95% interval over images, majority,
worst), which must agree within the interval: both use the same noise for every draw, so
they differ only by floating-point sums (old: a loop of calls; new: one batched call).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch
import torchattacks
from common import device_name  # benchmarks/common.py
from torch import nn

from dmattack.core.seeding import derive_seed, sample_seeds
from dmattack.purification import PurifiedClassifier, Purifier, load_classifier, load_model
from dmattack.purification import attacks as attacks_mod
from dmattack.purification.attacks import (
    ATTACK_STREAM,
    AttackSettings,
    default_step_size,
    image_generators,
    parse_attack,
    pgd_eot,
    run_purify_attack,
)
from dmattack.purification.classifier import load_labeled_data
from dmattack.purification.results import accuracies

EVAL_STREAM = 1301


class Looped(nn.Module):
    """The classifier without ``advance_generators``: one call per draw (the old way)."""

    def __init__(self, model: nn.Module, gens: Sequence[torch.Generator] | None = None):
        super().__init__()
        self.model, self.gens, self.deterministic = model, gens, model.deterministic

    def forward(self, x, generators=None):
        return self.model(x, self.gens if generators is None else generators)


def old_counts(evaluator, x, y, seeds, draws):
    """The previous selection: one evaluator call per draw."""
    counts = torch.zeros(len(x), dtype=torch.long)
    with torch.no_grad():
        for j in range(draws):
            gens = image_generators(seeds, attacks_mod.SELECT_STREAM, j, x.device)
            counts += (evaluator(x, gens).argmax(1) != y).long().cpu()
    return counts


def old_attack(spec, model, x, y, seeds, settings, batch_seed):
    """The previous run_purify_attack: torchattacks APGD (loop of EOT calls) on every image, or
    PGD-EOT looping over draws; candidates judged one selection draw at a time."""
    eot = spec.eot
    if spec.name == "autoattack-rand":
        gens = image_generators(seeds, ATTACK_STREAM, 0, x.device)
        cands = []
        with torch.random.fork_rng():
            torch.manual_seed(batch_seed % (1 << 31))
            for loss in ("ce", "dlr"):
                apgd = torchattacks.APGD(Looped(model, gens), norm="Linf", eps=settings.eps,
                                         steps=spec.iterations, n_restarts=1, loss=loss,
                                         eot_iter=eot)
                best, _, _, best_adv = apgd.attack_single_run(x, y)
                cands += [best.detach(), best_adv.detach()]
    else:
        gens = image_generators(seeds, ATTACK_STREAM, 0, x.device)
        cands = [pgd_eot(Looped(model), x, y, gens, settings.eps,
                         settings.step_size or default_step_size(settings.eps),
                         spec.iterations, eot, settings.loss)[0]]
    counts = torch.stack([old_counts(model, c, y, seeds, settings.select_draws) for c in cands])
    return torch.stack(cands)[counts.argmax(0), torch.arange(len(x))]


def robust(model, x, x_adv, y, seeds, draws):
    def preds(inp):
        with torch.no_grad():
            return torch.stack([model(inp, image_generators(seeds, EVAL_STREAM, j, x.device))
                                .argmax(1) for j in range(draws)])
    r = accuracies(preds(x), preds(x_adv), y)["robust"]
    return {"mean": round(100 * r["mean"], 2), "sd": round(100 * r["sd"], 2),
            "ci95": [round(100 * v, 1) for v in r["ci95"]],
            "majority": round(100 * r["majority"]["value"], 1),
            "worst": round(100 * r["worst"]["value"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="checkpoints/digits-ddpm")
    ap.add_argument("--num-samples", type=int, default=16)
    ap.add_argument("--eps", type=float, default=0.25)
    ap.add_argument("--attack", default="autoattack-rand-10x4")
    ap.add_argument("--iterations", type=int, default=10, help="PGD iterations")
    ap.add_argument("--eot", type=int, default=4, help="PGD EOT draws")
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--checkpoint-steps", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    loaded = load_model(args.run)
    purifier = Purifier.from_loaded(loaded, t_star=0.1, steps=5,
                                    checkpoint_steps=args.checkpoint_steps)
    model = PurifiedClassifier(purifier, load_classifier("digits-cnn")[0])
    x, y, _ = load_labeled_data("digits", None, args.num_samples)
    seeds = sample_seeds(0, len(x))
    spec = parse_attack(args.attack, args.iterations, args.eot)
    settings = AttackSettings(args.eps, select_draws=args.draws)
    batch_seed = derive_seed(0, ATTACK_STREAM, 0)
    out = {"run": args.run, "attack": spec.label, "eps": args.eps, "n": len(x),
           "device": device_name(torch.device("cpu")), "load_start": open("/proc/loadavg")
           .read().split()[:3]}
    tic, cpu = time.perf_counter(), time.process_time()
    old = old_attack(spec, model, x, y, seeds, settings, batch_seed)
    out["old_s"] = round(time.perf_counter() - tic, 2)
    out["old_cpu_s"] = round(time.process_time() - cpu, 2)
    tic, cpu = time.perf_counter(), time.process_time()
    new, _ = run_purify_attack(spec, model, model, x, y, seeds, settings, batch_seed)
    out["new_s"] = round(time.perf_counter() - tic, 2)
    out["new_cpu_s"] = round(time.process_time() - cpu, 2)
    out["ratio_old_over_new"] = round(out["old_s"] / out["new_s"], 2)
    out["cpu_ratio_old_over_new"] = round(out["old_cpu_s"] / out["new_cpu_s"], 2)
    out["max_abs_diff"] = float((old - new).abs().max())
    out["robust_old"] = robust(model, x, old, y, seeds, args.draws)
    out["robust_new"] = robust(model, x, new, y, seeds, args.draws)
    out["load_end"] = open("/proc/loadavg").read().split()[:3]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
