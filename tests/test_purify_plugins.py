"""Purification's labelled data and classifiers as registry entries (issue 19): an entry
registered here is accepted by ``PurifyConfig`` and ``dmattack purify`` and recorded in the
result; an unknown name is refused in one line (exit 2). The docs/architecture.md plugin,
installed as a distribution, runs in a fresh process; its nearest-mean classifier's predictions
are checked against scikit-learn's ``NearestCentroid``."""

from __future__ import annotations

import hashlib
import json
import shlex
import warnings
from pathlib import Path

import doc_plugins
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import cli
from dmattack.core.errors import ConfigError
from dmattack.core.registry import CLASSIFIERS, LABELLED_DATA
from dmattack.purification import (
    ClassifierEntry,
    LabelledSet,
    PurifyConfig,
    load_labeled_data,
    run_purification,
)

TITLE = "## Adding a labelled set and a classifier as plugins"
LEVELS = 10


class Brightness(nn.Module):
    """A 10-class classifier of 1×8×8 images in [0, 1]: the label is the mean brightness decile
    (no tensors of its own)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centres = (torch.arange(LEVELS, dtype=x.dtype) + 0.5) / LEVELS
        return -(x.mean((1, 2, 3))[:, None] - centres[None]).abs() * 100


def bright_set(data_dir):
    """20 uint8 images 1×8×8 of constant brightness in the middle of decile ``label``."""
    labels = torch.arange(20) % LEVELS
    images = (25.5 * labels.float() + 12).round().to(torch.uint8)[:, None, None, None]
    return images.expand(20, 1, 8, 8).clone(), labels, {"levels": LEVELS, "got": data_dir}


@pytest.fixture
def entries():
    """``bright`` (labelled), ``dark-dir`` (labelled, reads --data-dir) and ``brightness``
    (classifier) registered for one test; removed afterwards."""
    seen: list = []

    def needs_dir(data_dir):
        seen.append(data_dir)
        return bright_set(None)

    LABELLED_DATA.register("bright", LabelledSet(bright_set, "constant-brightness images"))
    LABELLED_DATA.register("dark-dir", LabelledSet(needs_dir, "reads a folder",
                                                   data_dir="a folder of dark images"))
    CLASSIFIERS.register("brightness", ClassifierEntry(lambda: (Brightness(), {"kind": "mean"}),
                                                       "brightness decile"))
    yield seen
    for registry, name in ((LABELLED_DATA, "bright"), (LABELLED_DATA, "dark-dir"),
                           (CLASSIFIERS, "brightness")):
        registry.unregister(name)


def small(**kw) -> PurifyConfig:
    return PurifyConfig(**{"data": "bright", "classifier": "brightness", "attacks": "pgd-eot",
                           "eps": 0.01, "iterations": 1, "eot": 1, "draws": 1,
                           "num_samples": 20, "batch_size": 10, **kw})


def test_registered_entries_are_accepted_run_and_recorded(entries, tmp_path):
    result = run_purification(small(), [], tmp_path)
    (row,) = result["rows"]
    assert row["clean"]["mean"] == 1.0  # every image sits mid-decile: the truth by construction
    assert row["robust"]["mean"] == 1.0  # ε = 0.01 < the 0.05 to a decile's edge
    assert result["config"]["data"] == "bright" and result["config"]["classifier"] == "brightness"
    assert result["data"]["source"] == "bright" and result["data"]["levels"] == LEVELS
    assert result["data"]["got"] is None  # a set without data_dir ignores --data-dir
    assert result["classifier"] == {"name": "brightness", "kind": "mean", "num_classes": LEVELS,
                                    "sha256": hashlib.sha256(b"").hexdigest()}  # no tensors
    x, y, _ = load_labeled_data("bright", str(tmp_path))  # uint8 → [0, 1]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(x[:, 0, 0, 0] * 255, (25.5 * (y.float()) + 12).round())


def test_a_set_says_which_purifiers_saw_its_images(entries, tmp_path):
    from test_purification import tiny_loaded

    def seen_by(dataset, data):
        return (True, f"made from {dataset} {data['n']}") if dataset == "toy" else None

    LABELLED_DATA.register("seen", LabelledSet(bright_set, "seen by toy", seen_by=seen_by))
    try:
        toy, other = tiny_loaded(), tiny_loaded()
        toy.dataset, toy.config = "toy", {"data": {"n": 3}}
        result = run_purification(small(data="seen", t_star="0", purify_steps=None,
                                        num_samples=10), [toy], tmp_path / "a")
        record = result["purifiers"][0]
        assert record["eval_images_in_training"] is True
        assert record["eval_images_in_training_reason"] == "made from toy 3"
        other.dataset = "digits"
        result = run_purification(small(data="seen", t_star="0", purify_steps=None,
                                        num_samples=10), [other], tmp_path / "b")
        assert result["purifiers"][0]["eval_images_in_training"] is None
    finally:
        LABELLED_DATA.unregister("seen")


def test_a_set_reading_data_dir_needs_it_and_gets_it(entries, tmp_path):
    with pytest.raises(ConfigError, match="^data dark-dir needs --data-dir: a folder of dark "
                       "images$"):
        load_labeled_data("dark-dir")
    load_labeled_data("dark-dir", str(tmp_path))
    assert entries == [tmp_path]


def test_classifier_hash_defaults_to_its_tensors(entries):
    from dmattack.purification.classifier import tensors_sha256

    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert tensors_sha256(a) == tensors_sha256(b)
    with torch.no_grad():
        b.bias[0] += 1e-3
    assert tensors_sha256(a) != tensors_sha256(b)


@pytest.mark.parametrize("field, value", [("data", "brigth"), ("classifier", "brightnes")])
def test_unknown_names_are_refused_in_one_line(entries, field, value):
    with pytest.raises(ConfigError) as e:
        small(**{field: value})
    message = str(e.value)
    assert "\n" not in message and repr(value) in message and e.value.field == field
    registered = "bright, dark-dir" if field == "data" else "digits-cnn, brightness"
    assert registered in message and ".safetensors" in message


def test_paths_stay_allowed(entries, tmp_path):
    assert small(data=str(tmp_path / "x.safetensors")).data.endswith("x.safetensors")
    assert small(classifier=str(tmp_path / "clf.pt")).classifier.endswith("clf.pt")
    assert small(classifier="clf.pt").classifier == "clf.pt"


def test_cli_runs_registered_entries_and_refuses_unknown(entries, tmp_path, monkeypatch):
    from dmattack.commands import lazy

    # the command-line options (their help lists the names) are built afresh into a cache of
    # this test's own: the shared one must not keep this test's entries
    monkeypatch.setenv(lazy.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(lazy, "_MEMO", {})
    args = ["purify", "--data", "bright", "--classifier", "brightness", "--method", "pgd-eot",
            "--eps", "0.01", "--iterations", "1", "--eot", "1", "--draws", "1",
            "--num-samples", "10", "--batch-size", "10", "--device", "cpu"]
    ok = CliRunner().invoke(cli.main, [*args, "--out", str(tmp_path / "o")])
    assert ok.exit_code == 0, ok.output
    result = json.loads((tmp_path / "o" / "purify.json").read_text())
    assert result["data"]["source"] == "bright" and result["classifier"]["name"] == "brightness"
    bad = CliRunner().invoke(cli.main, [*args, "--data", "nope"])
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines() == [
        "Error: data (--data) = 'nope' is invalid; allowed: digits, cifar10, bright, dark-dir, "
        "a .safetensors file with 'images' and 'labels'"]
    helped = " ".join(CliRunner().invoke(cli.main, ["purify", "--help"]).output.split())
    assert "[digits-cnn | brightness | a TorchScript file" in helped
    assert "[digits | cifar10 | bright | dark-dir | a .safetensors file" in helped


# ------------------------------------------------------------- the documented plugin, installed
@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    doc_plugins.install(site, TITLE, "digits-extras-plugin")
    return site


def documented(verb: str, tmp: Path) -> list[str]:
    """The arguments of the section's ``dmattack <verb>`` (``runs/`` under ``tmp``)."""
    lines = [c for c in doc_plugins.commands(TITLE) if c[:2] == ["dmattack", verb]]
    (args,) = [c[2:] for c in lines]
    return [str(tmp / a) if a.startswith("runs/") else a for a in args]


def nearest_centroid_on_shifted() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's NearestCentroid fitted on digits-cnn's training split (in [0, 1]) and its
    predictions on the held-out digits moved one pixel right: (predictions, labels)."""
    from sklearn.neighbors import NearestCentroid

    from evaluators.digits_model import digits_split

    x_tr, y_tr, x_te, y_te = (t.numpy() for t in digits_split())
    shifted = np.zeros_like(x_te)
    shifted[..., 1:] = (x_te[..., :-1] + 1) / 2
    with warnings.catch_warnings():  # (pixels that are 0 in every image of a class)
        warnings.simplefilter("ignore", UserWarning)
        fit = NearestCentroid().fit(((x_tr + 1) / 2).reshape(len(x_tr), -1), y_tr)
    return fit.predict(shifted.reshape(len(shifted), -1)), y_te


def test_documented_plugin_runs_in_a_fresh_process(site, tmp_path):
    args = documented("purify", tmp_path)
    proc = doc_plugins.dmattack(site, tmp_path, ["purify", *args], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = Path(args[args.index("--out") + 1])
    result = json.loads((out / "purify.json").read_text())
    assert result["data"]["source"] == "digits-shifted"
    assert result["data"]["shift"] == "one pixel right, zero fill"
    assert result["classifier"]["name"] == "nearest-mean"
    assert result["classifier"]["num_classes"] == 10
    (row,) = result["rows"]
    predicted, labels = nearest_centroid_on_shifted()
    assert row["correct"]["clean"] == [(predicted == labels).astype(int).tolist()]
    assert row["clean"]["mean"] == pytest.approx(0.2917, abs=1e-4)  # as docs/architecture.md
    assert row["robust"]["mean"] == pytest.approx(0.1361, abs=1e-4)


@pytest.mark.slow
def test_documented_plugin_is_listed_and_unknown_names_refused(site, tmp_path):
    listed = doc_plugins.dmattack(site, tmp_path, ["plugins"])
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("│")[1:4] for line in listed.stdout.splitlines() if "│" in line]
    rows = [[c.strip() for c in r] for r in rows]
    assert ["labelled-data", "digits-shifted", "digits_extras_plugin"] in rows
    assert ["classifiers", "nearest-mean", "digits_extras_plugin"] in rows
    bad = doc_plugins.dmattack(site, tmp_path, ["purify", "--classifier", "nearest-meen"])
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "Error: classifier (--classifier) = 'nearest-meen' is invalid; allowed: digits-cnn, "
        "nearest-mean, a TorchScript file taking [0, 1] images or digits-cnn .safetensors "
        "weights"]
    assert shlex.join(["dmattack", "plugins"]) in doc_plugins.section(TITLE)
