"""A run's ``config.json``: reading it, checking every field a hand edit could break
(against the settings of :class:`~dmattack.training.config.TrainConfig`), and the model and
diffusion it describes. Every refusal is a one-line :class:`~dmattack.core.errors.RunFolderError`
naming the file and the field."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..core.errors import ConfigError, RunFolderError, first_line
from ..core.settings import check_field
from ..diffusion.gaussian import GaussianDiffusion, beta_schedule
from ..models import PRESETS, build_model
from ..training.config import TrainConfig

CONFIG = "config.json"


def diffusion_from_config(cfg: dict[str, Any]) -> GaussianDiffusion:
    d = cfg["diffusion"]
    return GaussianDiffusion(beta_schedule(d["schedule"], d["num_timesteps"]),
                             variance_type=d["variance_type"])


def model_from_config(cfg: dict[str, Any]) -> nn.Module:
    m = cfg["model"]
    return build_model(m["preset"], tuple(m["data_shape"]), m.get("dropout"))


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG
    if Path(run_dir).is_file():
        raise RunFolderError(f"run folder {run_dir} is a file, not a folder; pass the run's "
                             "folder")
    if not Path(run_dir).is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist")
    if not path.is_file():
        raise RunFolderError(f"{run_dir} is not a dmattack run: it has no {CONFIG}")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{path} is not valid JSON: {e}") from None
    except OSError as e:
        raise RunFolderError(f"cannot read {path}: {e.strerror or e}") from None
    validate_config(cfg, path)
    return cfg


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_config(cfg: Any, path: str | os.PathLike = CONFIG) -> None:
    """Check a run's config.json content (e.g. after a hand edit): every field needed to
    rebuild the model, its diffusion and, for a trained run, the training config, against the
    settings declared in :class:`~dmattack.training.config.TrainConfig`. Raises a one-line
    :class:`RunFolderError` naming the file and the first bad field."""
    if not isinstance(cfg, dict):
        raise RunFolderError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    for key in ("model", "diffusion", "data"):
        if not isinstance(cfg.get(key), dict):
            raise RunFolderError(f"{path}: field '{key}' is missing or not an object")
    m = cfg["model"]

    def check(section: str, key: str, name: str | None = None) -> None:
        where = f"{path}: field '{section}.{key}'"
        value = cfg[section].get(key)
        try:
            if value is None and key != "dropout":
                raise ConfigError(f"{where} is missing")
            check_field(TrainConfig, name or key, value, where)
        except ConfigError as e:
            raise RunFolderError(str(e)) from None

    check("model", "preset")
    check("model", "dropout")
    check("diffusion", "schedule")
    check("diffusion", "num_timesteps")
    check("diffusion", "variance_type")
    shape = m.get("data_shape")
    rank = 3 if PRESETS[m["preset"]].kind == "image" else 1
    if not (isinstance(shape, list) and len(shape) == rank and all(
            is_int(v) and 0 < v <= 1 << 16 for v in shape)):
        raise RunFolderError(f"{path}: field 'model.data_shape' = {shape!r} is invalid; "
                             f"allowed: a list of {rank} positive integers for preset "
                             f"{m['preset']}")
    name = cfg["data"].get("name")
    if name is not None and not isinstance(name, str):
        raise RunFolderError(f"{path}: field 'data.name' = {name!r} is invalid; allowed: a "
                             "dataset name")
    if "train" in cfg or cfg.get("kind") == "dmattack-run":
        _validate_train_section(cfg, path)


def _validate_train_section(cfg: dict[str, Any], path: str | os.PathLike) -> None:
    t = cfg.get("train")
    if not isinstance(t, dict):
        raise RunFolderError(f"{path}: field 'train' is missing or not an object")
    try:
        train_cfg = TrainConfig.from_dict(t).resolved()
        train_cfg.validate()
    except ConfigError as e:
        field_name = getattr(e, "field", None)
        where = f"field 'train.{field_name}'" if field_name else "field 'train'"
        raise RunFolderError(f"{path}: {where}: {first_line(e)}") from None
    # the sections the model is rebuilt from must agree with the training config
    for section, key, value in (("model", "preset", train_cfg.preset),
                                ("model", "dropout", train_cfg.dropout),
                                ("diffusion", "schedule", train_cfg.schedule),
                                ("diffusion", "num_timesteps", train_cfg.num_timesteps),
                                ("diffusion", "variance_type", train_cfg.variance_type)):
        if cfg[section].get(key) != value:
            raise RunFolderError(f"{path}: field '{section}.{key}' is "
                                 f"{cfg[section].get(key)!r} but the run was trained with "
                                 f"train.{key} = {value!r}; restore the original value")
