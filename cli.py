"""`dmattack` command line: a thin click layer over the library.

Each command parses its options (generated from the library's config dataclasses, see
dmattack/core/settings.py), calls one library function and prints. A user's mistake is a
:class:`~dmattack.core.errors.DmattackError`: one ``Error: ...`` line and exit code 2. Anything
else is a bug and keeps its traceback.

Nothing at module level imports torch: the dataclass options are declared with
``lazy_options`` (built from a cache on first use, dmattack/commands/lazy.py) and each command
imports the library inside its function, so ``--help`` and option errors answer at once.
Progress goes through dmattack/core/progress.py (bars in a terminal, plain lines elsewhere).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from dmattack.commands import output as ui
from dmattack.commands.base import (
    Choice,
    Group,
    RangedInt,
    friendly_errors,
    given,
    option_group,
    resumes_when_rerun,
)
from dmattack.commands.lazy import lazy_options
from dmattack.commands.output import console, metric_row, print_table, stdout
from dmattack.core import progress
from dmattack.core.errors import ConfigError, OutputError
from dmattack.core.option_types import parse_list, parse_percents
from dmattack.core.settings import _warn_deprecated, from_options, option_values
from dmattack.demo.sections import DEFAULT_SECTIONS, QUICK_SECTIONS, SECTIONS

VOCABULARY = (
    ("the attack(s) run", "--method", "attack, curve, purify", ("--attack",)),
    ("evaluation draws of purify", "--draws", "purify", ("--eval-mode",)),
    ("the training objective", "--method", "train", ()),
    ("which reverse steps are attacked", "--window", "attack, curve (a comma list)",
     ("--windows",)),
    ("the model: a run folder / a diffusers pipeline folder", "--run / --pipeline",
     "sample, attack, curve, evaluate, card, purify (export: --run; purify's --run also "
     "takes a pipeline)", ()),
    ("reverse steps of a strided sampler", "--sampler-steps", "sample, attack, curve, evaluate",
     ("--steps",)),
    ("PGD iterations of a whole-chain or purification attack", "--iterations",
     "attack, curve (trajectory, lookahead), purify", ()),
    ("PGD iterations per attacked step", "--pgd-steps", "attack, curve (pgd)", ()),
    ("EOT draws averaged per gradient", "--eot", "attack, curve (lookahead: future noise), "
     "purify (purification noise)", ()),
)
"""(concept, option, commands, deprecated spellings): one name per concept (docs/cli.md lists
it). A deprecated spelling still works for one release, with one warning line on stderr, and
records the same settings as the option."""

TRAIN_CONFIG = "dmattack.training.config:TrainConfig"
OBJECTIVE_OPTIONS = "dmattack.training.objective_cli:train_click_options"
SAMPLER_OPTIONS = "dmattack.commands.sampler_options:sampler_options"
EVALUATION_CONFIG = "dmattack.evaluation.metrics:EvaluationConfig"
ATTACK_OPTIONS = "dmattack.attacks.options:attack_options"
METRIC_OPTIONS = "dmattack.evaluation.metric_options:metric_options"
ATTACK_METRIC_OPTIONS = "dmattack.evaluation.metric_options:attack_metric_options"
PURIFY_CONFIG = "dmattack.purification.evaluate:PurifyConfig"
PURIFY_SAMPLER_OPTIONS = "dmattack.commands.sampler_options:purify_click_options"

RUNS_ROOT = Path(os.environ.get("DMATTACK_RUNS", "runs"))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dmattack")
def main() -> None:
    """Adversarial training and reverse-chain attacks for diffusion models."""
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")


# ----------------------------------------------------------------------------- train
@main.command()
@lazy_options(TRAIN_CONFIG, exclude=("objective.method",))
@lazy_options(OBJECTIVE_OPTIONS, prefix="objective.")
@click.option("--out", type=click.Path(), default=None,
              help="Run folder [default: runs/<dataset>-<method>-<time>].")
@click.option("--resume", type=click.Path(), default=None,
              help="Continue this run folder (to --steps if given). Also allowed with it: --nan-"
              "policy, --tensorboard, --grad-accum, --compile, --channels-last, --num-workers, "
              "--checkpoint-minutes, --threads.")
@friendly_errors
def train(**o: Any) -> None:
    """Train a DDPM or Robust diffusion model; prints the run folder.

    SIGTERM or Ctrl-C: the step is finished, a checkpoint written, the resume command printed;
    exit code 3 (a second signal stops at once). Several GPUs: torchrun --nproc-per-node N --
    $(which dmattack) train ... (docs/performance.md).
    """
    from dmattack.core import distributed
    from dmattack.training.config import TrainConfig
    from dmattack.training.objective_cli import from_train_options
    from dmattack.training.train import TrainingInterrupted, prepare_run, resume_config
    from dmattack.training.train import train as train_run

    rest = {k: v for k, v in o.items() if not k.startswith("objective__")}
    if o["resume"]:
        if given("out"):
            raise ConfigError("--out cannot be given with --resume (the run stays in its folder)")
        # the given options over the run's config; prepare_run refuses any that changed
        cfg = from_options(TrainConfig, {k: v for k, v in rest.items() if given(k)},
                           base=resume_config(o["resume"]))
    else:
        cfg = from_options(TrainConfig, rest)
    cfg = dataclasses.replace(cfg, objective=from_train_options(
        o, {k for k in o if given(k)}, cfg.objective if o["resume"] else None))
    cfg, run_dir, data = prepare_run(cfg, o["out"], RUNS_ROOT, o["resume"], join=_join_torchrun)
    console.print(f"[bold]train[/] {cfg.objective.method} on {cfg.dataset} "
                  f"(preset {cfg.preset}, p={cfg.corrupt_fraction}, σ={cfg.corrupt_sigma}"
                  f"{', horizontal flips' if cfg.flip else ''}), "
                  f"{cfg.steps} steps × batch {cfg.batch_size} → {run_dir}")
    try:
        with ui.command_reporting("train"), progress.stage("train", cfg.steps, "steps") as st:
            train_run(cfg, run_dir, resume=bool(o["resume"]), data=data,
                      callback=ui.train_progress(st))
    except TrainingInterrupted as e:  # one line: where it stopped and how to resume
        if distributed.is_main():
            click.echo(str(e), err=True)
        sys.exit(e.exit_code)
    _print_path(run_dir)


def _print_path(path: str | os.PathLike) -> None:
    """The absolute path of what a command wrote, on stdout as one unwrapped line (for
    ``$(dmattack ...)``); silent on torchrun ranks other than 0."""
    stdout.print(str(Path(path).resolve()), soft_wrap=True, markup=False, highlight=False)


# ----------------------------------------------------------------------------- models
def _join_torchrun(device: str):
    """This process's torch device. Under torchrun it also joins the process group (one GPU
    per process) and silences the console of ranks other than 0, which report and write."""
    from dmattack.core import distributed
    from dmattack.training.train import resolve_device

    dev = distributed.init(resolve_device(device))
    if not distributed.is_main():
        console.quiet = stdout.quiet = True
    return dev


def _load_model(run: str | None, pipeline: str | None, use_ema: bool, device: str):
    from dmattack.runs.checkpoints import load_run, newest_run

    dev = _join_torchrun(device)
    if run and pipeline:
        raise ConfigError("give either --run or --pipeline, not both")
    if pipeline:
        from dmattack.runs.pipeline import load_pipeline

        return load_pipeline(pipeline, device=dev), dev
    return load_run(run or newest_run(RUNS_ROOT), use_ema=use_ema, device=dev), dev


def _sampler(o: dict[str, Any], loaded):
    """The sampler the options ask for (its own options included), unset fields from the
    model's protocol."""
    from dmattack.commands.sampler_options import sampler_from_options

    return sampler_from_options(o, loaded)


def _check_option_values(o: dict[str, Any]) -> None:
    """The values of the generated sampler and metric options, before a model is loaded
    (which entry reads each is checked once the sampler and metrics are known)."""
    from dmattack.commands.sampler_options import check_sampler_option_values
    from dmattack.evaluation.metric_options import check_metric_option_values

    check_sampler_option_values(o)
    check_metric_option_values(o)


def _evaluation(o: dict[str, Any], loaded, num_samples: int | None = None):
    """The evaluation setup of the options (one library call shared by evaluate, attack and
    curve), with the metric options given (each routed to the metrics that read it; one the
    chosen metrics do not read is refused)."""
    from dmattack.evaluation.metric_options import given_metric_options
    from dmattack.evaluation.metrics import EvaluationConfig, prepare_evaluation

    return prepare_evaluation(loaded, from_options(EvaluationConfig, o), _sampler(o, loaded),
                              num_samples, **given_metric_options(o))


model_options = option_group(
    click.option("--run", type=click.Path(), default=None,
                 help="Run folder [default: newest under runs/]."),
    click.option("--pipeline", type=click.Path(), default=None,
                 help="A diffusers DDPM pipeline folder instead of a run."),
    click.option("--ema/--no-ema", default=True, show_default=True,
                 help="Sample with the EMA weights."),
    click.option("--device", default="auto", show_default=True),
)
sampler_options = lazy_options(SAMPLER_OPTIONS, prefix="sampler.")
evaluation_options = lazy_options(EVALUATION_CONFIG)


# ----------------------------------------------------------------------------- sample
@main.command("sample")
@model_options
@sampler_options
@click.option("--num-samples", type=RangedInt(1, 10_000_000), default=64, show_default=True)
@click.option("--batch-size", type=RangedInt(1, 10_000_000), default=256, show_default=True)
@click.option("--seed", type=RangedInt(0), default=0, show_default=True)
@click.option("--first-sample", type=RangedInt(0, 2**40), default=0, show_default=True,
              help="Index of the first sample (for sharding across processes/GPUs).")
@click.option("--out", type=click.Path(), default=None,
              help="Output folder [default: <run>/samples/<sampler>-seed<seed>].")
@friendly_errors
def sample_cmd(**o: Any) -> None:
    """Sample from a trained run: a PNG grid and the samples as a safetensors file.

    Several GPUs: torchrun --nproc-per-node N -- $(which dmattack) sample ... splits the samples.
    """
    from dmattack.commands.workflows import write_samples

    _check_option_values(o)
    loaded, dev = _load_model(o["run"], o["pipeline"], o["ema"], o["device"])
    sampler = _sampler(o, loaded)
    label = sampler.describe(loaded.diffusion.num_timesteps)
    shard = f"-from{o['first_sample']}" if o["first_sample"] else ""
    folder = Path(o["out"] or Path(loaded.source) / "samples" / f"{label}-seed{o['seed']}{shard}")
    console.print(f"[bold]sample[/] {o['num_samples']} from {loaded.source} "
                  f"({'EMA' if loaded.ema else 'raw'} weights), sampler {label}, seed {o['seed']}")
    with ui.command_reporting("sample"):  # write_samples reports the stage "sample"
        written = write_samples(loaded, sampler, o["num_samples"], o["batch_size"], o["seed"],
                                folder, o["first_sample"], dev)
    if written is not None:  # under torchrun, rank 0 writes all the samples
        _print_path(written)


# ----------------------------------------------------------------------------- attack
@main.command()
@model_options
@sampler_options
@evaluation_options
@lazy_options(ATTACK_METRIC_OPTIONS)
@lazy_options(ATTACK_OPTIONS)
@click.option("--out", type=click.Path(), default=None,
              help="Result folder [default: <run>/attacks/<model>-<content hash>/<label>-<sampler>"
              "-n<N>-seed<S>; for a pipeline under runs/]. The absolute path is printed.")
@friendly_errors
def attack(**o: Any) -> None:
    """Attack the reverse chain: clean vs attacked samples with paired randomness.

    Several GPUs: torchrun --nproc-per-node N -- $(which dmattack) attack ... splits the samples.
    """
    from dmattack.attacks.options import spec_from_options
    from dmattack.commands.workflows import write_pairs
    from dmattack.evaluation.attack_eval import check_run, run_attack
    from dmattack.evaluation.metrics import default_out_dir

    spec = spec_from_options(o)
    _check_option_values(o)
    loaded, dev = _load_model(o["run"], o["pipeline"], o["ema"], o["device"])
    ev = _evaluation(o, loaded)
    check_run([loaded], [spec], ev.sampler)  # before anything is printed or sampled
    name = f"{spec.describe()}-{ev.sampler_label}-n{ev.num_samples}-seed{ev.config.seed}"
    out_dir = Path(o["out"] or default_out_dir(loaded, "attacks", name, RUNS_ROOT))
    console.print(f"[bold]attack[/] {spec.describe()} on {loaded.source}: {ev.num_samples} "
                  f"samples, sampler {ev.sampler_label}, batch {ev.batch_size}, seed "
                  f"{ev.config.seed}, metric {', '.join(ev.metrics)} ({ev.label}), reference: "
                  f"{ev.reference.name}")
    with ui.command_reporting("attack"), progress.stage("sample clean + attacked",
                                                unit="steps") as st:
        result = run_attack(loaded, spec, num_samples=ev.num_samples, seed=ev.config.seed,
                            sampler=ev.sampler, batch_size=ev.batch_size,
                            metric_fn=ev.metric_fn(), device=dev, out_dir=out_dir,
                            progress=ui.progress_steps(st),
                            first_sample=ev.config.first_sample)
    write_pairs(out_dir, spec.describe())  # pairs.png: clean | attacked, damage under each
    steps = ev.sampler.num_steps(loaded.diffusion.num_timesteps)
    ui.print_attack_result(result, f"{ev.label} · {spec.describe()} · window {spec.window} · "
                           f"{ev.sampler_label} · {result['num_attacked_steps']} of {steps} "
                           "steps attacked" + (" (incl. the last, budget 0)"
                                               if result["last_step_attacked"] else ""))
    _print_path(out_dir)


# ----------------------------------------------------------------------------- curve
@main.command()
@click.option("--run", "runs", multiple=True, type=click.Path(),
              help="Run folder (repeat for several models) [default: newest under runs/].")
@click.option("--pipeline", "pipelines", multiple=True, type=click.Path(),
              help="diffusers DDPM pipeline folder (repeatable).")
@click.option("--ema/--no-ema", default=True, show_default=True)
@click.option("--device", default="auto", show_default=True)
@sampler_options
@evaluation_options
@lazy_options(ATTACK_METRIC_OPTIONS)
@lazy_options(ATTACK_OPTIONS, exclude=("method", "percent", "window"))
@click.option("--method", default="fgsm,pgd,random", show_default=True,
              help="Comma list of registered attacks (dmattack plugins lists them).")
@click.option("--steps-attacked", default="0,25,50,75,100", show_default=True,
              help="Comma list of percents of reverse steps attacked.")
@click.option("--window", default="spread", show_default=True,
              help="Comma list of windows: which steps are attacked (spread | first | last).")
@click.option("--windows", "window__deprecated_0", default=None, hidden=True,
              callback=_warn_deprecated("--windows", "--window"))
@click.option("--out", type=click.Path(), default=None,
              help="Curve folder [default: runs/curves/<hash of the settings>]; re-running the "
              "same command there resumes.")
@friendly_errors
@resumes_when_rerun
def curve(**o: Any) -> None:
    """Metric-versus-%-attacked curves for one or more models (paper Figure 7).

    Several GPUs: torchrun --nproc-per-node N -- $(which dmattack) curve ... splits every point's
    samples; a killed run resumes, also inside a point.
    """
    from dmattack.attacks import WINDOWS
    from dmattack.attacks.options import curve_specs_from_options
    from dmattack.core.registry import ATTACKS
    from dmattack.evaluation.attack_eval import check_run, run_curve
    from dmattack.evaluation.metrics import curve_folder
    from dmattack.runs.checkpoints import newest_run

    o = option_values(o)  # --windows (deprecated) as --window
    methods = parse_list(o["method"], "method", ATTACKS.names())
    percents = parse_percents(o["steps_attacked"])
    windows = parse_list(o["window"], "window", WINDOWS)
    specs = curve_specs_from_options(o, methods, percents, windows)  # each: what it reads
    _check_option_values(o)
    runs = [(r, None) for r in o["runs"] or ([] if o["pipelines"] else [newest_run(RUNS_ROOT)])]
    loaded = [_load_model(r, p, o["ema"], o["device"])
              for r, p in [*runs, *[(None, p) for p in o["pipelines"]]]]
    models, dev = [m for m, _ in loaded], loaded[0][1]
    ev = _evaluation(o, models[0])
    check_run(models, specs, ev.sampler)  # before anything is printed or sampled
    out_dir = Path(o["out"] or curve_folder(models, specs, ev, o["ema"], RUNS_ROOT))
    console.print(f"[bold]curve[/] {len(models)} model(s) × {', '.join(methods)} × "
                  f"{', '.join(windows)} at {', '.join(f'{p:g}' for p in percents)}% attacked; "
                  f"{ev.num_samples} samples, sampler {ev.sampler_label}, seed {ev.config.seed}, "
                  f"metric {ev.label} → {out_dir}")
    with ui.command_reporting("curve"), progress.stage("curve points", unit="points") as st:
        result = run_curve(models, specs, num_samples=ev.num_samples, seed=ev.config.seed,
                           sampler=ev.sampler, batch_size=ev.batch_size,
                           metric_fn=progress.staged(ev.metric_fn(), "scoring"), device=dev,
                           out_dir=out_dir, metric=None, progress=ui.curve_progress(st),
                           first_sample=ev.config.first_sample)
    ui.print_curve_result(result, f"{result['metric']} ({ev.label}) vs % of {ev.sampler_label} "
                          "steps attacked")
    _print_path(out_dir)


# ----------------------------------------------------------------------------- evaluate
SAMPLING_OPTIONS = ("ema", "num_samples", "batch_size", "seed", "first_sample")
"""evaluate's options that only say how samples are drawn, besides the sampler options
(parameters ``sampler__*``, every registered sampler's own included): refused with --samples."""


@main.command()
@model_options
@sampler_options
@evaluation_options
@click.option("--samples", "sample_files", multiple=True, type=click.Path(),
              help="Score these samples.safetensors files (concatenated, e.g. shards) instead "
              "of sampling.")
@click.option("--samples-key", default="samples", show_default=True,
              help="Tensor to read from --samples files (samples | clean | attacked).")
@lazy_options(METRIC_OPTIONS)
@click.option("--out", type=click.Path(), default=None,
              help="Result folder [default: <run>/eval/<model>-<content hash>/<sampler>-n<N>-"
              "seed<S>; for a pipeline under runs/]. The absolute path is printed.")
@friendly_errors
def evaluate(**o: Any) -> None:
    """Score samples of a model: FID/IS/KID, exact metrics, memorisation."""
    from dmattack.commands.workflows import evaluate_model, read_sample_files
    from dmattack.evaluation.metrics import default_out_dir

    if given("samples_key") and not o["sample_files"]:
        raise ConfigError(f"--samples-key {o['samples_key']} is read from --samples files only; "
                          "give --samples or remove it")
    drawing = [p.opts[0] for p in click.get_current_context().command.params
               if (p.name in SAMPLING_OPTIONS or p.name.startswith("sampler__"))
               and given(p.name)]
    if o["sample_files"] and drawing:
        raise ConfigError(f"{drawing[0]} sets how samples are drawn, but --samples gives them; "
                          "remove it")
    _check_option_values(o)
    loaded, dev = _load_model(o["run"], o["pipeline"], o["ema"], o["device"])
    files = o["sample_files"]
    x = read_sample_files(files, o["samples_key"], loaded.data_shape) if files else None
    ev = _evaluation(o, loaded, None if x is None else len(x))
    name = f"{ev.sampler_label}-n{ev.num_samples}-seed{ev.config.seed}"
    out_dir = Path(o["out"] or default_out_dir(loaded, "eval", name, RUNS_ROOT))
    console.print(f"[bold]evaluate[/] {loaded.source}: {', '.join(ev.metrics)} on "
                  f"{ev.num_samples} samples ({ev.label}), reference {ev.reference.name}")
    with ui.command_reporting("evaluate"):  # evaluate_model reports "sample" and "scoring"
        result = evaluate_model(
            loaded, ev, out_dir, samples=x,
            samples_from={"files": list(files), "key": o["samples_key"]} if files else None,
            device=dev)
    print_table(f"{ev.label} · {loaded.source} · {'EMA' if loaded.ema else 'raw'}",
                ["metric", "value"], [[k, v] for k, v in metric_row(result).items()])
    _print_path(out_dir)


# ----------------------------------------------------------------------------- export
@main.command()
@click.option("--run", type=click.Path(), default=None,
              help="Run folder [default: newest under runs/].")
@click.option("--ema/--no-ema", default=True, show_default=True)
@click.option("--out", type=click.Path(), required=True, help="New pipeline folder.")
@friendly_errors
def export(run: str | None, ema: bool, out: str) -> None:
    """Export a run as a diffusers DDPMPipeline folder."""
    from dmattack.runs.pipeline import export_pipeline

    if Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise OutputError(errno.EEXIST, f"--out {out} exists and is not empty; choose a new folder")
    loaded, _ = _load_model(run, None, ema, "cpu")
    _print_path(export_pipeline(loaded, out))


# ----------------------------------------------------------------------------- purify
PURIFIER_ONLY = ("t_star", "purify_steps", "purify_sampler", "clip_denoised",
                 "attack_purify_steps", "attack_sampler", "attack_gradient", "checkpoint_steps")
"""PurifyConfig settings read only by a purifier (a --run): refused without one, as are the
purify samplers' own options (``--eta``, a plugin's)."""


@main.command()
@click.option("--run", "runs", multiple=True, type=click.Path(),
              help="A purifier: run folder or diffusers DDPM pipeline folder (repeatable); the "
              "undefended classifier is always a row.")
@click.option("--pipeline", "pipelines", multiple=True, type=click.Path(),
              help="A purifier: diffusers DDPM pipeline folder (repeatable; after the --run "
              "ones).")
@lazy_options(PURIFY_CONFIG)
@lazy_options(PURIFY_SAMPLER_OPTIONS, prefix="sampler.")
@click.option("--device", default="auto", show_default=True)
@click.option("--out", type=click.Path(), default=None,
              help="Result folder [default: runs/purify/<hash of the settings>]; re-running "
              "the same command there resumes.")
@friendly_errors
@resumes_when_rerun
def purify(**o: Any) -> None:
    """Diffusion purification under attack: clean and robust accuracy of a classifier,
    undefended and purified by each --run (PGD-EOT, BPDA-EOT, AutoAttack-rand).

    Several GPUs: torchrun --nproc-per-node N -- $(which dmattack) purify ... splits the batches.
    """
    from dmattack.commands.sampler_options import given_purify_options, purify_option_table
    from dmattack.purification import load_model, run_purification
    from dmattack.purification.evaluate import PurifyConfig, prepare_purification, purify_folder
    from dmattack.purification.results import TABLE_COLUMNS, table_notes, table_rows

    _warn_deprecated("--eval-mode", "--draws")(None, None, o["eval_modes"])
    own = given_purify_options(o, o["purify_sampler"])
    cfg = from_options(PurifyConfig, {**o, "sampler_options": own})
    spelled = {**{opt.param: opt.spelling for opt in purify_option_table()},
               **{k: f"--{k.replace('_', '-')}" for k in PURIFIER_ONLY}}
    unread = [k for k in spelled if given(k)]
    if unread and not (o["runs"] or o["pipelines"]):  # only the undefended classifier is evaluated
        name, value = spelled[unread[0]], o[unread[0]]
        shown = f"{name if value else '--no-' + name[2:]}" if isinstance(value, bool) \
            else f"{name} {value}"
        raise ConfigError(f"{shown} is not read without a purifier (only the undefended "
                          "classifier is evaluated); give --run or --pipeline")
    dev = _join_torchrun(o["device"])
    models = [load_model(r, dev) for r in (*o["runs"], *o["pipelines"])]
    prepare_purification(cfg, models, dev)  # bad input: one line before anything is printed
    out_dir = Path(o["out"] or purify_folder(cfg, models, RUNS_ROOT))
    console.print(f"[bold]purify[/] {cfg.classifier} on {cfg.data} ({cfg.num_samples} images), "
                  f"{len(models)} purifier(s) at t* {cfg.t_star} × {', '.join(cfg.attack_names())}"
                  f", ε {cfg.eps:.4g}, PGD {cfg.iterations} iterations × EOT-{cfg.eot} × "
                  f"{cfg.restarts} restart(s), {cfg.draws} evaluation draws → {out_dir}")
    with ui.command_reporting("purify"), progress.stage("purify", unit="units") as st:
        result = run_purification(cfg, models, out_dir, dev, ui.unit_progress(st))
    print_table(f"accuracy of {cfg.classifier} over {cfg.draws} evaluation draws (robust = "
                f"correct on the clean and the adversarial image), ε = {cfg.eps:.4g}",
                TABLE_COLUMNS, table_rows(result))
    for note in table_notes(result):
        console.print(note)
    _print_path(out_dir / "purify.json")


# ----------------------------------------------------------------------------- demo
@main.command()
@click.option("--quick", is_flag=True, help="The ≤ 2-minute version (fewer steps and samples).")
@click.option("--train-images", is_flag=True,
              help="Retrain the two digits U-Nets instead of loading checkpoints/ (slower).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--seeds", type=RangedInt(1), default=1, show_default=True,
              help="Repeat every section over this many seeds (seed, seed+1, …): numbers as "
              "mean ± std, verdicts with how many seeds agree.")
@click.option("--section", "sections", multiple=True, type=Choice([*SECTIONS, "all"]),
              help="Run only these sections (repeatable) [default: "
              f"{', '.join(DEFAULT_SECTIONS)}; with --quick: {', '.join(QUICK_SECTIONS)}].")
@click.option("--device", default="auto", show_default=True)
@click.option("--out", type=click.Path(), default=None,
              help="Report folder [default: reports/demo[-quick]-<time>].")
@friendly_errors
def demo(quick: bool, train_images: bool, seed: int, seeds: int, sections: tuple[str, ...],
         device: str, out: str | None) -> None:
    """The paper's controlled experiments on embedded data, end to end, with a report."""
    from dmattack.demo import check_demo, run_demo
    from dmattack.demo.report import headline_rows, headline_title
    from dmattack.training.train import resolve_device

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out or Path("reports") / f"demo{'-quick' if quick else ''}-{stamp}")
    check_demo(out_dir, train_images, seeds=seeds, sections=sections or None, quick=quick,
               seed=seed)
    device = resolve_device(device)
    console.print(f"[bold]demo[/]{' --quick' if quick else ''}: seed {seed}"
                  f"{f' … {seed + seeds - 1}' if seeds > 1 else ''} → {out_dir}")
    with ui.command_reporting("demo"):  # one stage per section step (dmattack/demo/common.py)
        stages = progress.Switcher()
        try:
            results = run_demo(out_dir, quick=quick, seed=seed, device=device,
                               train_images=train_images, seeds=seeds,
                               sections=sections or None, progress=stages)
        except ChildProcessError as e:  # not bad input: exit 1, still one line
            console.print(f"Error: {e}")
            sys.exit(1)
        finally:
            stages.close()
    print_table(headline_title(results), *headline_rows(results))
    _print_path(out_dir / "report.md")


# ----------------------------------------------------------------------------- plugins
@main.command()
def plugins() -> None:
    """List every registry's entries (attacks, objectives, samplers, metrics, datasets,
    presets, labelled data, classifiers) and the plugins loaded from the `dmattack`
    entry-point group."""
    import dmattack.evaluation.attack_eval  # noqa: F401 - registers the built-in attacks
    import dmattack.purification  # noqa: F401 - registers labelled data and classifiers
    import dmattack.training.train  # noqa: F401 - registers objectives, datasets, presets, samplers
    import evaluators  # noqa: F401 - registers the metrics
    from dmattack.core.registry import PLUGINS, REGISTRIES, load_plugins

    load_plugins()
    rows = [[kind, name, registry.origin(name)] for kind, registry in REGISTRIES.items()
            for name in registry.names()]
    print_table("registered entries", ["registry", "name", "registered by"], rows)
    print_table("plugins (entry-point group dmattack)", ["plugin", "status"],
                [[k, v] for k, v in PLUGINS.items()] or [["(none installed)", ""]])


# ----------------------------------------------------------------------------- leaderboard
@main.command()
@click.argument("cards", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(), required=True,
              help="Site folder (new, empty, or an earlier leaderboard, which is replaced).")
@friendly_errors
def leaderboard(cards: tuple[str, ...], out: str) -> None:
    """Static leaderboard page of robustness cards, one sortable table per protocol.

    CARDS are card.json files or folders holding one; prints the absolute path of the site's
    index.html (docs/card.md)."""
    from dmattack.card import write_leaderboard

    click.echo(str(write_leaderboard(cards, out)))



# ----------------------------------------------------------------------------- card
@main.command()
@click.option("--run", "runs", multiple=True, type=click.Path(),
              help="Run folder (repeat for several models).")
@click.option("--pipeline", "pipelines", multiple=True, type=click.Path(),
              help="diffusers DDPM pipeline folder (repeatable).")
@click.option("--protocol", required=True,
              help="Protocol label, e.g. digits-quick-v2, digits-v2, cifar10-v2 (docs/card.md).")
@click.option("--protocol-dir", type=click.Path(), default=None,
              help="Folder of your own protocol files and their HASHES.json [default: the "
              "package's protocols].")
@click.option("--data-dir", type=click.Path(), default=None,
              help="Root of on-disk reference data (cifar10-v1: the CIFAR-10 training set).")
@click.option("--device", default="auto", show_default=True)
@click.option("--out", type=click.Path(), default=None,
              help="Cards folder [default: runs/cards/<protocol>]; rerunning the same command "
              "there resumes.")
@friendly_errors
@resumes_when_rerun
def card(runs: tuple[str, ...], pipelines: tuple[str, ...], protocol: str,
         protocol_dir: str | None, data_dir: str | None, device: str, out: str | None
         ) -> None:
    """Robustness cards: every model measured under one versioned protocol, with intervals;
    with several models also their paired comparison (docs/card.md).

    Writes <out>/<model>/card.json, card.md, curves.png (and comparison.json/.md); prints the
    card.json paths. Several GPUs: torchrun --nproc-per-node N -- $(which dmattack) card ...
    splits every curve point's samples."""
    from dmattack.card.compute import load_models, make_cards
    from dmattack.card.protocol import PROTOCOL_DIR, REGISTRY, load_protocol

    directory = Path(protocol_dir) if protocol_dir else PROTOCOL_DIR
    if not (directory / REGISTRY).is_file():
        raise ConfigError(f"--protocol-dir {protocol_dir} holds no {REGISTRY} (docs/card.md)")
    proto = load_protocol(protocol, directory)
    dev = _join_torchrun(device)
    models = load_models(runs, pipelines, proto, dev)
    out_dir = Path(out or RUNS_ROOT / "cards" / proto.label)
    console.print(f"[bold]card[/] {proto.label} ({proto.hash[:12]}…) for {len(models)} "
                  f"model(s) → {out_dir}")
    for path in make_cards(models, proto, out_dir, device=dev, say=console.print,
                           data_dir=data_dir):
        click.echo(str(path))  # one line per card, never wrapped


@main.command()
@click.argument("cards", nargs=-1, required=True, type=click.Path())
@click.option("--protocol-dir", type=click.Path(), default=None,
              help="Folder of the cards' protocol file and its HASHES.json [default: the "
              "package's protocols].")
@click.option("--out", type=click.Path(), default=None,
              help="Write comparison.json and comparison.md into this folder.")
@friendly_errors
def compare(cards: tuple[str, ...], protocol_dir: str | None, out: str | None) -> None:
    """Paired comparison of robustness cards made under one protocol: each headline number's
    difference with its 95% interval and verdict (docs/card.md). Cards of different protocol
    hashes: one line, exit code 2."""
    from dmattack.card.compare import compare_cards, save_comparison
    from dmattack.card.protocol import PROTOCOL_DIR
    from dmattack.card.report import comparison_markdown

    result = compare_cards(cards, directory=Path(protocol_dir) if protocol_dir else PROTOCOL_DIR)
    if out:
        save_comparison(result, out)
    click.echo(comparison_markdown(result))


if __name__ == "__main__":
    main()
