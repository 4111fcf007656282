"""Faults and untrusted input (issue 7, docs/reliability.md): kills, corrupt checkpoints, full
disks, non-finite losses, concurrent writers, pickled code, hand-edited configs, bad images."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_weights, checkpoint_tensors, invoke_cli, tiny_train_config
from PIL import Image
from safetensors.torch import load_file

import dmattack.runs.checkpoints as runs_mod
import dmattack.training.train as train_mod
from dmattack.attacks import AttackSpec
from dmattack.core.errors import ConfigError
from dmattack.core.io import OutputError, check_writable, write_json
from dmattack.core.locking import LockError, lock_folder
from dmattack.data import DataError, load_dataset
from dmattack.diffusion.sampling import SamplerConfig
from dmattack.evaluation.attack_eval import POINTS, curve_specs, run_attack, run_curve
from dmattack.runs.checkpoints import (
    CHECKPOINT,
    PREVIOUS,
    RunFolderError,
    checkpoint_dir,
    load_run,
)
from dmattack.training.train import resume_config, train

ROOT = Path(__file__).resolve().parents[1]
# single-threaded kernels in the subprocesses too (tests/conftest.py sets them here): the
# killed runs and the in-process reference runs then compute identical bits
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


_cfg = tiny_train_config


def _step(run: Path, folder: str = CHECKPOINT) -> int:
    return json.loads((run / folder / "meta.json").read_text())["step"]


_cli = invoke_cli


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (rc {proc.returncode}) before the kill")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the process")
        time.sleep(0.01)


def _sigkill(proc: subprocess.Popen) -> None:
    assert proc.poll() is None, "the process finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


# ================================================================== kills
TRAIN_ARGS = ["train", "--dataset", "oblique-plane", "--preset", "mlp-small", "--num-data", "256",
              "--steps", "120", "--batch-size", "32", "--checkpoint-every", "10", "--seed", "3"]


@pytest.mark.slow
def test_sigkill_during_train_then_resume_is_bit_exact(tmp_path, caplog):
    run = tmp_path / "killed"
    with open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "cli", *TRAIN_ARGS, "--out", str(run)],
                                cwd=ROOT, env=CLI_ENV, stdout=subprocess.DEVNULL, stderr=err)
        _wait_for(lambda: (run / CHECKPOINT / "meta.json").exists(), proc)
        time.sleep(random.Random(7).uniform(0.0, 0.3))  # a "random" moment after it
        _sigkill(proc)
    killed_at = _step(run)
    assert 10 <= killed_at < 120
    assert json.loads((run / ".lock").read_text())["pid"] == proc.pid  # left by the dead owner

    with caplog.at_level(logging.WARNING, logger="dmattack"):
        result = _cli("train", "--resume", str(run))
    assert result.exit_code == 0, result.output
    assert f"stale lock of process {proc.pid}" in caplog.text
    assert _step(run) == 120 and not (run / ".lock").exists()
    assert not list(run.glob(".checkpoint.*"))

    reference = train(resume_config(run), tmp_path / "straight")  # same config, no kill
    assert_same_weights(run, reference)
    logged = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert logged == [25, 50, 75, 100, 120]  # records past the checkpoint were not duplicated


@pytest.mark.parametrize("fail_at", range(1, 4))
def test_crash_at_each_point_of_a_checkpoint_swap(tmp_path, monkeypatch, fail_at):
    """A crash between any two renames of save_checkpoint leaves a loadable checkpoint, and
    resuming from whatever survived gives the uninterrupted weights."""
    run = train(_cfg(steps=20), tmp_path / "run")  # checkpoint (20) and checkpoint.prev (10)
    calls = {"n": 0}
    real_replace = os.replace

    def crashing_replace(src, dst):
        calls["n"] += Path(src).is_dir()  # the folder renames of the swap, not file writes
        if Path(src).is_dir() and calls["n"] == fail_at:
            raise KeyboardInterrupt("simulated kill")
        return real_replace(src, dst)

    monkeypatch.setattr(runs_mod.os, "replace", crashing_replace)
    with pytest.raises(KeyboardInterrupt):
        train(resume_config(run, steps=30), run, resume=True)
    monkeypatch.setattr(runs_mod.os, "replace", real_replace)
    assert _step(run, checkpoint_dir(run).name) in (20, 30)
    train(resume_config(run, steps=40), run, resume=True)
    assert_same_weights(run, train(_cfg(steps=40), tmp_path / "straight"))


@pytest.fixture(scope="module")
def plane_run(tmp_path_factory) -> Path:
    return train(_cfg(steps=30, num_data=512), tmp_path_factory.mktemp("runs") / "plane")


CURVE = ["--method", "fgsm,random", "--steps-attacked", "0,20,40,60,80,100", "--num-samples",
         "400", "--batch-size", "400", "--sampler", "respaced", "--steps", "40"]


@pytest.mark.slow
def test_sigkill_during_curve_then_rerun_is_identical(plane_run, tmp_path):
    args = ["curve", "--run", str(plane_run), *CURVE]
    out = tmp_path / "killed"
    store = out / POINTS
    proc = subprocess.Popen([sys.executable, "-m", "cli", *args, "--out", str(out)], cwd=ROOT,
                            env=CLI_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: store.exists() and store.read_bytes().count(b"\n") >= 3, proc)
    _sigkill(proc)
    before = store.read_bytes()
    finished = before[:before.rfind(b"\n") + 1].splitlines()
    assert 3 <= len(finished) < 11 and not (out / "curve.json").exists()

    again = _cli(*args, "--out", str(out))
    assert again.exit_code == 0, again.output
    after = store.read_bytes().splitlines()
    assert after[:len(finished)] == finished  # finished points kept, not recomputed
    assert len(after) == 11
    straight = _cli(*args, "--out", str(tmp_path / "straight"))
    assert straight.exit_code == 0, straight.output
    a = json.loads((out / "curve.json").read_text())
    b = json.loads((tmp_path / "straight" / "curve.json").read_text())
    assert a["rows"] == b["rows"] and a["percents"] == b["percents"]


@pytest.mark.slow
def test_sigkill_during_attack_keeps_old_results_and_rerun_is_identical(plane_run, tmp_path):
    out = tmp_path / "attack"
    args = ["attack", "--run", str(plane_run), "--method", "pgd", "--pgd-steps", "10",
            "--steps-attacked", "50", "--num-samples", "1000", "--batch-size", "500",
            "--sampler", "respaced", "--steps", "40", "--out", str(out)]
    t0 = time.time()
    first = _cli(*args)
    assert first.exit_code == 0, first.output
    seconds = time.time() - t0
    results = (out / "results.json").read_bytes()
    samples = load_file(out / "samples.safetensors")
    (out / "samples.safetensors").touch()
    stamp = (out / "samples.safetensors").stat().st_mtime_ns

    proc = subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=ROOT, env=CLI_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: (out / ".lock").exists(), proc)  # sampling has started
    time.sleep(seconds / 10)  # the in-process timing may be inflated by load
    _sigkill(proc)
    assert (out / "results.json").read_bytes() == results  # never half-written
    assert (out / "samples.safetensors").stat().st_mtime_ns == stamp

    again = _cli(*args)
    assert again.exit_code == 0, again.output
    new = json.loads((out / "results.json").read_text())
    assert new["metrics"] == json.loads(results)["metrics"]
    redone = load_file(out / "samples.safetensors")
    assert all(torch.equal(samples[k], redone[k]) for k in samples)


# ================================================================== corrupt checkpoints
@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "meta"])
def test_corrupt_checkpoint_falls_back_to_previous(two_checkpoints, damage, caplog):
    run = two_checkpoints
    bad = run / CHECKPOINT / ("meta.json" if damage == "meta" else "ema.safetensors")
    data = bad.read_bytes()
    if damage == "truncate":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # same size, one bit: only the sha256 can tell
        bad.write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    elif damage == "delete":
        bad.unlink()
    else:
        bad.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="dmattack"):
        loaded = load_run(run)
    assert str(bad) in caplog.text and "falling back" in caplog.text
    expected = load_file(run / PREVIOUS / "ema.safetensors")
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, expected[k])
    assert checkpoint_dir(run).name == PREVIOUS


def test_both_checkpoints_corrupt_is_one_line_naming_the_file(two_checkpoints):
    run = two_checkpoints
    for folder in (CHECKPOINT, PREVIOUS):
        f = run / folder / "model.safetensors"
        f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(RunFolderError) as err:
        load_run(run, use_ema=False)
    msg = str(err.value)
    assert "\n" not in msg and str(run / CHECKPOINT / "model.safetensors") in msg
    assert str(run / PREVIOUS / "model.safetensors") in msg
    result = _cli("sample", "--run", str(run), "--num-samples", "2", "--no-ema")
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "corrupt" in result.output
    # sampling with the EMA weights reads (and verifies) only those: it is unaffected
    assert load_run(run).fingerprint == load_run(run, use_ema=True).fingerprint


def test_resume_after_corruption_uses_previous_and_keeps_it(two_checkpoints, tmp_path):
    run = two_checkpoints
    state = run / CHECKPOINT / "state.pt"
    state.write_bytes(state.read_bytes()[:-50])
    train(resume_config(run, steps=30), run, resume=True)  # from step 10, not 20
    assert _step(run) == 30 and _step(run, PREVIOUS) == 20  # two good ones again
    assert len(list(run.glob("checkpoint.corrupt-*"))) == 1
    assert_same_weights(run, train(_cfg(steps=30), tmp_path / "straight"))


def test_resume_without_any_checkpoint_starts_over(tmp_path):
    run = tmp_path / "run"
    train(_cfg(steps=10), run)
    shutil.rmtree(run / CHECKPOINT)
    train(resume_config(run, steps=10), run, resume=True)
    assert_same_weights(run, train(_cfg(steps=10), tmp_path / "straight"))


# ================================================================== pickled code
def test_checkpoint_with_pickled_code_is_refused(two_checkpoints, exploit, caplog):
    run, (payload, marker) = two_checkpoints, exploit
    for folder in (CHECKPOINT, PREVIOUS):
        torch.save({"step": 10, "optimizer": payload}, run / folder / "state.pt")
        meta = json.loads((run / folder / "meta.json").read_text())
        meta["files"]["state.pt"] = runs_mod.sha256_file(run / folder / "state.pt")
        write_json(run / folder / "meta.json", meta)  # the attacker fixed the checksums too
    with pytest.raises(RunFolderError, match="state.pt|Weights only load failed|Unsupported"):
        train(resume_config(run, steps=30), run, resume=True)
    assert not marker.exists()
    # the marker really would be created by an unrestricted load
    torch.load(run / CHECKPOINT / "state.pt", weights_only=False)
    assert marker.exists()


def test_unet_checkpoint_loads_safetensors_only(tmp_path, exploit):
    run = train(_cfg(dataset="digits", preset="tiny", steps=1, batch_size=4, num_data=None,
                     checkpoint_every=1), tmp_path / "img")
    payload, marker = exploit
    for folder in (CHECKPOINT, PREVIOUS):
        if not (run / folder).exists():
            continue
        ema = run / folder / "ema"
        (ema / "diffusion_pytorch_model.safetensors").unlink()
        torch.save(payload, ema / "diffusion_pytorch_model.bin")
        meta = json.loads((run / folder / "meta.json").read_text())
        meta["files"] = {}
        write_json(run / folder / "meta.json", meta)
    with pytest.raises(RunFolderError):
        load_run(run)
    assert not marker.exists()


# ================================================================== full / unwritable disk
def test_unwritable_out_folder_is_refused_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=str(blocker)):
        train(_cfg(), blocker / "run")
    result = _cli("train", "--dataset", "oblique-plane", "--num-data", "64", "--steps", "2",
                  "--out", str(blocker / "run"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith(f"Error: output folder {blocker}")


def test_too_little_space_is_refused_before_long_work(tmp_path, monkeypatch):
    def tiny_disk(path):
        return shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20)  # 1 MiB free

    monkeypatch.setattr(shutil, "disk_usage", tiny_disk)
    with pytest.raises(OutputError, match="MiB free"):
        check_writable(tmp_path / "x", 64 << 20)
    with pytest.raises(OutputError, match="MiB free"):
        train(_cfg(), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing left behind
    model = _toy_model()
    for call in (lambda out: run_attack(model, AttackSpec("fgsm", 50), **_toy_kw(out)),
                 lambda out: run_curve([model], curve_specs(["fgsm"], [50]), **_toy_kw(out))):
        with pytest.raises(OutputError, match="MiB free"):
            call(tmp_path / "eval")
    assert not list((tmp_path / "eval").glob("*.json"))


def _toy_model():
    from dmattack.diffusion.gaussian import GaussianDiffusion
    from dmattack.models import build_model
    from dmattack.runs.checkpoints import LoadedModel

    torch.manual_seed(0)
    return LoadedModel(build_model("mlp-small", (2,)).eval(), GaussianDiffusion.from_schedule(),
                       (2,), source="/runs/toy", dataset="toy",
                       config={"model": {"preset": "mlp-small"}}, fingerprint="0" * 64)


def _toy_kw(out: Path) -> dict:
    return dict(num_samples=8, seed=0, sampler=SamplerConfig("respaced", 4), batch_size=8,
                metric_fn=lambda x: {"mean": float(x.mean())}, device="cpu", out_dir=out)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failing", ["save_file", "write_json"])
def test_disk_full_while_writing_results_keeps_the_previous_ones(tmp_path, monkeypatch,
                                                                 failing):
    import dmattack.evaluation.attack_eval.store as ae

    out = tmp_path / "a"
    run_attack(_toy_model(), AttackSpec("fgsm", 50), **_toy_kw(out))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(ae, failing, _enospc)  # samples (first) or results.json (last) fails
    with pytest.raises(OutputError, match=f"{out}: No space left.*previous results"):
        run_attack(_toy_model(), AttackSpec("fgsm", 100), **_toy_kw(out))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp files either


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    run = train(_cfg(steps=10), tmp_path / "run")
    good = checkpoint_tensors(run)
    monkeypatch.setattr(runs_mod, "save_file", _enospc)
    with pytest.raises(OutputError, match="step 20.*last good checkpoint \\(step 10\\)"):
        train(resume_config(run, steps=20), run, resume=True)
    assert _step(run) == 10 and not list(run.glob(".checkpoint.*"))
    assert all(torch.equal(v, checkpoint_tensors(run)[k]) for k, v in good.items())


def test_disk_full_while_appending_a_curve_point(tmp_path, monkeypatch):
    out = tmp_path / "c"
    run_curve([_toy_model()], curve_specs(["fgsm"], [50]), **_toy_kw(out))
    store = (out / POINTS).read_bytes()
    real_open = open

    class HalfWrite:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, data):
            self.f.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return HalfWrite(f) if str(path).endswith(POINTS) and "a" in mode else f

    import dmattack.evaluation.attack_eval.store as ae

    monkeypatch.setattr(ae, "open", fake_open, raising=False)
    with pytest.raises(OutputError, match="points before it are kept"):
        run_curve([_toy_model()], curve_specs(["fgsm"], [50, 100]), **_toy_kw(out))
    assert (out / POINTS).read_bytes() == store  # the half record was cut off again


# ================================================================== non-finite loss
def _nan_at(step_with_nan: int, gradient: bool = False):
    real = train_mod.training_loss
    calls = {"n": 0}

    def loss_fn(model, diffusion, x0, cfg, draws=None):
        calls["n"] += 1
        loss, stats = real(model, diffusion, x0, cfg, draws)
        if calls["n"] == step_with_nan:
            if gradient:  # finite value, NaN gradient: d/dx sqrt(|x - x|) at 0
                p = next(model.parameters())
                return loss + (p - p.detach()).abs().sum().sqrt(), stats
            return loss * float("nan"), stats
        return loss, stats

    return loss_fn


@pytest.mark.parametrize("gradient", [False, True])
def test_nan_policy_stop_names_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch,
                                                                 gradient):
    run = train(_cfg(steps=10), tmp_path / "run")
    before = {p: p.read_bytes() for p in (run / CHECKPOINT).iterdir()}
    monkeypatch.setattr(train_mod, "training_loss", _nan_at(5, gradient))
    what = "gradient" if gradient else "loss"
    with pytest.raises(FloatingPointError,
                       match=f"non-finite training {what} at step 15.*checkpoint \\(step 10\\)"):
        train(resume_config(run, steps=30), run, resume=True)
    assert {p: p.read_bytes() for p in (run / CHECKPOINT).iterdir()} == before
    assert not (run / ".lock").exists()


def test_nan_policy_skip_skips_the_step_and_counts_it(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(train_mod, "training_loss", _nan_at(7))
    stats = []
    with caplog.at_level(logging.WARNING, logger="dmattack"):
        run = train(_cfg(steps=20, nan_policy="skip"), tmp_path / "run",
                    callback=lambda step, s: stats.append((step, s)))
    assert "step 7: optimiser step skipped" in caplog.text
    assert [s for s, st in stats if st.get("skipped")] == [7]
    meta = json.loads((run / CHECKPOINT / "meta.json").read_text())
    assert meta["skipped_steps"] == 1 and meta["step"] == 20
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any(r["step"] == 7 and r["skipped"] == 1.0 for r in log)
    assert all(torch.isfinite(v).all() for v in checkpoint_tensors(run).values())
    # resuming keeps the count
    monkeypatch.setattr(train_mod, "training_loss", _nan_at(3))
    train(resume_config(run, steps=30), run, resume=True)
    assert json.loads((run / CHECKPOINT / "meta.json").read_text())["skipped_steps"] == 2


def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch):
    run = train(_cfg(steps=10), tmp_path / "run")
    before = {p: p.read_bytes() for p in (run / CHECKPOINT).iterdir()}
    real = train_mod.update_ema

    def poisoned(ema, model, decay):  # finite losses, but the EMA weights blow up
        real(ema, model, decay)
        next(ema.parameters()).data.fill_(float("inf"))

    monkeypatch.setattr(train_mod, "update_ema", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite by step 20.*\\(step 10\\)"):
        train(resume_config(run, steps=20), run, resume=True)
    assert {p: p.read_bytes() for p in (run / CHECKPOINT).iterdir()} == before


def test_nan_policy_is_validated_and_can_change_on_resume(two_checkpoints):
    message = r"nan_policy \(--nan-policy\) = 'ignore' is invalid; allowed: stop, skip"
    with pytest.raises(ConfigError, match=message):
        _cfg(nan_policy="ignore")
    with pytest.raises(ConfigError, match=message):
        resume_config(two_checkpoints, nan_policy="ignore")
    assert resume_config(two_checkpoints).nan_policy == "stop"
    assert resume_config(two_checkpoints, nan_policy="skip").nan_policy == "skip"


# ================================================================== concurrent writers
LOCK_HOLDER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from dmattack.core import locking
lock = locking.FolderLock(sys.argv[2], "run folder", command="holder").acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_second_writer_is_refused_and_a_dead_owners_lock_is_taken_over(tmp_path, caplog):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(ROOT), str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockError) as err:
            train(_cfg(steps=2), run)
        assert f"process {holder.pid}" in str(err.value) and "\n" not in str(err.value)
        result = _cli("train", "--dataset", "oblique-plane", "--num-data", "64", "--steps", "2",
                      "--preset", "mlp-small", "--out", str(run))
        assert result.exit_code == 2 and f"process {holder.pid}" in result.output
        assert not (run / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    with caplog.at_level(logging.WARNING, logger="dmattack"):
        train(_cfg(steps=2), run)  # the owner is dead: its lock is stale
    assert f"stale lock of process {holder.pid}" in caplog.text


def test_lock_without_flock_checks_the_pid(tmp_path, monkeypatch, caplog):
    import socket

    import dmattack.core.locking as locking

    monkeypatch.setattr(locking, "fcntl", None)
    folder = tmp_path / "f"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = os.getppid()
    for pid, ok in ((live, False), (dead.pid, True)):
        (folder / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
        if ok:
            with caplog.at_level(logging.WARNING, logger="dmattack"), lock_folder(folder):
                assert json.loads((folder / ".lock").read_text())["pid"] == os.getpid()
            assert f"process {pid}" in caplog.text and not (folder / ".lock").exists()
        else:
            with pytest.raises(LockError, match=f"process {pid}"):
                lock_folder(folder).acquire()


def test_lock_in_one_process_blocks_a_second_handle(tmp_path):
    with lock_folder(tmp_path, "curve folder"):
        with pytest.raises(LockError, match=f"curve folder .* process {os.getpid()}"):
            run_curve([_toy_model()], curve_specs(["fgsm"], [50]), **_toy_kw(tmp_path))
    run_curve([_toy_model()], curve_specs(["fgsm"], [50]), **_toy_kw(tmp_path))


# ================================================================== image folders
def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    root.mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(root / "a.png")
    Image.new("LA", (9, 13), (100, 50)).save(root / "b_grey_alpha.png")
    Image.new("P", (16, 16)).save(root / "c_palette.png")
    Image.fromarray(np.full((20, 24), 30000, dtype=np.uint16)).save(root / "d16.png")
    Image.new("RGB", (300, 7), (0, 255, 0)).save(root / "e_wide.jpg")
    Image.new("CMYK", (20, 20), (0, 0, 0, 0)).save(root / "f_cmyk.jpg")
    full = Path(root / "a.png").read_bytes()
    (root / "g_truncated.png").write_bytes(full[: len(full) - 30])
    buf = root / "h_truncated.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, quality=95)
    buf.write_bytes(buf.read_bytes()[:300])
    (root / "i_empty.png").write_bytes(b"")
    (root / "j_text.jpg").write_text("hello")
    Image.new("F", (8, 8)).save(root / "k_float.tif")  # not an image extension we read
    return root


def test_image_folder_converts_what_is_well_defined_and_skips_the_rest(tmp_path, caplog):
    root = _folder(tmp_path)
    with caplog.at_level(logging.WARNING, logger="dmattack"):
        ds = load_dataset("imagefolder", data_dir=root, resolution=8)
    assert len(ds) == 6 and ds.skipped == 4
    assert "skipped 4 unreadable image file(s)" in caplog.text
    names = [p.name for p in ds.files]
    assert "g_truncated.png" not in names and "h_truncated.jpg" not in names
    x = torch.stack([ds[i] for i in range(len(ds))])
    assert x.shape == (6, 3, 8, 8) and torch.isfinite(x).all()
    assert x.min() >= -1 and x.max() <= 1


@pytest.mark.parametrize("num_workers", [0, 1])
def test_image_broken_after_indexing_is_one_line_naming_it(tmp_path, num_workers):
    root = _folder(tmp_path)
    cfg = _cfg(dataset="imagefolder", data_dir=str(root), resolution=8, preset="tiny",
               num_data=None, batch_size=6, steps=2, num_workers=num_workers)
    data = train_mod.build_data(cfg)
    (root / "d16.png").write_bytes(b"gone")
    with pytest.raises(DataError) as err:
        train(cfg, tmp_path / "run", data=data)
    msg = str(err.value)
    assert "\n" not in msg and str(root / "d16.png") in msg and "cannot read image" in msg


def test_image_folder_with_nothing_readable_is_refused(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match="no readable images.*1 unreadable"):
        load_dataset("imagefolder", data_dir=tmp_path)


# ================================================================== curve store
def test_curve_points_of_other_weights_are_not_reused(tmp_path):
    model = _toy_model()
    calls = []

    def metric(x):
        calls.append(1)
        return {"mean": float(x.mean())}

    # the metric's closure (calls) grows: keyed by its code it would change every run
    kw = {**_toy_kw(tmp_path / "c"), "metric_fn": metric, "metric_key": "mean"}
    run_curve([model], curve_specs(["fgsm"], [50]), **kw)
    run_curve([model], curve_specs(["fgsm"], [50]), **kw)
    assert len(calls) == 2  # second run: both points resumed
    model.fingerprint = "1" * 64  # the run was trained further
    run_curve([model], curve_specs(["fgsm"], [50]), **kw)
    assert len(calls) == 4


def test_curve_store_with_a_foreign_record_is_refused(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / POINTS).write_text('{"hello": 1}\n')
    with pytest.raises(ValueError, match="record 1 is not a curve point"):
        run_curve([_toy_model()], curve_specs(["fgsm"], [50]), **_toy_kw(out))



def test_a_failed_worker_run_leaves_no_worker_behind(tmp_path):
    """DataLoader workers ignore SIGTERM (a stop signal is the main process's to handle), so
    a run that fails while the error's traceback is still referenced must shut them down
    itself: otherwise the interpreter waits for them forever at exit (seen: a hung suite)."""
    root = _folder(tmp_path)
    script = f"""
from dmattack.data import DataError
from dmattack.training import train as train_mod
from dmattack.training.train import TrainConfig, train
cfg = TrainConfig(dataset="imagefolder", data_dir={str(root)!r}, resolution=8, preset="tiny",
                  num_data=None, batch_size=6, steps=2, num_workers=1, log_every=1)
data = train_mod.build_data(cfg)
open({str(root / "d16.png")!r}, "wb").write(b"gone")
try:
    train(cfg, {str(tmp_path / "run")!r}, data=data)
except DataError as e:
    kept = e  # the traceback stays referenced until the interpreter exits
    print("refused")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=90, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "refused" in proc.stdout, proc.stderr[-2000:]
