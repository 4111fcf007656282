"""TensorBoard events of a training run (``<run>/tb/``, issue 15 item 9): every logged step once
and in order after a SIGKILL and ``--resume``, read back with tensorboard's own event reader;
nothing (and no error) when tensorboard is disabled or not installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from dmattack.training.objectives import ObjectiveConfig
from dmattack.training.tensorboard import TB_FOLDER, TrainingBoard
from dmattack.training.train import TrainConfig, lr_at, train

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing import event_file_loader  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

ROOT = Path(__file__).resolve().parents[1]
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
PLAIN = dict(dataset="oblique-plane", preset="mlp-small", num_data=128, steps=20, batch_size=16,
             checkpoint_every=5, log_every=2, sample_every=10, num_preview=16, preview_steps=5,
             warmup=8)
CFG = {**PLAIN, "objective": ObjectiveConfig("ddpm")}
KILL_AT = 13  # after the checkpoint of step 10, the preview of step 10 and the log of step 12
# the subprocess trains and SIGKILLs itself in the step callback of KILL_AT, which runs before
# that step's log record: steps 2..12 are logged, the checkpoint is at step 10
KILLED_RUN = f"""
import os, signal, sys
import torch
torch.set_num_threads(1)
from dmattack.training.objectives import ObjectiveConfig
from dmattack.training.train import TrainConfig, train

def die(step, stats):
    if step == {KILL_AT}:
        os.kill(os.getpid(), signal.SIGKILL)

train(TrainConfig(**{PLAIN!r}, objective=ObjectiveConfig("ddpm")), sys.argv[1], callback=die)
"""


def _events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run / TB_FOLDER), size_guidance={"scalars": 0, "images": 0})
    return acc.Reload()


def _raw_steps(run: Path, tag: str) -> list[int]:
    """Steps of ``tag`` in every event file, in file order, without TensorBoard's purging."""
    steps = []
    for f in sorted((run / TB_FOLDER).iterdir()):
        for event in event_file_loader.EventFileLoader(str(f)).Load():
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


def test_killed_and_resumed_run_has_every_step_once_in_order(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(run)], cwd=ROOT, env=CLI_ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert json.loads((run / "checkpoint" / "meta.json").read_text())["step"] == 10
    assert _raw_steps(run, "train/loss") == list(range(2, KILL_AT, 2))  # 12: past the ckpt

    result = CliRunner().invoke(cli.main, ["train", "--resume", str(run)])
    assert result.exit_code == 0, result.output
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    every = list(range(2, 21, 2))
    assert [r["step"] for r in logged] == every

    events = _events(run)
    cfg = TrainConfig(**CFG).resolved()
    for tag in ("train/loss", "train/grad_norm", "train/lr", "train/images_per_s"):
        assert [e.step for e in events.Scalars(tag)] == every, tag  # once each, in order
    loss = [e.value for e in events.Scalars("train/loss")]  # the log's values (float32)
    np.testing.assert_array_equal(np.float32([r["loss"] for r in logged]), np.float32(loss))
    lr = [e.value for e in events.Scalars("train/lr")]
    np.testing.assert_array_equal(np.float32([lr_at(cfg, s - 1) for s in every]), lr)
    assert all(e.value > 0 for e in events.Scalars("train/grad_norm"))
    assert all(e.value > 0 for e in events.Scalars("train/images_per_s"))
    assert [e.step for e in events.Images("preview/ema_samples")] == [10, 20]
    # the raw files do hold step 12 twice: the purge record is what hides the killed copy
    raw = _raw_steps(run, "train/loss")
    assert raw.count(12) == 2 and len(list((run / TB_FOLDER).iterdir())) == 2


def test_no_tensorboard_or_tensorboard_missing_writes_no_folder(tmp_path, monkeypatch):
    args = ["train", "--dataset", "oblique-plane", "--preset", "mlp-small", "--num-data", "64",
            "--steps", "2", "--batch-size", "16"]
    on = CliRunner().invoke(cli.main, [*args, "--out", str(tmp_path / "on")])
    assert on.exit_code == 0, on.output
    assert list((tmp_path / "on" / TB_FOLDER).iterdir())
    off = CliRunner().invoke(cli.main, [*args, "--no-tensorboard", "--out", str(tmp_path / "off")])
    assert off.exit_code == 0, off.output
    assert not (tmp_path / "off" / TB_FOLDER).exists()
    assert json.loads((tmp_path / "off" / "config.json").read_text())["train"]["tensorboard"] \
        is False
    # both are allowed with --resume: off for the new steps of "on", on for those of "off"
    files = sorted((tmp_path / "on" / TB_FOLDER).iterdir())
    for name, flag in (("on", "--no-tensorboard"), ("off", "--tensorboard")):
        more = CliRunner().invoke(cli.main, ["train", "--resume", str(tmp_path / name),
                                             "--steps", "4", flag])
        assert more.exit_code == 0, more.output
    assert sorted((tmp_path / "on" / TB_FOLDER).iterdir()) == files
    assert [e.step for e in _events(tmp_path / "off").Scalars("train/loss")] == [4]

    # the package is not installed: training works and writes no tb/ folder
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    cfg = TrainConfig(**{**CFG, "steps": 4, "num_preview": 0})
    run = train(cfg, tmp_path / "missing")
    assert not (run / TB_FOLDER).exists() and (run / "checkpoint").is_dir()


def test_a_resumed_writer_sorts_after_a_file_of_the_same_second(tmp_path):
    """The killed process's file may have the same whole-second stamp and a larger pid: the
    resumed writer's file must still sort (and so be read) after it."""
    folder = tmp_path / TB_FOLDER
    folder.mkdir()
    killed = folder / f"events.out.tfevents.{int(time.time()):010d}.zzzz.9999999.0"
    killed.write_bytes(b"")
    board = TrainingBoard(tmp_path, 10, 8)
    board.close()
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 2 and names[0] == killed.name
