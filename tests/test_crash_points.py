"""Crash-point enumeration (issue 15 item 6), in the spirit of SQLite's crash tests and the ALICE
crash-consistency study (Pillai et al., OSDI 2014): every durable write of a short ``train``
and a short ``curve`` — each ``os.replace``, ``os.fsync`` and safetensors ``save_file`` — is a
point where the process may die. For every N, a run is SIGKILLed at its N-th write point,
recovered the way a user would (``train --resume RUN``, or the same ``curve`` command again
into the same ``--out``) and compared with the uninterrupted run, bit for bit: model, EMA and
AdamW state, the step of both checkpoints, every log.jsonl record but its wall time, the
TensorBoard steps; for the curve, every point's metrics and the curve table.

Write points (counted by a dry run, asserted below): a 12-step ``train`` with a checkpoint
every 4 steps has 38 (output probes 2, lock 1, config.json 2, then the checkpoints of steps 4,
8 and 12 with 10, 11 and 12: 2 weight files, 3 file fsyncs, meta.json 2, the folder's fsync,
1–3 renames of the swap, the run folder's fsync); a ``curve`` of one model × (clean, FGSM and
random at 50% and 100%) has 16 (probe, lock, the clean samples' cache with a save, an fsync
and a rename, 5 fsynced points.jsonl appends, then curve.json, curve.csv and curve.png with an
fsync and a rename each).

The killed processes are forked from one driver process that imported torch and dmattack
once (a fresh interpreter per point would take ~5 s each), with the write functions counted
and the kill armed at N; single-threaded kernels, so the bits match the in-process recovery.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import cli
from dmattack.evaluation.attack_eval import POINTS
from dmattack.runs.checkpoints import CHECKPOINT, PREVIOUS
from dmattack.training.objectives import ObjectiveConfig
from dmattack.training.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
TRAIN = dict(dataset="oblique-plane", preset="mlp-small", num_data=128, steps=12, batch_size=16,
             checkpoint_every=4, log_every=2, sample_every=100_000, num_preview=0, warmup=4,
             seed=5)
TRAIN_POINTS, CURVE_POINTS = 38, 16

# Counts every durable write and SIGKILLs the process at the N-th. Patched before dmattack is
# imported, so ``from safetensors.torch import save_file`` binds the counted function too.
DRIVER = r"""
import json, os, signal, sys
import torch
torch.set_num_threads(1)
import safetensors.torch

calls = {"n": 0, "kill_at": 0}

def counted(fn):
    def write_point(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["kill_at"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return write_point

os.replace = counted(os.replace)
os.fsync = counted(os.fsync)
safetensors.torch.save_file = counted(safetensors.torch.save_file)

import cli
from dmattack.training.objectives import ObjectiveConfig
from dmattack.training.train import TrainConfig, train

job = json.loads(sys.argv[1])

def run(out):
    if job["mode"] == "train":
        train(TrainConfig(**job["train"], objective=ObjectiveConfig("robust-adv")), out)
    else:
        cli.main.main(args=[*job["curve"], "--out", out], standalone_mode=False)

def child(kill_at, out):
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            calls["kill_at"] = kill_at
            run(out)
            with open(os.path.join(job["root"], f"count-{kill_at}"), "w") as f:
                f.write(str(calls["n"]))
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

assert child(0, os.path.join(job["root"], "straight")) == 0
total = int(open(os.path.join(job["root"], "count-0")).read())
codes = {n: child(n, os.path.join(job["root"], f"killed-{n}")) for n in range(1, total + 1)}
print(json.dumps({"total": total, "codes": codes}))
"""


def _drive(job: dict, root: Path) -> int:
    """Run the uninterrupted job into ``root/straight`` and, for every write point N, one
    killed at N into ``root/killed-N``; returns the number of write points."""
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps({**job, "root": str(root)})],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(code == -9 for code in report["codes"].values()), report  # each was killed
    return report["total"]


def _state(run: Path) -> dict[str, torch.Tensor]:
    """Model, EMA and AdamW state of both checkpoints, and their steps."""
    out = {}
    for folder in (CHECKPOINT, PREVIOUS):
        for name in ("model", "ema"):
            out.update({f"{folder}/{name}.{k}": v for k, v in
                        load_file(run / folder / f"{name}.safetensors").items()})
        state = torch.load(run / folder / "state.pt", weights_only=True)
        out[f"{folder}/step"] = torch.tensor(state["step"])
        for i, s in state["optimizer"]["state"].items():
            out.update({f"{folder}/adam.{i}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
    return out


def _log(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"}
            for line in (run / "log.jsonl").read_text().splitlines()]


def _tb_steps(run: Path) -> list[int] | None:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return None
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0}).Reload()
    return [e.step for e in acc.Scalars("train/loss")]


@pytest.mark.slow
def test_train_killed_at_every_write_point_resumes_bit_exact(tmp_path):
    total = _drive({"mode": "train", "train": TRAIN}, tmp_path)
    assert total == TRAIN_POINTS
    straight = tmp_path / "straight"
    expected, log, tb = _state(straight), _log(straight), _tb_steps(straight)
    assert [r["step"] for r in log] == list(range(2, 13, 2))
    for n in range(1, total + 1):
        run = tmp_path / f"killed-{n}"
        if (run / "config.json").exists():  # what a user does: resume it
            result = CliRunner().invoke(cli.main, ["train", "--resume", str(run)])
            assert result.exit_code == 0, (n, result.output)
        else:  # killed before the run existed: the same command again
            train(TrainConfig(**TRAIN, objective=ObjectiveConfig("robust-adv")), run)
        got = _state(run)
        assert got.keys() == expected.keys(), n
        for k, v in expected.items():
            assert torch.equal(got[k], v), (n, k)
        assert _log(run) == log, n
        assert _tb_steps(run) == tb, n
        assert not list(run.glob(".checkpoint.*")) and not (run / ".lock").exists(), n


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return train(TrainConfig(**{**TRAIN, "steps": 4, "checkpoint_every": 4},
                             objective=ObjectiveConfig("ddpm"), tensorboard=False),
                 tmp_path_factory.mktemp("models") / "ddpm")


def _points(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (out / POINTS).read_text().splitlines()]


@pytest.mark.slow
def test_curve_killed_at_every_write_point_reruns_identically(model, tmp_path):
    args = ["curve", "--run", str(model), "--method", "fgsm,random", "--steps-attacked",
            "0,50,100", "--num-samples", "64", "--sampler", "respaced", "--sampler-steps",
            "4", "--metrics", "variance-ratio"]
    total = _drive({"mode": "curve", "curve": args}, tmp_path)
    assert total == CURVE_POINTS
    straight = tmp_path / "straight"
    expected = _points(straight)
    table = json.loads((straight / "curve.json").read_text())
    assert len(expected) == 5
    for n in range(1, total + 1):
        out = tmp_path / f"killed-{n}"
        kept = _points(out) if (out / POINTS).exists() else []
        assert kept == expected[:len(kept)], n  # what survived the kill is a prefix
        result = CliRunner().invoke(cli.main, [*args, "--out", str(out)])
        assert result.exit_code == 0, (n, result.output)
        assert _points(out) == expected, n
        got = json.loads((out / "curve.json").read_text())
        assert got["rows"] == table["rows"] and got["percents"] == table["percents"], n
        assert (out / "curve.csv").read_bytes() == (straight / "curve.csv").read_bytes(), n
