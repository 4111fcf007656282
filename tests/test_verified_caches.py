"""Verified caches: a changed cache file is never trusted (one warning, then recomputed), and the
temp files of a killed atomic write are removed when the folder is next locked."""

import glob
import os

import pytest
import torch

from dmattack.core.io import PROCESS_START, is_stale_temp_file
from dmattack.core.locking import lock_folder
from evaluators import evaluate


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    reference = torch.rand(300, 1, 8, 8, generator=g) * 2 - 1
    samples = torch.rand(64, 1, 8, 8, generator=g) * 2 - 1
    return samples, reference


def fid(images, cache):
    return evaluate(*images, ["fid"], cache_dir=cache)["FID (digits-cnn)"]


@pytest.mark.parametrize("tamper", ["sigma", "bitflip", "truncate"])
def test_tampered_reference_statistics_are_recomputed(images, tmp_path, caplog, tamper):
    first = fid(images, tmp_path)
    [stat] = glob.glob(str(tmp_path / "torch-fidelity" / "*-stat-fid-*.pt"))
    if tamper == "sigma":
        d = torch.load(stat, weights_only=False)
        d["sigma"][0, 0] += 1e4
        torch.save(d, stat)
    elif tamper == "bitflip":
        data = bytearray(open(stat, "rb").read())
        data[-200] ^= 0x10
        open(stat, "wb").write(bytes(data))
    else:
        os.truncate(stat, os.path.getsize(stat) // 2)
    caplog.clear()
    assert fid(images, tmp_path) == first
    warned = [r.getMessage() for r in caplog.records if "cache file" in r.getMessage()]
    assert len(warned) == 1 and stat in warned[0] and "recomputed" in warned[0]
    caplog.clear()
    assert fid(images, tmp_path) == first  # the recomputed file is trusted again
    assert not [r for r in caplog.records if "cache file" in r.getMessage()]


def test_unlisted_cache_file_is_not_trusted(images, tmp_path, caplog):
    first = fid(images, tmp_path)
    [manifest] = glob.glob(str(tmp_path / "torch-fidelity" / "*.sha256.json"))
    os.unlink(manifest)
    assert fid(images, tmp_path) == first
    assert any("has no recorded sha256" in r.getMessage() for r in caplog.records)


def test_temp_files_of_a_killed_write_are_removed_on_next_lock(tmp_path):
    folder = tmp_path / "run"
    (folder / "checkpoint").mkdir(parents=True)
    stale = [folder / ".config.json.ab12cd_3.json", folder / ".write-test.k2j4h6g8",
             folder / ".points.jsonl.a1b2c3d4.jsonl",
             folder / "checkpoint" / ".meta.json.zz9yx8w7.json"]
    kept = [folder / ".gitignore", folder / ".env.production", folder / "config.json",
            folder / ".notes.abcdefgh.txt"]
    old = PROCESS_START - 60  # written before this process started
    for p in stale + kept:
        p.write_text("x")
        os.utime(p, (old, old))
    fresh = folder / ".log.jsonl.q1w2e3r4.jsonl"  # a write of a live process: newer than us
    fresh.write_text("x")
    assert is_stale_temp_file(stale[0]) and not is_stale_temp_file(fresh)
    with lock_folder(folder, "run folder"):
        pass
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in [*kept, fresh])
