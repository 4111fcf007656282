"""Cost of the trajectory attack: wall time against its analytic cost, and peak memory of one
backward pass through the chain with and without per-step checkpointing.

Time. Trajectory PGD-N on a K-step chain (percent 50, spread, checkpointed) is measured end to
end (``TrajectoryPGD.attack``). Its analytic cost, from the same K-step chain timed here at the
same batch without checkpoints — f: forward without gradient; fg: forward recording the autograd
graph (what a checkpointed step runs in the chain forward: grad mode is on, its saved tensors
are dropped); fb: forward with gradient + backward to the input (the recomputation and the
backward):

    analytic = N·(fg + fb) + 3·f

(per iteration: the chain forward, the recomputation of every step and the backward; plus the
clean sample, the evaluation of the last iterate and the returned sample). The ratio
measured/analytic is the overhead of the attack's own work (draws, sign, projection, the
checkpoint machinery); target ≤ 1.2. Step timings are medians over interleaved repeats.

Memory. One forward+backward pass of D through a chain of ``--memory-steps`` steps, in a fresh
subprocess per setting that does nothing else. On CPU: the process's peak resident set size
during the pass (VmHWM of /proc/self/status, reset to the current RSS just before the pass by
writing 5 to /proc/self/clear_refs) minus its resident set size just before it. On
CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before the pass. Also, exactly:
the bytes of the tensors saved for backward during the forward pass (counted by
``torch.autograd.graph.saved_tensors_hooks``; a checkpointed step saves only its inputs).

    python benchmarks/adaptive_cost.py --batch 16 --steps 25 --iterations 5 --memory-steps 100
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys

import torch
from common import timed  # benchmarks/common.py

from dmattack.attacks import attacked_steps
from dmattack.attacks.differentiable import DifferentiableChain, attack_mode, draw_chain_noise
from dmattack.attacks.distances import pixel_distance
from dmattack.attacks.trajectory import TrajectoryPGD
from dmattack.core.seeding import sample_seeds
from dmattack.diffusion.sampling import SamplerConfig
from dmattack.runs.checkpoints import load_run

TARGET = 1.2


def chain_costs(chain: DifferentiableChain, x: torch.Tensor, noise: list[torch.Tensor],
                repeats: int, device: torch.device) -> tuple[float, float, float]:
    """Median seconds of the whole K-step chain from ``x``: forward without grad (f), forward
    recording the graph, output dropped (fg), forward + backward to x without checkpoints (fb)."""
    plain = DifferentiableChain(chain.model, chain.diffusion, chain.sampler, checkpoint=False)

    def fwd() -> None:
        with torch.no_grad():
            plain.run(x, noise)

    def fwd_graph() -> None:
        plain.run(x.detach().requires_grad_(True), noise)

    def fwd_bwd() -> None:
        leaf = x.detach().requires_grad_(True)
        torch.autograd.grad(plain.run(leaf, noise).sum(), leaf)

    fwd(), fwd_graph(), fwd_bwd()  # warm-up
    f, fg, fb = [], [], []
    for _ in range(repeats):
        f.append(timed(fwd, device))
        fg.append(timed(fwd_graph, device))
        fb.append(timed(fwd_bwd, device))
    return statistics.median(f), statistics.median(fg), statistics.median(fb)


def current_rss() -> int:
    """Resident set size of this process now, in bytes (Linux /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak_rss() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss() -> int:
    """Peak resident set size (VmHWM) in bytes. Unlike ``getrusage``'s ru_maxrss, which a
    process inherits from its parent across fork and exec, VmHWM is this process's own."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def memory_child(a: argparse.Namespace) -> None:
    """Print the peak memory (MiB) of one forward+backward pass through the chain."""
    device = torch.device(a.device)
    lm = load_run(a.run, device=device)
    sampler = SamplerConfig("respaced", a.memory_steps)
    chain = DifferentiableChain(lm.model, lm.diffusion, sampler, checkpoint=bool(a.checkpoint))
    seeds = sample_seeds(0, a.batch)
    noise = draw_chain_noise(lm.data_shape, seeds, chain.num_steps, device)
    reference = torch.zeros_like(noise.x_T)  # D's value is irrelevant here, its graph is not
    with attack_mode(lm.model):
        deltas = {k: torch.zeros_like(reference).requires_grad_(True)
                  for k in range(chain.num_steps)}
        # warm-up: one step forward and backward (kernel set-up and allocator pools)
        out = chain.run(noise.x_T, noise.z[:1], stop=1, deltas=deltas)
        torch.autograd.grad(out.sum(), [deltas[0]])
        del out
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        else:
            reset_peak_rss()
            before = current_rss()
        saved = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = chain.run(noise.x_T, noise.z, deltas=deltas)
        torch.autograd.grad(pixel_distance(out, reference).sum(), list(deltas.values()))
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
        else:
            peak = peak_rss()
    print(json.dumps({"peak_mib": (peak - before) / 2**20, "saved_mib": saved[0] / 2**20}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="checkpoints/digits-ddpm")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=25, help="chain length K of the time test")
    p.add_argument("--iterations", type=int, default=5, help="PGD iterations N")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--attack-repeats", type=int, default=3)
    p.add_argument("--memory-steps", type=int, default=100)
    p.add_argument("--memory-batch", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--memory-child", dest="checkpoint", type=int, default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.checkpoint is not None:
        memory_child(a)
        return
    device = torch.device(a.device)
    lm = load_run(a.run, device=device)
    sampler = SamplerConfig("respaced", a.steps)
    seeds = sample_seeds(0, a.batch)
    chain = DifferentiableChain(lm.model, lm.diffusion, sampler)
    K, N = chain.num_steps, a.iterations
    steps = attacked_steps(K, 50, "spread")
    x = torch.randn(a.batch, *lm.data_shape, device=device)
    noise = [torch.randn_like(x) for _ in range(K)]
    times: dict[str, list[float]] = {"f": [], "fg": [], "fb": [], "ckpt": [], "plain": []}
    for _ in range(a.attack_repeats):  # interleaved: a busy machine slows every term alike
        with attack_mode(lm.model):
            f, fg, fb = chain_costs(chain, x, noise, a.repeats, device)
        times["f"].append(f)
        times["fg"].append(fg)
        times["fb"].append(fb)
        for key, ckpt in (("ckpt", True), ("plain", False)):
            atk = TrajectoryPGD(iterations=N, checkpoint=ckpt)
            times[key].append(timed(lambda atk=atk: atk.attack(
                lm.model, lm.diffusion, sampler, lm.data_shape, seeds, steps, device), device))
    med = {k: statistics.median(v) for k, v in times.items()}
    f, fg, fb = med["f"], med["fg"], med["fb"]
    rows = {"trajectory-checkpoint=True": med["ckpt"], "trajectory-checkpoint=False": med["plain"]}
    analytic = N * (fg + fb) + 3 * f
    ratio = rows["trajectory-checkpoint=True"] / analytic
    memory = {}
    for ckpt in (1, 0):
        cmd = [sys.executable, __file__, "--run", a.run, "--batch", str(a.memory_batch),
               "--memory-steps", str(a.memory_steps), "--device", a.device,
               "--threads", str(a.threads), "--memory-child", str(ckpt)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        memory[bool(ckpt)] = json.loads(out.strip().splitlines()[-1])
    print(f"device {device}, batch {a.batch}, {a.threads} thread(s); one K={K} chain: f {f:.2f} s, "
          f"fg {fg:.2f} s, fb {fb:.2f} s")
    print(f"{'what':44s} {'seconds':>9s}")
    print(f"{f'trajectory PGD-{N}, K={K}, checkpointed':44s} "
          f"{rows['trajectory-checkpoint=True']:9.2f}")
    print(f"{f'trajectory PGD-{N}, K={K}, no checkpoint':44s} "
          f"{rows['trajectory-checkpoint=False']:9.2f}")
    print(f"{'analytic N·(fg + fb) + 3·f':44s} {analytic:9.2f}")
    print(f"ratio measured/analytic (checkpointed): {ratio:.2f} (target <= {TARGET}) "
          f"{'OK' if ratio <= TARGET else 'ABOVE TARGET'}")
    mem_how = ("cuda max_memory_allocated" if device.type == "cuda"
               else "VmHWM - RSS before the pass")
    print(f"one backward pass through K={a.memory_steps} steps, batch {a.memory_batch}:")
    print(f"{'':16s} {'peak MiB (' + mem_how + ')':>40s} {'saved for backward MiB':>24s}")
    for ckpt, name in ((True, "checkpointed"), (False, "not checkpointed")):
        print(f"{name:16s} {memory[ckpt]['peak_mib']:40.1f} {memory[ckpt]['saved_mib']:24.2f}")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump({"config": vars(a), "torch": torch.__version__, "step_forward_s": f,
                       "step_forward_graph_s": fg,
                       "step_forward_backward_s": fb, "seconds": rows, "analytic_s": analytic,
                       "ratio": ratio, "target": TARGET, "memory_mib": memory,
                       "memory_method": mem_how}, fh, indent=2)


if __name__ == "__main__":
    main()
