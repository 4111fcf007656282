"""Samplers own their options (issue 19): an entry's config dataclass holds them, SamplerConfig
routes keywords to it and refuses an option the sampler does not read, the record keeps the
built-in columns and appends a plugin's own, and the command line offers every registered
sampler's options (shared by name and type, renamed on a clash, refused for a sampler that
does not read them)."""

from dataclasses import dataclass, replace
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dmattack.commands.sampler_options import (
    SAMPLING_COMMAND_OPTIONS,
    sampler_from_options,
    sampler_option_table,
    sampler_options,
)
from dmattack.core.errors import ConfigError
from dmattack.core.registry import SAMPLERS
from dmattack.core.seeding import sample_seeds
from dmattack.core.settings import check_settings, setting
from dmattack.diffusion.gaussian import GaussianDiffusion
from dmattack.diffusion.sampling import (
    DDIMConfig,
    Sampler,
    SamplerConfig,
    SamplingChain,
    ddim_step,
    sample,
)

DDPM = Path(__file__).resolve().parents[1] / "checkpoints" / "digits-ddpm"


@dataclass(frozen=True)
class GainConfig:
    gain: float = setting(1.0, "Noise gain: 1 is the ancestral step, 0 its mean.", low=0)
    seed: int = setting(0, "A field named like the commands' --seed.", low=0)
    loss: str = setting("x", "A field named like the attacks' --loss.", choices=("x", "y"))

    def __post_init__(self) -> None:
        check_settings(self)


def gain_step(sd, model, x, t, noise, cfg):
    """The ancestral step with its noise scaled by ``cfg.gain``."""
    return sd.p_sample(model, x, t, cfg.gain * noise, cfg.clip_denoised)


@pytest.fixture
def gainy():
    """A sampler with options of its own, and a second DDIM (sharing --eta)."""
    SAMPLERS.register("gainy", Sampler("ancestral, scaled noise (test)", gain_step,
                                       config=GainConfig))
    SAMPLERS.register("eta2", Sampler("DDIM again (test)", ddim_step, config=DDIMConfig))
    yield "gainy"
    SAMPLERS.unregister("gainy"), SAMPLERS.unregister("eta2")


def test_an_entry_config_must_be_a_dataclass_of_settings():
    @dataclass(frozen=True)
    class Bare:
        gain: float = 1.0

    @dataclass(frozen=True)
    class Shadow:
        steps: int = setting(3, "Named like a shared setting.")

    with pytest.raises(TypeError, match="must be a dataclass"):
        Sampler("x", gain_step, config=dict)
    with pytest.raises(TypeError, match=r"fields \['gain'\] are not declared with"):
        Sampler("x", gain_step, config=Bare)
    with pytest.raises(TypeError, match=r"fields \['steps'\] are settings every sampler shares"):
        Sampler("x", gain_step, config=Shadow)
    assert SAMPLERS["ddim"].options() == ("eta",) and SAMPLERS["respaced"].options() == ()


def test_keywords_route_to_the_config_and_the_record_appends_them(gainy):
    cfg = SamplerConfig("gainy", 5, gain=0.5, seed=2)
    assert cfg.options == GainConfig(gain=0.5, seed=2) and cfg.gain == 0.5
    assert cfg.to_dict() == {"name": "gainy", "steps": 5, "eta": 0.0, "clip_denoised": None,
                             "gain": 0.5, "seed": 2, "loss": "x"}
    assert list(cfg.to_dict()) == ["name", "steps", "eta", "clip_denoised", "gain", "seed",
                                   "loss"]
    assert cfg.describe(10) == "gainy-5-gain0.5-seed2"
    assert SamplerConfig("gainy", 5).describe(10) == "gainy-5"
    assert replace(cfg, clip_denoised=True).options is cfg.options
    chain = SamplingChain(GaussianDiffusion(np.linspace(1e-3, 0.2, 10)), cfg)
    assert SamplerConfig.from_dict(chain.to_dict()) == cfg == SamplerConfig.from_dict(
        cfg.to_dict())
    assert SamplerConfig("gainy", 5, options=GainConfig(gain=0.5), seed=2) == cfg
    ddim = SamplerConfig("ddim", 5, eta=0.5)
    assert ddim.eta == 0.5 and SamplerConfig.from_dict(ddim.to_dict()) == ddim
    with pytest.raises(AttributeError, match="sampler 'respaced' has no option 'eta'"):
        _ = SamplerConfig("respaced", 5).eta


@pytest.mark.parametrize("make, message", [
    (lambda: SamplerConfig("respaced", 5, gain=0.5),
     r"^gain \(--gain\) = 0.5 is not used by sampler 'respaced' \(it reads no options of its "
     r"own\); --gain is read by: gainy$"),
    (lambda: SamplerConfig("gainy", 5, eta=0.5),
     r"^eta \(--eta\) = 0.5 is not used by sampler 'gainy' \(it reads --gain, --seed, --loss\); "
     r"--eta is read by: ddim, eta2$"),
    (lambda: SamplerConfig("ddim", 5, decay=0.5),
     r"^decay \(--decay\) = 0.5 is not used by sampler 'ddim' \(it reads --eta\)$"),
    (lambda: SamplerConfig("gainy", 5, gain=-1.0), r"^gain \(--gain\) = -1.0 is invalid; "),
    (lambda: SamplerConfig("ddim", 5, eta=1.5), r"^eta \(--eta\) = 1.5 is invalid; allowed: "),
    (lambda: SamplerConfig("gainy", 5, options=DDIMConfig()),
     r"^options of sampler 'gainy' must be a GainConfig, got DDIMConfig$"),
    (lambda: SamplerConfig.from_dict({"name": "respaced", "steps": 5, "eta": 0.5,
                                      "clip_denoised": None}), r"^eta \(--eta\) = 0.5 is not"),
])
def test_an_option_the_sampler_does_not_read_is_refused_in_one_line(gainy, make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_a_plugin_option_changes_the_samples_as_its_step_says(gainy):
    """gain 1 is the respaced ancestral chain bit for bit (the same noise, scaled by 1.0); another
    gain changes the samples."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 3)
    eps = lambda x, t: net(x)  # noqa: E731 - any ε-model
    diffusion = GaussianDiffusion(np.linspace(1e-3, 0.2, 40))
    seeds = sample_seeds(0, 4)
    with torch.no_grad():
        ancestral = sample(eps, diffusion, (3,), seeds, SamplerConfig("respaced", 8))
        one = sample(eps, diffusion, (3,), seeds, SamplerConfig("gainy", 8, gain=1.0))
        half = sample(eps, diffusion, (3,), seeds, SamplerConfig("gainy", 8, gain=0.5))
    assert torch.equal(one, ancestral) and not torch.allclose(half, ancestral)


def test_cli_options_come_from_the_registered_configs(gainy):
    table = {o.param: o for o in sampler_option_table()}
    assert table["sampler__eta"].entries == ["ddim", "eta2"]
    assert table["sampler__eta"].spelling == "--eta"
    assert table["sampler__gain"].spelling == "--gain"
    assert table["sampler__gainy__seed"].spelling == "--gainy-seed"  # --seed is taken
    assert table["sampler__gainy__loss"].spelling == "--gainy-loss"  # an attack's --loss
    options = {o.name: o for o in sampler_options()}
    assert options["sampler__eta"].help == ("ddim, eta2: DDIM η (0: deterministic DDIM, 1: "
                                            "ancestral-like) [default: 0]")
    assert options["sampler__gainy__loss"].help == ("gainy: A field named like the attacks' "
                                                    "--loss [x | y] [default: x]")
    assert options["sampler__gain"].default is None and options["sampler__name"].opts == [
        "--sampler"]


@pytest.fixture(scope="module")
def loaded():
    from dmattack.runs.checkpoints import load_run

    return load_run(DDPM)


@pytest.mark.parametrize("args, out", [
    (["--sampler", "gainy", "--sampler-steps", "5", "--gain", "0.5", "--gainy-loss", "y"],
     "gainy-5-gain0.5-lossy-clip"),
    (["--sampler", "ddim", "--sampler-steps", "5", "--eta", "0.5"], "ddim-5-eta0.5-clip"),
    (["--sampler", "eta2", "--sampler-steps", "5", "--eta", "0.25"], "eta2-5-eta0.25-clip"),
    (["--sampler", "ddim", "--sampler-steps", "5"], "ddim-5-clip"),
    (["--sampler", "ddpm", "--gain", "0.5"],
     "gain (--gain) = 0.5 is not used by sampler 'ddpm' (it reads no options of its own); "
     "--gain is read by: gainy"),
    (["--gainy-seed", "3"],  # the model's protocol sampler (respaced)
     "seed (--gainy-seed) = 3 is not used by sampler 'respaced' (it reads no options of its "
     "own); --gainy-seed is read by: gainy"),
    (["--sampler", "respaced", "--eta", "0.5"],
     "eta (--eta) = 0.5 is not used by sampler 'respaced' (it reads no options of its own); "
     "--eta is read by: ddim, eta2"),
])
def test_the_command_line_parses_and_refuses_sampler_options(gainy, loaded, args, out):
    @click.command()
    def cmd(**o):
        click.echo(sampler_from_options(o, loaded).describe(loaded.diffusion.num_timesteps))

    cmd.params.extend(sampler_options())
    result = CliRunner().invoke(cmd, args)
    if isinstance(result.exception, ConfigError):
        assert str(result.exception) == out
    else:
        assert result.exit_code == 0 and result.output == out + "\n", result.output


def test_sampling_command_options_lists_every_other_option_of_the_sampling_commands():
    """A sampler's own option is never spelled like another option of these commands."""
    import cli
    from dmattack.attacks.options import option_table

    ours = {o.param for o in sampler_option_table()} | {o.param for o in option_table()}
    for command in ("sample", "attack", "curve", "evaluate"):
        for p in cli.main.commands[command].params:
            if p.name in ours:
                continue
            names = {o.lstrip("-").replace("-", "_") for o in p.opts}
            if "__" not in p.name:
                names.add(p.name)
            assert names <= SAMPLING_COMMAND_OPTIONS, (command, p.name,
                                                       names - SAMPLING_COMMAND_OPTIONS)


def test_evaluate_refuses_an_own_sampler_option_with_given_samples(tmp_path):
    import cli

    result = CliRunner().invoke(cli.main, ["evaluate", "--run", str(DDPM), "--samples",
                                           str(tmp_path / "x.safetensors"), "--eta", "0.5"])
    assert result.exit_code == 2
    assert result.output.strip() == ("Error: --eta sets how samples are drawn, but --samples "
                                     "gives them; remove it")


def test_labels_of_distinct_own_options_differ():
    """A label holds an own option exactly (as attack labels do): two settings that differ in
    the 7th digit do not share a default output folder."""
    a = SamplerConfig("ddim", 50, eta=0.1234567).describe(1000)
    b = SamplerConfig("ddim", 50, eta=0.1234568).describe(1000)
    assert (a, b) == ("ddim-50-eta0.1234567", "ddim-50-eta0.1234568")
    assert SamplerConfig("ddim", 50, eta=0.5).describe(1000) == "ddim-50-eta0.5"
