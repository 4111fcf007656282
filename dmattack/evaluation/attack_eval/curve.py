"""Attacked-steps curves: the metric and the paired damage against % of reverse steps
attacked, per model and attack series (paper Figure 7; docs/method.md §6, §11.1).

:func:`run_curve` computes the clean (0%) point once per model on its resolved
:class:`~dmattack.diffusion.sampling.SamplingChain`, then every attack point with the same seeds,
appends
each finished point to the store (:mod:`~dmattack.evaluation.attack_eval.store`) and skips a point
whose
key is already there; rank 0 renders the table at the end
(:mod:`~dmattack.evaluation.attack_eval.render`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...attacks.plan import AttackPlan
from ...attacks.schedule import AttackSpec, spec_grid
from ...core import distributed
from ...core.errors import ConfigError
from ...core.io import MiB, check_writable
from ...core.locking import lock_folder
from ...core.seeding import sample_seeds
from ...core.tensors import nonfinite_rows, report_nonfinite
from ...diffusion.sampling import SamplerConfig, SamplingChain
from ...runs.checkpoints import LoadedModel
from ..damage import PerSample, improved_under_attack, summarize_damage
from .attack import Attack, check_chains
from .pairs import clean_samples, point_samples
from .records import convergence_record, point_damage, steps_record
from .render import write_curve
from .store import (
    POINTS,
    SHARDS,
    append_point,
    cached_slice,
    clean_path,
    metric_identity,
    model_identity,
    point_key,
    read_store,
    shard_dir,
    write_clean,
)

if TYPE_CHECKING:
    from ..metrics import MetricFn


def curve_specs(methods: Sequence[str], percents: Sequence[float],
                windows: Sequence[str] = ("spread",), refuse_unused: bool = False,
                **options: Any) -> list[AttackSpec]:
    """methods × windows × percents as :class:`AttackSpec`: see
    :func:`dmattack.attacks.schedule.spec_grid`."""
    return spec_grid(methods, percents, windows, refuse_unused, **options)


def run_curve(
    models: Sequence[LoadedModel],
    attacks: Sequence[Attack],
    *,
    num_samples: int,
    seed: int,
    sampler: SamplerConfig,
    batch_size: int,
    metric_fn: MetricFn,
    device: torch.device | str,
    out_dir: str | os.PathLike,
    metric: str | None = None,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    metric_key: Any = None,
    first_sample: int = 0,
) -> dict[str, Any]:
    """Metric versus % of steps attacked, per model and attack series (paper Figure 7).

    Samples ``first_sample … first_sample+num_samples−1`` of the seed's sequence (hand
    sharding: each shard its own ``first_sample``; part of every point's key). ``attacks``:
    registered attacks' :class:`AttackSpec` (e.g. from :func:`curve_specs`) and/or
    :class:`~dmattack.attacks.plan.AttackPlan` of a user's own attacks, one per point.

    The clean (0%) point is computed once per model; every other point samples attacked with
    the same seeds. Each finished point is appended (fsync) to ``out_dir/points.jsonl`` and
    skipped on a re-run when its key matches: a sha256 of everything that determines its value
    (the model's folder, EMA and content fingerprint, the attack's full settings and attacked
    step indices, the sampler's settings, num_samples, seed, and the scoring:
    ``metric_key``, default :func:`metric_identity` of ``metric_fn``), so a killed run resumes
    with identical results (``metric_fn`` must be deterministic) and a changed model, setting,
    metric or reference is recomputed, never reused. Each point records the settings it was
    computed with, which steps were attacked, and the paired per-sample ``damage`` against the
    clean samples of the same seeds (:func:`paired_damage`; the clean samples are kept in
    ``out_dir/clean/`` for a resumed run, their sha256 in the clean point's record: a file
    that does not match it is resampled, with a warning) with its per-sample values,
    ``improved_under_attack`` and the convergence record (as :func:`run_attack`). Then each
    attack point gets ``relative_to_random`` and, with several models, ``comparisons``
    (:func:`~dmattack.evaluation.attack_eval.render.write_curve`). Writes ``curve.csv``,
    ``curve.json``
    and ``curve.png``; ``progress(done, total, record)`` is called after each point
    (``record["resumed"]`` is True for one read back from the store). Returns the
    ``curve.json`` content. ``out_dir`` is checked for writability and locked against a
    second writer before any point is computed.

    Under torchrun each process samples its slice of every point's seeds and keeps it in
    ``out_dir/shards/<point>/<first>-<last+1>.safetensors`` until rank 0 has recorded the
    point; a re-run with the same slicing (same number of processes) reuses finished slices.
    Rank 0 scores and writes; every rank returns the curve.
    """
    out = Path(out_dir)
    plans = [AttackPlan.of(a) for a in attacks]
    args = (models, plans, num_samples, seed, sampler, batch_size, metric_fn, device, out,
            metric, progress, metric_identity(metric_fn, metric_key), first_sample)
    if not distributed.is_main():
        return _run_curve_locked(*args)
    check_writable(out, 32 * MiB)
    with lock_folder(out, "curve folder", command="dmattack curve"):
        return _run_curve_locked(*args)


@dataclass
class _CurveRun:
    """What every point of one :func:`run_curve` shares."""

    plans: list[AttackPlan]  # the attack points (percent > 0)
    num_samples: int
    seed: int
    first_sample: int
    batch_size: int
    metric_fn: MetricFn
    device: torch.device | str
    out: Path
    scoring: Any
    names: dict[str, str]
    done: dict[str, dict[str, Any]]  # the store's points by key
    main: bool = field(default_factory=distributed.is_main)

    def __post_init__(self) -> None:
        self.all_seeds = sample_seeds(self.seed, self.num_samples, start=self.first_sample)
        self.seeds = distributed.shard(self.all_seeds, self.batch_size)  # this process's
        self.first, self.stop = distributed.shard_range(self.num_samples, self.batch_size)
        self.seed_key: Any = self.seed if not self.first_sample else {
            "seed": self.seed, "first_sample": self.first_sample}


@dataclass
class _Clean:
    """A model's clean point as its attack points need it."""

    file: Path  # where its samples are cached
    metrics: dict[str, Any] = field(default_factory=dict)
    samples: torch.Tensor | None = None  # rank 0, once sampled or read back
    sha256: str | None = None  # of the samples, from the clean point's record


def _run_curve_locked(models: Sequence[LoadedModel], plans: Sequence[AttackPlan],
                      num_samples: int, seed: int, sampler: SamplerConfig, batch_size: int,
                      metric_fn: MetricFn, device: torch.device | str, out: Path,
                      metric: str | None,
                      progress: Callable[[int, int, dict[str, Any]], None] | None,
                      scoring: Any, first_sample: int) -> dict[str, Any]:
    """:func:`run_curve` once ``out`` is locked (rank 0) or without a lock (other ranks)."""
    main = distributed.is_main()
    done = distributed.broadcast_object(read_store(out / POINTS) if main else None)
    run = _CurveRun([p for p in plans if p.percent > 0], num_samples, seed, first_sample,
                    batch_size, metric_fn, device, out, scoring, _model_names(models), done)
    # one chain per model, one setting for clean and attacked
    chains = [SamplingChain(m.diffusion, sampler.for_shape(m.data_shape)) for m in models]
    check_chains(models, chains, run.plans)
    total = len(models) * (1 + len(run.plans))
    records: list[dict[str, Any]] = []
    for loaded, chain in zip(models, chains, strict=True):
        for record in _model_points(run, loaded, chain):
            records.append(record)
            if progress is not None:
                progress(len(records), total, record)
    if not main:
        return distributed.broadcast_object(None)
    with contextlib.suppress(OSError):
        (out / SHARDS).rmdir()  # only when empty: slices of other settings are kept
    protocol = {"num_samples": num_samples, "seed": seed, "first_sample": first_sample,
                "batch_size": batch_size,
                "sampler": chains[0].to_dict() if models else sampler.to_dict(),
                "attacks": sorted({r["label"] for r in records if r["attack"]}),
                "device": str(device), "world_size": distributed.world_size()}
    curve = write_curve(out, records, run.plans, models, metric, protocol)
    return distributed.broadcast_object(curve)


def _model_points(run: _CurveRun, loaded: LoadedModel, chain: SamplingChain
                  ) -> Iterator[dict[str, Any]]:
    """The clean point of ``loaded``, then each attack point: read back from the store when
    its key is there, else computed and appended."""
    model_id = model_identity(loaded)
    # every attack's record before any sampling: a bad setting fails at once
    attack_records = [plan.record(loaded.model, chain) for plan in run.plans]
    _check_labels(attack_records)
    clean_key = point_key(loaded, model_id, "clean", chain.sampler, run.num_samples,
                          run.seed_key, run.scoring)
    clean = _Clean(clean_path(run.out, clean_key))
    for plan, attack in [(None, None), *zip(run.plans, attack_records, strict=True)]:
        label = "clean" if plan is None else plan.label
        steps = steps_record(plan, chain)
        key = point_key(loaded, model_id, label, chain.sampler, run.num_samples, run.seed_key,
                        run.scoring, None if attack is None else {**attack, **steps})
        if key in run.done:
            record = {**run.done[key], "resumed": True}
            if run.main:  # killed after recording the point, before removing its slices
                shutil.rmtree(shard_dir(run.out, key), ignore_errors=True)
        else:
            record = _compute_point(run, loaded, chain, plan, attack, steps, key, model_id,
                                    clean)
        if plan is None:
            clean.metrics = record["metrics"]
            clean.sha256 = record.get("clean_samples_sha256")
        yield record


def _compute_point(run: _CurveRun, loaded: LoadedModel, chain: SamplingChain,
                   plan: AttackPlan | None, attack: dict[str, Any] | None,
                   steps: dict[str, Any], key: str, model_id: str, clean: _Clean
                   ) -> dict[str, Any]:
    """Sample a point (each process its slice, kept in ``shards/`` while sharded), score it on
    rank 0, append its record to the store and hand it to every rank."""
    diagnostics: dict[str, Any] = {}
    slices = shard_dir(run.out, key)
    samples, seconds = cached_slice(slices / f"{run.first}-{run.stop}.safetensors", point_samples,
                             loaded, chain, plan, run.seeds, run.batch_size, run.device,
                             diagnostics)
    seconds = max(distributed.all_gather_objects(seconds))
    if samples is not None:  # else no step is attacked at this chain length
        samples = distributed.gather_rows(samples)
    scored = _score(run, loaded, chain, plan, attack, samples, clean) if run.main else {}
    label = "clean" if plan is None else plan.label
    record = {
        "key": key, "model": loaded.source, "model_name": run.names[loaded.source],
        "ema": loaded.ema, "label": label,
        "series": "clean" if plan is None else plan.series,
        "method": "clean" if plan is None else plan.method,
        "control": plan is not None and plan.control,
        "percent": 0.0 if plan is None else float(plan.percent),
        "attack": attack, **steps,
        "sampler": chain.describe(), "sampler_settings": chain.sampler.to_dict(),
        "num_samples": run.num_samples, "seed": run.seed, "first_sample": run.first_sample,
        "clean_samples_sha256": scored.get("clean_digest"), "model_fingerprint": model_id,
        "scoring": run.scoring, "num_nonfinite": scored.get("nonfinite"),
        "metrics": scored.get("metrics", {}),
        "improved_under_attack": None if plan is None
        else improved_under_attack(clean.metrics, scored.get("metrics", {})),
        "damage": scored.get("damage"), "damage_per_sample": scored.get("per_sample"),
        **convergence_record(None if plan is None else diagnostics),
        "seconds": seconds,
    }
    if run.main:
        append_point(run.out / POINTS, record)
        shutil.rmtree(slices, ignore_errors=True)
    record = distributed.broadcast_object(record)
    run.done[key] = record
    return {**record, "resumed": False}


def _score(run: _CurveRun, loaded: LoadedModel, chain: SamplingChain, plan: AttackPlan | None,
           attack: dict[str, Any] | None, samples: torch.Tensor | None, clean: _Clean
           ) -> dict[str, Any]:
    """Rank 0's scoring of a point's gathered ``samples`` (None: no step attacked, so the
    clean samples): ``metrics``, ``nonfinite`` rows and, for the clean point,
    ``clean_digest`` (its samples are cached), else the paired ``damage`` and ``per_sample``
    against the model's clean samples (read back or resampled when not in memory)."""
    label = "clean" if plan is None else plan.label
    nonfinite = None if samples is None else report_nonfinite(samples,
                                                              f"samples of point {label}")
    if plan is None:
        clean.samples = samples
        return {"metrics": run.metric_fn(samples), "nonfinite": nonfinite,
                "clean_digest": write_clean(clean.file, samples)}
    if clean.samples is None:
        clean.samples = clean_samples(loaded, chain, clean.file, clean.sha256, run.all_seeds,
                                      run.batch_size, run.device)
    attacked = clean.samples if samples is None else samples  # None: the clean run
    if samples is None:
        nonfinite = nonfinite_rows(clean.samples)
    metrics = dict(clean.metrics) if samples is None else run.metric_fn(samples)
    per_sample: PerSample = point_damage(clean.samples, attacked, attack, loaded.data_shape,
                                         run.device)
    return {"metrics": metrics, "nonfinite": nonfinite, "damage": summarize_damage(per_sample),
            "per_sample": per_sample}


def _check_labels(attack_records: Sequence[dict[str, Any]]) -> None:
    """ConfigError when two attacks share a label but differ in their settings."""
    by_label: dict[str, dict[str, Any]] = {}
    for rec in attack_records:
        if by_label.setdefault(rec["label"], rec) != rec:
            raise ConfigError(f"two attacks share the label {rec['label']!r} but differ in "
                              "their settings; give them distinct names "
                              "(AttackPlan(..., name=...))", field="name")


def _model_names(models: Sequence[LoadedModel]) -> dict[str, str]:
    """Each model's short name in tables: its folder's name, or its source where two share
    a name."""
    names = {m.source: Path(m.source).name or m.source for m in models}
    if len(set(names.values())) < len(names):
        return {m.source: m.source for m in models}
    return names


def curve_clean_samples(loaded: LoadedModel, out_dir: str | os.PathLike, *, num_samples: int,
                        seed: int, sampler: SamplerConfig, batch_size: int, metric_fn: MetricFn,
                        device: torch.device | str, metric_key: Any = None) -> torch.Tensor:
    """The clean samples (N, *shape) of ``loaded`` in the curve at ``out_dir`` made with these
    settings (as :func:`run_curve` was called): read from its store and verified against the
    sha256 in the clean point's record, else resampled with the same seeds."""
    out = Path(out_dir)
    chain = SamplingChain(loaded.diffusion, sampler.for_shape(loaded.data_shape))
    key = point_key(loaded, model_identity(loaded), "clean", chain.sampler, num_samples, seed,
                    metric_identity(metric_fn, metric_key))
    record = read_store(out / POINTS).get(key, {}) if (out / POINTS).exists() else {}
    return clean_samples(loaded, chain, clean_path(out, key),
                         record.get("clean_samples_sha256"), sample_seeds(seed, num_samples),
                         batch_size, device)
