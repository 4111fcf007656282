"""Readable outputs (issue 20 item 5): default result folders are named by the model and a
short hash of its content, so two models never share one (also two pipelines whose folders
have the same name), and every command prints the absolute path of what it wrote."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = ROOT / "checkpoints"
SMALL = ["--method", "fgsm", "--steps-attacked", "50", "--num-samples", "4", "--batch-size", "4",
         "--sampler", "respaced", "--steps", "4", "--allow-small-fid"]


def run(*args: str):
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


@pytest.mark.slow  # two exports and two attacks: ~30 s on a busy 2-core machine
def test_two_pipelines_with_the_same_folder_name_write_two_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "RUNS_ROOT", tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    pipes = []
    for parent, run_name in (("a", "digits-ddpm"), ("b", "digits-robust-adv")):
        pipe = tmp_path / parent / "pipe"
        exported = run("export", "--run", str(CHECKPOINTS / run_name), "--out", str(pipe))
        assert exported.exit_code == 0, exported.output
        pipes.append(pipe)
    folders = []
    for pipe in pipes:
        result = run("attack", "--pipeline", os.path.relpath(pipe), *SMALL)
        assert result.exit_code == 0, result.output
        printed = Path(result.output.strip().splitlines()[-1])
        assert printed.is_absolute() and (printed / "results.json").is_file()
        folders.append(printed)
    assert folders[0] != folders[1]
    for folder, pipe in zip(folders, pipes, strict=True):
        model_dir = folder.parent
        assert model_dir.parent == tmp_path / "runs" / "attacks"
        assert model_dir.name.startswith("pipe-") and len(model_dir.name) == len("pipe-") + 8
        recorded = json.loads((folder / "results.json").read_text())["model"]
        assert Path(recorded["source"]).resolve() == pipe.resolve()
