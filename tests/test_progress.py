"""Progress everywhere (issue 20 item 1): the stage arithmetic (rate, ETA), the plain lines
written when stderr is not a terminal (at every stage change and at a steady rhythm), the
inner-loop reports, the scoring stage's time in results, and a real command's output through a
pipe."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from dmattack.core import progress

ROOT = Path(__file__).resolve().parent.parent
DDPM = str(ROOT / "checkpoints" / "digits-ddpm")


class Clock:
    """A hand-driven ``time.monotonic``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress.time, "monotonic", c)
    return c


def test_rate_and_eta_are_measured_up_to_now(clock):
    st = progress.Stage("sample", total=100, unit="steps")
    assert st.rate() is None and st.eta() is None  # nothing done: no rate, no ETA
    clock.now += 10
    st.done = 20
    assert st.rate() == pytest.approx(2.0)  # 20 steps in 10 s
    assert st.eta() == pytest.approx(40.0)  # 80 steps left at 2/s
    clock.now += 30  # a stall: no report for 30 s
    assert st.rate() == pytest.approx(0.5) and st.eta() == pytest.approx(160.0)  # the ETA grows
    assert "20/100 steps (20%)" in st.status() and "ETA 2:40" in st.status()


def test_inner_loop_counts_as_a_fraction_of_a_unit(clock):
    st = progress.Stage("attack", total=4, unit="batches")
    st.done, st.sub = 1, (25, 100, "PGD iteration")
    clock.now += 5
    assert st.progress() == pytest.approx(1.25)
    assert st.eta() == pytest.approx((4 - 1.25) / (1.25 / 5))
    assert "PGD iteration 25/100" in st.status()


def test_resumed_units_are_left_out_of_the_rate(clock):
    st = progress.Stage("train", total=1000, unit="steps", base=500)
    clock.now += 10
    st.done = 510
    assert st.rate() == pytest.approx(1.0) and st.eta() == pytest.approx(490.0)


def _lines_reporter(every: float) -> tuple[progress.Reporter, io.StringIO]:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    return progress.Reporter("dmattack test", console, "lines", every), buf


def test_lines_at_stage_changes_and_a_steady_rhythm():
    rep, buf = _lines_reporter(every=0.05)
    token = progress._REPORTER.set(rep)
    try:
        with rep:
            with progress.stage("first", total=10, unit="steps") as st:
                st.advance(3)
                time.sleep(0.5)  # no report: the background thread still writes lines
            with progress.stage("second"):
                pass
    finally:
        progress._REPORTER.reset(token)
    lines = buf.getvalue().splitlines()
    first = [ln for ln in lines if ln.startswith("dmattack test · first: ")]
    assert first[0].startswith("dmattack test · first: 0/10 steps (0%)")  # the stage change
    beats = [ln for ln in first if "3/10 steps (30%)" in ln and "ETA" in ln]
    assert len(beats) >= 3, lines  # ~every 0.05 s over 0.5 s (a busy machine: fewer)
    assert "done in" in first[-1]
    assert any(ln.startswith("dmattack test · second: ") for ln in lines)


def test_lines_are_rate_limited_between_stage_changes():
    rep, buf = _lines_reporter(every=3600)
    token = progress._REPORTER.set(rep)
    try:
        with rep, progress.stage("s", total=1000) as st:
            for _ in range(1000):
                st.advance()
                progress.inner(1, 2, "restart 1/2 · iteration")
    finally:
        progress._REPORTER.reset(token)
    assert len(buf.getvalue().splitlines()) == 2  # opened, done: nothing in between


def test_nested_stage_and_inner_report():
    rep, buf = _lines_reporter(every=3600)
    token = progress._REPORTER.set(rep)
    try:
        with rep, progress.stage("points", total=2), progress.stage("scoring") as sc:
            progress.inner(3, 8, "feature batch")
            assert sc.stage.sub == (3, 8, "feature batch")
    finally:
        progress._REPORTER.reset(token)
    assert "dmattack test · points › scoring: " in buf.getvalue()


def test_outside_a_reporting_block_stages_only_time():
    progress.inner(1, 2)  # no stage: a no-op
    with progress.stage("scoring") as sc:
        time.sleep(0.01)
        progress.inner(1, 2)
    assert sc.seconds >= 0.01


def test_switcher_keeps_one_stage_per_label():
    rep, buf = _lines_reporter(every=3600)
    token = progress._REPORTER.set(rep)
    try:
        with rep:
            sw = progress.Switcher()
            for label, done in [("train", 0), ("train", 5), ("sample", 1)]:
                sw(label, done, 10)
                assert [s.label for s in rep.stack] == [label]
            sw.close()
            assert rep.stack == []
    finally:
        progress._REPORTER.reset(token)
    text = buf.getvalue()
    assert "train: 5/10 it (50%)" in text and "sample: 1/10 it" in text


def test_staged_keeps_attributes():
    def metric(x):
        return {"m": x}

    metric.identity = {"metrics": ["m"]}
    wrapped = progress.staged(metric, "scoring")
    assert wrapped(3) == {"m": 3} and wrapped.identity == metric.identity


def test_mode_from_environment(monkeypatch):
    console = Console(file=io.StringIO(), force_terminal=False)
    monkeypatch.delenv(progress.MODE_ENV, raising=False)
    assert progress.env_mode(console) == "lines"
    assert progress.env_mode(Console(file=io.StringIO(), force_terminal=True)) == "bars"
    monkeypatch.setenv(progress.MODE_ENV, "off")
    assert progress.env_mode(console) == "off"
    monkeypatch.setenv(progress.EVERY_ENV, "nonsense")
    assert progress.env_every() == progress.DEFAULT_EVERY_S
    monkeypatch.setenv(progress.EVERY_ENV, "0.5")
    assert progress.env_every() == 0.5


def test_sample_command_writes_progress_lines_through_a_pipe(tmp_path):
    """A real command with stderr a pipe (as under nohup, CI or tee): plain lines with the
    stage, done/total, rate and ETA, at the stage change and at the rhythm set small."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), progress.EVERY_ENV: "0.2",
           "DMATTACK_CACHE": str(tmp_path / "cache")}
    env.pop(progress.MODE_ENV, None)
    proc = subprocess.run(
        [sys.executable, "-c", "import cli; cli.main()", "sample", "--run", DDPM,
         "--num-samples", "2", "--sampler", "ddim", "--sampler-steps", "8", "--threads", "1",
         "--out", str(tmp_path / "s")],
        env=env, capture_output=True, text=True, timeout=300)  # stderr: a pipe
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("dmattack sample · ")]
    assert lines[0].startswith("dmattack sample · sample: 0/8 steps (0%)"), proc.stderr
    assert re.search(r"sample: 8/8 steps \(100%\) · [\d.]+ (steps/s|s/steps) · done in ",
                     lines[-1]), lines
    assert "\x1b[" not in proc.stderr  # no terminal control codes in a log
    assert Path(proc.stdout.strip()) == tmp_path / "s"
