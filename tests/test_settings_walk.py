"""Every setting of every config dataclass is finite and bounded: a walk over all of them.

Each class that declares settings with :func:`dmattack.core.settings.setting` is found by importing
every dmattack module; each numeric field must declare a range, and NaN, ±inf and values just
outside the range are refused with one line naming the option and the value; empty strings are
refused; a setting the chosen component ignores is refused."""

import dataclasses
import importlib
import math
import pkgutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
import dmattack
from dmattack.core.errors import ConfigError
from dmattack.core.settings import field_types, option_name, setting_of


def config_classes() -> list[type]:
    found = set()
    for info in pkgutil.walk_packages(dmattack.__path__, "dmattack."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (isinstance(value, type) and dataclasses.is_dataclass(value)
                    and any(setting_of(f) for f in dataclasses.fields(value))):
                found.add(value)
    return sorted(found, key=lambda c: c.__name__)


CLASSES = config_classes()


def leaf_fields(kinds: tuple[type, ...]) -> list[tuple[type, dataclasses.Field]]:
    out = []
    for cls in CLASSES:
        types_ = field_types(cls)
        out += [(cls, f) for f in dataclasses.fields(cls)
                if types_[f.name].config is None and set(types_[f.name].kinds) & set(kinds)]
    return out


NUMERIC = leaf_fields((int, float))
STRINGS = [(c, f) for c, f in leaf_fields((str,)) if field_types(c)[f.name].kinds == (str,)]


def test_the_walk_finds_every_config():
    names = {c.__name__ for c in CLASSES}
    assert {"TrainConfig", "ObjectiveConfig", "RayConfig", "SamplerConfig", "AttackSpec",
            "EvaluationConfig", "PurifyConfig"} <= names
    assert len(NUMERIC) > 40 and len(STRINGS) > 10


def out_of_range(s) -> list[float]:
    bad = []
    if s.low is not None:
        bad.append(s.low if s.low_open else s.low - 1)
    if s.high is not None:
        bad.append(s.high if s.high_open else s.high + 1)
    return bad


def refused(cls: type, f: dataclasses.Field, value) -> None:
    with pytest.raises(ConfigError) as e:
        cls(**{f.name: value})
    message = str(e.value)
    assert "\n" not in message
    assert option_name(f) in message, message
    shown = repr(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    assert shown in message or f"{value:g}" in message, message


@pytest.mark.parametrize("cls, f", NUMERIC, ids=[f"{c.__name__}.{f.name}" for c, f in NUMERIC])
def test_numeric_setting_is_finite_and_bounded(cls, f):
    s = setting_of(f)
    assert s is not None and (s.low is not None or s.high is not None), \
        f"{cls.__name__}.{f.name} declares no range"
    for value in (math.nan, math.inf, -math.inf, *out_of_range(s)):
        refused(cls, f, value)


@pytest.mark.parametrize("cls, f", STRINGS, ids=[f"{c.__name__}.{f.name}" for c, f in STRINGS])
def test_string_setting_refuses_empty(cls, f):
    for value in ("", "   "):
        refused(cls, f, value)


def test_ignored_settings_are_refused():
    from dmattack.diffusion.sampling import SamplerConfig
    from dmattack.purification.evaluate import PurifyConfig

    for name in ("ddpm", "respaced"):
        with pytest.raises(ConfigError, match=r"eta \(--eta\) = 0.5 is not used by sampler "
                           rf"'{name}' \(it reads no options of its own\); --eta is read by: "
                           "ddim$"):
            SamplerConfig(name, 10, eta=0.5)
    assert SamplerConfig("ddim", 10, eta=0.5).eta == 0.5
    with pytest.raises(ConfigError, match="ignored by --purify-sampler ancestral"):
        PurifyConfig(eta=0.3)


DDPM = Path(__file__).resolve().parents[1] / "checkpoints" / "digits-ddpm"
RUN = ["--run", str(DDPM)]


@pytest.mark.parametrize("args, shown", [
    (["attack", *RUN, "--eps-scale", "nan"], "nan"),
    (["attack", *RUN, "--eps-scale", "inf"], "inf"),
    (["attack", *RUN, "--eps-scale", "1e300"], "1e+300"),
    (["sample", *RUN, "--sampler", "ddim", "--eta", "nan"], "nan"),
    (["sample", *RUN, "--sampler", "ddim", "--eta", "inf"], "inf"),
    (["sample", *RUN, "--sampler", "ddim", "--eta", "-1"], "-1"),
    (["sample", *RUN, "--sampler", "respaced", "--eta", "0.5"], "0.5"),
    (["sample", *RUN, "--sampler", ""], "''"),
    (["attack", *RUN, "--metrics", ""], "''"),
    (["sample", *RUN, "--seed", "-3"], "-3"),
    (["sample", "--run", str(DDPM / "config.json")], "is a file"),
])
def test_cli_repros_exit_2_with_one_line(args, shown):
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and shown in lines[0], result.output
