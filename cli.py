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
        except OSError as e:  # a storage failure anywhere (issue 15): one line, exit 2
            from dmattack.oserrors import output_error

            if (one_line := output_error(e)) is None or os.environ.get("DMATTACK_DEBUG"):
                raise
            click.echo(f"Error: {one_line}", err=True)
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


class _OneLineUsage:
    """Usage errors (bad option values) as one ``Error: ...`` line, without the usage block."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as e:
            e.ctx = None
            raise


class _Command(_OneLineUsage, click.Command):
    pass


class _Group(_OneLineUsage, click.Group):
    command_class = _Command


# Upper bounds keep a typo from hanging a machine for days; all are far above real use.
COUNT = click.IntRange(1, 10_000_000)
INDEX = click.IntRange(0, 2**40)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dmattack")
def main() -> None:
    """Adversarial training and reverse-chain attacks for diffusion models."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")


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
              help="Optimiser steps [default: by preset: tiny 800, mlp 3000, ddpm-cifar10 800k].")
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
@click.option("--fgsm-cost", default="discrepancy", show_default=True,
              help="Cost the training FGSM ascends: discrepancy (Eq. 6) | equivariance.")
@click.option("--ip-gamma", type=float, default=0.1, show_default=True,
              help="DDPM-IP input-perturbation strength γ.")
@click.option("--dropout", type=float, default=None,
              help="Dropout [default: the preset's, 0.1 for ddpm-cifar10 / ddpm-64].")
@click.option("--num-workers", type=int, default=0, show_default=True,
              help="DataLoader workers for on-disk image data.")
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
@click.option("--grad-accum", type=int, default=None,
              help="Micro-batches per optimiser step (per process) [default: 1].")
@click.option("--compile/--no-compile", "compile_model", default=None,
              help="torch.compile the model: slower start, faster steps [default: off].")
@click.option("--channels-last/--no-channels-last", default=None,
              help="Channels-last U-Net memory layout [default: on for CUDA].")
@click.option("--nan-policy", type=click.Choice(["stop", "skip"]), default=None,
              help="Non-finite loss or gradient: stop (default; the last good checkpoint is "
              "kept) or skip that optimiser step (counted in log.jsonl).")
@click.option("--tensorboard/--no-tensorboard", default=None,
              help="TensorBoard events in <run>/tb/ when tensorboard is installed [default: on].")
@click.option("--out", type=click.Path(), default=None,
              help="Run folder [default: runs/<dataset>-<method>-<time>].")
@click.option("--resume", type=click.Path(), default=None,
              help="Continue this run folder (to --steps if given).")
@friendly_errors
def train(**opts: Any) -> None:
    """Train a DDPM or Robust diffusion model; prints the run folder.

    Several GPUs: torchrun --nproc-per-node N -- $(which dmattack) train ... (docs/performance.md).
    """
    from dmattack import distributed
    from dmattack.io import check_writable
    from dmattack.train import build_data, resume_config
    from dmattack.train import train as train_run

    if opts["resume"]:
        run_dir = Path(opts["resume"])
        cfg = resume_config(run_dir, opts["steps"], nan_policy=opts["nan_policy"],
                            grad_accum=opts["grad_accum"], compile=opts["compile_model"],
                            channels_last=opts["channels_last"], tensorboard=opts["tensorboard"])
    else:
        cfg = _train_config(opts).resolved()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(opts["out"] or RUNS_ROOT / f"{cfg.dataset}-{cfg.objective.method}-{stamp}")
        if (run_dir / "config.json").exists():
            raise ValueError(f"run folder {run_dir} already holds a run; use --resume {run_dir} "
                             "or another --out")
    cfg.validate()
    _join_torchrun(cfg.device)
    run_dir = Path(distributed.broadcast_object(str(run_dir)))  # rank 0's time stamp
    data = build_data(cfg)
    if distributed.is_main():
        check_writable(run_dir)
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
        fgsm_cost=opts["fgsm_cost"], ip_gamma=opts["ip_gamma"],
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
        preset=preset, dropout=opts["dropout"], num_workers=opts["num_workers"],
        schedule=opts["schedule"], num_timesteps=opts["num_timesteps"],
        variance_type=opts["variance_type"], objective=objective,
        steps=opts["steps"], batch_size=opts["batch_size"], lr=opts["lr"],
        ema_decay=opts["ema_decay"], seed=opts["seed"], device=opts["device"],
        nan_policy=opts["nan_policy"] or "stop",
        checkpoint_every=opts["checkpoint_every"],
        grad_accum=1 if opts["grad_accum"] is None else opts["grad_accum"],
        compile=bool(opts["compile_model"]), channels_last=opts["channels_last"],
        tensorboard=opts["tensorboard"] is not False,
    )


# ----------------------------------------------------------------------------- sample
def _join_torchrun(device: str):
    """This process's torch device. Under torchrun it also joins the process group (one GPU
    per process) and silences the console of ranks other than 0, which report and write."""
    from dmattack import distributed
    from dmattack.train import resolve_device

    dev = distributed.init(resolve_device(device))
    if not distributed.is_main():
        console.quiet = stdout.quiet = True
    return dev


def _load_model(run: str | None, pipeline: str | None, use_ema: bool, device: str):
    from dmattack.runs import load_run, newest_run

    dev = _join_torchrun(device)
    if run and pipeline:
        raise ValueError("give either --run or --pipeline, not both")
    if pipeline:
        from dmattack.pipeline import load_pipeline

        return load_pipeline(pipeline, device=dev), dev
    return load_run(run or newest_run(RUNS_ROOT), use_ema=use_ema, device=dev), dev


def option_group(*options: Callable) -> Callable[[Callable], Callable]:
    """A decorator applying click options so that --help lists them in the given order."""

    def apply(fn: Callable) -> Callable:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


sampler_options = option_group(
    click.option("--sampler", default=None,
                 help="ddpm | ddim | respaced [default: by preset]."),
    click.option("--sampler-steps", "--steps", "sampler_steps", type=int, default=None,
                 help="Steps for ddim/respaced [default: by preset]."),
    click.option("--eta", type=float, default=0.0, show_default=True,
                 help="DDIM η."),
    click.option("--clip-denoised/--no-clip-denoised", default=None,
                 help="Clip x̂_0 to [-1, 1] inside each step [default: off, or the "
                 "pipeline scheduler's clip_sample]."),
)


model_options = option_group(
    click.option("--run", type=click.Path(), default=None,
                 help="Run folder [default: newest under runs/]."),
    click.option("--pipeline", type=click.Path(), default=None,
                 help="A diffusers DDPM pipeline folder instead of a run."),
    click.option("--ema/--no-ema", default=True, show_default=True,
                 help="Sample with the EMA weights."),
    click.option("--device", default="auto", show_default=True),
)


DEFAULT_STRIDED_STEPS = 100


def make_sampler(name: str | None, steps: int | None, eta: float, clip: bool, loaded):
    from dmattack.attack_eval import default_protocol
    from dmattack.sampling import SamplerConfig

    proto = default_protocol(loaded)
    name = name or proto.sampler.name
    if steps is None and name != "ddpm":  # the preset's length, or METHOD §8's 100 DDIM steps
        steps = proto.sampler.steps or DEFAULT_STRIDED_STEPS
    sampler = SamplerConfig(name, steps, eta,
                            proto.sampler.clip_denoised if clip is None else clip)
    sampler.validate(loaded.diffusion.num_timesteps)
    return sampler, proto


@main.command("sample")
@model_options
@sampler_options
@click.option("--num-samples", type=COUNT, default=64, show_default=True)
@click.option("--batch-size", type=COUNT, default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--first-sample", type=INDEX, default=0, show_default=True,
              help="Index of the first sample (for sharding across processes/GPUs).")
@click.option("--out", type=click.Path(), default=None,
              help="Output folder [default: <run>/samples/<sampler>-seed<seed>].")
@friendly_errors
def sample_cmd(run, pipeline, ema, device, sampler, sampler_steps, eta, clip_denoised,
               num_samples, batch_size, seed, first_sample, out) -> None:
    """Sample from a trained run: a PNG grid and the samples as a safetensors file.

    Several GPUs: torchrun --nproc-per-node N -- $(which dmattack) sample ... splits the samples.
    """
    import torch
    from safetensors.torch import save_file

    from dmattack import distributed
    from dmattack.io import provenance, write_atomic, write_json
    from dmattack.sampling import sample_sharded
    from dmattack.seeding import sample_seeds
    from dmattack.visualize import save_samples_png

    loaded, dev = _load_model(run, pipeline, ema, device)
    sampler_cfg, _ = make_sampler(sampler, sampler_steps, eta, clip_denoised, loaded)
    label = sampler_cfg.describe(loaded.diffusion.num_timesteps)
    shard = f"-from{first_sample}" if first_sample else ""
    folder = Path(out or Path(loaded.source) / "samples" / f"{label}-seed{seed}{shard}")
    console.print(f"[bold]sample[/] {num_samples} from {loaded.source} "
                  f"({'EMA' if loaded.ema else 'raw'} weights), sampler {label}, seed {seed}")
    steps = sampler_cfg.num_steps(loaded.diffusion.num_timesteps)
    seeds = sample_seeds(seed, num_samples, start=first_sample)
    total = steps * -(-len(distributed.shard(seeds, batch_size)) // batch_size)  # this rank's
    rate = _Rate()
    with progress_bar() as bar, torch.no_grad():
        task = bar.add_task("sample", total=total, rate="")
        done = [0]

        def tick(_: int) -> None:
            done[0] += 1
            bar.update(task, completed=done[0], rate=rate(done[0]))

        x = sample_sharded(loaded.model, loaded.diffusion, loaded.data_shape, seeds,
                           batch_size, sampler_cfg, device=dev, progress=tick)
    if x is None:  # under torchrun, rank 0 writes all the samples
        return
    write_atomic(folder / "samples.safetensors",
                 lambda p: save_file({"samples": x.contiguous()}, str(p)))
    save_samples_png(x, folder / "samples.png", title=label)
    write_json(folder / "samples.json", {
        "what": "model-space samples (N, *shape), images in [-1, 1]",
        "num_samples": num_samples, "seed": seed, "first_sample": first_sample,
        "sampler": sampler_cfg.__dict__,
        "sampler_label": label, "source": loaded.source, "ema": loaded.ema,
        "num_nonfinite": int((~torch.isfinite(x.flatten(1))).any(1).sum()),
        "world_size": distributed.world_size(),
        **provenance(),
    })
    stdout.print(str(folder))


# ----------------------------------------------------------------------------- evaluation helpers
def parse_list(value: str, what: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ValueError(f"--{what} is empty; give a comma-separated list")
    for v in items:
        if allowed is not None and v not in allowed:
            raise ValueError(f"unknown {what} {v!r}; allowed: {', '.join(allowed)}")
    return items


def parse_percents(value: str) -> list[float]:
    out = []
    for v in parse_list(value, "steps-attacked"):
        try:
            p = float(v)
        except ValueError:
            raise ValueError(f"--steps-attacked {v!r} is not a number; allowed: 0..100") from None
        if not 0 <= p <= 100:
            raise ValueError(f"--steps-attacked {v} is outside 0..100 (percent of reverse steps)")
        out.append(p)
    return out


reference_options = option_group(
    click.option("--dataset", default=None,
                 help="Clean reference data [default: the run's dataset; required for "
                 "--pipeline]."),
    click.option("--data-dir", type=click.Path(), default=None,
                 help="Root of on-disk reference data."),
    click.option("--inception-weights", type=click.Path(), default=None,
                 help="Local Inception weights for FID/IS/KID (torch-fidelity's "
                 "weights-inception-2015-12-05-6726825d.pth)."),
)


def resolve_reference(loaded, dataset: str | None, data_dir: str | None):
    """The clean reference of a model, checked against its data shape."""
    from dmattack.data import load_dataset
    from dmattack.evaluation import clean_dataset, reference_for

    if dataset is not None and dataset != loaded.dataset:
        ds = load_dataset(dataset, data_dir=data_dir,
                          resolution=loaded.data_shape[-1] if len(loaded.data_shape) == 3
                          else None)
    else:
        ds = clean_dataset(loaded, data_dir)
    ref = reference_for(ds)
    if tuple(ref.data.shape[1:]) != tuple(loaded.data_shape):
        raise ValueError(f"model {loaded.source} makes samples of shape {loaded.data_shape} but "
                         f"the reference {ds.name} has shape {tuple(ref.data.shape[1:])}")
    return ref


def evaluation_label(metrics: list[str], num_samples: int) -> str:
    """E.g. ``FID-10k`` or ``FD (exact)-2k``: the headline metric and sample count."""
    from evaluators import metric_labels

    n = f"{num_samples // 1000}k" if num_samples % 1000 == 0 else str(num_samples)
    name = metric_labels(metrics[0])[0] if metrics[0] != "variance-ratio" else "variance ratio"
    return f"{name}-{n}"


def metric_row(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "protocol"}


def _model_name(loaded) -> str:
    return Path(loaded.source).name


def _progress_steps(bar: Progress, task) -> Callable[[int, int], None]:
    rate = _Rate()

    def tick(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total, rate=rate(done))

    return tick


attack_options = option_group(
    click.option("--loss", default="mean", show_default=True,
                 help="Attack loss: mean (‖Δμ_θ‖², METHOD §6), eps (‖Δε_θ‖²) or x0."),
    click.option("--window", default="spread", show_default=True,
                 help="Which steps are attacked: first | last | spread."),
    click.option("--pgd-steps", type=int, default=20, show_default=True),
    click.option("--random-dist", default="sign", show_default=True,
                 help="Random control: sign (±σ_t) | uniform (U(−σ_t, σ_t))."),
    click.option("--project", default="auto", show_default=True,
                 help="auto (fgsm: none, pgd: every iteration) | on | end (pgd) | off "
                 "(fgsm)."),
    click.option("--eps-scale", type=float, default=1.0, show_default=True,
                 help="Budget multiplier: ε_t = scale·√β̃_t."),
)


def _spec_options(opts: dict[str, Any]) -> dict[str, Any]:
    project = {"auto": None, "on": True, "off": False, "end": "end"}.get(opts["project"], "?")
    if project == "?":
        raise ValueError(f"--project {opts['project']!r} is invalid; allowed: auto, on, off, end")
    return dict(loss=opts["loss"], pgd_steps=opts["pgd_steps"], random_dist=opts["random_dist"],
                eps_scale=opts["eps_scale"], project=project)


# ----------------------------------------------------------------------------- attack
@main.command()
@model_options
@sampler_options
@reference_options
@attack_options
@click.option("--method", default="pgd", show_default=True, help="fgsm | pgd | random.")
@click.option("--steps-attacked", default="50", show_default=True,
              help="Percent of the sampler's reverse steps attacked (0..100).")
@click.option("--num-samples", type=COUNT, default=None,
              help="[default: by preset: tiny 256, mlp 2000, GPU presets 10k].")
@click.option("--batch-size", type=COUNT, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--first-sample", type=INDEX, default=0, show_default=True,
              help="Index of the first sample (for sharding across processes/GPUs).")
@click.option("--metric", default=None, help="Comma list [default: by data: fid for images, "
              "fd-exact for known distributions; variance-ratio always].")
@click.option("--out", type=click.Path(), default=None,
              help="Result folder [default: <run>/attacks/<label>-<sampler>-n<N>-seed<S>].")
@friendly_errors
def attack(**o: Any) -> None:
    """Attack the reverse chain: clean vs attacked samples with paired randomness.

    Several GPUs: torchrun --nproc-per-node N -- $(which dmattack) attack ... splits the samples.
    """
    from dmattack.attack_eval import run_attack
    from dmattack.attacks import AttackSpec
    from dmattack.evaluation import default_metrics, make_metric_fn
    from evaluators import METRICS

    percent = parse_percents(o["steps_attacked"])
    if len(percent) != 1:
        raise ValueError("--steps-attacked takes one percent here; use `dmattack curve` for many")
    spec = AttackSpec(o["method"], percent[0], o["window"], **_spec_options(o))
    loaded, dev = _load_model(o["run"], o["pipeline"], o["ema"], o["device"])
    sampler, proto = make_sampler(o["sampler"], o["sampler_steps"], o["eta"], o["clip_denoised"],
                                  loaded)
    n = o["num_samples"] or proto.num_samples
    batch = o["batch_size"] or proto.batch_size
    ref = resolve_reference(loaded, o["dataset"], o["data_dir"])
    metrics = (parse_list(o["metric"], "metric", METRICS) if o["metric"]
               else list(default_metrics(loaded.data_shape, ref.truth)))
    slabel = sampler.describe(loaded.diffusion.num_timesteps)
    label = evaluation_label(metrics, n)
    out_dir = Path(o["out"] or _default_out(loaded, "attacks",
                                            f"{spec.describe()}-{slabel}-n{n}-seed{o['seed']}"))
    console.print(f"[bold]attack[/] {spec.describe()} on {loaded.source}: {n} samples, sampler "
                  f"{slabel}, batch {batch}, seed {o['seed']}, metric {', '.join(metrics)} "
                  f"({label}), reference: {ref.name}")
    metric_fn = make_metric_fn(ref, metrics, protocol={"evaluation": label},
                               inception_weights=o["inception_weights"])
    with progress_bar() as bar:
        task = bar.add_task("sample clean + attacked", total=None, rate="")
        result = run_attack(loaded, spec, num_samples=n, seed=o["seed"], sampler=sampler,
                            batch_size=batch, metric_fn=metric_fn, device=dev, out_dir=out_dir,
                            progress=_progress_steps(bar, task), first_sample=o["first_sample"])
    clean, attacked = metric_row(result["metrics"]["clean"]), metric_row(
        result["metrics"]["attacked"])
    print_table(f"{label} · {spec.describe()} · window {spec.window} · {slabel} · "
                f"{result['num_attacked_steps']}/{sampler.num_steps(loaded.diffusion.num_timesteps)}"
                " steps attacked",
                ["metric", "clean", "attacked"],
                [[k, clean[k], attacked.get(k)] for k in clean])
    stdout.print(str(out_dir))


def _default_out(loaded, kind: str, name: str) -> Path:
    """Results of a run go inside it; those of a pipeline under runs/<kind>/<pipeline>/."""
    if loaded.config.get("kind") == "dmattack-run":
        return Path(loaded.source) / kind / name
    return RUNS_ROOT / kind / _model_name(loaded) / name


# ----------------------------------------------------------------------------- curve
@main.command()
@click.option("--run", "runs", multiple=True, type=click.Path(),
              help="Run folder (repeat for several models) [default: newest under runs/].")
@click.option("--pipeline", "pipelines", multiple=True, type=click.Path(),
              help="diffusers DDPM pipeline folder (repeatable).")
@click.option("--ema/--no-ema", default=True, show_default=True)
@click.option("--device", default="auto", show_default=True)
@sampler_options
@reference_options
@attack_options
@click.option("--method", default="fgsm,pgd,random", show_default=True,
              help="Comma list of fgsm, pgd, random.")
@click.option("--steps-attacked", default="0,25,50,75,100", show_default=True,
              help="Comma list of percents of reverse steps attacked.")
@click.option("--windows", default=None, help="Comma list of windows [default: --window].")
@click.option("--num-samples", type=COUNT, default=None)
@click.option("--batch-size", type=COUNT, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--metric", default=None, help="Comma list; the first is plotted.")
@click.option("--out", type=click.Path(), default=None,
              help="Curve folder [default: runs/curves/<hash of the settings>]; re-running the "
              "same command there resumes.")
@friendly_errors
def curve(**o: Any) -> None:
    """Metric-versus-%-attacked curves for one or more models (paper Figure 7).

    Several GPUs: torchrun --nproc-per-node N -- $(which dmattack) curve ... splits every point's
    samples; a killed run resumes, also inside a point.
    """
    import hashlib
    import json

    from dmattack.attack_eval import curve_specs, run_curve
    from dmattack.attacks import METHODS, WINDOWS
    from dmattack.evaluation import default_metrics, make_metric_fn
    from evaluators import METRICS

    methods = parse_list(o["method"], "method", METHODS)
    percents = parse_percents(o["steps_attacked"])
    windows = parse_list(o["windows"] or o["window"], "window", WINDOWS)
    specs = curve_specs(methods, percents, windows, **{
        k: v for k, v in _spec_options(o).items() if k != "project" or v is not None})
    if not o["runs"] and not o["pipelines"]:
        from dmattack.runs import newest_run

        o["runs"] = (str(newest_run(RUNS_ROOT)),)
    models = []
    for r in o["runs"]:
        models.append(_load_model(r, None, o["ema"], o["device"]))
    for p in o["pipelines"]:
        models.append(_load_model(None, p, o["ema"], o["device"]))
    dev = models[0][1]
    models = [m for m, _ in models]
    shapes = {m.data_shape for m in models}
    if len(shapes) > 1:
        raise ValueError(f"models make samples of different shapes {sorted(shapes)}; a curve "
                         "compares models on one dataset")
    sampler, proto = make_sampler(o["sampler"], o["sampler_steps"], o["eta"], o["clip_denoised"],
                                  models[0])
    n = o["num_samples"] or proto.num_samples
    batch = o["batch_size"] or proto.batch_size
    ref = resolve_reference(models[0], o["dataset"], o["data_dir"])
    metrics = (parse_list(o["metric"], "metric", METRICS) if o["metric"]
               else list(default_metrics(models[0].data_shape, ref.truth)))
    label = evaluation_label(metrics, n)
    key = json.dumps([[m.source for m in models], o["ema"], [s.to_dict() for s in specs],
                      sampler.__dict__, n, o["seed"], metrics], sort_keys=True)
    out_dir = Path(o["out"] or RUNS_ROOT / "curves" / hashlib.sha256(key.encode()).hexdigest()[:12])
    slabel = sampler.describe(models[0].diffusion.num_timesteps)
    console.print(f"[bold]curve[/] {len(models)} model(s) × {', '.join(methods)} × "
                  f"{', '.join(windows)} at {', '.join(f'{p:g}' for p in percents)}% attacked; "
                  f"{n} samples, sampler {slabel}, seed {o['seed']}, metric {label} → {out_dir}")
    metric_fn = make_metric_fn(ref, metrics, protocol={"evaluation": label},
                               inception_weights=o["inception_weights"])
    with progress_bar("point") as bar:
        task = bar.add_task("curve points", total=None, rate="", point="")
        rate = _Rate()

        def on_point(done: int, total: int, record: dict[str, Any]) -> None:
            tag = " (resumed)" if record.get("resumed") else ""
            bar.update(task, completed=done, total=total, rate=rate(done),
                       point=f"{record['model_name']} {record['label']}{tag}")

        result = run_curve(models, specs, num_samples=n, seed=o["seed"], sampler=sampler,
                           batch_size=batch, metric_fn=metric_fn, device=dev, out_dir=out_dir,
                           metric=None, progress=on_point)
    print_table(f"{result['metric']} ({label}) vs % of {slabel} steps attacked",
                ["series", "model", *(f"{p:g}%" for p in result["percents"])],
                [[r["series"], r["model"], *r["values"]] for r in result["rows"]])
    stdout.print(str(out_dir))


# ----------------------------------------------------------------------------- evaluate
@main.command()
@model_options
@sampler_options
@reference_options
@click.option("--metrics", default=None,
              help="Comma list of fid, is, kid, fd-exact, subspace, plane, loglik, "
              "memorization, variance-ratio [default: by data].")
@click.option("--num-samples", type=COUNT, default=None)
@click.option("--batch-size", type=COUNT, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--first-sample", type=INDEX, default=0, show_default=True)
@click.option("--samples", "sample_files", multiple=True, type=click.Path(),
              help="Score these samples.safetensors files (concatenated, e.g. shards) instead "
              "of sampling.")
@click.option("--samples-key", default="samples", show_default=True,
              help="Tensor to read from --samples files (samples | clean | attacked).")
@click.option("--feature-extractor", default="auto", show_default=True,
              help="auto | inception | digits-cnn (for fid/is/kid).")
@click.option("--memorization-space", default="auto", show_default=True,
              help="auto | pixels | digits-cnn | inception | dinov2.")
@click.option("--dinov2-dir", type=click.Path(), default=None,
              help="Local facebookresearch/dinov2 checkout with weights.")
@click.option("--out", type=click.Path(), default=None,
              help="Result folder [default: <run>/eval/<sampler>-n<N>-seed<S>].")
@friendly_errors
def evaluate(**o: Any) -> None:
    """Score samples of a model: FID/IS/KID, exact metrics, memorisation."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from dmattack.evaluation import default_metrics
    from dmattack.io import provenance, write_json
    from dmattack.sampling import sample_batched
    from dmattack.seeding import sample_seeds
    from dmattack.train import TrainConfig, build_data
    from evaluators import METRICS, check_metrics
    from evaluators import evaluate as evaluate_samples

    loaded, dev = _load_model(o["run"], o["pipeline"], o["ema"], o["device"])
    ref = resolve_reference(loaded, o["dataset"], o["data_dir"])
    metrics = (parse_list(o["metrics"], "metrics", METRICS) if o["metrics"]
               else list(default_metrics(loaded.data_shape, ref.truth)))
    check_metrics(metrics, loaded.data_shape, ref.truth)
    sampler, proto = make_sampler(o["sampler"], o["sampler_steps"], o["eta"], o["clip_denoised"],
                                  loaded)
    slabel = sampler.describe(loaded.diffusion.num_timesteps)
    if o["sample_files"]:
        parts = []
        for f in o["sample_files"]:
            try:
                parts.append(load_file(f)[o["samples_key"]])
            except (OSError, SafetensorError, KeyError) as e:
                raise ValueError(f"cannot read tensor {o['samples_key']!r} from {f}: "
                                 f"{str(e).splitlines()[0]}") from None
        x = torch.cat(parts)
        if tuple(x.shape[1:]) != tuple(loaded.data_shape):
            raise ValueError(f"samples of shape {tuple(x.shape[1:])} do not match the model's "
                             f"{loaded.data_shape}")
        n, source = len(x), {"files": list(o["sample_files"]), "key": o["samples_key"]}
    else:
        n = o["num_samples"] or proto.num_samples
        batch = o["batch_size"] or proto.batch_size
        source = {"sampler": sampler.__dict__, "sampler_label": slabel, "seed": o["seed"],
                  "first_sample": o["first_sample"], "batch_size": batch}
    label = evaluation_label(metrics, n)
    out_dir = Path(o["out"] or _default_out(loaded, "eval", f"{slabel}-n{n}-seed{o['seed']}"))
    train_set = None
    if "memorization" in metrics:
        if loaded.config.get("kind") == "dmattack-run":
            data = build_data(TrainConfig.from_dict(loaded.config["train"]))
            train_set = data.tensor() if data.tensor() is not None else ref.data
        else:
            train_set = ref.data
    console.print(f"[bold]evaluate[/] {loaded.source}: {', '.join(metrics)} on {n} samples "
                  f"({label}), reference {ref.name}")
    if not o["sample_files"]:
        with progress_bar() as bar, torch.no_grad():
            steps = sampler.num_steps(loaded.diffusion.num_timesteps)
            task = bar.add_task("sample", total=steps * -(-n // batch), rate="")
            done, rate = [0], _Rate()

            def tick(_: int) -> None:
                done[0] += 1
                bar.update(task, completed=done[0], rate=rate(done[0]))

            x = sample_batched(loaded.model, loaded.diffusion, loaded.data_shape,
                               sample_seeds(o["seed"], n, start=o["first_sample"]), batch,
                               sampler, device=dev, progress=tick)
    result = evaluate_samples(
        x, ref.data, metrics, truth=ref.truth, feature_extractor=o["feature_extractor"],
        inception_weights=o["inception_weights"], reference_name=ref.name,
        protocol={"evaluation": label, "source": loaded.source, "ema": loaded.ema,
                  "samples_from": source},
        train_set=train_set, out_dir=out_dir, memorization_space=o["memorization_space"],
        dinov2_dir=o["dinov2_dir"])
    write_json(out_dir / "results.json", {"kind": "evaluate", "metrics": result,
                                          "provenance": provenance()})
    print_table(f"{label} · {loaded.source} · {'EMA' if loaded.ema else 'raw'}",
                ["metric", "value"], [[k, v] for k, v in metric_row(result).items()])
    stdout.print(str(out_dir))


# ----------------------------------------------------------------------------- export
@main.command()
@click.option("--run", type=click.Path(), default=None,
              help="Run folder [default: newest under runs/].")
@click.option("--ema/--no-ema", default=True, show_default=True)
@click.option("--out", type=click.Path(), required=True, help="New pipeline folder.")
@friendly_errors
def export(run: str | None, ema: bool, out: str) -> None:
    """Export a run as a diffusers DDPMPipeline folder."""
    from dmattack.pipeline import export_pipeline

    if Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise ValueError(f"--out {out} exists and is not empty; choose a new folder")
    loaded, _ = _load_model(run, None, ema, "cpu")
    stdout.print(str(export_pipeline(loaded, out)))


# ----------------------------------------------------------------------------- demo
@main.command()
@click.option("--quick", is_flag=True, help="The ≤ 2-minute version (fewer steps and samples).")
@click.option("--train-images", is_flag=True,
              help="Retrain the two digits U-Nets instead of loading checkpoints/ (slower).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--out", type=click.Path(), default=None,
              help="Report folder [default: reports/demo[-quick]-<time>].")
@friendly_errors
def demo(quick: bool, train_images: bool, seed: int, device: str, out: str | None) -> None:
    """The paper's controlled experiments on embedded data, end to end, with a report."""
    from dmattack.demo import check_run, headline_rows, run_demo
    from dmattack.train import resolve_device

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out or Path("reports") / f"demo{'-quick' if quick else ''}-{stamp}")
    check_run(out_dir, train_images)
    device = resolve_device(device)
    console.print(f"[bold]demo[/]{' --quick' if quick else ''}: seed {seed} → {out_dir}")
    with progress_bar("stage") as bar:
        task = bar.add_task("demo", total=None, rate="", stage="")

        def on_progress(stage: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, stage=stage, rate="")

        try:
            results = run_demo(out_dir, quick=quick, seed=seed, device=device,
                               train_images=train_images, progress=on_progress)
        except ChildProcessError as e:  # not bad input: exit 1, still one line
            console.print(f"Error: {e}")
            sys.exit(1)
    columns, rows = headline_rows(results)
    print_table("Headline: digits-subspace, 90% of training samples noisy (σ = 0.2)", columns,
                rows)
    stdout.print(str(out_dir / "report.md"))


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    stdout.print(f"[bold]{title}[/]")
    table = Table()
    for i, c in enumerate(columns):
        table.add_column(c, no_wrap=i < 2)  # the row labels stay whole in a narrow terminal
    for r in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
    stdout.print(table)


if __name__ == "__main__":
    main()
