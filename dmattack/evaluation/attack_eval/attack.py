"""One attack evaluated against the clean run: :func:`run_attack` samples both with the same
seeds, scores them, records the paired damage and writes the result folder atomically; and
:func:`check_run`, what a run of attacks on models can be refused for before any sampling."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...attacks.plan import AttackPlan
from ...attacks.schedule import AttackSpec
from ...core import distributed
from ...core.errors import ConfigError
from ...core.io import MiB, check_writable, provenance
from ...core.locking import lock_folder
from ...core.progress import stage as progress_stage
from ...core.seeding import sample_seeds
from ...core.tensors import report_nonfinite
from ...diffusion.sampling import SamplerConfig, SamplingChain
from ...runs.checkpoints import LoadedModel
from ..damage import improved_under_attack, summarize_damage
from .pairs import sample_pair
from .records import convergence_record, model_record, point_damage, steps_record
from .store import clear_staging, write_attack_files

if TYPE_CHECKING:
    from ..metrics import MetricFn

Attack = AttackSpec | AttackPlan | str
"""What run_attack / run_curve accept: a registered attack's spec (or name), or an
:class:`~dmattack.attacks.plan.AttackPlan` of a user's per-step factory or whole-chain attack."""


def run_attack(
    loaded: LoadedModel,
    attack: Attack,
    *,
    num_samples: int,
    seed: int,
    sampler: SamplerConfig,
    batch_size: int,
    metric_fn: MetricFn,
    device: torch.device | str,
    out_dir: str | os.PathLike,
    progress: Callable[[int, int], None] | None = None,
    first_sample: int = 0,
) -> dict[str, Any]:
    """Sample clean and attacked with the same seeds, score both, write the results.

    ``attack``: a registered attack's :class:`AttackSpec` (or name), or an
    :class:`~dmattack.attacks.plan.AttackPlan` of a user's per-step factory or whole-chain
    attack; the results record its label and settings. ``sampler`` is resolved once against
    the model (:class:`~dmattack.diffusion.sampling.SamplingChain`) for clean and attacked sampling.

    Samples ``first_sample … first_sample+num_samples−1`` of the seed's sequence are drawn, so
    disjoint ranges run on different GPUs concatenate to exactly one larger run.

    Writes into ``out_dir``: ``samples.safetensors`` (``clean``, ``attacked``:
    (N, *shape) float32, model space), ``clean.png`` / ``attacked.png`` (image grids; scatter
    plots for low-dimensional vectors) and, last, ``results.json`` with the full protocol and
    ``metrics = {"clean": …, "attacked": …}``, ``improved_under_attack`` (per set metric: better
    attacked than clean), the paired ``damage`` with 95% intervals and its per-sample values in
    seed order ``damage_per_sample`` (:mod:`dmattack.evaluation.damage`, docs/method.md §11.1),
    which
    steps were attacked, and ``trace`` / ``converged`` / ``convergence`` when the attack
    records its convergence (else None; under torchrun: rank 0's slice); it is also returned.
    ``progress(done, total)`` counts reverse steps over both passes.

    Before sampling, ``out_dir`` is checked for writability and free space
    (:class:`~dmattack.core.io.OutputError`) and locked against a second writer
    (:class:`~dmattack.core.locking.LockError`). A killed run leaves the previous results (if any)
    intact (:func:`~dmattack.evaluation.attack_eval.store.write_attack_files`). Re-running the
    command
    recomputes the same numbers.

    Under torchrun each process samples its slice of the seeds; rank 0 scores and writes, and
    every rank returns the result.
    """
    out = Path(out_dir)
    plan = AttackPlan.of(attack)
    chain = SamplingChain(loaded.diffusion, sampler.for_shape(loaded.data_shape))
    args = (loaded, chain, plan, num_samples, seed, batch_size, metric_fn, device, out,
            progress, first_sample)
    if not distributed.is_main():
        return _run_attack_locked(*args)
    # room for samples.safetensors (clean + attacked, float32) and the PNGs, checked up front
    check_writable(out, 8 * num_samples * math.prod(loaded.data_shape) + 32 * MiB)
    with lock_folder(out, "attack folder", command="dmattack attack"):
        return _run_attack_locked(*args)


def _run_attack_locked(loaded: LoadedModel, chain: SamplingChain, plan: AttackPlan,
                       num_samples: int, seed: int, batch_size: int, metric_fn: MetricFn,
                       device: torch.device | str, out: Path,
                       progress: Callable[[int, int], None] | None,
                       first_sample: int) -> dict[str, Any]:
    """:func:`run_attack` once ``out`` is locked (rank 0) or without a lock (other ranks)."""
    seeds = sample_seeds(seed, num_samples, start=first_sample)
    record = plan.record(loaded.model, chain)  # before sampling: a bad setting fails at once
    check_chains([loaded], [chain], [plan])
    diagnostics: dict[str, Any] = {}
    clean, attacked, seconds = sample_pair(loaded, chain, plan,
                                           distributed.shard(seeds, batch_size), batch_size,
                                           device, True, progress, diagnostics)
    seconds = _slowest(seconds)
    clean = distributed.gather_rows(clean)
    if attacked is not None:
        attacked = distributed.gather_rows(attacked)
    if not distributed.is_main():
        return distributed.broadcast_object(None)
    clear_staging(out)  # from a killed run
    if attacked is None:  # nothing attacked: the attacked run is the clean run, bit for bit
        attacked, seconds["attacked"] = clean.clone(), 0.0
    nonfinite = {"clean": report_nonfinite(clean, "clean samples"),
                 "attacked": report_nonfinite(attacked, f"attacked samples ({plan.label})")}
    with progress_stage("scoring") as scoring:  # feature extraction, reference statistics
        metrics = {"clean": metric_fn(clean), "attacked": metric_fn(attacked)}
    seconds["scoring"] = round(scoring.seconds, 3)
    per_sample = point_damage(clean, attacked, record, loaded.data_shape, device)
    result = _attack_result(loaded, chain, plan, record, num_samples, seed, first_sample,
                            batch_size, device)
    result.update({
        "num_nonfinite": nonfinite,
        "metrics": metrics,
        "improved_under_attack": improved_under_attack(metrics["clean"], metrics["attacked"]),
        "damage": summarize_damage(per_sample),
        "damage_per_sample": per_sample,
        **convergence_record(diagnostics),
        "seconds": seconds,
        "files": {"samples": "samples.safetensors", "clean_png": "clean.png",
                  "attacked_png": "attacked.png"},
        "provenance": provenance(),
    })
    write_attack_files(out, clean, attacked, plan.label, result)
    return distributed.broadcast_object(result)


def _attack_result(loaded: LoadedModel, chain: SamplingChain, plan: AttackPlan,
                   record: dict[str, Any], num_samples: int, seed: int, first_sample: int,
                   batch_size: int, device: torch.device | str) -> dict[str, Any]:
    """The leading part of ``results.json``: what was run (attack, steps, sampler, seeds,
    model), before what was measured."""
    return {
        "kind": "attack",
        "label": plan.label,
        "attack": record,
        "window": plan.window,
        **steps_record(plan, chain),
        "sampler": chain.to_dict(),
        "num_samples": num_samples,
        "seed": seed,
        "first_sample": first_sample,
        "seeds": "dmattack.core.seeding.sample_seeds(seed, num_samples, start=first_sample); clean "
                 "and attacked share them (chain noise stream 0, attack stream 1)",
        "batch_size": batch_size,
        "device": str(device),
        "world_size": distributed.world_size(),
        "model": model_record(loaded),
    }


def _slowest(seconds: dict[str, float]) -> dict[str, float]:
    """Per key, the slowest process's seconds (the wall time of a sharded pass)."""
    every = distributed.all_gather_objects(seconds)
    return {k: max(s[k] for s in every) for k in seconds}


def check_run(models: Sequence[LoadedModel], attacks: Sequence[Attack],
              sampler: SamplerConfig) -> None:
    """ConfigError for what a :func:`run_attack` / :func:`run_curve` of ``attacks`` on
    ``models`` with ``sampler`` cannot do, found before any sampling: models whose samples
    differ in shape, a sampler that does not fit a model's T, an attack that cannot run on a
    model's chain (e.g. a sampler a whole-chain attack cannot differentiate, a look-ahead
    horizon beyond the chain). Both call it; a command calls it once its sampler is resolved,
    to fail before it starts."""
    _check_shapes(models)
    chains = [SamplingChain(m.diffusion, sampler) for m in models]
    check_chains(models, chains, [AttackPlan.of(a) for a in attacks])


def check_chains(models: Sequence[LoadedModel], chains: Sequence[SamplingChain],
                 plans: Sequence[AttackPlan]) -> None:
    """:func:`check_run` on the models' resolved chains."""
    _check_shapes(models)
    for loaded, chain in zip(models, chains, strict=True):
        for plan in plans:
            plan.validate(chain, loaded.data_shape)


def _check_shapes(models: Sequence[LoadedModel]) -> None:
    shapes = {tuple(m.data_shape) for m in models}
    if len(shapes) > 1:
        raise ConfigError(f"models make samples of different shapes {sorted(shapes)}; a curve "
                          "compares models on one dataset")
