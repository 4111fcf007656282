"""Fuzzing the CLI options with hypothesis: whatever the values, a command either succeeds
(exit 0) or is rejected with exit 2 and an ``Error: …`` line, never a traceback.

`train` runs with the training loop replaced by a stub (it still parses, validates and builds
the data), so huge valid values cost nothing; `sample`, `attack`, `curve`, `evaluate` and
`export` run for real on a small trained run, with the work-size options drawn from small or
invalid values. Examples are derandomised (the same every run); set DMATTACK_FUZZ_EXAMPLES=N to
draw N random examples per command instead (deeper fuzzing).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cli
from dmattack.data import DATASETS
from dmattack.models import PRESETS
from dmattack.training.objectives import ObjectiveConfig
from dmattack.training.train import TrainConfig, train

DEEP = int(os.environ.get("DMATTACK_FUZZ_EXAMPLES", "0"))


def fuzz_settings(examples: int):
    return settings(max_examples=DEEP or examples, derandomize=not DEEP, deadline=None,
                    suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("fuzz")
    run = train(TrainConfig(dataset="oblique-plane", preset="mlp-small", num_data=128, steps=4,
                            batch_size=32, num_preview=0, checkpoint_every=4,
                            objective=ObjectiveConfig("ddpm")), root / "run")
    img = train(TrainConfig(dataset="digits", preset="tiny", num_data=16, steps=1, batch_size=8,
                            num_preview=0, checkpoint_every=1,
                            objective=ObjectiveConfig("ddpm")), root / "img")
    (root / "afile").write_text("not a folder")
    (root / "empty").mkdir()
    return {"root": str(root), "run": str(run), "img": str(img), "afile": str(root / "afile"),
            "empty": str(root / "empty")}


@pytest.fixture(autouse=True)
def runs_root(world, monkeypatch):
    """`--run ""` means the newest run under runs/: keep that inside the test folder."""
    monkeypatch.setattr(cli, "RUNS_ROOT", Path(world["root"]))


# ------------------------------------------------------------------------ value pools
JUNK = ["", " ", "x", "∂é", ",", "a,b", "-", "--", "nan", "inf", "-1", "0", "1e999", "\t",
        "None", "null", "[]", "{}", "'", '"', "../..", "%s", "0x10"]
floats = st.one_of(st.sampled_from(["nan", "inf", "-inf", "-0", "0", "1", "0.5", "-1", "1e308",
                                    "1e-320", "3", "x", "", "1e400/1", "8/255", "1/0",
                                    "1e99999999/1"]),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr))
big_ints = st.one_of(st.integers(-3, 40).map(str), st.integers(-2**70, 2**70).map(str),
                     st.sampled_from(["x", "", "1.5", "1e3", "0x10", "2147483648"]))


def small(*valid: str):
    """Small or invalid values for options that size the work."""
    return st.sampled_from([*valid, "-1", "0", "x", "", "2.5"])


def words(*valid: str):
    return st.one_of(st.sampled_from([*valid, *JUNK]), st.text(max_size=8))


def paths(world: dict[str, str]):
    return st.sampled_from(["/nonexistent/x", "", world["afile"], world["empty"], "/dev/null",
                            world["run"], world["img"], world["root"],
                            f"{world['afile']}/below"])


def choose(pools: dict[str, st.SearchStrategy], flags: tuple[str, ...] = ()):
    """A list of command-line pieces: some options with drawn values, and some flags."""
    option = st.sampled_from(sorted(pools)).flatmap(
        lambda name: pools[name].map(lambda v: [name, *v] if isinstance(v, tuple) else [name, v]))
    flag = st.sampled_from(flags).map(lambda f: [f]) if flags else st.nothing()
    return st.lists(st.one_of(option, flag), max_size=5).map(lambda xs: sum(xs, []))


def check(args: list[str]) -> None:
    result = CliRunner().invoke(cli.main, args, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args!r} crashed: {result.exception!r}") from result.exception
    assert result.exit_code in (0, 2), (args, result.exit_code, result.output)
    if result.exit_code == 2:
        last = result.output.strip().splitlines()[-1] if result.output.strip() else ""
        assert last.startswith("Error: ") and len(last) > len("Error: "), (args, result.output)
        assert "Traceback" not in result.output, (args, result.output)


# ------------------------------------------------------------------------ train
@pytest.fixture
def stub_training(monkeypatch):
    calls = []

    def fake_train(cfg, run_dir, resume=False, callback=None, data=None):
        cfg.resolved().validate()  # what reached the trainer is a valid config
        calls.append(cfg)
        return Path(run_dir)

    monkeypatch.setattr("dmattack.training.train.train", fake_train)
    return calls


def train_pools(world):
    return {
        "--dataset": st.sampled_from([*DATASETS, "mnist", "", "DIGITS"]),
        "--data-dir": paths(world),
        "--resolution": st.one_of(small("8", "16"), st.sampled_from(["5000", "300", "2**31"])),
        "--num-data": st.one_of(small("64", "100"), st.sampled_from(["10000001", "2**70"])),
        "--method": words("ddpm", "robust-adv", "robust-rand", "invariance", "ddpm-ip"),
        "--preset": words(*PRESETS),
        "--corrupt-fraction": floats, "--corrupt-sigma": floats, "--lr": floats,
        "--lambda": floats, "--rho": floats, "--bias": floats, "--ema-decay": floats,
        "--corrupt-mode": words("gaussian", "outliers"),
        "--lambda-scaling": words("var", "std", "mul", "const"),
        "--ray-base": words("std", "var"),
        "--xi-range": st.tuples(floats, floats),
        "--fgsm-step": words("std", "wong", "0.5", "-1", "nan", "1e400/1"),
        "--fgsm-cost": words("discrepancy", "equivariance"),
        "--ip-gamma": floats, "--dropout": floats, "--num-workers": big_ints,
        "--invariance-form": words("trades", "madry"),
        "--variance-type": words("fixed_large", "fixed_small"),
        "--schedule": words("linear", "cosine"),
        "--steps": big_ints, "--batch-size": big_ints, "--timesteps": big_ints,
        "--seed": big_ints, "--checkpoint-every": big_ints,
        "--device": words("cpu", "auto", "cuda", "cuda:7", "mps", "tpu", "cpu:0", "meta"),
        "--out": paths(world), "--resume": paths(world),
    }


def test_fuzz_train(world, stub_training, tmp_path_factory):
    base = ["train", "--dataset", "oblique-plane", "--num-data", "64", "--preset", "mlp-small"]

    @fuzz_settings(60)
    @given(choose(train_pools(world), flags=("--stop-gradient", "--no-stop-gradient")))
    def run(extra):
        out = tmp_path_factory.mktemp("t")
        check([*base, "--out", str(out / "r"), *extra])

    run()


# ------------------------------------------------------------------------ sampling commands
def model_pools(world):
    return {
        "--run": paths(world), "--pipeline": paths(world),
        "--device": words("cpu", "auto", "cuda:3", "tpu"),
        "--sampler": words("ddim", "respaced"),  # ddpm: 1000 steps, too slow to fuzz
        "--steps": small("2", "3", "5", "1001"),
        "--eta": floats,
        "--num-samples": small("2", "5"),
        "--batch-size": small("1", "3"),
        "--seed": big_ints,
        "--out": paths(world),
    }


SAMPLING_FLAGS = ("--ema", "--no-ema", "--clip-denoised", "--no-clip-denoised")


def attack_pools(world):
    return {
        **model_pools(world),
        "--dataset": st.sampled_from([*DATASETS, "nope"]),
        "--data-dir": paths(world), "--inception-weights": paths(world),
        "--loss": words("mean", "eps", "x0"),
        "--window": words("first", "last", "spread"),
        "--pgd-steps": small("1", "2"),
        "--random-dist": words("sign", "uniform"),
        "--project": words("auto", "on", "off", "end"),
        "--eps-scale": floats,
        "--method": words("fgsm", "pgd", "random", "fgsm,pgd"),
        "--steps-attacked": words("0", "50", "100", "0,50", "150", "-5", "1e-9"),
        "--metric": words("fd-exact", "variance-ratio", "fid", "plane", "subspace"),
    }


@pytest.mark.parametrize("command,examples", [("sample", 12), ("attack", 12), ("curve", 8),
                                              ("evaluate", 12), ("export", 4)])
def test_fuzz_model_commands(world, command, examples, tmp_path_factory):
    base = {"sample": ["--num-samples", "4", "--sampler", "respaced", "--steps", "3"],
            "attack": ["--num-samples", "4", "--sampler", "respaced", "--steps", "3",
                       "--pgd-steps", "2"],
            "curve": ["--num-samples", "4", "--sampler", "respaced", "--steps", "3",
                      "--pgd-steps", "2", "--method", "fgsm,random", "--steps-attacked", "0,50"],
            "evaluate": ["--num-samples", "4", "--sampler", "respaced", "--steps", "3"],
            "export": []}[command]
    pools = {"sample": model_pools, "attack": attack_pools, "curve": attack_pools,
             "evaluate": model_pools, "export": lambda w: {"--run": paths(w)}}[command](world)
    if command == "curve":
        pools["--windows"] = words("first", "last", "spread", "first,last")
        pools.pop("--pipeline")
    if command == "evaluate":
        pools.update({"--metrics": words("fd-exact", "variance-ratio", "fid", "memorization"),
                      "--samples": paths(world), "--samples-key": words("samples", "clean"),
                      "--first-sample": big_ints,
                      "--feature-extractor": words("auto", "inception", "digits-cnn"),
                      "--memorization-space": words("auto", "pixels", "dinov2")})
    if command in ("attack", "sample"):
        pools["--first-sample"] = big_ints

    @fuzz_settings(examples)
    @given(choose(pools, flags=SAMPLING_FLAGS if command != "export" else ("--no-ema",)))
    def run(extra):
        out = tmp_path_factory.mktemp(command)
        run = world["img" if command == "export" else "run"]
        check([command, "--run", run, *base, "--out", str(out / "o"), *extra])

    run()


# ------------------------------------------------------------------------ former crashes
KNOWN = [
    # IndexError in GaussianDiffusion for a 1-step chain (dmattack/diffusion/gaussian.py,
    # sampling.py)
    (["sample", "--sampler", "respaced", "--steps", "1", "--num-samples", "2"], "steps"),
    # NotADirectoryError in cli.export's emptiness check
    (["export", "--out", "{afile}"], "afile"),
]


@pytest.mark.parametrize("args,needle", KNOWN, ids=[" ".join(a) for a, _ in KNOWN])
def test_former_gaps(world, args, needle, tmp_path):
    args = [a.format(**world) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "o")]
    check([*args[:1], "--run", world["run"], *args[1:]])
