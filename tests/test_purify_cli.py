"""`dmattack purify` end to end at toy sizes: output files, the t* = 0 row, one-line errors
before any work, resumption, and the spelling of optional numbers."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import cli
from dmattack.purification import evaluate

ROOT = Path(__file__).resolve().parents[1]
DDPM = str(ROOT / "checkpoints" / "digits-ddpm")
TINY = ["--run", DDPM, "--purify-steps", "1", "--iterations", "1", "--eot", "1", "--draws", "2",
        "--num-samples", "4", "--batch-size", "4", "--eps", "8/255", "--device", "cpu"]


def purify(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.main, ["purify", *TINY, *args])
    return result.exit_code, result.output


def test_runs_writes_json_and_csv_and_t_star_zero_is_undefended(tmp_path):
    out = tmp_path / "p"
    code, output = purify("--t-star", "0,0.05", "--out", str(out))
    assert code == 0, output
    assert str(out / "purify.json") in output and "worst" in output
    assert "seen in training" in output  # the shipped purifiers saw every digit
    result = json.loads((out / "purify.json").read_text())
    assert result["config"]["eps"] == pytest.approx(8 / 255)
    rows = {(r["purifier"], r["t_star"], r["attack"]): r for r in result["rows"]}
    assert len(rows) == 2 * 3  # (undefended, t* 0, t* 0.05) × (pgd-eot, bpda-eot)
    for attack in ("pgd-eot", "bpda-eot"):
        none, identity = rows["none", None, attack], rows["digits-ddpm", 0, attack]
        for key in ("clean", "robust", "adversarial", "correct"):
            assert identity[key] == none[key]
    for r in result["rows"]:
        assert r["robust_accuracy"] <= r["clean_accuracy"]
    with open(out / "purify.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(result["rows"])
    assert {float(r["robust_mean"]) for r in table} == {r["robust"]["mean"]
                                                      for r in result["rows"]}
    assert {r["draws"] for r in table} == {"2"}
    assert result["purifiers"][0]["eval_images_in_training"] is True


def test_rerun_resumes_from_finished_units(tmp_path, monkeypatch):
    out = tmp_path / "p"
    assert purify("--t-star", "0.05", "--out", str(out))[0] == 0
    first = json.loads((out / "purify.json").read_text())["rows"]

    def no_attacks(*_, **__):
        raise AssertionError("a finished unit was recomputed")

    monkeypatch.setattr(evaluate, "run_purify_attack", no_attacks)
    code, output = purify("--t-star", "0.05", "--out", str(out))
    assert code == 0, output
    again = json.loads((out / "purify.json").read_text())["rows"]
    assert [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in again] == \
        [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in first]


def test_none_spells_every_timestep(tmp_path):
    """``--purify-steps none`` (an ``int | None`` setting) parses: K = every one of the n
    timesteps (t* = 2 is the integer timestep n = 2)."""
    out = tmp_path / "p"
    code, output = purify("--t-star", "2", "--purify-steps", "none", "--method", "bpda-eot",
                          "--out", str(out))
    assert code == 0, output
    rows = json.loads((out / "purify.json").read_text())["rows"]
    assert [r["reverse_steps"] for r in rows] == [None, 2]
    code, output = purify("--purify-steps", "all", "--out", str(tmp_path / "q"))
    assert code == 2 and "'all' is not an integer or none" in output


class _Cifar(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), 3, 32, 32).mean((2, 3)).repeat(1, 4)[:, :10]


@pytest.mark.parametrize("case", ["t_star", "eps", "attack", "pickle", "shape"])
def test_bad_input_is_one_line_exit_2_before_any_work(tmp_path, case):
    out = tmp_path / "p"
    args = {"t_star": ["--t-star", "5000"], "eps": ["--eps", "-0.1"],
            "attack": ["--method", "pgd-eot,fgsm"]}.get(case, [])
    if case == "pickle":
        torch.save(nn.Linear(64, 10), tmp_path / "clf.pt")
        args = ["--classifier", str(tmp_path / "clf.pt")]
    if case == "shape":
        with warnings.catch_warnings():  # torch >= 2.10 flags TorchScript as deprecated
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(_Cifar()).save(str(tmp_path / "cifar.pt"))
        args = ["--classifier", str(tmp_path / "cifar.pt")]
    code, output = purify(*args, "--out", str(out))
    assert code == 2, output
    assert len(output.strip().splitlines()) == 1 and output.startswith("Error: ")
    assert "Traceback" not in output
    expected = {"t_star": "outside the chain", "eps": "eps (--eps)", "attack": "'fgsm'",
                "pickle": "pickle", "shape": "does not accept images of shape"}[case]
    assert expected in output
    assert not (out / "purify.json").exists() and not (out / "units").exists()
