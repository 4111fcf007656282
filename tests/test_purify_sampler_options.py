"""The purifier takes its sampler's own options (issue 19): a plugin sampler with an option of
its own, registered here, is accepted by ``Purifier``, ``PurifyConfig`` and ``dmattack purify
--purify-sampler NAME --<option> V``; the value reaches the purifier's chain (its images equal
a plain loop of the library's ancestral step with the noise scaled by it) and is recorded; an
option the purify sampler does not read is refused in one line (exit code 2)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from test_purification import SHAPE, TinyEps, images, tiny_config, tiny_diffusion, tiny_loaded

import cli
from dmattack.commands import lazy
from dmattack.commands.sampler_options import PURIFY_COMMAND_OPTIONS, purify_option_table
from dmattack.core.errors import ConfigError
from dmattack.core.registry import SAMPLERS
from dmattack.core.seeding import generators, randn_per_sample
from dmattack.core.settings import check_settings, setting
from dmattack.diffusion.gaussian import GaussianDiffusion, respace
from dmattack.diffusion.sampling import DDIMConfig, Sampler
from dmattack.purification import Purifier, PurifyConfig, load_model, run_purification
from dmattack.purification.defended import _surrogate, prepare_purification
from dmattack.purification.evaluate import purify_folder

DDPM = Path(__file__).resolve().parents[1] / "checkpoints" / "digits-ddpm"
NAME = "scaled"


@dataclass(frozen=True)
class ScaledConfig:
    noise_scale: float = setting(1.0, "Scale s of the ancestral noise (1: the ancestral step).",
                                 low=0, high=1)
    draws: int = setting(1, "A field named like purify's --draws (unused by the step).", low=1)

    def __post_init__(self) -> None:
        check_settings(self)


def scaled_step(sd, model, x, t, noise, cfg):
    """The ancestral step with its noise scaled by ``cfg.noise_scale``."""
    return sd.p_sample(model, x, t, cfg.noise_scale * noise, cfg.clip_denoised)


@pytest.fixture
def scaled():
    SAMPLERS.register(NAME, Sampler("ancestral, scaled noise (test)", scaled_step,
                                    config=ScaledConfig))
    yield NAME
    SAMPLERS.unregister(NAME)


def plain_loop(model, diffusion: GaussianDiffusion, x: torch.Tensor, n: int, k: int,
               scale: float, seeds: list[int]) -> torch.Tensor:
    """P(x) written out: ε and one z per reverse step from each image's generator, x_n by the
    forward jump, then K ancestral steps on the first n timesteps respaced to K, each with its
    noise scaled by ``scale``, x̂_0 clipped (docs/method.md §13)."""
    gens = generators(seeds, 0)
    noise = [randn_per_sample(SHAPE, gens, x.device, x.dtype) for _ in range(1 + k)]
    x_t = diffusion.q_sample(2 * x - 1, torch.full((len(x),), n - 1), noise[0])
    head = respace(GaussianDiffusion(diffusion.betas[:n], diffusion.variance_type,
                                     diffusion.timestep_map[:n]), k)
    for step, index in enumerate(reversed(range(k))):
        x_t = head.p_sample(model, x_t, torch.full((len(x),), index), scale * noise[1 + step],
                            True)
    return ((x_t + 1) / 2).clamp(0, 1)


# ----------------------------------------------------------------------------- the library
@pytest.mark.parametrize("scale", [0.0, 0.5])
def test_a_plugin_option_reaches_the_purifiers_chain(scaled, scale):
    x, model = images(), TinyEps()
    p = Purifier(model, tiny_diffusion(), SHAPE, t_star=0.5, steps=4, sampler=scaled,
                 gradient="none", noise_scale=scale)
    got = p(x, generators(range(3), 0))
    torch.testing.assert_close(got, plain_loop(model, tiny_diffusion(), x, 10, 4, scale,
                                               list(range(3))), rtol=1e-5, atol=1e-6)
    ancestral = Purifier(model, tiny_diffusion(), SHAPE, t_star=0.5, steps=4,
                         gradient="none")(x, generators(range(3), 0))
    assert not torch.allclose(got, ancestral)  # s < 1 is not the ancestral chain
    record = p.describe()
    assert record["sampler"] == scaled and record["eta"] == 0.0  # the built-in slot, default
    assert record["sampler_options"] == {"noise_scale": scale, "draws": 1}
    assert list(record)[-1] == "sampler_options"


def test_at_scale_one_the_plugin_is_the_ancestral_purifier(scaled):
    x = images()
    one = Purifier(TinyEps(), tiny_diffusion(), SHAPE, t_star=0.5, steps=4, sampler=scaled,
                   sampler_options={"noise_scale": 1.0})(x, generators(range(3), 0))
    ancestral = Purifier(TinyEps(), tiny_diffusion(), SHAPE, t_star=0.5, steps=4)(
        x, generators(range(3), 0))
    assert torch.equal(one, ancestral)


def test_ddim_eta_as_keyword_mapping_or_config():
    x, kw = images(), {"t_star": 0.5, "steps": 4, "sampler": "ddim", "gradient": "none"}
    outs = [Purifier(TinyEps(), tiny_diffusion(), SHAPE, **kw, **extra)(x, generators(range(3),
                                                                                    0))
            for extra in ({"eta": 0.3}, {"sampler_options": {"eta": 0.3}},
                          {"sampler_options": DDIMConfig(eta=0.3)})]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    p = Purifier(TinyEps(), tiny_diffusion(), SHAPE, **kw, eta=0.3)
    assert p.sampler_options == DDIMConfig(eta=0.3) and p.chain.eta == 0.3
    # a surrogate under another chain keeps the options that chain reads
    assert p.replace(steps=2).own() == {"eta": 0.3}
    assert p.replace(sampler="ancestral").own() == {}


@pytest.mark.parametrize("sampler, option, message", [
    ("ancestral", {"eta": 0.3}, "eta (--eta) = 0.3 is ignored by --purify-sampler ancestral "
     "(it reads no options of its own); allowed: --eta only with --purify-sampler ddim"),
    ("ddim", {"noise_scale": 0.5}, "noise_scale (--noise-scale) = 0.5 is ignored by "
     "--purify-sampler ddim (it reads --eta); allowed: --noise-scale only with "
     "--purify-sampler scaled"),
    ("scaled", {"noise_scale": 2.0}, "noise_scale (--noise-scale) = 2.0 is invalid; allowed: "
     "a finite number >= 0 and <= 1"),
    ("ddim", {"bogus": 1}, "bogus (--bogus) = 1 is ignored by --purify-sampler ddim (it reads "
     "--eta); no purify sampler reads --bogus"),
])
def test_an_option_the_purify_sampler_does_not_read_is_refused(scaled, sampler, option,
                                                               message):
    for make in (lambda: Purifier(TinyEps(), tiny_diffusion(), SHAPE, sampler=sampler,
                                  **option),
                 lambda: PurifyConfig(purify_sampler=sampler, **option),
                 lambda: PurifyConfig(purify_sampler=sampler, sampler_options=option)):
        with pytest.raises(ConfigError) as e:
            make()
        assert str(e.value) == message


def test_purify_config_routes_records_and_keys_a_plugin_option(scaled, tmp_path):
    cfg = tiny_config(num_samples=6, batch_size=3, t_star="0.5", attacks="pgd-eot",
                      purify_sampler=scaled, noise_scale=0.5)
    assert cfg.sampler_options == ScaledConfig(noise_scale=0.5)
    record = cfg.to_dict()
    assert record["eta"] == 0.0 and record["sampler_options"] == {"noise_scale": 0.5,
                                                                  "draws": 1}
    assert list(record)[-1] == "sampler_options"
    assert "sampler_options" not in tiny_config(purify_sampler="ddim", eta=0.3).to_dict()
    default = tiny_config(num_samples=6, batch_size=3, t_star="0.5", attacks="pgd-eot",
                          purify_sampler=scaled)
    assert purify_folder(cfg, [tiny_loaded()], "R") != purify_folder(default, [tiny_loaded()],
                                                                      "R")
    # the evaluated purifier's images are the plain loop's with s = 0.5
    *_, defended = prepare_purification(cfg, [tiny_loaded()])
    x = images()
    got = defended[1].evaluator.purifier(x, generators([4, 5, 6], 0))
    torch.testing.assert_close(got, plain_loop(tiny_loaded().model, tiny_diffusion(), x, 10, 2,
                                               0.5, [4, 5, 6]), rtol=1e-5, atol=1e-6)
    result = run_purification(cfg, [tiny_loaded()], tmp_path / "a")
    (purifier,) = result["purifiers"]
    assert purifier["sampler"] == scaled and purifier["eta"] == 0.0
    assert purifier["sampler_options"] == {"noise_scale": 0.5, "draws": 1}
    assert purifier["attacked_purification"]["sampler_options"] == {"noise_scale": 0.5,
                                                                    "draws": 1}
    assert result["config"] == record
    run_purification(default, [tiny_loaded()], tmp_path / "b")
    units = [{p.name for p in (tmp_path / d / "units").iterdir()} for d in "ab"]
    assert units[0] != units[1]  # the option is in the defended purifier's unit keys


def test_a_surrogate_chain_inherits_the_options_it_reads(scaled):
    cfg = tiny_config(t_star="0.5", attacks="pgd-eot", purify_sampler=scaled, noise_scale=0.5,
                      attack_sampler="ancestral")
    *_, defended = prepare_purification(cfg, [tiny_loaded()])
    spec = cfg.attack_specs()[0]
    assert _surrogate(defended[1], spec) == {"reverse_steps": 2, "sampler": "ancestral",
                                             "eta": 0.0, "gradient": "full"}
    cfg = tiny_config(t_star="0.5", attacks="pgd-eot", attack_sampler=scaled)
    *_, defended = prepare_purification(cfg, [tiny_loaded()])
    assert _surrogate(defended[1], spec) == {
        "reverse_steps": 2, "sampler": scaled, "eta": 0.0,
        "sampler_options": {"noise_scale": 1.0, "draws": 1}, "gradient": "full"}


# ----------------------------------------------------------------------------- the command line
@pytest.fixture
def fresh_options(tmp_path, monkeypatch):
    """purify's options built afresh (into a cache of this test's own), so they include the
    sampler registered here and the shared cache never holds it."""
    monkeypatch.setenv(lazy.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(lazy, "_MEMO", {})
    monkeypatch.setattr(cli.main.commands["purify"], "_params", None)


SMALL = ["--t-star", "0.02", "--purify-steps", "2", "--method", "pgd-eot", "--iterations", "1",
         "--eot", "1", "--draws", "1", "--num-samples", "4", "--batch-size", "4",
         "--device", "cpu"]


def test_cli_offers_runs_and_records_a_plugin_option(scaled, fresh_options, tmp_path):
    helped = " ".join(CliRunner().invoke(cli.main, ["purify", "--help"]).output.split())
    assert "--noise-scale NUMBER scaled: scale s of the ancestral noise (1: the ancestral " \
           "step) [default: 1]" in helped
    assert "--eta NUMBER ddim: DDIM η" in helped
    assert "--scaled-draws INTEGER scaled: A field named like purify's --draws" in helped
    args = ["purify", "--run", str(DDPM), *SMALL, "--purify-sampler", scaled]
    ok = CliRunner().invoke(cli.main, [*args, "--noise-scale", "0.5", "--scaled-draws", "2",
                                       "--out", str(tmp_path / "cli")])
    assert ok.exit_code == 0, ok.output
    result = json.loads((tmp_path / "cli" / "purify.json").read_text())
    (purifier,) = result["purifiers"]
    assert purifier["sampler_options"] == {"noise_scale": 0.5, "draws": 2}
    assert result["config"]["sampler_options"] == {"noise_scale": 0.5, "draws": 2}
    assert result["config"]["draws"] == 1  # purify's own --draws is another setting
    # the library with the same settings computes the same units (keys and predictions)
    cfg = PurifyConfig(t_star="0.02", purify_steps=2, attacks="pgd-eot", iterations=1, eot=1,
                       draws=1, num_samples=4, batch_size=4, purify_sampler=scaled,
                       noise_scale=0.5, sampler_options={"draws": 2})
    lib = run_purification(cfg, [load_model(DDPM)], tmp_path / "lib")
    assert sorted(p.name for p in (tmp_path / "cli" / "units").iterdir()) == sorted(
        p.name for p in (tmp_path / "lib" / "units").iterdir())
    assert [r["correct"] for r in result["rows"]] == [r["correct"] for r in lib["rows"]]


@pytest.mark.parametrize("args, line", [
    (["--run", str(DDPM), "--purify-sampler", "ancestral", "--eta", "0.3"],
     "Error: eta (--eta) = 0.3 is ignored by --purify-sampler ancestral (it reads no options "
     "of its own); allowed: --eta only with --purify-sampler ddim"),
    (["--run", str(DDPM), "--purify-sampler", "ddim", "--noise-scale", "0.5"],
     "Error: noise_scale (--noise-scale) = 0.5 is ignored by --purify-sampler ddim (it reads "
     "--eta); allowed: --noise-scale only with --purify-sampler scaled"),
    (["--purify-sampler", "nope", "--eta", "0.3"],
     "Error: purify_sampler (--purify-sampler) = 'nope' is invalid; allowed: ancestral, ddim, "
     "scaled"),
    (["--purify-sampler", "scaled", "--noise-scale", "0.5"],
     "Error: --noise-scale 0.5 is not read without a purifier (only the undefended classifier "
     "is evaluated); give --run or --pipeline"),
])
def test_cli_refuses_unread_options_in_one_line(scaled, fresh_options, args, line):
    bad = CliRunner().invoke(cli.main, ["purify", *args])
    assert bad.exit_code == 2 and bad.output.strip().splitlines() == [line]


def test_purify_command_options_are_complete(scaled, fresh_options):
    """Every option of ``dmattack purify`` is a PurifyConfig setting, a purify sampler's own
    option or one of PURIFY_COMMAND_OPTIONS: a new option of the command is listed there (so
    a sampler field named like it gets another spelling)."""
    from dmattack.core.settings import iter_settings

    with click.Context(cli.main.commands["purify"]) as ctx:
        params = cli.main.commands["purify"].get_params(ctx)
    own = {o.param for o in purify_option_table()}
    settings = {f.name for _, f, _ in iter_settings(PurifyConfig)}
    for p in params:
        names = {p.name, *(o.lstrip("-").replace("-", "_") for o in p.opts)}
        if p.name in own or p.name in settings or "__deprecated_" in p.name:
            continue
        assert names & PURIFY_COMMAND_OPTIONS, p.name
    assert {o.spelling for o in purify_option_table()} == {"--eta", "--noise-scale",
                                                           "--scaled-draws"}


# ----------------------------------------------------------------------------- card protocols
def test_card_purification_sampler_is_checked_against_the_registry(scaled, tmp_path):
    """A protocol's ``purification.purify_sampler`` is any purify sampler (a plugin's
    included), else one line naming the registered ones; the shipped hashes are unchanged."""
    import shutil

    from dmattack.card.protocol import PROTOCOL_DIR, _read, load_protocol

    folder = tmp_path / "protocols"
    shutil.copytree(PROTOCOL_DIR, folder)
    path = folder / "digits-v2.toml"
    text = path.read_text(encoding="utf-8")
    assert text.count('purify_sampler = "ancestral"') == 1
    assert load_protocol("digits-v2", folder).purification.purify_sampler == "ancestral"
    path.write_text(text.replace('purify_sampler = "ancestral"', 'purify_sampler = "nope"'),
                    encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_protocol("digits-v2", folder)
    assert str(e.value) == ("protocol digits-v2.toml: purification.purify_sampler = 'nope' is "
                            "not allowed; a registered purify sampler: ancestral, ddim, scaled")
    path.write_text(text.replace('purify_sampler = "ancestral"', f'purify_sampler = "{scaled}"'),
                    encoding="utf-8")
    assert _read(path).purification.purify_sampler == scaled  # valid (a new version's content)
