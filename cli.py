"""`dmattack` command line: a thin click layer over the library."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=True)
stdout = Console()

RUNS_ROOT = Path(os.environ.get("DMATTACK_RUNS", "runs"))


def _user_errors() -> tuple[type[BaseException], ...]:
    from evaluators.errors import MetricError

    return (ValueError, MetricError, FileNotFoundError, FloatingPointError)


def friendly_errors(fn: Callable) -> Callable:
    """Turn user-input errors into one line on stderr and exit code 2 (no traceback).
    Set DMATTACK_DEBUG=1 to see the traceback instead."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _user_errors() as e:
            if os.environ.get("DMATTACK_DEBUG"):
                raise
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            click.echo(f"Error: {msg}", err=True)
            sys.exit(2)

    return wrapper


def progress_bar(*extra: str) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        *[TextColumn(f"{{task.fields[{name}]}}") for name in extra],
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class _Rate:
    """Iterations per second over the whole task, for the progress bar."""

    def __init__(self) -> None:
        self.t0, self.n0 = time.time(), None

    def __call__(self, n: int) -> str:
        if self.n0 is None:
            self.n0, self.t0 = n, time.time()
            return ""
        dt = time.time() - self.t0
        return f"{(n - self.n0) / dt:5.1f} it/s" if dt > 0 else ""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dmattack")
def main() -> None:
    """Adversarial training and reverse-chain attacks for diffusion models."""


# ----------------------------------------------------------------------------- train
METHOD_CHOICES = ("ddpm", "robust-adv", "robust-rand", "invariance", "ddpm-ip")


@main.command()
@click.option("--dataset", default="digits", show_default=True, help="Training data.")
@click.option("--data-dir", type=click.Path(), default=None, help="Root of on-disk datasets.")
@click.option("--resolution", type=int, default=None, help="Image side (default: dataset's).")
@click.option("--num-data", type=int, default=None, help="Samples for synthetic vector data.")
@click.option("--method", default="robust-adv", show_default=True,
              help=f"One of {', '.join(METHOD_CHOICES)}.")
@click.option("--preset", default=None, help="Model preset (default: tiny for images, mlp for "
              "vectors).")
@click.option("--corrupt-fraction", type=float, default=0.0, show_default=True,
              help="Fraction p of training samples corrupted.")
@click.option("--corrupt-sigma", type=float, default=0.2, show_default=True,
              help="Noise std of the corruption, in model space [-1, 1].")
@click.option("--corrupt-mode", default="gaussian", show_default=True,
              help="gaussian | outliers (vector data).")
@click.option("--steps", type=int, default=None,
              help="Optimiser steps [default: by preset: tiny 1000, mlp 3000, ddpm-cifar10 800k].")
@click.option("--batch-size", type=int, default=None,
              help="[default: by preset: tiny 64, mlp 256, ddpm-cifar10 128, ddpm-64 64].")
@click.option("--lr", type=float, default=2e-4, show_default=True)
@click.option("--lambda", "lam", type=float, default=0.3, show_default=True,
              help="Regulariser weight λ (METHOD §4).")
@click.option("--lambda-scaling", default="var", show_default=True,
              help="λ_t = λ/σ_δ² (var), λ/σ_δ (std), λ·σ_δ (mul) or λ (const).")
@click.option("--rho", type=float, default=2.0, show_default=True, help="Ray exponent ρ.")
@click.option("--bias", type=float, default=8 / 255, show_default=True, help="Ray floor b.")
@click.option("--ray-base", default="std", show_default=True, help="std | var (METHOD §3).")
@click.option("--xi-range", type=(float, float), default=(1.0, 2.0), show_default=True,
              help="Robust-rand's batch-wise ξ ~ U(a, b).")
@click.option("--fgsm-step", default="std", show_default=True,
              help="FGSM training step: std (r/√3), wong (1.25·r) or a number (× r).")
@click.option("--stop-gradient/--no-stop-gradient", default=False, show_default=True,
              help="Stop-grad on ε_θ(x_t) inside the regulariser.")
@click.option("--invariance-form", default="trades", show_default=True,
              help="trades | madry (Eq. 8 readings).")
@click.option("--ema-decay", type=float, default=0.9999, show_default=True)
@click.option("--variance-type", default="fixed_large", show_default=True,
              help="Sampler variance: fixed_large (β_t) | fixed_small (β̃_t).")
@click.option("--schedule", default="linear", show_default=True, help="linear | cosine.")
@click.option("--timesteps", "num_timesteps", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--checkpoint-every", type=int, default=500, show_default=True)
@click.option("--out", type=click.Path(), default=None,
              help="Run folder [default: runs/<dataset>-<method>-<time>].")
@click.option("--resume", type=click.Path(), default=None,
              help="Continue this run folder (to --steps if given).")
@friendly_errors
def train(**opts: Any) -> None:
    """Train a DDPM or Robust diffusion model; prints the run folder."""
    from dmattack.train import build_data, resume_config
    from dmattack.train import train as train_run

    if opts["resume"]:
        run_dir = Path(opts["resume"])
        cfg = resume_config(run_dir, opts["steps"])
    else:
        cfg = _train_config(opts).resolved()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(opts["out"] or RUNS_ROOT / f"{cfg.dataset}-{cfg.objective.method}-{stamp}")
        if (run_dir / "config.json").exists():
            raise ValueError(f"run folder {run_dir} already holds a run; use --resume {run_dir} "
                             "or another --out")
    cfg.validate()
    data = build_data(cfg)
    console.print(f"[bold]train[/] {cfg.objective.method} on {cfg.dataset} "
                  f"(preset {cfg.preset}, p={cfg.corrupt_fraction}, σ={cfg.corrupt_sigma}), "
                  f"{cfg.steps} steps × batch {cfg.batch_size} → {run_dir}")
    rate = _Rate()
    with progress_bar("loss") as bar:
        task = bar.add_task("train", total=cfg.steps, rate="", loss="")

        def on_step(step: int, stats: dict[str, float]) -> None:
            bar.update(task, completed=step, rate=rate(step), loss=f"loss {stats['loss']:.4f}")

        train_run(cfg, run_dir, resume=bool(opts["resume"]), callback=on_step, data=data)
    stdout.print(str(run_dir))


def _train_config(opts: dict[str, Any]):
    from dmattack.attacks import RayConfig
    from dmattack.objectives import ObjectiveConfig
    from dmattack.train import TrainConfig

    if opts["method"] not in METHOD_CHOICES:
        raise ValueError(f"unknown method {opts['method']!r}; allowed: "
                         f"{', '.join(METHOD_CHOICES)}")
    fgsm_step: Any = opts["fgsm_step"]
    if fgsm_step not in ("std", "wong"):
        try:
            fgsm_step = float(fgsm_step)
        except ValueError:
            raise ValueError(f"--fgsm-step {fgsm_step!r} is invalid; allowed: std, wong or a "
                             "number") from None
    objective = ObjectiveConfig(
        method=opts["method"], lam=opts["lam"], lambda_scaling=opts["lambda_scaling"],
        stop_gradient=opts["stop_gradient"], fgsm_step=fgsm_step,
        invariance_form=opts["invariance_form"],
        ray=RayConfig(rho=opts["rho"], bias=opts["bias"], base=opts["ray_base"],
                      xi_range=tuple(opts["xi_range"])),
    )
    from dmattack.data import DEFAULT_PARAMS as VECTOR_DATASETS

    preset = opts["preset"] or ("mlp" if opts["dataset"] in VECTOR_DATASETS else "tiny")
    return TrainConfig(
        dataset=opts["dataset"], data_dir=opts["data_dir"], resolution=opts["resolution"],
        num_data=opts["num_data"], corrupt_mode=opts["corrupt_mode"],
        corrupt_fraction=opts["corrupt_fraction"], corrupt_sigma=opts["corrupt_sigma"],
        preset=preset, schedule=opts["schedule"], num_timesteps=opts["num_timesteps"],
        variance_type=opts["variance_type"], objective=objective,
        steps=opts["steps"], batch_size=opts["batch_size"], lr=opts["lr"],
        ema_decay=opts["ema_decay"], seed=opts["seed"], device=opts["device"],
        checkpoint_every=opts["checkpoint_every"],
    )


# ----------------------------------------------------------------------------- sample
def _load_model(run: str | None, pipeline: str | None, use_ema: bool, device: str):
    from dmattack.runs import load_run, newest_run
    from dmattack.train import resolve_device

    dev = resolve_device(device)
    if run and pipeline:
        raise ValueError("give either --run or --pipeline, not both")
    if pipeline:
        from dmattack.pipeline import load_pipeline

        return load_pipeline(pipeline, device=dev), dev
    return load_run(run or newest_run(RUNS_ROOT), use_ema=use_ema, device=dev), dev


def sampler_options(fn: Callable) -> Callable:
    fn = click.option("--sampler", default=None,
                      help="ddpm | ddim | respaced [default: by preset].")(fn)
    fn = click.option("--sampler-steps", "--steps", "sampler_steps", type=int, default=None,
                      help="Steps for ddim/respaced [default: by preset].")(fn)
    fn = click.option("--eta", type=float, default=0.0, show_default=True,
                      help="DDIM η.")(fn)
    fn = click.option("--clip-denoised/--no-clip-denoised", default=None,
                      help="Clip x̂_0 to [-1, 1] inside each step [default: off, or the "
                      "pipeline scheduler's clip_sample].")(fn)
    return fn


def model_options(fn: Callable) -> Callable:
    fn = click.option("--run", type=click.Path(), default=None,
                      help="Run folder [default: newest under runs/].")(fn)
    fn = click.option("--pipeline", type=click.Path(), default=None,
                      help="A diffusers DDPM pipeline folder instead of a run.")(fn)
    fn = click.option("--ema/--no-ema", default=True, show_default=True,
                      help="Sample with the EMA weights.")(fn)
    fn = click.option("--device", default="auto", show_default=True)(fn)
    return fn


def make_sampler(name: str | None, steps: int | None, eta: float, clip: bool, loaded):
    from dmattack.attack_eval import default_protocol
    from dmattack.sampling import SamplerConfig

    proto = default_protocol(loaded)
    sampler = SamplerConfig(name or proto.sampler.name,
                            steps if steps is not None else proto.sampler.steps, eta,
                            proto.sampler.clip_denoised if clip is None else clip)
    sampler.validate(loaded.diffusion.num_timesteps)
    return sampler, proto


@main.command("sample")
@model_options
@sampler_options
@click.option("--num-samples", type=int, default=64, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(), default=None,
              help="Output folder [default: <run>/samples/<sampler>-seed<seed>].")
@friendly_errors
def sample_cmd(run, pipeline, ema, device, sampler, sampler_steps, eta, clip_denoised,
               num_samples, batch_size, seed, out) -> None:
    """Sample from a trained run: a PNG grid and the samples as a safetensors file."""
    import torch
    from safetensors.torch import save_file

    from dmattack.io import provenance, write_atomic, write_json
    from dmattack.sampling import sample_batched
    from dmattack.seeding import sample_seeds
    from dmattack.visualize import save_samples_png

    if num_samples <= 0 or batch_size <= 0:
        raise ValueError(f"--num-samples {num_samples} / --batch-size {batch_size}: both must "
                         "be > 0")
    loaded, dev = _load_model(run, pipeline, ema, device)
    sampler_cfg, _ = make_sampler(sampler, sampler_steps, eta, clip_denoised, loaded)
    label = sampler_cfg.describe(loaded.diffusion.num_timesteps)
    folder = Path(out or Path(loaded.source) / "samples" / f"{label}-seed{seed}")
    console.print(f"[bold]sample[/] {num_samples} from {loaded.source} "
                  f"({'EMA' if loaded.ema else 'raw'} weights), sampler {label}, seed {seed}")
    steps = sampler_cfg.num_steps(loaded.diffusion.num_timesteps)
    total = steps * -(-num_samples // batch_size)
    rate = _Rate()
    with progress_bar() as bar, torch.no_grad():
        task = bar.add_task("sample", total=total, rate="")
        done = [0]

        def tick(_: int) -> None:
            done[0] += 1
            bar.update(task, completed=done[0], rate=rate(done[0]))

        x = sample_batched(loaded.model, loaded.diffusion, loaded.data_shape,
                           sample_seeds(seed, num_samples), batch_size, sampler_cfg,
                           device=dev, progress=tick)
    write_atomic(folder / "samples.safetensors",
                 lambda p: save_file({"samples": x.contiguous()}, str(p)))
    save_samples_png(x, folder / "samples.png", title=label)
    write_json(folder / "samples.json", {
        "what": "model-space samples (N, *shape), images in [-1, 1]",
        "num_samples": num_samples, "seed": seed, "sampler": sampler_cfg.__dict__,
        "sampler_label": label, "source": loaded.source, "ema": loaded.ema,
        "num_nonfinite": int((~torch.isfinite(x.flatten(1))).any(1).sum()),
        **provenance(),
    })
    stdout.print(str(folder))


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
    stdout.print(table)


if __name__ == "__main__":
    main()
