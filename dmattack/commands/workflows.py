"""What the sampling and scoring commands do, as library calls: ``dmattack sample`` is
:func:`write_samples`, ``dmattack evaluate`` is :func:`evaluate_model` (``attack`` and ``curve``
are :func:`~dmattack.evaluation.attack_eval.run_attack` and
:func:`~dmattack.evaluation.attack_eval.run_curve`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..core import distributed
from ..core import progress as progress_mod
from ..core.errors import ConfigError, InputFileError, first_line
from ..core.io import check_writable, provenance, write_atomic, write_json
from ..core.seeding import sample_seeds
from ..core.tensors import report_nonfinite
from ..diffusion.sampling import SamplerConfig, sample_batched, sample_sharded
from ..evaluation.metrics import EvaluationSetup, memorization_train_set
from ..runs.checkpoints import LoadedModel

StepProgress = Callable[[int], None]
"""``progress(step)``: called once per reverse step of each batch drawn."""


def write_samples(loaded: LoadedModel, sampler: SamplerConfig, num_samples: int,
                  batch_size: int, seed: int, folder: str | os.PathLike, first_sample: int = 0,
                  device: torch.device | str = "cpu", progress: StepProgress | None = None
                  ) -> Path | None:
    """Draw samples ``first_sample … first_sample+num_samples−1`` and write
    ``samples.safetensors`` (model space (N, *shape)), ``samples.png`` and ``samples.json``
    (settings, provenance) into ``folder``. Under torchrun the seeds are split across processes
    and rank 0 writes (the other ranks return None). ``progress(step)`` ticks once per
    reverse step of each of this process's batches; the steps are also reported as the
    stage ``sample`` (:mod:`dmattack.core.progress`)."""
    from safetensors.torch import save_file

    from ..core.visualize import save_samples_png

    folder = Path(folder)
    sampler = sampler.for_shape(loaded.data_shape)
    label = sampler.describe(loaded.diffusion.num_timesteps)
    seeds = sample_seeds(seed, num_samples, start=first_sample)
    ticks = num_sampling_ticks(loaded, sampler, num_samples, batch_size)
    with torch.no_grad(), progress_mod.stage("sample", ticks, "steps") as st:
        x = sample_sharded(loaded.model, loaded.diffusion, loaded.data_shape, seeds, batch_size,
                           sampler, device=device, progress=_also(progress, st))
    if x is None:
        return None
    write_atomic(folder / "samples.safetensors",
                 lambda p: save_file({"samples": x.contiguous()}, str(p)))
    save_samples_png(x, folder / "samples.png", title=label)
    write_json(folder / "samples.json", {
        "what": "model-space samples (N, *shape), images in [-1, 1]",
        "num_samples": num_samples, "seed": seed, "first_sample": first_sample,
        "sampler": sampler.to_dict(), "sampler_label": label, "source": loaded.source,
        "ema": loaded.ema, "fingerprint": loaded.fingerprint,
        "num_nonfinite": report_nonfinite(x, "samples"),
        "world_size": distributed.world_size(),
        **provenance(),
    })
    return folder


def _also(progress: StepProgress | None, st: progress_mod.StageHandle) -> StepProgress:
    """``progress`` (if any), then one step of stage ``st``, per call."""

    def tick(step: int) -> None:
        if progress is not None:
            progress(step)
        st.advance()

    return tick


def num_sampling_ticks(loaded: LoadedModel, sampler: SamplerConfig, num_samples: int,
                       batch_size: int) -> int:
    """How often ``progress`` is called while this process draws its share of the samples."""
    seeds = list(range(num_samples))
    mine = len(distributed.shard(seeds, batch_size))
    return sampler.num_steps(loaded.diffusion.num_timesteps) * -(-mine // batch_size)


def write_pairs(out_dir: str | os.PathLike, title: str = "") -> Path | None:
    """``pairs.png`` beside an attack's ``samples.safetensors`` (clean and attacked images side
    by side, each pair's damage under it: :func:`~dmattack.core.visualize.save_pairs_png`); None
    when the samples are not images or on a torchrun rank other than 0."""
    from safetensors.torch import load_file

    from ..core.visualize import save_pairs_png

    out = Path(out_dir)
    if not distributed.is_main():
        return None
    x = load_file(str(out / "samples.safetensors"))
    return out / "pairs.png" if save_pairs_png(x["clean"], x["attacked"], out / "pairs.png",
                                               title) else None


def read_sample_files(files: Sequence[str | os.PathLike], key: str,
                      shape: Sequence[int]) -> torch.Tensor:
    """Tensor ``key`` of each safetensors file, concatenated (e.g. shards); a one-line
    :class:`InputFileError` for an unreadable file or a shape other than (N, *shape)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    parts = []
    for f in files:
        try:
            parts.append(load_file(str(f))[key])
        except (OSError, SafetensorError, KeyError) as e:
            raise InputFileError(f"cannot read tensor {key!r} from {f}: {first_line(e)}"
                                 ) from None
    x = torch.cat(parts)
    if tuple(x.shape[1:]) != tuple(shape):
        raise InputFileError(f"samples of shape {tuple(x.shape[1:])} do not match the model's "
                             f"{tuple(shape)}")
    return x


def evaluate_model(loaded: LoadedModel, setup: EvaluationSetup, out_dir: str | os.PathLike,
                   samples: torch.Tensor | None = None, samples_from: dict[str, Any] | None = None,
                   device: torch.device | str = "cpu", progress: StepProgress | None = None,
                   **evaluate_kwargs: Any) -> dict[str, Any]:
    """Score ``samples`` (N, *shape) of ``loaded`` (default: draw ``setup.num_samples`` with
    ``setup.sampler`` from seed ``setup.config.seed``) and write ``results.json`` (metrics,
    protocol, provenance) into ``out_dir``; returns the metrics. ``setup.scoring`` and
    ``evaluate_kwargs`` (which win) go to :func:`evaluators.evaluate` (the metrics' options,
    e.g. feature_extractor, memorization_space, dinov2_dir, inception_weights).

    Before sampling, everything scoring needs is checked: the weights of every feature
    extractor (a one-line :class:`~evaluators.errors.MetricError` when missing) and that
    ``out_dir`` is writable. Drawn samples are written to ``out_dir/samples.safetensors``
    (with ``samples.json``) before scoring, so a scoring failure keeps them: score them later
    with ``dmattack evaluate --samples out_dir/samples.safetensors``.

    Sampling and scoring are the progress stages ``sample`` and ``scoring``
    (:mod:`dmattack.core.progress`); their wall times (s) go into ``results.json["seconds"]``."""
    from evaluators import evaluate, scoring_identity

    from ..evaluation.scoring import metric_keywords

    out = Path(out_dir)
    evaluate_kwargs = {**setup.scoring, **evaluate_kwargs}
    scoring_identity(setup.metrics, tuple(loaded.data_shape),
                     **{k: v for k, v in evaluate_kwargs.items() if k in metric_keywords()})
    check_writable(out)
    seconds: dict[str, float] = {}
    if samples is None:
        samples, source, seconds["sampling"] = _draw_samples(loaded, setup, out, device,
                                                             progress)
    elif samples_from is None:
        raise ConfigError("evaluate_model: say where given samples come from (samples_from)")
    else:
        source = samples_from
    with progress_mod.stage("scoring") as scoring:  # features, reference statistics
        train_set = (memorization_train_set(loaded, setup.reference)
                     if "memorization" in setup.metrics else None)
        result = evaluate(
            samples, setup.reference.data, setup.metrics, truth=setup.reference.truth,
            reference_name=setup.reference.name,
            protocol={**setup.protocol(), "source": loaded.source, "ema": loaded.ema,
                      "samples_from": source},
            train_set=train_set, out_dir=out_dir, **evaluate_kwargs)
    seconds["scoring"] = round(scoring.seconds, 3)
    write_json(out / "results.json", {"kind": "evaluate", "metrics": result,
                                      "seconds": seconds, "provenance": provenance()})
    return result


def _draw_samples(loaded: LoadedModel, setup: EvaluationSetup, out: Path,
                  device: torch.device | str, progress: StepProgress | None
                  ) -> tuple[torch.Tensor, dict[str, Any], float]:
    """Draw ``setup.num_samples`` (N, *shape) with ``setup.sampler`` from seed
    ``setup.config.seed`` (progress stage ``sample``) and keep them in ``out``
    (:func:`_keep_samples`); returns them, where they came from and the seconds taken."""
    cfg = setup.config
    source = {"sampler": setup.sampler.to_dict(), "sampler_label": setup.sampler_label,
              "seed": cfg.seed, "first_sample": cfg.first_sample,
              "batch_size": setup.batch_size, "file": "samples.safetensors"}
    ticks = setup.sampler.num_steps(loaded.diffusion.num_timesteps) * -(
        -setup.num_samples // setup.batch_size)
    with torch.no_grad(), progress_mod.stage("sample", ticks, "steps") as st:
        samples = sample_batched(loaded.model, loaded.diffusion, loaded.data_shape,
                                 sample_seeds(cfg.seed, setup.num_samples,
                                              start=cfg.first_sample),
                                 setup.batch_size, setup.sampler,
                                 device=device, progress=_also(progress, st))
    _keep_samples(loaded, setup, samples, out)
    return samples, source, round(st.seconds, 3)


def _keep_samples(loaded: LoadedModel, setup: EvaluationSetup, x: torch.Tensor,
                  out: Path) -> None:
    """``samples.safetensors`` + ``samples.json`` of an evaluation, written before scoring."""
    from safetensors.torch import save_file

    cfg = setup.config
    write_atomic(out / "samples.safetensors",
                 lambda p: save_file({"samples": x.float().contiguous()}, str(p)))
    write_json(out / "samples.json", {
        "what": "model-space samples (N, *shape), images in [-1, 1]",
        "num_samples": len(x), "seed": cfg.seed, "first_sample": cfg.first_sample,
        "sampler": setup.sampler.to_dict(), "sampler_label": setup.sampler_label,
        "source": loaded.source, "ema": loaded.ema, "fingerprint": loaded.fingerprint,
        "num_nonfinite": report_nonfinite(x, "samples"), **provenance()})
