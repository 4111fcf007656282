"""Stopping training without loss (issue 18 item 6, docs/reliability.md "Stopping and
resuming training"): SIGTERM / SIGINT finish the step, write a checkpoint and print the resume
command (exit 3); a second signal stops at once and leaves the last complete checkpoint; the
time-based checkpoint does not change the trained numbers. And the guards shared by the
library and the command line (item 4): resume refuses changed settings, a new run never goes
into a folder holding anything."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_same_weights, invoke_cli, tiny_train_config

import dmattack.runs.checkpoints as runs_mod
import dmattack.training.train as train_mod
from dmattack.core.errors import ConfigError, RunFolderError
from dmattack.runs.checkpoints import CHECKPOINT, PREVIOUS, checkpoint_dir, open_checkpoint
from dmattack.training.objectives import ObjectiveConfig
from dmattack.training.train import EXIT_INTERRUPTED, TrainingInterrupted, resume_config, train

ROOT = Path(__file__).resolve().parents[1]
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
RESUME_LINE = re.compile(r"^stopped at step (\d+) \((SIGTERM|SIGINT)\); checkpoint saved; "
                         r"resume with: (dmattack train --resume .+)$")
AT_ONCE_LINE = re.compile(r"^stopped at once \(second (SIGTERM|SIGINT)\); the last complete "
                          r"checkpoint \(step (\d+)\) is kept; resume with: "
                          r"(dmattack train --resume .+)$")


def _step(run: Path, folder: str = CHECKPOINT) -> int:
    return json.loads((run / folder / "meta.json").read_text())["step"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def _resume(command: str) -> subprocess.CompletedProcess:
    """Run a printed ``dmattack train --resume ...`` command (this checkout's CLI)."""
    argv = shlex.split(command)
    assert argv[0] == "dmattack"
    return subprocess.run([sys.executable, "-m", "cli", *argv[1:]], cwd=ROOT, env=CLI_ENV,
                          capture_output=True, text=True, timeout=600)


# ================================================================== signals, in process
def _signal_at(steps: dict[int, list[int]]):
    """A train() callback raising the given signals in this process after the given steps."""
    def callback(step: int, _: dict[str, float]) -> None:
        for sig in steps.get(step, []):
            signal.raise_signal(sig)
    return callback


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_step_writes_a_checkpoint_and_resumes_exactly(tmp_path, sig):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as info:  # steps 20, checkpoints at 10 and 20
        train(tiny_train_config(), run, callback=_signal_at({7: [sig]}))
    e = info.value
    assert (e.step, e.saved, e.signal_name, e.exit_code) == (7, True, sig.name, 3)
    assert str(e) == (f"stopped at step 7 ({sig.name}); checkpoint saved; resume with: "
                      f"dmattack train --resume {run}")
    assert isinstance(e, KeyboardInterrupt)  # `except Exception` does not swallow a stop
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored
    assert _step(run) == 7 and not (run / ".lock").exists()
    assert open_checkpoint(run)[1]["step"] == 7  # every file matches its sha256
    train(resume_config(run), run, resume=True)
    assert_same_weights(run, train(tiny_train_config(), tmp_path / "straight"))


def test_a_signal_in_the_last_step_lets_the_run_finish(tmp_path):
    run = train(tiny_train_config(), tmp_path / "run", callback=_signal_at({20: [15]}))
    assert _step(run) == 20 and _step(run, PREVIOUS) == 10


def test_a_second_signal_stops_at_once_and_keeps_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job
    with pytest.raises(TrainingInterrupted) as info:  # the second arrives inside the callback
        train(tiny_train_config(), run,
              callback=_signal_at({15: [signal.SIGTERM, signal.SIGINT]}))
    e = info.value
    assert (e.saved, e.step, e.signal_name, e.exit_code) == (False, 10, "SIGINT", 130)
    assert str(e) == ("stopped at once (second SIGINT); the last complete checkpoint (step 10) "
                      f"is kept; resume with: dmattack train --resume {run}")
    assert signal.getsignal(signal.SIGINT) is before  # restored
    assert open_checkpoint(run)[1]["step"] == 10


def test_a_second_signal_while_the_stop_checkpoint_is_written(tmp_path, monkeypatch):
    """The second signal lands inside save_checkpoint: the temp folder goes, the checkpoint of
    step 10 stays complete, and resuming from it gives the uninterrupted weights."""
    run = tmp_path / "run"
    real = runs_mod.torch_save

    def interrupted_save(obj, path):
        signal.raise_signal(signal.SIGTERM)
        return real(obj, path)

    monkeypatch.setattr(runs_mod, "torch_save", interrupted_save)
    with pytest.raises(TrainingInterrupted) as info:  # 1st at step 10, 2nd in its save
        train(tiny_train_config(checkpoint_every=100), run,
              callback=_signal_at({10: [signal.SIGTERM]}))
    assert (info.value.saved, info.value.step) == (False, None)  # first save: none complete
    assert not (run / CHECKPOINT).exists() and not list(run.glob(".checkpoint.*"))
    monkeypatch.setattr(runs_mod, "torch_save", real)

    run2 = tmp_path / "run2"
    with pytest.raises(TrainingInterrupted):  # stop at 7, its checkpoint complete
        train(tiny_train_config(), run2, callback=_signal_at({7: [signal.SIGTERM]}))
    monkeypatch.setattr(runs_mod, "torch_save", interrupted_save)
    with pytest.raises(TrainingInterrupted) as info:  # resumed: 2nd signal in the save of 9
        train(resume_config(run2), run2, resume=True,
              callback=_signal_at({9: [signal.SIGTERM]}))
    monkeypatch.setattr(runs_mod, "torch_save", real)
    assert (info.value.saved, info.value.step) == (False, 7)
    assert checkpoint_dir(run2).name == CHECKPOINT and _step(run2) == 7
    assert not list(run2.glob(".checkpoint.*"))
    train(resume_config(run2), run2, resume=True)
    assert_same_weights(run2, train(tiny_train_config(), tmp_path / "straight"))


def test_handlers_are_restored_after_training(tmp_path):
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        train(tiny_train_config(steps=2), tmp_path / "run")
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


# ================================================================== time-based checkpoints
def test_time_based_checkpoints_do_not_change_the_numbers(tmp_path, monkeypatch):
    saved: list[int] = []
    real = train_mod._save

    def counting_save(run_dir, model, ema, optimizer, step, *args):
        saved.append(step)
        return real(run_dir, model, ema, optimizer, step, *args)

    monkeypatch.setattr(train_mod, "_save", counting_save)
    timed = train(tiny_train_config(checkpoint_minutes=1e-9), tmp_path / "timed")  # each step
    assert saved == list(range(1, 21)) and _step(timed, PREVIOUS) == 19
    saved.clear()
    plain = train(tiny_train_config(checkpoint_minutes=0), tmp_path / "plain")
    assert saved == [10, 20]
    assert_same_weights(timed, plain)
    saved.clear()
    train(tiny_train_config(), tmp_path / "default")  # 10 minutes: not within 20 steps
    assert saved == [10, 20]
    cfg = json.loads((timed / "config.json").read_text())["train"]
    assert cfg["checkpoint_minutes"] == 1e-9


def test_checkpoint_minutes_is_checked_and_can_change_on_resume(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint_minutes"):
        tiny_train_config(checkpoint_minutes=-1)
    result = invoke_cli("train", "--dataset", "oblique-plane", "--checkpoint-minutes", "-1")
    assert result.exit_code == 2 and "--checkpoint-minutes" in result.output
    run = train(tiny_train_config(steps=10), tmp_path / "run")
    result = invoke_cli("train", "--resume", str(run), "--steps", "12",
                        "--checkpoint-minutes", "0.5")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["train"]["checkpoint_minutes"] == 0.5


# ================================================================== guards (issue 18 item 4)
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run trained for 10 steps."""
    return train(tiny_train_config(steps=10), tmp_path_factory.mktemp("stop") / "run")


@pytest.mark.parametrize("change", [{"lr": 1e-3}, {"seed": 1}, {"checkpoint_every": 5},
                                    {"objective": ObjectiveConfig("ddpm")}])
def test_library_resume_refuses_a_changed_setting_like_the_cli(finished, change):
    before = _snapshot(finished)
    name = next(iter(change))
    cfg = dataclasses.replace(resume_config(finished, steps=12), **change)
    with pytest.raises(ConfigError, match=r"cannot change on resume") as info:
        train(cfg, finished, resume=True)
    assert info.value.field.startswith(name)
    assert _snapshot(finished) == before  # config.json not rewritten, nothing trained


def test_cli_resume_refuses_a_changed_setting_with_the_same_message(finished):
    before = _snapshot(finished)
    result = invoke_cli("train", "--resume", str(finished), "--steps", "12", "--lr", "1e-3")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: lr (--lr) = 0.001 differs from the run's 0.0002 and cannot change on resume; "
        "allowed to change: --steps, --nan-policy, --grad-accum, --compile, --channels-last, "
        "--num-workers, --tensorboard, --checkpoint-minutes")
    cfg = dataclasses.replace(resume_config(finished, steps=12), lr=1e-3)
    with pytest.raises(ConfigError) as info:
        train(cfg, finished, resume=True)
    assert result.output.strip() == f"Error: {info.value}"  # one code path
    result = invoke_cli("train", "--resume", str(finished), "--method", "ddpm")
    assert result.exit_code == 2 and "objective.method (--method) = 'ddpm'" in result.output
    result = invoke_cli("train", "--resume", str(finished), "--out", "elsewhere")
    assert result.exit_code == 2 and "--out" in result.output
    assert _snapshot(finished) == before


def _trained_without_config(tmp_path: Path) -> Path:
    run = train(tiny_train_config(steps=10), tmp_path / "orphan")
    (run / "config.json").unlink()
    return run


def test_a_checkpoint_without_config_json_is_never_trained_over(tmp_path):
    run = _trained_without_config(tmp_path)
    before = _snapshot(run)
    with pytest.raises(ConfigError, match=r"is not empty \(it holds checkpoint/, "):
        train(tiny_train_config(steps=10), run)
    with pytest.raises(RunFolderError, match="has no config.json"):
        train(tiny_train_config(steps=10), run, resume=True)
    result = invoke_cli("train", "--dataset", "oblique-plane", "--preset", "mlp-small",
                        "--steps", "2", "--out", str(run))
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "is not empty" in result.output and "checkpoint/" in result.output
    result = invoke_cli("train", "--resume", str(run))
    assert result.exit_code == 2 and "no config.json" in result.output
    assert _snapshot(run) == before


@pytest.mark.parametrize("held", ["log.jsonl", "points.jsonl", "purify.json", "checkpoint.prev"])
def test_a_folder_holding_a_log_or_a_store_is_never_trained_into(tmp_path, held):
    folder = tmp_path / "store"
    if held == "checkpoint.prev":
        (folder / held).mkdir(parents=True)
    else:
        folder.mkdir()
        (folder / held).write_text("{}\n")
    before = _snapshot(folder)
    with pytest.raises(ConfigError, match=f"it holds {held}"):
        train(tiny_train_config(steps=2), folder)
    result = invoke_cli("train", "--dataset", "oblique-plane", "--steps", "2", "--out",
                        str(folder))
    assert result.exit_code == 2 and "is not empty" in result.output
    assert _snapshot(folder) == before and sorted(p.name for p in folder.iterdir()) == [held]


def test_train_out_into_a_finished_curve_store_is_refused(finished, tmp_path):
    from dmattack.diffusion.sampling import SamplerConfig
    from dmattack.evaluation.attack_eval import curve_specs, run_curve
    from dmattack.runs.checkpoints import load_run

    store = tmp_path / "curve"
    run_curve([load_run(finished)], curve_specs(["random"], [0.0]), num_samples=4, seed=0,
              sampler=SamplerConfig("respaced", 5), batch_size=4, out_dir=store, device="cpu",
              metric_fn=lambda x: {"mean": float(x.mean())})
    assert (store / "curve.json").exists()
    before = _snapshot(store)
    result = invoke_cli("train", "--dataset", "oblique-plane", "--steps", "2", "--out",
                        str(store))
    assert result.exit_code == 2 and "is not empty" in result.output
    assert len(result.output.strip().splitlines()) == 1
    with pytest.raises(RunFolderError):
        train(tiny_train_config(steps=2), store, resume=True)
    assert _snapshot(store) == before


def test_an_empty_folder_or_one_with_hidden_files_takes_a_new_run(tmp_path):
    (tmp_path / "empty").mkdir()
    assert _step(train(tiny_train_config(steps=2), tmp_path / "empty")) == 2
    (tmp_path / "hidden").mkdir()
    (tmp_path / "hidden" / ".DS_Store").write_text("")
    assert _step(train(tiny_train_config(steps=2), tmp_path / "hidden")) == 2


# ================================================================== the command line
def _start(args: list[str], err) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=ROOT, env=CLI_ENV,
                            stdout=subprocess.DEVNULL, stderr=err)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"the process ended (rc {proc.returncode}) too early"
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the process")
        time.sleep(0.005)


def _logged(run: Path) -> bool:
    return (run / "log.jsonl").exists() and (run / "log.jsonl").stat().st_size > 0


TRAIN_ARGS = ["train", "--dataset", "oblique-plane", "--preset", "mlp-small", "--num-data", "256",
              "--batch-size", "32", "--seed", "3", "--log-every", "1", "--no-tensorboard"]


@pytest.mark.slow
def test_sigterm_to_dmattack_train_then_the_printed_resume_is_bit_exact(tmp_path):
    run = tmp_path / "run"
    args = [*TRAIN_ARGS, "--steps", "400", "--checkpoint-every", "1000", "--out", str(run)]
    with open(tmp_path / "stderr", "wb") as err:
        proc = _start(args, err)
        _wait_for(lambda: _logged(run), proc)  # a step was trained
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == EXIT_INTERRUPTED
    last = (tmp_path / "stderr").read_text().strip().splitlines()[-1]
    match = RESUME_LINE.match(last)
    assert match, last
    stopped = int(match.group(1))
    assert 1 <= stopped < 400 and match.group(2) == "SIGTERM"
    assert _step(run) == stopped and not (run / PREVIOUS).exists()
    assert open_checkpoint(run)[1]["step"] == stopped and not (run / ".lock").exists()

    resumed = _resume(match.group(3))
    assert resumed.returncode == 0, resumed.stderr
    assert _step(run) == 400
    reference = train(resume_config(run), tmp_path / "straight")  # same config, no signal
    assert_same_weights(run, reference)
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 401))  # every step logged once, in order


@pytest.mark.slow
def test_two_signals_to_dmattack_train_stop_at_once_keeping_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    args = [*TRAIN_ARGS, "--steps", "3000", "--checkpoint-every", "10", "--out", str(run)]
    with open(tmp_path / "stderr", "wb") as err:
        proc = _start(args, err)
        _wait_for(lambda: (run / CHECKPOINT / "meta.json").exists(), proc)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    last = (tmp_path / "stderr").read_text().strip().splitlines()[-1]
    match = AT_ONCE_LINE.match(last)
    assert match, last
    assert code == 128 + signal.Signals[match.group(1)]
    kept = int(match.group(2))
    assert kept % 10 == 0 and open_checkpoint(run)[1]["step"] == kept
    assert not list(run.glob(".checkpoint.*"))

    resumed = _resume(match.group(3) + " --steps " + str(kept + 20))
    assert resumed.returncode == 0, resumed.stderr
    reference = train(dataclasses.replace(resume_config(run), steps=kept + 20),
                      tmp_path / "straight")
    assert_same_weights(run, reference)


# ================================================================== curve, purify: Ctrl-C
def test_ctrl_c_in_curve_and_purify_says_rerunning_resumes(finished, monkeypatch, tmp_path):
    import dmattack.evaluation.attack_eval
    import dmattack.purification

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dmattack.evaluation.attack_eval, "run_curve", interrupted)
    monkeypatch.setattr(dmattack.purification, "run_purification", interrupted)
    result = invoke_cli("curve", "--run", str(finished), "--method", "random",
                        "--steps-attacked", "0", "--num-samples", "4", "--sampler-steps", "5",
                        "--out", str(tmp_path / "c"))
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines()[-1] == (
        "interrupted; the work finished so far is kept: rerun the same command to resume")
    ddpm = str(ROOT / "checkpoints" / "digits-ddpm")
    result = invoke_cli("purify", "--run", ddpm, "--num-samples", "4", "--batch-size", "4",
                        "--device", "cpu", "--out", str(tmp_path / "p"))
    assert result.exit_code == 130, result.output
    assert "rerun the same command to resume" in result.output
