"""`dmattack attack / curve` with the adaptive attacks (trajectory, lookahead): settings reach
the attack, records carry them, curves resume, bad input exits 2 with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import cli
from dmattack.attacks import AttackSpec, LookaheadPGD, TrajectoryPGD, attacked_steps
from dmattack.attacks.options import spec_from_options
from dmattack.commands import output as cli_output
from dmattack.core.errors import ConfigError
from dmattack.core.registry import SAMPLERS
from dmattack.core.seeding import sample_seeds
from dmattack.diffusion.sampling import Sampler, SamplerConfig, SamplingChain, ancestral_step
from dmattack.evaluation.attack_eval import curve_specs
from dmattack.runs.checkpoints import load_run

DIGITS = str(Path(__file__).resolve().parents[1] / "checkpoints" / "digits-ddpm")
SMALL = ["--run", DIGITS, "--sampler", "respaced", "--sampler-steps", "5", "--num-samples",
         "4", "--metrics", "variance-ratio"]


def run(*args: str, catch: bool = False):
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=catch)


def _library_samples(res: dict, attack) -> torch.Tensor:
    """The attacked samples of ``attack`` computed directly, with the run's model and sampler."""
    loaded = load_run(DIGITS)
    s = res["sampler"]
    sampler = SamplerConfig.from_dict(s)
    chain = SamplingChain(loaded.diffusion, sampler)
    with torch.no_grad():
        return attack.sample_attacked(loaded.model, chain, sampler, loaded.data_shape,
                                      sample_seeds(0, 4), res["attacked_steps"])


def test_attack_trajectory_records_settings_and_matches_the_library(tmp_path):
    result = run("attack", "--method", "trajectory", "--steps-attacked", "50", "--iterations",
                 "2", "--distance", "pixel", *SMALL, "--out", str(tmp_path / "t"))
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "t" / "results.json").read_text())
    assert res["label"] == "trajectory-pgd2-pixel-spread-50%"
    assert {k: v for k, v in res["attack"].items() if k not in ("label", "series")} == {
        "method": "trajectory", "kind": "whole-chain", "percent": 50.0, "window": "spread",
        "eps_scale": 1.0, "iterations": 2, "alpha_scale": 0.125, "distance": "pixel",
        "feature_extractor": None, "checkpoint": True, "keep": "best", "restarts": 1}
    assert res["num_attacked_steps"] == 2 == len(attacked_steps(5, 50))  # of 4 with a budget
    assert res["seconds"]["attacked"] > 0 and res["seconds"]["clean"] > 0
    x = load_file(tmp_path / "t" / "samples.safetensors")
    assert res["damage"]["pixel deviation"]["mean"] > 0
    direct = _library_samples(res, TrajectoryPGD(iterations=2, distance="pixel"))
    torch.testing.assert_close(x["attacked"], direct, rtol=0, atol=1e-5)


def test_attack_lookahead_takes_eot_and_horizon(tmp_path):
    result = run("attack", "--method", "lookahead", "--eot", "2", "--horizon", "2",
                 "--iterations", "2", "--steps-attacked", "40", *SMALL,
                 "--out", str(tmp_path / "l"))
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "l" / "results.json").read_text())
    assert res["label"] == "lookahead-pgd2-eot2-h2-pixel-spread-40%"
    assert res["attack"]["eot"] == 2 and res["attack"]["horizon"] == 2
    assert "loss" not in res["attack"] and "pgd_steps" not in res["attack"]
    assert res["num_attacked_steps"] == 2
    x = load_file(tmp_path / "l" / "samples.safetensors")
    direct = _library_samples(res, LookaheadPGD(iterations=2, eot=2, horizon=2))
    torch.testing.assert_close(x["attacked"], direct, rtol=0, atol=1e-5)


def test_horizon_option_parses_integers_and_end():
    (horizon,) = [p for p in cli.attack.params if p.name == "horizon"]
    assert horizon.default is None and "[default: 5]" in horizon.help  # unset: lookahead's 5
    assert horizon.type.convert("3", horizon, None) == 3
    assert horizon.type.convert("end", horizon, None) == "end"
    spec = spec_from_options({"method": "lookahead", "horizon": "end"})
    assert spec.describe() == "lookahead-pgd20-eot4-hend-pixel-spread-50%"


def test_curve_specs_pass_each_method_only_what_it_reads():
    specs = curve_specs(["pgd", "trajectory", "lookahead", "random"], [50], loss="eps",
                        pgd_steps=3, iterations=2, eot=2, horizon="end", random_dist="uniform")
    by = {s.method: s for s in specs}
    assert by["pgd"].loss == "eps" and by["pgd"].pgd_steps == 3
    assert not hasattr(by["pgd"], "eot") and not hasattr(by["pgd"], "iterations")
    assert by["trajectory"].iterations == 2 and not hasattr(by["trajectory"], "loss")
    assert not hasattr(by["trajectory"], "eot") and by["lookahead"].eot == 2
    assert by["lookahead"].horizon == "end" and by["random"].random_dist == "uniform"
    assert set(by["random"].settings()) == {"eps_scale", "random_dist"}
    assert curve_specs(["random"], [50], loss="eps")[0].settings() == {  # shared options
        "eps_scale": 1.0, "random_dist": "sign"}
    with pytest.raises(ConfigError, match=r"eot \(--eot\) = 8 is not used by any"):
        curve_specs(["pgd", "trajectory"], [50], refuse_unused=True, eot=8)


def test_curve_runs_every_kind_and_resumes(tmp_path, monkeypatch):
    args = ["curve", "--method", "pgd,trajectory,lookahead,random", "--steps-attacked", "0,50",
            "--pgd-steps", "2", "--iterations", "2", "--eot", "2", "--horizon", "2", *SMALL,
            "--out", str(tmp_path / "c")]
    result = run(*args)
    assert result.exit_code == 0, result.output
    curve = json.loads((tmp_path / "c" / "curve.json").read_text())
    series = {r["series"] for r in curve["rows"]}
    assert series == {"pgd2-mean-spread", "trajectory-pgd2-pixel-spread",
                      "lookahead-pgd2-eot2-h2-pixel-spread", "random-sign-spread"}
    points = {p["method"]: p for p in curve["points"]}
    assert points["trajectory"]["attack"]["iterations"] == 2
    assert "eot" not in points["trajectory"]["attack"] and "loss" not in points["lookahead"][
        "attack"]
    assert points["lookahead"]["attack"]["horizon"] == 2 and "eot" not in points["pgd"]["attack"]
    for m in ("trajectory", "lookahead"):
        assert points[m]["num_attacked_steps"] == 2 and points[m]["seconds"] > 0
        assert points[m]["damage"]["pixel deviation"]["mean"] > 0
    store = (tmp_path / "c" / "points.jsonl").read_text()

    resumed = []
    original = cli_output.curve_progress

    def spy(bar):
        inner = original(bar)

        def progress(done, total, record):
            resumed.append(record["resumed"])
            inner(done, total, record)

        return progress

    monkeypatch.setattr(cli_output, "curve_progress", spy)
    again = run(*args)
    assert again.exit_code == 0, again.output
    assert resumed == [True] * 5
    assert (tmp_path / "c" / "points.jsonl").read_text() == store
    assert json.loads((tmp_path / "c" / "curve.json").read_text())["rows"] == curve["rows"]


@pytest.fixture
def plugin_sampler():
    SAMPLERS.register("heun", Sampler("a plugin's sampler the chain cannot differentiate "
                                      "(test)", ancestral_step, differentiable=False))
    yield "heun"
    SAMPLERS.unregister("heun")


BAD = [
    (["attack", "--method", "trajectory", "--distance", "l2"], "'l2'"),
    (["attack", "--method", "trajectory", "--distance", "features", "--feature-extractor",
      "vgg"], "'vgg'"),
    (["attack", "--method", "trajectory", "--feature-extractor", "digits-cnn"], "features"),
    (["attack", "--method", "lookahead", "--horizon", "9"], "horizon (--horizon) = 9"),
    (["attack", "--method", "lookahead", "--horizon", "soon"], "'soon'"),
    (["attack", "--method", "lookahead", "--eot", "0"], "eot (--eot) = 0"),
    (["attack", "--method", "trajectory", "--iterations", "0"], "iterations (--iterations) = 0"),
    (["attack", "--method", "trajectory", "--eot", "2"], "not used by attack 'trajectory'"),
    (["attack", "--method", "pgd", "--horizon", "3"], "not used by attack 'pgd'"),
    (["attack", "--method", "trajectory", "--sampler", "heun"], "cannot be differentiated"),
    (["curve", "--method", "pgd,random", "--eot", "8"], "eot (--eot) = 8 is not used by any"),
    (["curve", "--method", "lookahead", "--horizon", "9", "--steps-attacked", "50"],
     "horizon (--horizon) = 9"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a[1:]) for a, _ in BAD])
def test_bad_input_exits_2_with_one_line(args, needle, plugin_sampler, tmp_path):
    result = run(args[0], *SMALL, *args[1:], "--out", str(tmp_path / "o"), catch=True)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.output
    assert not (tmp_path / "o" / "results.json").exists()
    assert not (tmp_path / "o" / "points.jsonl").exists()


def _variance(samples: torch.Tensor) -> dict[str, float]:
    return {"variance": float(samples.double().var())}


def _sharded_attack(rank: int, world: int, port: int, out: Path) -> None:
    """What torchrun starts in each process: join, then run_attack on this rank's seeds."""
    import os

    from dmattack.core import distributed
    from dmattack.evaluation.attack_eval import run_attack

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init(torch.device("cpu"))
    run_attack(load_run(DIGITS), AttackSpec(method="trajectory", iterations=2), num_samples=4,
               seed=0, sampler=SamplerConfig("respaced", 5), batch_size=2, metric_fn=_variance,
               device="cpu", out_dir=out)
    distributed.shutdown()


@pytest.mark.slow
def test_whole_chain_attack_shards_under_torchrun_like_one_process(tmp_path):
    """Two gloo processes (as torchrun starts them) each attack their whole batches; rank 0
    gathers and writes exactly the single-process samples."""
    import socket

    import torch.multiprocessing as mp

    from dmattack.evaluation.attack_eval import run_attack

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sharded_attack, args=(2, port, tmp_path / "two"), nprocs=2, join=True)
    one = run_attack(load_run(DIGITS), AttackSpec(method="trajectory", iterations=2),
                     num_samples=4, seed=0, sampler=SamplerConfig("respaced", 5), batch_size=2,
                     metric_fn=_variance, device="cpu", out_dir=tmp_path / "one")
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["attack"] == one["attack"] and two["metrics"] == one["metrics"]
    a, b = (load_file(tmp_path / d / "samples.safetensors") for d in ("one", "two"))
    assert torch.equal(a["attacked"], b["attacked"]) and torch.equal(a["clean"], b["clean"])
