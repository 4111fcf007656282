"""Run folders: what a trained model is saved as, and how it is loaded back.

Layout of a run folder::

    config.json          full resolved config, seed, library versions, git revision
    checkpoint/          latest checkpoint (checkpoint.prev/ keeps the one before)
        model/ ema/      U-Nets: diffusers ``save_pretrained`` folders;
        model.safetensors ema.safetensors   vector models (MLP)
        state.pt         optimizer state and step (tensors only: loads with weights_only=True)
        meta.json        step and what the checkpoint holds
    samples/             PNG grids written during training
    log.jsonl            training losses

Every file is written atomically; a checkpoint becomes visible only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .diffusion import GaussianDiffusion, beta_schedule
from .io import write_json
from .models import UNetEps, build_model

CONFIG = "config.json"
CHECKPOINT = "checkpoint"
PREVIOUS = "checkpoint.prev"


class RunError(ValueError):
    """A folder that is not a usable run (one-line message naming the path)."""


@dataclass
class LoadedModel:
    """A ready-to-sample model: ``eps = model(x_t, t)`` plus its diffusion.

    ``data_shape`` is the per-sample shape in model space; ``dataset`` names the clean
    reference data (None for an external pipeline without one); ``source`` is the folder.
    """

    model: nn.Module
    diffusion: GaussianDiffusion
    data_shape: tuple[int, ...]
    source: str
    dataset: str | None = None
    ema: bool = True
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def preset(self) -> str | None:
        return self.config.get("model", {}).get("preset")


def diffusion_from_config(cfg: dict[str, Any]) -> GaussianDiffusion:
    d = cfg["diffusion"]
    return GaussianDiffusion(beta_schedule(d["schedule"], d["num_timesteps"]),
                             variance_type=d["variance_type"])


def model_from_config(cfg: dict[str, Any]) -> nn.Module:
    m = cfg["model"]
    return build_model(m["preset"], tuple(m["data_shape"]), m.get("dropout"))


# ----------------------------------------------------------------------------- saving
def _save_weights(model: nn.Module, folder: Path, name: str) -> None:
    if isinstance(model, UNetEps):
        model.unet.save_pretrained(folder / name, safe_serialization=True)
    else:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(folder / f"{name}.safetensors"))


def save_checkpoint(run_dir: Path, model: nn.Module, ema: nn.Module, state: dict[str, Any],
                    step: int) -> Path:
    """Write a complete checkpoint into a temp folder, then swap it in; the previous
    checkpoint is kept as ``checkpoint.prev``."""
    run_dir = Path(run_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.", dir=run_dir))
    try:
        _save_weights(model, tmp, "model")
        _save_weights(ema, tmp, "ema")
        torch.save(state, tmp / "state.pt")
        write_json(tmp / "meta.json", {"step": step, "unet": isinstance(model, UNetEps)})
        current, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS
        if current.exists():
            if previous.exists():
                shutil.rmtree(previous)
            os.replace(current, previous)
        os.replace(tmp, current)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return run_dir / CHECKPOINT


# ----------------------------------------------------------------------------- loading
def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG
    if not Path(run_dir).is_dir():
        raise RunError(f"run folder {run_dir} does not exist")
    if not path.is_file():
        raise RunError(f"{run_dir} is not a dmattack run: it has no {CONFIG}")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is not valid JSON: {e}") from None
    for key in ("model", "diffusion", "data"):
        if not isinstance(cfg.get(key), dict):
            raise RunError(f"{path}: field '{key}' is missing or not an object")
    return cfg


def _load_weights(model: nn.Module, folder: Path, name: str) -> None:
    if isinstance(model, UNetEps):
        from diffusers import UNet2DModel

        model.unet = UNet2DModel.from_pretrained(folder / name, low_cpu_mem_usage=False)
    else:
        model.load_state_dict(load_file(str(folder / f"{name}.safetensors")))


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """The newest complete checkpoint of a run (falls back to ``checkpoint.prev``)."""
    for name in (CHECKPOINT, PREVIOUS):
        d = Path(run_dir) / name
        if (d / "meta.json").is_file():
            return d
    raise RunError(f"run {run_dir} has no checkpoint yet")


def load_weights_into(model: nn.Module, ema: nn.Module | None, ckpt: Path) -> dict[str, Any]:
    """Load model (and EMA) weights of a checkpoint folder; returns its meta.json."""
    try:
        _load_weights(model, ckpt, "model")
        if ema is not None:
            _load_weights(ema, ckpt, "ema")
        return json.loads((ckpt / "meta.json").read_text())
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise RunError(f"checkpoint {ckpt} is unreadable or does not match its config: "
                       f"{str(e).splitlines()[0]}") from None


def load_run(run_dir: str | os.PathLike, use_ema: bool = True,
             device: torch.device | str = "cpu") -> LoadedModel:
    """Load a trained run for sampling (EMA weights by default), in eval mode."""
    cfg = read_config(run_dir)
    model = model_from_config(cfg)
    ckpt = checkpoint_dir(run_dir)
    try:
        _load_weights(model, ckpt, "ema" if use_ema else "model")
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise RunError(f"checkpoint {ckpt} is unreadable: {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    return LoadedModel(
        model=model,
        diffusion=diffusion_from_config(cfg),
        data_shape=tuple(cfg["model"]["data_shape"]),
        source=str(Path(run_dir).resolve()),
        dataset=cfg["data"].get("name"),
        ema=use_ema,
        config=cfg,
    )


def newest_run(root: str | os.PathLike = "runs") -> Path:
    """The most recently modified run folder (one with a checkpoint) under ``root``."""
    root = Path(root)
    runs = [p for p in root.glob("*") if (p / CONFIG).is_file() and (
        (p / CHECKPOINT / "meta.json").is_file() or (p / PREVIOUS / "meta.json").is_file())]
    if not runs:
        raise RunError(f"no trained run found under {root}/; train one with `dmattack train` "
                       "or pass --run")
    return max(runs, key=lambda p: (p / CONFIG).stat().st_mtime)
