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

from typing import Any

from ..core.entry_options import (
    EntryOption,
    check_given_value,
    entry_click_option,
    entry_option_table,
)
from ..core.registry import METRICS


def metric_option_table() -> list[EntryOption]:
    """The metric options of every registered metric (plugins included), in registration
    order, shared by the metrics declaring a field alike; each option's parameter is its
    keyword of :func:`evaluators.evaluate` (the spelling without ``--``)."""
    import evaluators  # noqa: F401 - registers the built-in metrics

    return entry_option_table(((m, METRICS[m].config) for m in METRICS.names()),
                              param=lambda key, spelling: spelling[2:])


def metric_options(exclude: tuple[str, ...] = (), prefix: str = "") -> list[Any]:
    """The click options of ``dmattack evaluate`` (:func:`metric_option_table`), less the keywords
    in ``exclude``."""
    if prefix:
        raise ValueError("metric options take no prefix")
    return [entry_click_option(o) for o in metric_option_table() if o.param not in exclude]


def attack_metric_options(exclude: tuple[str, ...] = (), prefix: str = "") -> list[Any]:
    """The metric options of ``dmattack attack`` / ``curve``: those of :func:`metric_options`
    whose spelling no registered attack's option takes."""
    from ..attacks.options import option_table as attack_table

    taken = {o.spelling for o in attack_table()}
    return metric_options(tuple(exclude) + tuple(o.param for o in metric_option_table()
                                                 if o.spelling in taken), prefix)


def check_metric_option_values(opts: dict[str, Any]) -> None:
    """Each metric option given (not None) allowed by a metric reading it (type, range,
    choices), before any model is loaded; whether the chosen metrics read it is checked once
    they are known (:func:`evaluators.metric.route_options`)."""
    for opt in metric_option_table():
        if opts.get(opt.param) is not None:
            check_given_value(opt, {m: METRICS[m].config for m in opt.entries},
                              opts[opt.param])


def given_metric_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The metric options given on the command line (not None), by keyword of
    :func:`evaluators.evaluate`."""
    return {o.param: opts[o.param] for o in metric_option_table()
            if opts.get(o.param) is not None}
