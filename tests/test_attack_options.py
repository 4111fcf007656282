"""Attack options generated from the registered attacks' configs (issue 19 item 1): shared by
name and type, with the attacks that read each in --help; a type clash spelled per attack; an
option the chosen attack does not read refused; the spec's record unchanged for built-ins."""

from __future__ import annotations

from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner

from dmattack.attacks import AttackEntry, AttackSpec, ChainRandom, TrajectoryConfig
from dmattack.attacks.options import (
    COMMAND_OPTIONS,
    attack_options,
    curve_specs_from_options,
    option_table,
    spec_from_options,
)
from dmattack.attacks.schedule import COMMON, RECORD
from dmattack.commands import lazy as cli_lazy
from dmattack.core.errors import ConfigError
from dmattack.core.registry import ATTACKS
from dmattack.core.settings import check_settings, setting


@dataclass(frozen=True)
class WobbleConfig:
    alpha_scale: float = setting(0.5, "Wobble step in units of ε_t.", low=0, low_open=True)
    horizon: str = setting("near", "Where it wobbles.", choices=("near", "far"))
    steps: int = setting(1, "Wobbles (named like the commands' --steps).", low=1)

    def __post_init__(self) -> None:
        check_settings(self)


@pytest.fixture
def wobble():
    """An attack sharing --alpha-scale (float, like pgd's) and clashing on horizon (a str here,
    an int-or-name for lookahead)."""
    ATTACKS.register("wobble", AttackEntry(
        config=WobbleConfig, make=lambda s: lambda m, d, generator=None: ChainRandom(
            m, d, eps_scale=s.eps_scale * s.config.alpha_scale, generator=generator)))
    yield
    ATTACKS.unregister("wobble")


def test_same_name_and_type_share_one_option_listing_its_readers(wobble):
    table = {o.param: o for o in option_table()}
    assert table["alpha_scale"].entries == ["pgd", "trajectory", "lookahead", "wobble"]
    assert table["restarts"].entries == ["pgd", "trajectory", "lookahead"]
    assert table["loss"].entries == ["fgsm", "pgd"] and table["eot"].entries == ["lookahead"]
    options = {o.name: o for o in attack_options()}
    help_text = options["alpha_scale"].help
    assert help_text.startswith("pgd, trajectory, lookahead: PGD step size in units of ε_t; "
                                "wobble: wobble step")
    assert help_text.endswith("[default: pgd 0.125, trajectory 0.125, lookahead 0.125, "
                              "wobble 0.5]")
    assert options["eot"].help.endswith("[default: 4]") and options["eot"].default is None


def test_a_type_clash_is_spelled_per_attack_and_routed_to_it(wobble):
    table = {o.param: o for o in option_table()}
    assert table["horizon"].entries == ["lookahead"]
    clash = table["wobble__horizon"]
    assert clash.spelling == "--wobble-horizon" and clash.field == "horizon"
    spec = spec_from_options({"method": "wobble", "wobble__horizon": "far",
                              "alpha_scale": 0.25})
    assert spec.config == WobbleConfig(alpha_scale=0.25, horizon="far")
    assert spec.describe() == "wobble-spread-50%-alpha_scale0.25-horizonfar"
    with pytest.raises(ConfigError, match=r"^horizon \(--wobble-horizon\) = 'far' is not used "
                       "by attack 'lookahead'; it is read by: wobble$"):
        spec_from_options({"method": "lookahead", "wobble__horizon": "far"})
    assert spec_from_options({"method": "lookahead", "horizon": "end"}).horizon == "end"
    steps = table["wobble__steps"]  # not --steps: a (deprecated) spelling of --sampler-steps
    assert steps.spelling == "--wobble-steps" and "steps" not in table
    assert spec_from_options({"method": "wobble", "wobble__steps": 3}).steps == 3


def test_command_options_lists_every_other_option_of_the_attack_commands():
    """An attack field is never spelled like another option of attack or curve (the metric
    options there yield to the attacks': dmattack/evaluation/metric_options.py)."""
    import cli
    from dmattack.evaluation.metric_options import metric_option_table

    ours = {o.param for o in option_table()} | set(COMMON)
    ours |= {o.param for o in metric_option_table() if o.spelling not in
             {a.spelling for a in option_table()}}
    for command in ("attack", "curve"):
        for p in cli.main.commands[command].params:
            if p.name in ours:
                continue
            names = {o.lstrip("-").replace("-", "_") for o in p.opts}
            if "__" not in p.name:
                names.add(p.name)
            assert names <= COMMAND_OPTIONS, (command, p.name, names - COMMAND_OPTIONS)


def test_generated_options_parse_and_refuse_on_the_command_line(wobble):
    @click.command()
    def cmd(**o):
        click.echo(spec_from_options(o).describe())

    cmd.params.extend(attack_options())
    run = CliRunner().invoke
    assert run(cmd, ["--method", "wobble", "--alpha-scale", "1/4"]).output == \
        "wobble-spread-50%-alpha_scale0.25\n"
    assert run(cmd, ["--method", "pgd", "--alpha-scale", "0.25"]).output == \
        "pgd20-mean-spread-50%-alpha0.25\n"
    assert run(cmd, ["--method", "lookahead", "--no-checkpoint"]).output == \
        "lookahead-pgd20-eot4-h5-pixel-spread-50%\n"
    bad = run(cmd, ["--method", "random", "--eot", "2"])
    assert isinstance(bad.exception, ConfigError)
    assert str(bad.exception) == "eot (--eot) = 2 is not used by attack 'random'; it is read by: " \
        "lookahead"


def test_curve_options_go_to_the_methods_that_read_them():
    specs = curve_specs_from_options({"loss": "eps", "eot": 2, "eps_scale": 2.0},
                                     ["fgsm", "random", "lookahead"], [50], ["spread"])
    assert [s.describe() for s in specs] == ["fgsm-eps-spread-50%-x2", "random-sign-spread-50%-x2",
                                             "lookahead-pgd20-eot2-h5-pixel-spread-50%-x2"]
    with pytest.raises(ConfigError, match=r"pgd_steps \(--pgd-steps\) = 3 is not used by any of "
                       "the attacks random, fgsm; it is read by: pgd"):
        curve_specs_from_options({"pgd_steps": 3}, ["random", "fgsm"], [50], ["spread"])


def test_spec_keywords_go_to_the_config_and_the_record_keeps_its_columns():
    spec = AttackSpec("pgd", 25, loss="eps", pgd_steps=7, eps_scale=2)
    assert spec.config.pgd_steps == 7 and spec.pgd_steps == 7
    with pytest.raises(AttributeError, match="no option 'eot'"):
        _ = spec.eot
    record = spec.to_dict()
    assert list(record) == ["method", "percent", "window", *RECORD, "step_counting", "label"]
    assert record["eot"] == 4 and record["pgd_steps"] == 7 and record["eps_scale"] == 2
    assert spec.settings() == {"loss": "eps", "pgd_steps": 7, "alpha_scale": 0.125,
                               "project": "auto", "eps_scale": 2, "restarts": 1}
    traj = AttackSpec("trajectory", 50, eps_scale=0.5, iterations=3)
    assert traj.config.eps_scale == 0.5  # a shared setting the config declares: the spec's
    again = AttackSpec("trajectory", 50, config=traj.config, keep="last")
    assert again.config == TrajectoryConfig(iterations=3, keep="last") and again.eps_scale == 1
    with pytest.raises(ConfigError, match="config of attack 'pgd' must be a PGDConfig"):
        AttackSpec("pgd", 50, config=traj.config)


def test_an_entry_config_must_declare_its_fields_with_setting():
    @dataclass(frozen=True)
    class Bare:
        decay: float = 1.0

    with pytest.raises(TypeError, match=r"fields \['decay'\] are not declared with"):
        AttackEntry(make=lambda s: None, config=Bare)


def test_the_option_cache_key_follows_a_plugin_source(tmp_path, monkeypatch):
    """Editing an installed plugin's module (its attack's options) changes the cache key."""
    info = tmp_path / "opt_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: opt-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dmattack]\nopt = opt_plugin\n")
    (tmp_path / "opt_plugin.py").write_text("# decay: float = 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli_lazy, "_MEMO", {})
    first = cli_lazy.cache_key()
    (tmp_path / "opt_plugin.py").write_text("# decay: float = 0.5\n")
    monkeypatch.setattr(cli_lazy, "_MEMO", {})
    assert cli_lazy.cache_key() != first
