"""The metric options of ``dmattack evaluate``, ``attack`` and ``curve``, generated from the
registered metrics' configs (:attr:`evaluators.Metric.config`), so a plugin's metric brings its
own.

Every field of every registered metric's config is one option, spelled as the field declares
(``--feature-extractor``, ``--memorization-space``); metrics declaring a field of the same
spelling share it (``--inception-weights``: fid, is, kid, memorization), and its ``--help``
says which metrics read it. The options default to unset: each metric reads its own default
then; a given one goes to the chosen metrics that read it, and one that none of them reads is
refused (one line, exit code 2; :func:`evaluators.metric.route_options`). In ``attack`` and
``curve``, a metric option spelled like one of the attacks' options (``--feature-extractor``
is the trajectory attacks' embedding) is not offered: the metric reads its default there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from ..core.registry import METRICS
from ..core.settings import (
    FieldType,
    check_value_for_any,
    click_type,
    field_types,
    option_name,
    setting_of,
)


@dataclass
class MetricOption:
    """One command-line option: keyword ``keyword`` of :func:`evaluators.evaluate`, read by
    the config fields of ``readers`` ((metric, dataclass field) pairs, registration order)."""

    keyword: str
    spelling: str
    type: FieldType
    readers: list[tuple[str, dataclasses.Field]]

    @property
    def metrics(self) -> list[str]:
        return [m for m, _ in self.readers]


def metric_option_table() -> list[MetricOption]:
    """The metric options of every registered metric (plugins included), in registration
    order, shared by spelling."""
    import evaluators  # noqa: F401 - registers the built-in metrics

    table: dict[str, MetricOption] = {}
    for name in METRICS.names():
        config = METRICS[name].config
        types_ = field_types(config)
        for f in fields(config):
            s = setting_of(f)
            if s is None or not s.cli:
                continue
            spelling = option_name(f)
            keyword = spelling[2:].replace("-", "_")
            if keyword in table:
                table[keyword].readers.append((name, f))
            else:
                table[keyword] = MetricOption(keyword, spelling, types_[f.name], [(name, f)])
    return list(table.values())


def _help(opt: MetricOption) -> str:
    """``"fid, is, kid: <help> [choices]; memorization: <help>"`` and the default(s)."""
    from ..attacks.options import _default_text, _sentence

    groups: dict[str, list[str]] = {}
    for metric, f in opt.readers:
        s = setting_of(f)
        choices = s.allowed_choices()
        text, _, default = _sentence(s.help).rstrip(".").partition(" [default:")
        text += (f" [{' | '.join(choices)}]" if choices else "") + (
            f" [default:{default}" if default else "")
        groups.setdefault(text, []).append(metric)
    help_text = "; ".join(f"{', '.join(ms)}: {text}" for text, ms in groups.items())
    if "[default:" in help_text:
        return help_text
    defaults = {m: _default_text(opt, f.default) for m, f in opt.readers}  # type: ignore[arg-type]
    if len(set(defaults.values())) == 1:
        return f"{help_text} [default: {next(iter(defaults.values()))}]"
    return f"{help_text} [default: {', '.join(f'{m} {d}' for m, d in defaults.items())}]"


def _click_option(opt: MetricOption) -> Any:
    import click

    if opt.type.kinds == (bool,):
        return click.Option([f"{opt.spelling}/--no-{opt.spelling[2:]}", opt.keyword],
                            default=None, help=_help(opt))
    return click.Option([opt.spelling, opt.keyword], type=click_type(opt.type), default=None,
                        help=_help(opt))


def metric_options(exclude: tuple[str, ...] = (), prefix: str = "") -> list[Any]:
    """The click options of ``dmattack evaluate`` (:func:`metric_option_table`), less the keywords
    in ``exclude``."""
    if prefix:
        raise ValueError("metric options take no prefix")
    return [_click_option(o) for o in metric_option_table() if o.keyword not in exclude]


def attack_metric_options(exclude: tuple[str, ...] = (), prefix: str = "") -> list[Any]:
    """The metric options of ``dmattack attack`` / ``curve``: those of :func:`metric_options`
    whose spelling no registered attack's option takes."""
    from ..attacks.options import option_table as attack_table

    taken = {o.spelling for o in attack_table()}
    return metric_options(tuple(exclude) + tuple(o.keyword for o in metric_option_table()
                                                 if o.spelling in taken), prefix)


def check_metric_option_values(opts: dict[str, Any]) -> None:
    """Each metric option given (not None) allowed by a metric reading it (type, range,
    choices), before any model is loaded; whether the chosen metrics read it is checked once
    they are known (:func:`evaluators.metric.route_options`)."""
    for opt in metric_option_table():
        value = opts.get(opt.keyword)
        if value is not None:
            check_value_for_any([(METRICS[m].config, f.name) for m, f in opt.readers], value)


def given_metric_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The metric options given on the command line (not None), by keyword of
    :func:`evaluators.evaluate`."""
    return {o.keyword: opts[o.keyword] for o in metric_option_table()
            if opts.get(o.keyword) is not None}
