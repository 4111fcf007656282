"""Content-addressed curve points (issue: "no silent wrong number"): a point is reused only when
everything that determines its value is unchanged: the model's weights and config, the sampler,
the scoring (metrics, reference) and the attack's exact settings."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import cli

ROOT = Path(__file__).resolve().parents[1]
DDPM, ROBUST = ROOT / "checkpoints" / "digits-ddpm", ROOT / "checkpoints" / "digits-robust-adv"
CURVE = ["--dataset", "digits", "--method", "random", "--steps-attacked", "0,50",
         "--num-samples", "16", "--batch-size", "16", "--sampler", "respaced", "--steps", "10"]


def run(*args: str):
    result = CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def points(folder: Path) -> list[dict]:
    return json.loads((folder / "curve.json").read_text())["points"]


def values(folder: Path, label: str = "variance ratio") -> list[float]:
    return [p["metrics"][label] for p in points(folder)]


def test_pipeline_replaced_by_other_weights_is_recomputed(tmp_path):
    pipe, out = tmp_path / "pipe", tmp_path / "c"
    run("export", "--run", DDPM, "--out", pipe)
    run("curve", "--pipeline", pipe, *CURVE, "--metrics", "variance-ratio", "--out", out)
    before = values(out)
    shutil.rmtree(pipe)
    run("export", "--run", ROBUST, "--out", pipe)
    second = run("curve", "--pipeline", pipe, *CURVE, "--metrics", "variance-ratio",
                 "--out", out)
    assert "resumed" not in second.output
    after = values(out)
    fresh = tmp_path / "fresh"
    run("curve", "--pipeline", pipe, *CURVE, "--metrics", "variance-ratio", "--out", fresh)
    assert after == values(fresh) and after != before
    # the same weights again: every point is read back, not recomputed
    run("curve", "--pipeline", pipe, *CURVE, "--metrics", "variance-ratio", "--out", out)
    assert values(out) == after
    assert len((out / "points.jsonl").read_text().splitlines()) == 2 * 2


def test_run_with_edited_diffusion_config_is_recomputed(tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "c"
    shutil.copytree(DDPM, run_dir)
    run("curve", "--run", run_dir, *CURVE, "--metrics", "variance-ratio", "--out", out)
    before = values(out)
    cfg = json.loads((run_dir / "config.json").read_text())
    new = "fixed_large" if cfg["diffusion"]["variance_type"] == "fixed_small" else "fixed_small"
    cfg["diffusion"]["variance_type"] = cfg["train"]["variance_type"] = new
    (run_dir / "config.json").write_text(json.dumps(cfg))
    run("curve", "--run", run_dir, *CURVE, "--metrics", "variance-ratio", "--out", out)
    after = values(out)
    fresh = tmp_path / "fresh"
    run("curve", "--run", run_dir, *CURVE, "--metrics", "variance-ratio", "--out", fresh)
    assert after == values(fresh) and after != before


def test_other_metrics_into_the_same_folder_are_recomputed(tmp_path):
    out = tmp_path / "c"
    run("curve", "--run", DDPM, *CURVE, "--metrics", "fid", "--allow-small-fid", "--out", out)
    fid = json.loads((out / "curve.json").read_text())
    second = run("curve", "--run", DDPM, *CURVE, "--metrics", "variance-ratio", "--out", out)
    curve = json.loads((out / "curve.json").read_text())
    assert curve["metric"] == "variance ratio"
    assert all("variance ratio" in p["metrics"] for p in curve["points"])
    assert all(0 < v < 5 for row in curve["rows"] for v in row["values"])
    assert [r["values"] for r in curve["rows"]] != [r["values"] for r in fid["rows"]]
    assert "resumed" not in second.output
    assert all(p["scoring"]["metrics"] == ["variance-ratio"] for p in curve["points"])


def test_near_equal_percents_never_share_a_point(tmp_path):
    out = tmp_path / "c"
    base = [a for a in CURVE if a not in ("0,50",)]
    i = base.index("--steps-attacked")
    # counting all 10 steps (the former counting), so that 5% is exactly half a step
    run("curve", "--run", DDPM, *base[:i + 1], "5", *base[i + 1:], "--metrics",
        "variance-ratio", "--step-counting", "all", "--out", out)
    five = [p for p in points(out) if p["label"] != "clean"]
    run("curve", "--run", DDPM, *base[:i + 1], "4.9999999", *base[i + 1:], "--metrics",
        "variance-ratio", "--step-counting", "all", "--out", out)
    near = [p for p in points(out) if p["label"] != "clean"]
    assert five[0]["key"] != near[0]["key"]
    assert near[0]["percent"] == pytest.approx(4.9999999, abs=0) and five[0]["percent"] == 5.0
    # 5% of 10 steps rounds half up to one attacked step; 4.9999999% attacks none
    assert five[0]["attacked_steps"] == [5] and near[0]["attacked_steps"] == []


# ------------------------------------------------------------ issue 18: keys from what was read
def add_sharded_index(folder: Path, weights: Path) -> None:
    """Plant ``diffusion_pytorch_model.safetensors.index.json`` + one shard holding ``weights``
    (another model's) beside the single weights file of ``folder``, as in issue 18."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    save_file(state, str(folder / "diffusion_pytorch_model-00001-of-00001.safetensors"))
    index = {"metadata": {}, "weight_map": {
        k: "diffusion_pytorch_model-00001-of-00001.safetensors" for k in state}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))


def test_sharded_index_planted_in_a_checkpoint_is_refused(tmp_path):
    from dmattack.core.errors import RunFolderError
    from dmattack.runs.checkpoints import load_run

    run_dir = tmp_path / "run"
    shutil.copytree(DDPM, run_dir)
    add_sharded_index(run_dir / "checkpoint" / "ema", ROBUST / "checkpoint" / "ema"
                      / "diffusion_pytorch_model.safetensors")
    with pytest.raises(RunFolderError, match="is not listed in"):
        load_run(run_dir)
    result = CliRunner().invoke(cli.main, ["curve", "--run", str(run_dir), *CURVE, "--metrics",
                                           "variance-ratio", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "diffusion_pytorch_model" in result.output and "not listed" in result.output


def test_sharded_index_planted_in_a_pipeline_is_refused(tmp_path):
    from dmattack.core.errors import InputFileError
    from dmattack.runs.pipeline import load_pipeline

    pipe = tmp_path / "pipe"
    run("export", "--run", DDPM, "--out", pipe)
    before = load_pipeline(pipe).fingerprint
    add_sharded_index(pipe / "unet", ROBUST / "checkpoint" / "ema"
                      / "diffusion_pytorch_model.safetensors")
    with pytest.raises(InputFileError, match="ambiguous"):
        load_pipeline(pipe)
    (pipe / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    sharded = load_pipeline(pipe)  # only the index is left: it is what loads, and is keyed
    robust = load_pipeline(run("export", "--run", ROBUST, "--out", tmp_path / "r") and
                           tmp_path / "r")
    assert sharded.fingerprint != before
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.equal(sharded.model(x, t), robust.model(x, t))
    (pipe / "unet" / "extra.safetensors").write_bytes(b"")
    with pytest.raises(InputFileError, match="extra.safetensors"):
        load_pipeline(pipe)


def test_fingerprint_covers_every_file_the_loader_reads(tmp_path):
    """Each file the loader reads (index and shard included) changes the fingerprint when one
    byte of it changes, or makes loading refuse."""
    from dmattack.core.errors import InputFileError
    from dmattack.runs.pipeline import load_pipeline

    pipe = tmp_path / "pipe"
    run("export", "--run", DDPM, "--out", pipe)
    unet = pipe / "unet"
    add_sharded_index(unet, unet / "diffusion_pytorch_model.safetensors")
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    base = load_pipeline(pipe).fingerprint
    for name in ("config.json", "diffusion_pytorch_model.safetensors.index.json",
                 "diffusion_pytorch_model-00001-of-00001.safetensors"):
        path = unet / name
        original = path.read_bytes()
        data = bytearray(original)
        data[-2] ^= 1 if name.endswith(".safetensors") else 0
        if not name.endswith(".safetensors"):  # JSON: one more space, the same meaning
            data = bytearray(original.rstrip() + b" \n")
        path.write_bytes(bytes(data))
        try:
            assert load_pipeline(pipe).fingerprint != base, name
        except InputFileError:
            pass
        path.write_bytes(original)
    assert load_pipeline(pipe).fingerprint == base


def test_permuted_clean_rows_are_verified_and_resampled(tmp_path, caplog):
    out, fresh = tmp_path / "c", tmp_path / "fresh"
    base = [a for a in CURVE if a != "0,50"]
    i = base.index("--steps-attacked") + 1
    args = ["--run", DDPM, "--metrics", "variance-ratio"]
    run("curve", *args, *base[:i], "0,50", *base[i:], "--out", out)
    (clean_file,) = (out / "clean").glob("*.safetensors")
    from safetensors.torch import load_file, save_file

    samples = load_file(str(clean_file))["samples"]
    save_file({"samples": samples.flip(0).contiguous()}, str(clean_file))
    with caplog.at_level("WARNING", logger="dmattack"):
        second = run("curve", *args, *base[:i], "0,50,100", *base[i:], "--out", out)
    assert "does not match the sha256" in caplog.text + second.output
    run("curve", *args, *base[:i], "0,50,100", *base[i:], "--out", fresh)
    damage = [p["damage"] for p in points(out)[-3:]]
    assert damage == [p["damage"] for p in points(fresh)]
    # the resampled clean samples replaced the permuted file
    assert torch.equal(load_file(str(clean_file))["samples"], samples)


def test_first_sample_is_passed_on_and_keyed(tmp_path):
    base = CURVE[:CURVE.index("--num-samples")] + ["--num-samples", "8", "--batch-size", "8"] \
        + CURVE[CURVE.index("--sampler"):]
    args = ["--run", DDPM, "--metrics", "variance-ratio", *base]
    run("curve", *args, "--out", tmp_path / "a")
    run("curve", *args, "--first-sample", "8", "--out", tmp_path / "b")
    full = CURVE[:CURVE.index("--num-samples")] + ["--num-samples", "16", "--batch-size", "8"] \
        + CURVE[CURVE.index("--sampler"):]
    run("curve", "--run", DDPM, "--metrics", "variance-ratio", *full, "--out", tmp_path / "f")
    from safetensors.torch import load_file

    def clean(folder):
        (f,) = (folder / "clean").glob("*.safetensors")
        return load_file(str(f))["samples"]

    a, b, f = clean(tmp_path / "a"), clean(tmp_path / "b"), clean(tmp_path / "f")
    assert torch.equal(f[:8], a) and torch.equal(f[8:], b) and not torch.equal(a, b)
    pa, pb = points(tmp_path / "a"), points(tmp_path / "b")
    assert [p["key"] for p in pa] != [p["key"] for p in pb]
    assert pb[0]["first_sample"] == 8 and pa[0]["first_sample"] == 0
    # into the same folder: a different first sample is never resumed from the other's points
    second = run("curve", *args, "--first-sample", "8", "--out", tmp_path / "a")
    assert "resumed" not in second.output
    assert [p["metrics"] for p in points(tmp_path / "a")[-2:]] == [p["metrics"] for p in pb]


# ------------------------------------------------------------------- user callables keyed by code
def _two_functions_named_the_same():
    ns_a: dict = {}
    ns_b: dict = {}
    exec("def mydist(a, b):\n    return (a - b).pow(2).flatten(1).mean(1)", ns_a)
    exec("def mydist(a, b):\n    return (a - b).abs().flatten(1).mean(1)", ns_b)
    return ns_a["mydist"], ns_b["mydist"]


def test_callable_key_same_name_different_code():
    from dmattack.core.keys import callable_key

    a, b = _two_functions_named_the_same()
    assert a.__qualname__ == b.__qualname__ and callable_key(a) != callable_key(b)
    again, _ = _two_functions_named_the_same()
    assert callable_key(again) == callable_key(a)  # same code and values: the same key


def test_callable_key_sees_constants_defaults_closures_and_globals():
    from dmattack.core.keys import callable_key

    def make(scale, net):
        def metric(x):  # noqa: ARG001 - only its key matters here
            return {"m": float(net(x).mean()) * scale}
        return metric

    torch.manual_seed(0)
    net = torch.nn.Linear(2, 2)
    base = callable_key(make(2.0, net))
    assert callable_key(make(2.0, net)) == base
    assert callable_key(make(3.0, net)) != base  # a closure value
    with torch.no_grad():
        net.weight[0, 0] += 1e-3
    assert callable_key(make(2.0, net)) != base  # a closed-over module's weights
    assert callable_key(lambda x, k=1: x * k) != callable_key(lambda x, k=2: x * k)
    assert callable_key(lambda x: x * 1.0) != callable_key(lambda x: x * 1.5)
    assert callable_key(lambda x: (lambda y: y + 1)(x)) != callable_key(
        lambda x: (lambda y: y + 2)(x))  # nested code objects, recursively


def test_unkeyable_callable_is_refused_with_how_to_key_it():
    import threading

    from dmattack.core.keys import UnkeyableError, callable_key

    lock = threading.Lock()

    def metric(x):
        with lock:
            return {"m": float(x.mean())}

    with pytest.raises(UnkeyableError, match=r"metric\.key = "):
        callable_key(metric)
    metric.key = "v1"
    assert callable_key(metric) == callable_key(metric)


def test_curve_never_resumes_a_same_name_metric_with_other_code(tmp_path):
    from dmattack.diffusion.sampling import SamplerConfig
    from dmattack.evaluation.attack_eval import run_curve
    from dmattack.runs.checkpoints import load_run

    loaded = load_run(DDPM)
    kw = dict(num_samples=4, seed=0, sampler=SamplerConfig("respaced", steps=5),
              batch_size=4, device="cpu", out_dir=tmp_path / "c")
    first = run_curve([loaded], ["random"], metric_fn=lambda x: {"m": float(x.mean())}, **kw)
    second = run_curve([loaded], ["random"], metric_fn=lambda x: {"m": float(x.std())}, **kw)
    assert first["rows"][0]["values"] != second["rows"][0]["values"]
    same = run_curve([loaded], ["random"], metric_fn=lambda x: {"m": float(x.std())}, **kw)
    assert same["rows"] == second["rows"]
    assert len((tmp_path / "c" / "points.jsonl").read_text().splitlines()) == 2 * 2


def test_same_name_distances_give_different_attack_records():
    from dmattack.attacks.distances import distance_key

    a, b = _two_functions_named_the_same()
    assert distance_key("pixel") is None
    assert distance_key(a) != distance_key(b)


def test_shard_slices_are_verified_on_read(tmp_path, monkeypatch, caplog):
    """A sharded point's kept slice is read back only when its samples match their sha256;
    rows permuted on disk are recomputed (issue 18: cached intermediates verified on read)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    import dmattack.evaluation.attack_eval.store as ae

    monkeypatch.setattr(ae.distributed, "is_distributed", lambda: True)
    calls = []

    def compute() -> tuple[torch.Tensor, float]:
        calls.append(1)
        return torch.arange(12.0).reshape(3, 4), 1.5

    path = tmp_path / "shards" / "p" / "0-3.safetensors"
    first, _ = ae.cached_slice(path, compute)
    again, seconds = ae.cached_slice(path, compute)
    assert len(calls) == 1 and torch.equal(first, again) and seconds == 1.5
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    save_file({"samples": load_file(path)["samples"].flip(0).contiguous()}, str(path), meta)
    redone, _ = ae.cached_slice(path, compute)
    assert len(calls) == 2 and torch.equal(redone, first)
    assert "does not match its recorded sha256" in caplog.text
