"""Run folders (dmattack.runs.checkpoints): config.json checks that delegate to TrainConfig's
declared
settings, loading, newest-run lookup."""

import json
import shutil

import pytest
from conftest import invoke_cli

from dmattack.core.errors import ConfigError, RunFolderError
from dmattack.runs.checkpoints import load_run, newest_run, read_config
from dmattack.runs.config import validate_config
from dmattack.training.config import MAX_TIMESTEPS, TrainConfig
from dmattack.training.train import resume_config

_cli = invoke_cli

EDITS = [
    (lambda c: c["model"].update(preset="huge"), "model.preset"),
    (lambda c: c["model"].update(data_shape=[3, "x"]), "model.data_shape"),
    (lambda c: c["model"].update(data_shape=[1, 8, 8]), "model.data_shape"),
    (lambda c: c["model"].update(dropout=2), "model.dropout"),
    (lambda c: c["diffusion"].update(num_timesteps=-5), "diffusion.num_timesteps"),
    (lambda c: c["diffusion"].update(num_timesteps=500), "diffusion.num_timesteps"),
    (lambda c: c["diffusion"].update(schedule="quadratic"), "diffusion.schedule"),
    (lambda c: c["diffusion"].update(variance_type="learned"), "diffusion.variance_type"),
    (lambda c: c.pop("diffusion"), "'diffusion'"),
    (lambda c: c["train"].update(steps="many"), "train.steps"),
    (lambda c: c["train"].update(lr=-1), "train.lr"),
    (lambda c: c["train"].update(nan_policy="ignore"), "train.nan_policy"),
    (lambda c: c["train"].update(colour="red"), "train.colour"),
    (lambda c: c["train"].update(device="gpu9"), "train.device"),
    (lambda c: c["train"]["objective"].update(lam="big"), "train.objective"),
    (lambda c: c.update(train=[1, 2]), "'train'"),
    (lambda c: c["data"].update(name=5), "data.name"),
]


@pytest.mark.parametrize("edit,field", EDITS, ids=[f for _, f in EDITS])
def test_hand_edited_config_names_the_field(two_checkpoints, edit, field):
    run = two_checkpoints
    cfg = json.loads((run / "config.json").read_text())
    edit(cfg)
    (run / "config.json").write_text(json.dumps(cfg))
    for call in (lambda: read_config(run), lambda: load_run(run), lambda: resume_config(run)):
        with pytest.raises(RunFolderError) as err:
            call()
        assert field in str(err.value) and "\n" not in str(err.value)
    result = _cli("sample", "--run", str(run), "--num-samples", "2")
    assert result.exit_code == 2 and field in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_config_that_is_not_an_object(two_checkpoints):
    (two_checkpoints / "config.json").write_text("[1, 2]")
    with pytest.raises(RunFolderError, match="expected a JSON object"):
        read_config(two_checkpoints)



def test_run_error_is_the_run_folder_error():
    assert issubclass(RunFolderError, ValueError)


def _allowed(message: str) -> str:
    return message.split("allowed: ", 1)[1]


@pytest.mark.parametrize("section,key,field,value", [
    ("diffusion", "num_timesteps", "num_timesteps", MAX_TIMESTEPS + 1),
    ("diffusion", "schedule", "schedule", "quadratic"),
    ("diffusion", "variance_type", "variance_type", "learned"),
    ("model", "dropout", "dropout", 1.0),
    ("model", "preset", "preset", "huge"),
])
def test_config_limits_are_the_train_configs(two_checkpoints, section, key, field, value):
    """A pipeline-style config (no train section) is checked against the very limits
    TrainConfig declares: the same 'allowed' text, no second copy."""
    cfg = read_config(two_checkpoints)
    cfg.pop("train")
    cfg.pop("kind")
    validate_config(cfg)  # the model and diffusion sections alone are fine
    cfg[section][key] = value
    with pytest.raises(RunFolderError, match=f"field '{section}.{key}'") as from_runs:
        validate_config(cfg)
    with pytest.raises(ConfigError) as from_config:
        TrainConfig(**{field: value})
    assert _allowed(str(from_runs.value)) == _allowed(str(from_config.value))


def test_train_section_errors_name_the_option(two_checkpoints):
    cfg = read_config(two_checkpoints)
    cfg["train"]["corrupt_fraction"] = 2
    with pytest.raises(RunFolderError,
                       match=r"field 'train.corrupt_fraction': .*\(--corrupt-fraction\)"
                       r" = 2 is invalid; allowed: a finite number >= 0 and <= 1"):
        validate_config(cfg, "x/config.json")


def test_load_run_round_trip(two_checkpoints):
    loaded = load_run(two_checkpoints)
    assert loaded.data_shape == (3,) and loaded.dataset == "oblique-plane" and loaded.ema
    assert loaded.preset == "mlp-small" and not loaded.model.training
    assert TrainConfig.from_dict(loaded.config["train"]).steps == 20


def test_newest_run(two_checkpoints, tmp_path):
    assert newest_run(two_checkpoints.parent) == two_checkpoints
    with pytest.raises(RunFolderError, match="no trained run found"):
        newest_run(tmp_path / "empty")
    shutil.rmtree(two_checkpoints / "checkpoint")
    shutil.rmtree(two_checkpoints / "checkpoint.prev")
    with pytest.raises(RunFolderError, match="no trained run found"):
        newest_run(two_checkpoints.parent)
