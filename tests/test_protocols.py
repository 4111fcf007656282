"""Card protocols (dmattack.card.protocol): loading, validation, identity, edit detection."""

import contextlib
import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import tomllib

from dmattack.card import list_protocols, load_protocol, protocol_identity
from dmattack.card.protocol import PROTOCOL_DIR, REGISTRY, main, registered_hashes
from dmattack.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["cifar10-v1", "cifar10-v2", "digits-quick-v1", "digits-quick-v2", "digits-v1",
           "digits-v2"]


@pytest.fixture
def copy(tmp_path):
    """A private copy of the protocol folder (files and HASHES.json) to edit."""
    folder = tmp_path / "protocols"
    shutil.copytree(PROTOCOL_DIR, folder)
    return folder


def edit(folder: Path, label: str, old: str, new: str) -> None:
    path = folder / f"{label}.toml"
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_the_protocols_ship_and_load():
    assert list_protocols() == SHIPPED
    for label in SHIPPED:
        p = load_protocol(label)
        assert p.label == label and f"{p.name}-v{p.version}" == label
        assert [a.name for a in p.attacks][:3] == ["random", "fgsm", "pgd"]


def test_settings_match_the_issue():
    quick, full, cifar = (load_protocol(n) for n in ("digits-quick-v1", "digits-v1",
                                                      "cifar10-v1"))
    for p in (full, cifar):
        for a in p.attacks[:3]:
            assert a.percents == (0, 25, 50, 75, 100)
        pgd = p.attacks[2]
        assert pgd.pgd_steps == 20 and p.budget.window == "spread"
        assert [(a.iterations, a.restarts) for a in p.attacks[3:]] == [(60, 2), (60, 2)]
    assert [(a.iterations, a.restarts) for a in quick.attacks[3:]] == [(20, 1), (20, 1)]
    for p in (quick, full, cifar):
        b = p.bootstrap
        assert (b.resamples, b.level, b.seed, b.method) == (2000, 0.95, 0, "bca")
    assert quick.device == full.device == "cpu" and cifar.device == "cuda"
    assert "class_change_at_100" in full.headline and "class_change_at_100" not in cifar.headline



MEASURED_TRAJECTORY_CONVERGENCE = 73
"""Iterations from which trajectory PGD meets the 1% rule on both digits U-Nets (docs/method.md
§12: first met at N = 73 on digits-ddpm, 68 on digits-robust-adv)."""


def test_v2_runs_the_adaptive_attacks_at_converged_settings():
    quick, full, cifar = (load_protocol(n) for n in ("digits-quick-v2", "digits-v2",
                                                      "cifar10-v2"))
    for p in (quick, full, cifar):
        trajectory, lookahead = p.attacks[3:]
        assert (trajectory.name, lookahead.name) == ("trajectory", "lookahead")
        assert trajectory.iterations >= MEASURED_TRAJECTORY_CONVERGENCE
        assert lookahead.iterations == trajectory.iterations
    for p in (full, cifar):
        assert [a.restarts for a in p.attacks[3:]] == [2, 2]
    # quick keeps the iterations and cuts the samples and percents (docs/card.md §1.1)
    assert [(a.restarts, a.num_samples, a.percents) for a in quick.attacks[3:]] == [
        (1, 2, (0, 100)), (1, 2, (0, 100))]
    assert [a.num_samples for a in full.attacks[3:]] == [32, 32]
    for p in (quick, full):
        assert p.purification.draws is not None and p.purification.eval_modes is None
        assert p.purification.iterations > 10  # v1's 10 did not converge on purified inputs
    for p in (quick, full, cifar):  # every headline number has a finalized minimum effect
        effects = dict(p.bootstrap.min_effect)
        assert sorted(effects) == sorted(p.headline) and min(effects.values()) > 0


def test_v2_differs_from_v1_only_where_docs_card_md_says():
    for name in ("digits-quick", "digits", "cifar10"):
        v1, v2 = (load_protocol(f"{name}-v{k}").content() for k in (1, 2))
        for key in ("sampling", "reference", "budget", "headline"):
            assert v1[key] == v2[key], (name, key)
        for a1, a2 in zip(v1["attacks"], v2["attacks"], strict=True):
            changed = {k for k in a1 if a1[k] != a2[k]}
            allowed = {"iterations", "restarts", "num_samples"} | (
                {"percents"} if name == "digits-quick" else set())
            assert changed <= allowed, (name, changed)
            assert changed == set() or a1["name"] in ("trajectory", "lookahead")


def test_fields_added_after_v1_are_not_hashed_when_absent():
    v1, v2 = load_protocol("digits-v1"), load_protocol("digits-v2")
    assert v1.purification.draws is None and "draws" not in v1.content()["purification"]
    assert v1.purification.evaluation_draws == 8  # eval_modes single, worst:8
    assert v2.purification.evaluation_draws == 8
    assert "eval_modes" not in v2.content()["purification"]


@pytest.mark.parametrize("old,new,message", [
    ("draws = 8 ", 'eval_modes = ["single"]\ndraws = 8 ',
     r"purification.draws = 8 is not allowed; give exactly one of draws"),
    ("draws = 8 ", "# draws = 8 ", r"purification.draws = None is not allowed; give exactly one"),
    ("draws = 8 ", "draws = 0 ", r"purification.draws = 0 is not allowed; at least 1"),
])
def test_purification_needs_exactly_one_way_to_give_the_draws(copy, old, new, message):
    edit(copy, "digits-v2", old, new)
    with pytest.raises(ConfigError, match=message):
        load_protocol("digits-v2", copy)


def test_digits_protocols_pin_the_shipped_digits_cnn_weights():
    digest = hashlib.sha256((ROOT / "checkpoints" / "digits_cnn.safetensors").read_bytes())
    for label in ("digits-quick-v1", "digits-v1", "digits-quick-v2", "digits-v2"):
        ref = load_protocol(label).reference
        assert ref.feature_extractor == "digits-cnn"
        assert ref.weights_sha256 == digest.hexdigest()


def test_cifar_protocol_pins_the_inception_weights_the_code_accepts():
    from evaluators.inception import FID_HELPER_SHA256

    for label in ("cifar10-v1", "cifar10-v2"):
        assert load_protocol(label).reference.weights_sha256 == FID_HELPER_SHA256


def test_protocol_names_are_registered_dmattack_names():
    import dmattack.evaluation.attack_eval  # noqa: F401 - registers the attacks
    import dmattack.training.train  # noqa: F401 - registers datasets and samplers
    from dmattack.core.registry import REGISTRIES

    for label in SHIPPED:
        p = load_protocol(label)
        assert p.sampling.sampler in REGISTRIES["samplers"].names()
        assert p.reference.dataset in REGISTRIES["datasets"].names()
        for a in p.attacks:
            assert a.name in REGISTRIES["attacks"].names()


def test_identity_is_the_sha256_of_the_canonical_content():
    p = load_protocol("digits-v1")
    ident = protocol_identity(p)
    assert set(ident) == {"name", "version", "hash"}
    canonical = json.dumps(p.content(), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False).encode("utf-8")
    assert ident == {"name": "digits", "version": 1,
                     "hash": hashlib.sha256(canonical).hexdigest()}
    assert protocol_identity(load_protocol("digits-v1")) == ident  # stable across loads
    assert registered_hashes()["digits-v1"] == ident["hash"]


def test_identity_ignores_layout_and_comments(copy):
    path = copy / "digits-v1.toml"
    lines = [ln.split("#")[0].rstrip() if not ln.lstrip().startswith(("description", '"""'))
             else ln for ln in path.read_text(encoding="utf-8").splitlines()]
    path.write_text("# reformatted\n\n" + "\n".join(lines) + "\n", encoding="utf-8")
    assert tomllib.loads(path.read_text(encoding="utf-8"))  # still valid TOML
    assert load_protocol("digits-v1", copy).hash == load_protocol("digits-v1").hash


def test_every_file_is_pinned_and_every_pin_has_a_file():
    assert sorted(registered_hashes()) == list_protocols()
    assert main([]) == 0


def test_an_edit_without_a_new_version_is_caught(copy, capsys):
    edit(copy, "digits-v1", "num_samples = 256", "num_samples = 200")
    with pytest.raises(ConfigError, match=r"digits-v1 has hash .* but HASHES.json pins .*"
                                          r"digits-v3.toml with version = 3"):
        load_protocol("digits-v1", copy)
    assert main([str(copy)]) == 1
    assert "digits-v1" in [ln.split()[0] for ln in capsys.readouterr().out.splitlines()
                           if "NOT PINNED" in ln]
    load_protocol("digits-quick-v1", copy)  # the others are untouched


def test_a_new_version_with_its_pin_loads(copy):
    text = (copy / "digits-v2.toml").read_text(encoding="utf-8")
    (copy / "digits-v3.toml").write_text(
        text.replace("version = 2", "version = 3").replace("num_samples = 256",
                                                            "num_samples = 512"),
        encoding="utf-8")
    with pytest.raises(ConfigError, match="digits-v3 has hash .* pins nothing"):
        load_protocol("digits-v3", copy)
    out = re.search(r"digits-v3\s+([0-9a-f]{64})", _hashes(copy)).group(1)
    pins = json.loads((copy / REGISTRY).read_text())
    (copy / REGISTRY).write_text(json.dumps({**pins, "digits-v3": out}))
    v3 = load_protocol("digits-v3", copy)
    assert (v3.version, v3.sampling.num_samples) == (3, 512)
    assert v3.hash != load_protocol("digits-v2", copy).hash


def _hashes(folder: Path) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main([str(folder)])
    return buf.getvalue()


@pytest.mark.parametrize("old,new,message", [
    ('sampler = "respaced"', 'sampler = "euler"',
     r"sampling.sampler = 'euler' is not a registered sampler; allowed: ddpm, respaced, ddim"),
    ('name = "pgd"', 'name = "cw"', r"attack\[2\].name = 'cw' is not a card attack; allowed: "
     "random, fgsm, pgd, trajectory, lookahead"),
    ("pgd_steps = 20", "pgd_step = 20", r"attack\[2\].pgd_step is an unknown key; allowed:"),
    ("num_samples = 256", 'num_samples = "256"', r"sampling.num_samples = '256' is not an "
     "integer"),
    ("eps_scale = 1.0", "eps_scale = true", r"budget.eps_scale = True is not a number"),
    ("clip_denoised = true", "clip_denoised = 1", r"sampling.clip_denoised = 1 is not true or "
     "false"),
    ("eps_scale = 1.0", "eps_scale = -1.0", r"budget.eps_scale = -1.0 is not allowed"),
    ('method = "bca"', 'method = "basic"', r"bootstrap.method = 'basic' is not one of"),
    ("num_samples = 256", "num_samples = 64", r"sampling.num_samples = 64 is not allowed; FID "
     "with 64-D digits-cnn features needs more than 64"),
    ("steps = 25", "", r"sampling.steps = None is not allowed; respaced and ddim need steps"),
    ("percents = [0, 50, 100]\nnum_samples = 32\niterations = 60",
     "percents = [0, 100, 50]\nnum_samples = 32\niterations = 60",
     r"attack\[4\].percents = \[0, 100, 50\] is not allowed; strictly increasing"),
    ("num_samples = 32           #", "num_samples = 999          #",
     r"attack\[3\].num_samples = 999 is not allowed; 2 .. sampling.num_samples \(256\)"),
    ('eval_modes = ["single", "worst:8"]', 'eval_modes = ["single", "worst"]',
     r"purification.eval_modes\[1\] = 'worst' is not allowed"),
    ("damage_auc_strongest = 0.0", "damage_auc_strongest = 0.0\nbogus = 1.0",
     r"bootstrap.min_effect.bogus = 1.0 is not allowed; keys are the protocol's headline"),
    ("version = 1", "version = 2", r"the file digits-v1.toml must be named digits-v2.toml"),
    ('dataset = "digits"         #', "dataset = 3 #", r"reference.dataset = 3 is not a string"),
    ("[purification]", "[purification]\nfoo = 1", r"purification.foo is an unknown key"),
    ("horizon = 2", 'horizon = "far"', r"attack\[4\].horizon = 'far' is not an integer or one "
     "of 'end'"),
    ("seed = 0                   #", "seed = -1 #", r"sampling.seed = -1 is not allowed"),
    ("eps_scale = 1.0", "eps_scale = 1.0\n[budget", r"not valid TOML"),
    ("[bootstrap.min_effect]", "min_effect = 0.05\n[unused]",
     r"bootstrap.min_effect = 0.05 is not a table of <headline key> = <minimum effect>"),
    ("pgd_steps = 20", "", r"attack\[2\] lacks key 'pgd_steps'"),
])
def test_bad_values_are_one_line_errors_naming_them(copy, old, new, message):
    edit(copy, "digits-v1", old, new)
    with pytest.raises(ConfigError) as err:
        load_protocol("digits-v1", copy)
    text = str(err.value)
    assert "\n" not in text and text.startswith("protocol digits-v1.toml: "), text
    assert re.search(message, text), text


def test_missing_keys_and_unknown_top_level_keys(copy):
    edit(copy, "digits-v1", 'cost = "at most', 'price = "at most')
    with pytest.raises(ConfigError, match=r"price is an unknown key; allowed: name, version"):
        load_protocol("digits-v1", copy)
    shutil.copy(PROTOCOL_DIR / "digits-v1.toml", copy)
    edit(copy, "digits-v1", 'cost = "at most', '# cost = "at most')
    with pytest.raises(ConfigError, match=r"the file lacks key 'cost'"):
        load_protocol("digits-v1", copy)


def test_an_unknown_protocol_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown protocol 'digits-v9'; allowed: cifar10-v1, "
                                          r"cifar10-v2, digits-quick-v1, digits-quick-v2, "
                                          r"digits-v1, digits-v2"):
        load_protocol("digits-v9")


def test_the_protocol_is_frozen():
    p = load_protocol("digits-quick-v1")
    with pytest.raises(AttributeError):
        p.version = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        p.sampling.num_samples = 1  # type: ignore[misc]
    assert isinstance(p.attacks, tuple) and isinstance(p.attacks[0].percents, tuple)


def test_protocol_files_are_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["dmattack.card"]
    shipped = {p.name for pattern in patterns for p in PROTOCOL_DIR.parent.glob(pattern)}
    assert shipped == {p.name for p in PROTOCOL_DIR.iterdir() if p.is_file()}


def test_docs_card_md_example_is_current():
    text = (ROOT / "docs" / "card.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "docs/card.md", "exec"), namespace)
    p = namespace["p"]
    assert (p.sampling.steps, p.attacks[2].pgd_steps) == (25, 20)
    documented = re.search(r'"hash": "([0-9a-f]+)…"', block).group(1)
    assert protocol_identity(p)["hash"].startswith(documented)
    assert load_protocol("digits-v1").reference.weights_sha256.startswith("e97a40fd")
    assert "`e97a40fd…`" in text and "`7ff4a85c…`" in text
