"""`dmattack purify` with the built-in DDIM purifier, pinned: the result folder's hash, the unit
keys, the rows, the purifier records and the purified images below were computed on main before
the purifier took a sampler's own options (issue 19), for ``--purify-sampler ddim --eta 0.3``,
``--purify-sampler ddim`` (η at its default 0) and the two surrogate mixes (a DDIM η = 0.3
defence attacked through an ancestral chain, an ancestral defence through DDIM); they must not
change."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_purification import images, tiny_config, tiny_loaded, tiny_purifier
from test_purify_pinned import rows_sha

from dmattack.core.seeding import generators
from dmattack.purification import run_purification
from dmattack.purification.evaluate import purify_folder

DEFENCE = {"t_star": 0.5, "forward_steps": 10, "num_timesteps": 20, "reverse_steps": 2,
           "clip_denoised": True, "seed": None}
CASES = {  # name: (settings, folder hash, units, rows sha256, defence, attacked, surrogate)
    "ddim-eta0.3": (
        {"purify_sampler": "ddim", "eta": 0.3}, "2455f50b4c6c",
        ["17360fde774c663935c5c039", "260a9e5262164d0febc5a0a4", "2c898204e9a70e45445eebdb",
         "378fbffdf9ccc9d7015a0a54", "51320533ff075ddae30f7376", "5e10181e980d506600259261",
         "aa143c3d17b6a9874ac8198e", "d9286a158100863c0b231488"],
        "5ecee42f768f38b11238d30a0e4d77ff74e0e75faa2e675b55e78cf3a6404144",
        {"sampler": "ddim", "eta": 0.3}, {"sampler": "ddim", "eta": 0.3}, None),
    "ddim-default": (
        {"purify_sampler": "ddim"}, "e01bc48443fa",
        ["07fd3c1af3ecebc21debb460", "2c898204e9a70e45445eebdb", "378fbffdf9ccc9d7015a0a54",
         "5e10181e980d506600259261", "680f6c02a57b4d8225255656", "acc8160d76a1d65d12575381",
         "d6bf3aefdaac9d12b3c7d988", "d9286a158100863c0b231488"],
        "5ecee42f768f38b11238d30a0e4d77ff74e0e75faa2e675b55e78cf3a6404144",
        {"sampler": "ddim", "eta": 0.0}, {"sampler": "ddim", "eta": 0.0}, None),
    "ddim-eta0.3-via-ancestral": (
        {"purify_sampler": "ddim", "eta": 0.3, "attack_sampler": "ancestral"}, "f636614a7cca",
        ["17360fde774c663935c5c039", "2c898204e9a70e45445eebdb", "378fbffdf9ccc9d7015a0a54",
         "51320533ff075ddae30f7376", "5e10181e980d506600259261", "7dff43963e241eaffdccbd52",
         "d9286a158100863c0b231488", "f38336d967186a1a57ca4a52"],
        "ec82a2c7b66b5db0fbf58ab4084dcbe661481a4c960e0e9ab008f4d4818f46f5",
        {"sampler": "ddim", "eta": 0.3}, {"sampler": "ancestral", "eta": 0.3},
        {"reverse_steps": 2, "sampler": "ancestral", "eta": 0.3, "gradient": "full"}),
    "ancestral-via-ddim": (
        {"attack_sampler": "ddim", "attack_purify_steps": 1}, "fa7f8fa8637e",
        ["05a0a5df514edb98fb7e4f69", "079e11fa20d484160e05a1fb", "234488d6165bf8fc6d5bca83",
         "2c898204e9a70e45445eebdb", "378fbffdf9ccc9d7015a0a54", "5e10181e980d506600259261",
         "d7ae67068a73af83154b6568", "d9286a158100863c0b231488"],
        "809cfa68c88f76731339122bdb95f9595f06426887a3f353da2b70905524f220",
        {"sampler": "ancestral", "eta": 0.0},
        {"sampler": "ddim", "eta": 0.0, "reverse_steps": 1},
        {"reverse_steps": 1, "sampler": "ddim", "eta": 0.0, "gradient": "full"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_builtin_ddim_purification_keys_and_records_are_unchanged(case, tmp_path):
    settings, folder, units, sha, defence, attacked, surrogate = CASES[case]
    cfg = tiny_config(num_samples=6, batch_size=3, t_star="0.5", attacks="pgd-eot", **settings)
    assert purify_folder(cfg, [tiny_loaded()], "ROOT") == Path(f"ROOT/purify/{folder}")
    result = run_purification(cfg, [tiny_loaded()], tmp_path)
    assert sorted(p.name for p in (tmp_path / "units").iterdir()) == [f"{u}.json" for u in units]
    assert rows_sha(result["rows"]) == sha
    assert [r["surrogate"] for r in result["rows"]] == [None, surrogate]
    (record,) = result["purifiers"]
    assert list(record) == [
        "name", "t_star", "source", "fingerprint", "ema", "dataset", "forward_steps",
        "num_timesteps", "reverse_steps", "sampler", "eta", "clip_denoised", "gradient", "seed",
        "attacked_purification", "eval_images_in_training", "eval_images_in_training_reason"]
    assert {k: record[k] for k in (*DEFENCE, "sampler", "eta", "gradient")} == {
        **DEFENCE, **defence, "gradient": None}
    assert record["attacked_purification"] == {**DEFENCE, **attacked, "gradient": "full"}
    assert result["config"]["eta"] == settings.get("eta", 0.0)
    assert list(result["config"])[5:8] == ["purify_sampler", "eta", "clip_denoised"]


@pytest.mark.parametrize("settings, total, squares", [
    ({"sampler": "ddim", "eta": 0.3}, 83.9605664908886, 61.18866935619349),
    ({"sampler": "ddim"}, 84.5194841325283, 61.7699790618299),
    ({"sampler": "ancestral"}, 80.19112765789032, 54.7499396975512),
])
def test_builtin_purified_images_are_unchanged(settings, total, squares):
    """Σ P(x) and Σ P(x)² of three images (float64 sums of the float32 output), as on main."""
    out = tiny_purifier(gradient="none", **settings)(images(), generators(range(3), 0)).double()
    assert out.sum().item() == pytest.approx(total, rel=1e-6)
    assert out.square().sum().item() == pytest.approx(squares, rel=1e-6)
    describe = tiny_purifier(**settings).describe()
    assert list(describe) == ["t_star", "forward_steps", "num_timesteps", "reverse_steps",
                              "sampler", "eta", "clip_denoised", "gradient", "seed"]
    assert describe["eta"] == settings.get("eta", 0.0)
