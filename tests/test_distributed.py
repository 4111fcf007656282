"""torchrun-style runs on CPU (gloo, 2 processes started with torch.multiprocessing): DDP
training, sharded sampling and sharded curves give the single-process results."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from dmattack.core import distributed
from dmattack.core.seeding import sample_seeds
from dmattack.diffusion.sampling import SamplerConfig, sample_batched, sample_sharded
from dmattack.evaluation.attack_eval import curve_specs, run_curve
from dmattack.runs.checkpoints import load_run
from dmattack.training.objectives import ObjectiveConfig
from dmattack.training.train import TrainConfig, train

SAMPLER = SamplerConfig("respaced", 8)
N, BATCH = 10, 3  # shards of whole batches: rank 0 takes 2 batches, rank 1 the other 2


def _cfg(**kw) -> TrainConfig:
    base = dict(dataset="oblique-plane", preset="mlp-small", num_data=256, steps=10,
                batch_size=32, lr=1e-3, warmup=2, checkpoint_every=5, log_every=5,
                num_preview=0, device="cpu", objective=ObjectiveConfig("robust-adv"))
    return TrainConfig(**{**base, **kw})


def _metric(samples: torch.Tensor) -> dict[str, float]:
    return {"mean": float(samples.double().mean()), "std": float(samples.double().std())}


def _curve(run: Path, out: Path, metric=_metric) -> dict:
    return run_curve([load_run(run)], curve_specs(["fgsm"], [50], loss="eps"), num_samples=N,
                     seed=0, sampler=SAMPLER, batch_size=BATCH, metric_fn=metric,
                     metric_key="mean-std", device="cpu", out_dir=out)  # same numbers


def _join(rank: int, world: int, port: int) -> None:
    """What torchrun does for each process, then what a script under torchrun does first."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert distributed.init(torch.device("cpu")) == torch.device("cpu")
    assert distributed.world_size() == world and distributed.rank() == rank


def _first(rank: int, world: int, port: int, root: Path) -> None:
    """Train with DDP, sample sharded, then run a sharded curve killed inside its second
    point (after both ranks kept their slices)."""
    _join(rank, world, port)
    import dmattack.training.train as train_mod

    saves = []
    real_save = train_mod.save_checkpoint

    def counting_save(run_dir, model, ema, state, step, **meta):
        saves.append(step)
        return real_save(run_dir, model, ema, state, step, **meta)

    train_mod.save_checkpoint = counting_save
    train(_cfg(), root / "ddp")
    loaded = load_run(root / "single")
    with torch.no_grad():
        x = sample_sharded(loaded.model, loaded.diffusion, loaded.data_shape,
                           sample_seeds(0, N), BATCH, SAMPLER)
    torch.save({"saves": saves, "samples": x}, root / f"first-{rank}.pt")

    calls = []

    def metric_killed_at_second_point(samples):
        calls.append(len(samples))
        if len(calls) == 2:
            os._exit(3)  # a kill: rank 0 has gathered the attacked point, not recorded it
        return _metric(samples)

    _curve(root / "single", root / "curve", metric_killed_at_second_point)


def _resume(rank: int, world: int, port: int, root: Path) -> None:
    """Re-run the killed curve; count the slices recomputed."""
    _join(rank, world, port)
    import dmattack.evaluation.attack_eval.curve as ae

    computed = []
    real = ae.point_samples

    def counting(*args):
        computed.append(1)
        return real(*args)

    ae.point_samples = counting
    curve = _curve(root / "single", root / "curve")
    torch.save({"curve": curve, "computed": len(computed)}, root / f"resume-{rank}.pt")
    distributed.shutdown()


def _spawn(fn, root: Path) -> None:
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(fn, args=(2, port, root), nprocs=2, join=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    train(_cfg(), root / "single")
    train(_cfg(grad_accum=2), root / "accum")
    # the kill of rank 0 can surface as its exit or as rank 1's lost connection
    with pytest.raises((mp.ProcessExitedException, mp.ProcessRaisedException)):
        _spawn(_first, root)
    _spawn(_resume, root)
    return root


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for name in ("model", "ema")
            for k, v in load_file(run / "checkpoint" / f"{name}.safetensors").items()}


@pytest.mark.parametrize("other", ["ddp", "accum"])
def test_two_processes_and_grad_accum_train_like_one_process(runs, other):
    single, two = _weights(runs / "single"), _weights(runs / other)
    assert single.keys() == two.keys()
    for k in single:
        torch.testing.assert_close(two[k], single[k], rtol=1e-5, atol=1e-5, msg=k)
    prev = load_file(runs / "single" / "checkpoint.prev" / "model.safetensors")  # step 5
    assert max((single[f"model.{k}"] - v).abs().max() for k, v in prev.items()) > 1e-3
    config = json.loads((runs / other / "config.json").read_text())
    assert config["world_size"] == (2 if other == "ddp" else 1)


def test_only_rank_0_writes_checkpoints_and_logs(runs):
    first = [torch.load(runs / f"first-{r}.pt") for r in (0, 1)]
    assert first[0]["saves"] == [5, 10] and first[1]["saves"] == []
    log = [json.loads(line)["step"] for line in (runs / "ddp" / "log.jsonl").read_text()
           .splitlines()]
    assert log == [5, 10]
    assert not (runs / "ddp" / ".lock").exists()


def test_sharded_samples_equal_single_process_samples(runs):
    first = [torch.load(runs / f"first-{r}.pt") for r in (0, 1)]
    loaded = load_run(runs / "single")
    with torch.no_grad():
        x = sample_batched(loaded.model, loaded.diffusion, loaded.data_shape,
                           sample_seeds(0, N), BATCH, SAMPLER)
    assert first[1]["samples"] is None  # rank 0 holds the gathered samples
    assert torch.equal(first[0]["samples"], x)  # bit for bit: the same batches were run


def test_killed_sharded_curve_resumes_from_kept_slices_and_equals_unsharded(runs):
    resumed = [torch.load(runs / f"resume-{r}.pt") for r in (0, 1)]
    # the clean point came from points.jsonl, the attacked one from both ranks' kept slices
    assert [r["computed"] for r in resumed] == [0, 0]
    assert resumed[0]["curve"] == resumed[1]["curve"]  # every rank returns the curve
    single = _curve(runs / "single", runs / "curve-single")
    assert [p["metrics"] for p in resumed[0]["curve"]["points"]] == \
        [p["metrics"] for p in single["points"]]
    assert not (runs / "curve" / "shards").exists()  # removed once the points are recorded


def test_shards_are_whole_batches_in_order():
    for n, batch, world in [(10, 3, 2), (7, 1, 3), (5, 4, 3), (100, 8, 4)]:
        ranges = [distributed.shard_range(n, batch, r, world) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        assert all(start % batch == 0 for start, _ in ranges)
    assert distributed.shard(list(range(10)), 3) == list(range(10))  # one process: all


def test_helpers_are_identities_in_one_process():
    x = torch.arange(6.0).reshape(3, 2)
    assert not distributed.is_distributed() and distributed.is_main()
    assert torch.equal(distributed.gather_rows(x), x)
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_gather_objects(3) == [3]
    assert distributed.init(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.slow
def test_torchrun_runs_the_console_script(tmp_path):
    """The documented launch, `torchrun --nproc-per-node 2 -- $(which dmattack) ...`."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "torchrun").exists() or not (bin_dir / "dmattack").exists():
        pytest.skip("torchrun or the dmattack console script is not installed beside python")
    launch = [str(bin_dir / "torchrun"), "--standalone", "--nproc-per-node", "2", "--",
              str(bin_dir / "dmattack")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for args in (["train", "--dataset", "oblique-plane", "--preset", "mlp-small", "--steps", "4",
                  "--batch-size", "16", "--device", "cpu", "--out", str(tmp_path / "run")],
                 ["sample", "--run", str(tmp_path / "run"), "--num-samples", "6",
                  "--batch-size", "2", "--device", "cpu", "--out", str(tmp_path / "s")]):
        done = subprocess.run(launch + args, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "s" / "samples.json").read_text())["world_size"] == 2
    loaded = load_run(tmp_path / "run")
    with torch.no_grad():
        x = sample_batched(loaded.model, loaded.diffusion, loaded.data_shape,
                           sample_seeds(0, 6), 2, SamplerConfig("respaced", 50))
    assert torch.equal(load_file(tmp_path / "s" / "samples.safetensors")["samples"], x)
