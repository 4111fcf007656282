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
        assert (printed / "pairs.png").is_file()
        folders.append(printed)
    assert folders[0] != folders[1]
    for folder, pipe in zip(folders, pipes, strict=True):
        model_dir = folder.parent
        assert model_dir.parent == tmp_path / "runs" / "attacks"
        assert model_dir.name.startswith("pipe-") and len(model_dir.name) == len("pipe-") + 8
        recorded = json.loads((folder / "results.json").read_text())["model"]
        assert Path(recorded["source"]).resolve() == pipe.resolve()


def test_upscale_is_nearest_neighbour_blocks():
    import torch

    from dmattack.core.visualize import upscale

    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    big = upscale(x)
    assert big.shape == (2, 1, 64, 64)  # 8 px → 64 px, factor 8
    assert torch.equal(big[:, :, ::8, ::8], x)  # each pixel a constant 8×8 block
    assert torch.equal(big.reshape(2, 1, 8, 8, 8, 8).amax((3, 5)), x)
    assert torch.equal(big.reshape(2, 1, 8, 8, 8, 8).amin((3, 5)), x)
    assert upscale(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)  # large enough
    assert upscale(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 64, 64)


def test_pairs_png(tmp_path):
    import torch
    from PIL import Image

    from dmattack.core.visualize import save_pairs_png

    clean = torch.zeros(5, 64)  # 64-D digit vectors: 8×8 images
    attacked = clean.clone()
    attacked[2, :4] = 0.5  # damage of pair 2: ‖Δ‖₂ = sqrt(4 · 0.25) = 1
    assert save_pairs_png(clean, attacked, tmp_path / "p.png", title="t")
    width, height = Image.open(tmp_path / "p.png").size
    assert width > height and width >= 5 * 64  # side by side, readable size
    assert not save_pairs_png(torch.zeros(4, 3), torch.zeros(4, 3), tmp_path / "q.png")
    assert not (tmp_path / "q.png").exists()


def test_identical_curve_series_stay_visible(tmp_path, monkeypatch):
    """Two series with the same values get different markers and line styles (and linear
    axes), so the one drawn last does not hide the other."""
    from dmattack.core import visualize

    figures = []
    monkeypatch.setattr(visualize.plt, "close", figures.append)
    values = [1.0, 1.02, 1.04]
    row = {"values": values, "control": False, "series": "pgd", "model": "m",
           "damage": [None, {"pixel deviation": {"mean": 0.1, "ci95": [0.05, 0.15]}}] * 2}
    curve = {"percents": [0, 50, 100], "metric": "variance ratio", "steps_attacked": None,
             "rows": [row, {**row, "series": "fgsm"}, {**row, "series": "random",
                                                        "control": True}]}
    visualize.curve_png(curve, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").is_file()
    metric_ax = figures[0].axes[0]
    lines = [ln for ln in metric_ax.get_lines() if len(ln.get_xdata()) == 3]
    assert [list(ln.get_ydata()) for ln in lines] == [values] * 3
    styles = {(ln.get_marker(), str(ln.get_linestyle()), ln.get_markersize()) for ln in lines}
    assert len(styles) == 3
    assert metric_ax.get_yscale() == "linear"
    for i in range(len(visualize.MARKERS)):
        assert visualize.series_style(i, False)["marker"] == visualize.MARKERS[i]
