"""Paired clean-versus-attacked evaluation and attacked-steps curves (docs/method.md §6, §8,
§11.1).

Clean and attacked samples use the same per-sample seeds: the x_T and every chain noise z of
sample i are identical in both runs (the attack draws from its own ATTACK stream), so a
difference in the metric is the attack's effect alone, and 0% attacked reproduces the clean
samples bit for bit. The metric is the caller's ``metric_fn(samples) -> dict[str, float]``
(samples (N, *shape) in model space, on CPU).

Under torchrun (:mod:`dmattack.core.distributed`) every process calls :func:`run_attack` /
:func:`run_curve` with the same arguments: each samples its contiguous slice of the seeds, rank
0 gathers them, scores, writes the files and sends the result to the others. A curve keeps each
process's finished slice of an unfinished point on disk (``shards/``), so a killed sharded
curve resumes inside a point, too.

One module per job:

- :mod:`.defaults`: the evaluation-protocol defaults of a model (:func:`default_protocol`);
- :mod:`.pairs`: paired clean/attacked sampling on a model's resolved chain;
- :mod:`.records`: what a result records: paired damage, attacked steps, convergence, model;
- :mod:`.store`: the JSONL point store and its keys, cached clean samples, shards, staged
  atomic writes;
- :mod:`.attack`: one attack (:func:`run_attack`) and the checks before a run
  (:func:`check_run`);
- :mod:`.curve`: curve orchestration (:func:`run_curve`, :func:`curve_specs`);
- :mod:`.render`: the curve's table, CSV, JSON and PNG.
"""

from ..damage import paired_damage
from .attack import Attack, check_run, run_attack
from .curve import curve_clean_samples, curve_specs, run_curve
from .defaults import EvalDefaults, default_protocol
from .records import convergence_record
from .store import (
    CLEAN,
    POINTS,
    SHARDS,
    metric_identity,
    model_identity,
    read_points,
    samples_sha256,
)

__all__ = [
    "CLEAN", "POINTS", "SHARDS", "Attack", "EvalDefaults", "check_run",
    "convergence_record", "curve_clean_samples", "curve_specs", "default_protocol",
    "metric_identity", "model_identity", "paired_damage", "read_points", "run_attack",
    "run_curve", "samples_sha256",
]
