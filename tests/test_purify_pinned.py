"""`dmattack purify`'s numbers, records and content-addressed keys for the built-in labelled data
and classifier, pinned: the values below were computed on main before the labelled data and
classifiers became registry entries (issue 19), and must not change."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_purification import tiny_config, tiny_loaded

from dmattack.purification import load_labeled_data, run_purification
from dmattack.purification.evaluate import purify_folder
from dmattack.purification.rows import in_training

REPO = Path(__file__).resolve().parents[1]
DIGITS_CNN_SHA = "e97a40fd62c4772b39860933c0368caeeb7a5e16705aea00e4e3bf1efb1d9f11"
DIGITS_6_SHA = "7dddc0f8bed7282c9dc50e9a09256c297a8e1c2a4e091fa85748a695304369f1"
UNITS = ["079e11fa20d484160e05a1fb.json", "1d7c563b89a0b4e9a48ae782.json",
         "2c898204e9a70e45445eebdb.json", "378fbffdf9ccc9d7015a0a54.json",
         "5e10181e980d506600259261.json", "90ad85f42d8aa2de6d01217e.json",
         "d7ae67068a73af83154b6568.json", "d9286a158100863c0b231488.json"]
ROWS_SHA = "09a458faa146c9a7d6f65a9dd5345f1d735b0308fe2cace0d82028db204e9e4d"
CORRECT = {  # (purifier, clean / adversarial): (draws, images) of correct labels
    ("none", "clean"): [[1] * 6] * 3,
    ("none", "adversarial"): [[1, 1, 0, 1, 0, 1]] * 3,
    ("tiny", "clean"): [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0], [0, 0, 1, 0, 1, 1]],
    ("tiny", "adversarial"): [[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 0, 0], [0, 0, 1, 0, 1, 1]],
}


def pinned_config(**kw):
    return tiny_config(num_samples=6, batch_size=3, t_star="0.5", attacks="pgd-eot", **kw)


def rows_sha(rows) -> str:
    """sha256 of the rows without timings and PGD loss traces (float32 sums)."""
    stable = [{k: v for k, v in r.items() if "seconds" not in k and k != "trace"} for r in rows]
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()


def check_numbers(result, out: Path) -> None:
    assert sorted(p.name for p in (out / "units").iterdir()) == UNITS
    assert rows_sha(result["rows"]) == ROWS_SHA
    for r in result["rows"]:
        for kind in ("clean", "adversarial"):
            assert r["correct"][kind] == CORRECT[(r["purifier"], kind)]
    traces = [r["trace"] for r in result["rows"]]
    torch.testing.assert_close(torch.tensor(traces), torch.tensor(
        [[[0.0, 0.0, 0.3333333432674408]], [[0.6666666865348816, 0.6666666865348816,
                                               0.4166666716337204]]]))


def test_builtin_digits_and_digits_cnn_are_unchanged(tmp_path):
    cfg = pinned_config()
    assert purify_folder(cfg, [tiny_loaded()], "ROOT") == Path("ROOT/purify/1757b355b083")
    result = run_purification(cfg, [tiny_loaded()], tmp_path)
    check_numbers(result, tmp_path)
    assert result["config"]["classifier"] == "digits-cnn" and result["config"]["data"] == "digits"
    assert result["config"]["data_dir"] is None
    assert result["classifier"] == {
        "name": "digits-cnn", "path": str(REPO / "checkpoints" / "digits_cnn.safetensors"),
        "sha256": DIGITS_CNN_SHA, "format": "safetensors", "num_classes": 10}
    assert result["data"] == {
        "source": "digits", "split": "digits-cnn held-out (20%, random_state=0)",
        "num_samples": 6, "sha256_decoded": DIGITS_6_SHA}


def test_file_forms_record_and_key_as_before(tmp_path):
    """A digits-cnn .safetensors classifier file and a labelled .safetensors file holding the
    same weights and images give the same units and numbers (keys hold sha256s, not paths)."""
    weights = tmp_path / "clf.safetensors"
    shutil.copy(REPO / "checkpoints" / "digits_cnn.safetensors", weights)
    x, y, _ = load_labeled_data("digits", None, 6)
    save_file({"images": x, "labels": y}, str(tmp_path / "six.safetensors"))
    cfg = pinned_config(classifier=str(weights), data=str(tmp_path / "six.safetensors"))
    out = tmp_path / "out"
    result = run_purification(cfg, [tiny_loaded()], out)
    check_numbers(result, out)
    assert result["classifier"] == {
        "name": "clf.safetensors", "path": str(weights.resolve()), "sha256": DIGITS_CNN_SHA,
        "format": "safetensors (digits-cnn architecture)", "num_classes": 10}
    data_sha = hashlib.sha256((tmp_path / "six.safetensors").read_bytes()).hexdigest()
    assert result["data"] == {"source": str((tmp_path / "six.safetensors").resolve()),
                              "sha256": data_sha, "num_samples": 6,
                              "sha256_decoded": DIGITS_6_SHA}


@pytest.mark.parametrize("dataset, data, num, expected", [
    ("digits", "digits", 1797, (True, "the purifier was trained on all 1797 sklearn digits; "
                                "digits-cnn's held-out split (the evaluation images) is among "
                                "them")),
    ("digits", "digits", 500, (None, "the purifier was trained on a subset of the digits; "
                               "overlap not checked")),
    ("cifar10", "cifar10", None, (False, "CIFAR-10 training reads data_batch_1..5; the "
                                  "evaluation reads test_batch")),
    ("cifar10", "digits", None, (None, "unknown: the purifier's training data is 'cifar10', "
                                 "the evaluation data 'digits'")),
    ("digits", "x.safetensors", 1797, (None, "unknown: the purifier's training data is "
                                       "'digits', the evaluation data 'x.safetensors'")),
])
def test_seen_in_training_records_are_unchanged(dataset, data, num, expected):
    """The purifier records' ``eval_images_in_training`` and reason, as on main."""
    m = tiny_loaded()
    m.dataset, m.config = dataset, {"data": {"name": dataset, "num_samples": num}}
    assert in_training(m, pinned_config(data=data)) == expected
