"""`dmattack purify` keys its units by the data read, not its path, and refuses a non-finite
purifier instead of printing 0.0% (issue 18's purification findings)."""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_purification import TinyEps, tiny_diffusion, tiny_loaded
from torch import nn

import cli
from dmattack.core.errors import DmattackError
from dmattack.purification import NonFiniteError, PurifyConfig, run_purification
from dmattack.runs.checkpoints import LoadedModel


class _Brightness(nn.Module):
    """A 10-class CIFAR-shaped classifier: the label is the mean brightness decile."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((1, 2, 3))
        centres = (torch.arange(10, dtype=x.dtype) + 0.5) / 10
        return -(m[:, None] - centres[None]).abs() * 100


def write_cifar(root, labels, seed=0) -> None:
    """A fake cifar-10-batches-py/test_batch: images of brightness decile = label."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = np.stack([np.full(3072, 25 * int(k) + 12, dtype=np.uint8) for k in labels])
    data = np.clip(data.astype(int) + rng.integers(-3, 4, data.shape), 0, 255).astype(np.uint8)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": data, "labels": list(labels)}, f)


def cifar_config(tmp_path, **kw) -> PurifyConfig:
    with warnings.catch_warnings():  # torch >= 2.10 flags TorchScript as deprecated
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(_Brightness()).save(str(tmp_path / "clf.pt"))
    return PurifyConfig(**{"classifier": str(tmp_path / "clf.pt"), "data": "cifar10",
                           "data_dir": str(tmp_path / "data"), "attacks": "pgd-eot",
                           "eps": 0.0, "iterations": 1, "eot": 1, "draws": 2,
                           "num_samples": 8, "batch_size": 4, **kw})


def test_replacing_test_batch_recomputes(tmp_path):
    labels = [0, 1, 2, 3, 4, 5, 6, 7]
    write_cifar(tmp_path / "data", labels)
    cfg, out = cifar_config(tmp_path), tmp_path / "out"
    first = run_purification(cfg, [], out)
    assert first["rows"][0]["clean"]["mean"] == 1.0
    # new labels for the same path: the old predictions must not be scored against them
    write_cifar(tmp_path / "data", [9 - k for k in labels])
    second = run_purification(cfg, [], out)
    fresh = run_purification(cfg, [], tmp_path / "fresh")
    assert second["rows"][0]["correct"] == fresh["rows"][0]["correct"]
    assert second["rows"][0]["clean"]["mean"] == 1.0  # (the brightness follows the labels)
    assert second["data"]["sha256_decoded"] != first["data"]["sha256_decoded"]
    # the same bytes again: every unit is reused (same keys), nothing recomputed
    units = sorted(p.name for p in (out / "units").iterdir())
    run_purification(cfg, [], out)
    assert sorted(p.name for p in (out / "units").iterdir()) == units


def test_only_the_changed_batch_is_recomputed(tmp_path, monkeypatch):
    from dmattack.purification import evaluate

    labels = [0, 1, 2, 3, 4, 5, 6, 7]
    write_cifar(tmp_path / "data", labels)
    cfg = cifar_config(tmp_path)
    run_purification(cfg, [], tmp_path / "out")
    changed = labels[:4] + [8, 8, 8, 8]  # the second batch of 4 differs
    write_cifar(tmp_path / "data", changed)
    calls = []
    real = evaluate._unit
    monkeypatch.setattr(evaluate, "_unit",
                        lambda *a, **k: calls.append(a[6]) or real(*a, **k))  # a[6]: start
    run_purification(cfg, [], tmp_path / "out")
    assert calls == [4, 4]  # clean and pgd-eot of the batch starting at image 4


def nan_loaded() -> LoadedModel:
    model = TinyEps()
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = float("nan")
    return LoadedModel(model=model, diffusion=tiny_diffusion(), data_shape=(1, 8, 8),
                       source="/models/nan", fingerprint="nan-0")


class _Overflow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1e30))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        big = x * self.scale * self.scale  # finite weights, float32 overflow: inf
        return big - big  # inf − inf: NaN noise predictions


def test_non_finite_purifier_is_refused_not_scored(tmp_path):
    cfg = PurifyConfig(t_star="0.5", purify_steps=2, attacks="pgd-eot", iterations=1, eot=1,
                       draws=2, num_samples=4, batch_size=4)
    with pytest.raises(NonFiniteError, match="non-finite .*weights") as e:
        run_purification(cfg, [nan_loaded()], tmp_path / "a")
    assert "\n" not in str(e.value) and isinstance(e.value, DmattackError)
    assert not (tmp_path / "a" / "purify.json").exists()
    inf = LoadedModel(model=_Overflow(), diffusion=tiny_diffusion(), data_shape=(1, 8, 8),
                      source="/models/inf", fingerprint="inf-0")
    with pytest.raises(NonFiniteError, match="non-finite logits"):
        run_purification(cfg, [inf], tmp_path / "b")
    assert not (tmp_path / "b" / "purify.json").exists()
    # a finite purifier runs
    assert run_purification(cfg, [tiny_loaded()], tmp_path / "c")["rows"]


def test_cli_non_finite_purifier_is_one_line_exit_2(tmp_path, monkeypatch):
    import dmattack.purification as purification

    monkeypatch.setattr(purification, "load_model", lambda *a, **k: nan_loaded())
    result = CliRunner().invoke(cli.main, ["purify", "--run", "x", "--t-star", "0.5",
                                           "--num-samples", "4", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "non-finite" in result.output
    assert "0.0" not in result.output
    assert not (tmp_path / "o").exists() or not (tmp_path / "o" / "purify.json").exists()
    json.dumps(result.output)
