"""The guards of `dmattack train` live in the library, under the run folder's lock: train()
from Python refuses exactly what the command line refuses, and a refused call changes nothing."""

import json

import pytest
from conftest import invoke_cli, tiny_train_config

from dmattack.core.errors import ConfigError
from dmattack.training.train import resume_config, train


def snapshot(run_dir):
    return {p.relative_to(run_dir).as_posix(): p.read_bytes()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run trained for 20 steps."""
    return train(tiny_train_config(steps=20), tmp_path_factory.mktemp("guards") / "run")


def test_new_run_into_an_existing_run_is_refused(finished):
    before = snapshot(finished)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_train_config(steps=10), finished, resume=False)
    assert snapshot(finished) == before
    result = invoke_cli("train", "--dataset", "oblique-plane", "--preset", "mlp-small",
                        "--steps", "10", "--out", str(finished))
    assert result.exit_code == 2 and "already holds a run" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert snapshot(finished) == before


def test_resume_with_fewer_steps_than_trained_is_refused(finished):
    before = snapshot(finished)
    with pytest.raises(ConfigError, match="steps = 10 is fewer than the 20 steps"):
        train(resume_config(finished, 10), finished, resume=True)
    assert snapshot(finished) == before
    result = invoke_cli("train", "--resume", str(finished), "--steps", "10")
    assert result.exit_code == 2, result.output
    assert "10" in result.output and "20" in result.output
    assert json.loads((finished / "config.json").read_text())["train"]["steps"] == 20
    assert snapshot(finished) == before


def test_steps_zero_is_an_error_not_unset(finished):
    with pytest.raises(ConfigError, match="= 0 is invalid"):
        resume_config(finished, 0)
    result = invoke_cli("train", "--resume", str(finished), "--steps", "0")
    assert result.exit_code == 2 and "= 0 is invalid" in result.output
    result = invoke_cli("train", "--dataset", "oblique-plane", "--steps", "0")
    assert result.exit_code == 2 and "= 0 is invalid" in result.output


def test_resume_to_the_trained_step_is_allowed(finished):
    before = snapshot(finished)
    train(resume_config(finished, 20), finished, resume=True)
    after = snapshot(finished)
    assert json.loads(after["checkpoint/meta.json"])["step"] == 20
    assert after["checkpoint/meta.json"] == before["checkpoint/meta.json"]
