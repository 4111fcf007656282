"""diffusers DDPM pipelines: load one as a :class:`LoadedModel`, export a U-Net run as one.

A pipeline folder has the layout of ``google/ddpm-cifar10-32``: ``model_index.json``, ``unet/``
(a ``UNet2DModel``) and ``scheduler/`` (a ``DDPMScheduler`` config). Only ε-prediction with a
fixed variance maps onto :class:`GaussianDiffusion`; anything else is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDPMPipeline, DDPMScheduler

from ..core.errors import ConfigError, InputFileError, first_line
from ..core.io import provenance, write_json
from ..core.oserrors import os_errors
from ..diffusion.gaussian import GaussianDiffusion, beta_schedule
from ..diffusion.sampling import clip_default
from ..models import PRESETS, UNetEps
from .checkpoints import LoadedModel, digest, load_unet_folder

EXPORT_META = "dmattack.json"
"""Written beside an exported pipeline: what it came from (dataset, EMA, data shape, the model
config with its preset, provenance), so the exported weights get the run's default protocol."""

# diffusers variance_type -> ours. The *_log forms are the same variances computed in log space.
_VARIANCES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
              "fixed_large": "fixed_large", "fixed_large_log": "fixed_large"}


def _betas(scheduler: DDPMScheduler) -> np.ndarray:
    """float64 betas of a DDPMScheduler (diffusers computes them in float32)."""
    cfg = scheduler.config
    T = cfg["num_train_timesteps"]
    if cfg.get("trained_betas") is not None:
        return np.asarray(cfg["trained_betas"], dtype=np.float64)
    name = cfg.get("beta_schedule", "linear")
    if name == "linear":
        return np.linspace(cfg["beta_start"], cfg["beta_end"], T, dtype=np.float64)
    if name == "scaled_linear":
        return np.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, T,
                           dtype=np.float64) ** 2
    if name == "squaredcos_cap_v2":
        return beta_schedule("cosine", T)
    # other schedules (e.g. sigmoid): take diffusers' own float32 betas
    return scheduler.betas.double().numpy()


def _check_scheduler(cfg: dict[str, Any], where: Path) -> str:
    """Refuse settings GaussianDiffusion cannot express; returns our variance type."""
    if cfg.get("prediction_type", "epsilon") != "epsilon":
        raise InputFileError(f"{where}: prediction_type {cfg['prediction_type']!r} is not "
                             "supported (only 'epsilon')")
    variance = cfg.get("variance_type") or "fixed_small"
    if variance not in _VARIANCES:
        raise InputFileError(f"{where}: variance_type {variance!r} is not supported (learned "
                         f"variances are not); allowed: {', '.join(_VARIANCES)}")
    if cfg.get("thresholding"):
        raise InputFileError(f"{where}: dynamic thresholding is not supported")
    if cfg.get("rescale_betas_zero_snr"):
        raise InputFileError(f"{where}: rescale_betas_zero_snr is not supported")
    if cfg.get("clip_sample") and cfg.get("clip_sample_range", 1.0) != 1.0:
        raise InputFileError(f"{where}: clip_sample_range {cfg['clip_sample_range']} is not "
                         "supported (only 1.0)")
    return _VARIANCES[variance]


def load_pipeline(path: str | os.PathLike, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a local diffusers DDPM pipeline folder for sampling and attacks, in eval mode.

    The scheduler config sets the diffusion: ``num_train_timesteps``, the betas (``linear``,
    ``scaled_linear``, ``squaredcos_cap_v2`` recomputed in float64; ``trained_betas`` as given),
    ``variance_type`` (``fixed_small``/``fixed_large``). ``clip_sample`` is a sampler setting:
    it is kept in ``config["clip_sample"]`` (``default_protocol`` turns it into
    ``SamplerConfig.clip_denoised``). A folder written by :func:`export_pipeline` gets back
    the run's dataset, EMA flag and model config (``preset``), so ``default_protocol`` gives the
    run's protocol. Raises a one-line ValueError for a missing folder or file, for settings
    other than ε-prediction with a fixed variance, and for a ``dmattack.json`` that does not
    match the U-Net.
    """
    root = Path(path)
    for need in (root, root / "unet" / "config.json", root / "scheduler" / "scheduler_config.json"):
        if not need.exists():
            raise InputFileError(f"{root} is not a diffusers DDPM pipeline folder: {need} is "
                                 "missing")
    if not any((root / "unet").glob("*.safetensors")):
        pickled = sorted(p.name for p in (root / "unet").glob("*.bin"))
        raise InputFileError(f"{root / 'unet'} has no .safetensors weights"
                             + (f" (only pickled {', '.join(pickled)}, which is never loaded: "
                                "it could execute code); convert it to safetensors"
                                if pickled else ""))
    try:
        scheduler = DDPMScheduler.from_pretrained(root / "scheduler")
        unet, weights = load_unet_folder(root / "unet", InputFileError)
    except InputFileError:
        raise
    except (OSError, RuntimeError, ValueError, TypeError) as e:
        raise InputFileError(f"{root}: cannot load the pipeline: {first_line(e)}") from None
    sched_cfg = dict(scheduler.config)
    variance = _check_scheduler(sched_cfg, root / "scheduler")
    if unet.config.out_channels != unet.config.in_channels:
        raise InputFileError(f"{root / 'unet'}: out_channels {unet.config.out_channels} != "
                         f"in_channels {unet.config.in_channels} (learned variance is not "
                         "supported)")
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    data_shape = (unet.config.in_channels, h, w)
    meta = _read_export_meta(root / EXPORT_META, data_shape)
    config = {"kind": "diffusers-pipeline", "clip_sample": bool(sched_cfg["clip_sample"]),
              "scheduler": sched_cfg, "exported_from": meta.get("source")}
    if meta.get("model") is not None:
        config["model"] = meta["model"]
    return LoadedModel(
        model=UNetEps(unet).to(device).eval(),
        diffusion=GaussianDiffusion(_betas(scheduler), variance_type=variance),
        data_shape=data_shape,
        source=str(root.resolve()),
        dataset=meta.get("dataset"),
        ema=meta.get("ema", False),
        config=config,
        fingerprint=pipeline_fingerprint(weights, sched_cfg),
    )


def _read_export_meta(path: Path, data_shape: tuple[int, ...]) -> dict[str, Any]:
    """``dmattack.json`` of an exported pipeline ({} when absent), checked against the U-Net's
    per-sample ``data_shape``; its ``model`` is a run's model config with a known preset."""
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputFileError(f"{path}: not readable JSON ({first_line(e)})") from None
    if not isinstance(meta, dict):
        raise InputFileError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    shape = meta.get("data_shape")
    if shape is not None and tuple(shape) != data_shape:
        raise InputFileError(f"{path}: data_shape {list(shape)} does not match the U-Net's "
                             f"{list(data_shape)}")
    model = meta.get("model")
    if model is not None:
        preset = model.get("preset") if isinstance(model, dict) else None
        if preset not in PRESETS:
            raise InputFileError(f"{path}: model preset {preset!r} is unknown; allowed: "
                                 f"{', '.join(PRESETS)}")
        if tuple(model.get("data_shape") or data_shape) != data_shape:
            raise InputFileError(f"{path}: model data_shape {model['data_shape']} does not "
                                 f"match the U-Net's {list(data_shape)}")
    return meta


def pipeline_fingerprint(unet_weights: dict[str, str], scheduler_config: dict[str, Any]
                         ) -> str:
    """sha256 over ``unet_weights`` (the sha256 of every file of ``unet/`` that loading read,
    by name: :func:`~dmattack.runs.checkpoints.load_unet_folder`) and the scheduler's effective
    config
    (diffusers' bookkeeping keys ``_*`` left out): it changes whenever anything that
    determines the samples does."""
    scheduler = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    return digest({"unet": unet_weights, "scheduler": scheduler})


def export_pipeline(loaded: LoadedModel, out_dir: str | os.PathLike) -> Path:
    """Write ``loaded`` (a U-Net model) as a diffusers ``DDPMPipeline`` folder, atomically.

    The scheduler gets the exact betas (``trained_betas``, float64 in the JSON), our variance
    type and ``clip_sample`` from ``loaded.config`` (a run: True for images, as dmattack samples
    them with x̂_0 clipped, :func:`~dmattack.diffusion.sampling.clip_default`). ``dmattack.json``
    beside it
    records the source run, dataset, EMA, data shape, the model config (with its preset, which
    chooses the default protocol) and provenance. Vector (MLP) models and respaced diffusions
    raise a one-line ValueError.
    """
    if not isinstance(loaded.model, UNetEps):
        raise ConfigError(f"cannot export {type(loaded.model).__name__} from {loaded.source}: "
                         "diffusers has no pipeline for vector data (only U-Net models export)")
    d = loaded.diffusion
    if not np.array_equal(d.timestep_map, np.arange(d.num_timesteps)):
        raise ConfigError("cannot export a respaced diffusion; export the full training schedule")
    scheduler = DDPMScheduler(
        num_train_timesteps=d.num_timesteps,
        trained_betas=d.betas.tolist(),
        variance_type=d.variance_type,
        clip_sample=bool(loaded.config.get("clip_sample", clip_default(loaded.data_shape))),
        prediction_type="epsilon",
    )
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old = out.with_name(f".{out.name}.old")
    try:
        with os_errors(out):  # a full disk or name too long: one line naming the folder
            DDPMPipeline(unet=loaded.model.unet, scheduler=scheduler).save_pretrained(tmp)
        write_json(tmp / EXPORT_META, {
            "source": loaded.source, "dataset": loaded.dataset, "ema": loaded.ema,
            "data_shape": list(loaded.data_shape), "model": loaded.config.get("model"),
            **provenance()})
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover)
    return out
