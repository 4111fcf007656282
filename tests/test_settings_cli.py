"""Each setting is declared once: the command-line options are generated from the config
dataclasses, so a CLI default can never drift from the library's."""

import click
import pytest
from click.testing import CliRunner

import cli
from dmattack.attacks import AttackSpec
from dmattack.core.errors import ConfigError
from dmattack.core.registry import OBJECTIVES
from dmattack.core.settings import (
    from_options,
    iter_settings,
    option_name,
    option_values,
    param_name,
    setting_of,
)
from dmattack.diffusion.sampling import SamplerConfig
from dmattack.evaluation.metrics import EvaluationConfig
from dmattack.training.config import TrainConfig
from dmattack.training.objectives import ObjectiveConfig

# command → the config dataclasses its options come from (prefix of their parameter names,
# dotted paths the command declares itself)
COMMANDS = {
    "train": [(TrainConfig, "", ())],
    "sample": [(SamplerConfig, "sampler.", ())],
    "evaluate": [(SamplerConfig, "sampler.", ()), (EvaluationConfig, "", ())],
    "attack": [(SamplerConfig, "sampler.", ()), (EvaluationConfig, "", ()), (AttackSpec, "", ())],
    "curve": [(SamplerConfig, "sampler.", ()), (EvaluationConfig, "", ()),
              (AttackSpec, "", ("method", "percent"))],
}
CASES = [(cmd, cls, prefix, own) for cmd, configs in COMMANDS.items()
         for cls, prefix, own in configs]


def _params(command: str) -> dict[str, click.Parameter]:
    return {p.name: p for p in cli.main.commands[command].params}


@pytest.mark.parametrize("command,cls,prefix,own", CASES,
                         ids=[f"{c}-{k.__name__}" for c, k, _, _ in CASES])
def test_every_setting_has_an_option_with_the_dataclass_default(command, cls, prefix, own):
    params = _params(command)
    for path, field, _ in iter_settings(cls):
        s = setting_of(field)
        assert s is not None, f"{cls.__name__}.{path} is not declared with setting()"
        assert s.help, f"{cls.__name__}.{path} has no help text"
        if not s.cli:
            continue  # library-only, its help says why
        if path in own:
            assert option_name(field) in {o for p in params.values() for o in p.opts}
            continue
        param = params.get(param_name(prefix + path))
        assert param is not None, f"`dmattack {command}` has no option for {cls.__name__}.{path}"
        assert option_name(field) in param.opts
        expected = None if s.auto else _leaf(cls(), path)
        got = param.default
        got = tuple(got) if isinstance(got, list) else got
        assert got == expected, (f"`dmattack {command} {option_name(field)}` defaults to "
                                 f"{got!r} but {cls.__name__}.{path} to {expected!r}")
        if s.auto:
            assert "[default: by " in param.help


def _leaf(instance, path):
    for part in path.split("."):
        instance = getattr(instance, part)
    return instance


def test_train_defaults_build_the_library_default_config():
    ctx = cli.main.commands["train"].make_context("train", ["--out", "/nonexistent/x"])
    opts = {k: v for k, v in ctx.params.items() if k not in ("out", "resume")}
    assert from_options(TrainConfig, opts) == TrainConfig()
    assert TrainConfig().objective.method == "robust-adv" == ObjectiveConfig().method


def test_library_only_settings_are_few_and_explained():
    for cls in (TrainConfig, SamplerConfig, EvaluationConfig, AttackSpec):
        for path, field, _ in iter_settings(cls):
            s = setting_of(field)
            assert s.cli or len(s.help) > 20, f"{cls.__name__}.{path}: say why it is library-only"


def test_method_choices_are_the_objectives_registry():
    params = _params("train")
    assert "objective__method" in params
    with pytest.raises(ConfigError, match="allowed: " + ", ".join(OBJECTIVES.names())):
        ObjectiveConfig("not-an-objective")


def test_formerly_unreachable_train_settings_have_options():
    opts = {o for p in _params("train").values() for o in p.opts}
    for name in ("--warmup", "--weight-decay", "--grad-clip", "--log-every", "--sample-every",
                 "--num-preview", "--preview-steps", "--ema-warmup"):
        assert name in opts


def test_bad_value_is_one_line_naming_option_and_allowed_values(tmp_path):
    result = CliRunner().invoke(cli.main, ["train", "--corrupt-fraction", "1.5", "--out",
                                           str(tmp_path / "r")])
    assert result.exit_code == 2
    assert result.output.strip() == ("Error: corrupt_fraction (--corrupt-fraction) = 1.5 is "
                                     "invalid; allowed: a finite number >= 0 and <= 1")
    assert not (tmp_path / "r").exists()


def test_flip_option_defaults_by_dataset_and_refuses_vector_data(tmp_path):
    ctx = cli.main.commands["train"].make_context("train", [])
    assert ctx.params["flip"] is None  # unset: the dataset decides
    ctx = cli.main.commands["train"].make_context("train", ["--no-flip"])
    assert from_options(TrainConfig, ctx.params).flip is False
    result = CliRunner().invoke(cli.main, ["train", "--dataset", "oblique-plane", "--flip",
                                           "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert result.output.strip() == ("Error: flip (--flip) = True is invalid for oblique-plane; "
                                     "allowed: an image dataset (vector data has nothing to "
                                     "mirror)")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_numbers_are_refused(value, tmp_path):
    result = CliRunner().invoke(cli.main, ["train", "--lr", value, "--out", str(tmp_path)])
    assert result.exit_code == 2 and "(--lr)" in result.output and "finite" in result.output


def test_old_sampler_steps_spelling_warns_once(tmp_path):
    ctx_args = ["--steps", "7", "--sampler", "respaced"]
    result = CliRunner().invoke(cli.main, ["sample", *ctx_args, "--run", str(tmp_path / "no")])
    lines = result.output.strip().splitlines()
    assert lines[0] == "warning: --steps is deprecated here; use --sampler-steps"
    assert result.exit_code == 2 and len(lines) == 2  # then the missing run's one line
    params = cli.main.commands["sample"].make_context("sample", ctx_args).params
    assert option_values(params)["sampler__steps"] == 7


def test_train_steps_is_optimiser_steps_without_warning(tmp_path):
    ctx = cli.main.commands["train"].make_context("train", ["--steps", "3"])
    assert ctx.params["steps"] == 3


def test_user_error_vs_bug(monkeypatch, tmp_path):
    """A DmattackError is one line and exit 2; any other exception is a bug: traceback."""
    import dmattack.training.folder

    def bug(*a, **k):
        raise ValueError("a bug inside dmattack")

    monkeypatch.setattr(dmattack.training.folder, "new_run_dir", bug)
    result = CliRunner().invoke(cli.main, ["train", "--steps", "1"])
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)
    monkeypatch.setenv("DMATTACK_DEBUG", "1")
    result = CliRunner().invoke(cli.main, ["train", "--lr", "-1"])
    assert isinstance(result.exception, ConfigError)


def test_plugins_lists_every_registry():
    result = CliRunner().invoke(cli.main, ["plugins"])
    assert result.exit_code == 0, result.output
    for name in ("robust-adv", "ddim", "fid", "digits", "tiny", "pgd", "entry-point group"):
        assert name in result.output
