"""Click plumbing of the `dmattack` command line: user errors as one line and exit code 2,
usage errors without the usage block, options listed in a given order, options built from
config dataclasses on first use (:mod:`dmattack.commands.lazy`), and ``--threads`` on every
command (:mod:`dmattack.core.threads`). Nothing here imports torch."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from ..core.errors import DmattackError, first_line
from ..core.threads import ENV as THREADS_ENV
from ..core.threads import apply_threads
from . import lazy as cli_lazy


def friendly_errors(fn: Callable) -> Callable:
    """A DmattackError or a storage OSError (dmattack.core.oserrors): one line on stderr, exit code
    2;
    anything else propagates. DMATTACK_DEBUG=1 shows the traceback of a user error too."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (DmattackError, OSError) as e:  # OSError: a full disk, a name too long, …
            from ..core.oserrors import output_error

            known = e if isinstance(e, DmattackError) else output_error(e)
            if known is None or os.environ.get("DMATTACK_DEBUG"):
                raise
            click.echo(f"Error: {first_line(known)}", err=True)
            sys.exit(2)

    return wrapper


def resumes_when_rerun(fn: Callable) -> Callable:
    """For commands whose finished work is kept on disk and that resume when run again (curve,
    purify): Ctrl-C prints one line saying so and exits with 130 (128 + SIGINT)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("interrupted; the work finished so far is kept: rerun the same command "
                       "to resume", err=True)
            sys.exit(130)

    return wrapper


class OneLineUsage:
    """Usage errors (bad option values) as one ``Error: ...`` line, without the usage block."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as e:
            e.ctx = None
            raise


def _opt(param: click.Parameter | None) -> str:
    """``name (--option)`` of a parameter, as the config errors name a setting."""
    if param is None:
        return "value"
    return f"{param.name} ({param.opts[0]})" if param.opts else str(param.name)


class RangedInt(click.ParamType):
    """An integer in ``low..high`` (``high`` None: no upper bound), refused in the project's
    one-line style (``name (--option) = v is invalid; allowed: …``), as config settings are."""

    name = "integer"

    def __init__(self, low: int, high: int | None = None) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> int:
        try:
            v = value if isinstance(value, int) and not isinstance(value, bool) else int(value)
        except (TypeError, ValueError):
            v = None
        if v is None or v < self.low or (self.high is not None and v > self.high):
            bound = "" if self.high is None else f" and <= {self.high}"
            shown = value if v is not None else repr(value)
            raise click.UsageError(f"{_opt(param)} = {shown} is invalid; allowed: an integer "
                                   f">= {self.low}{bound}", ctx)
        return v


class Choice(click.Choice):
    """click's Choice, refused in the project's one-line style."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> Any:
        if value in self.choices:
            return value
        raise click.UsageError(f"{_opt(param)} = {value!r} is invalid; allowed: "
                               f"{', '.join(map(str, self.choices))}", ctx)


def threads_option() -> click.Option:
    return click.Option(
        ["--threads", "threads"], type=click.IntRange(1, 4096), default=None,
        help=f"CPU threads for torch [default: ${THREADS_ENV}, else a user's $OMP_NUM_THREADS, "
             "else the cores the machine's load average leaves idle].")


class Command(OneLineUsage, click.Command):
    """A command whose :func:`~dmattack.commands.lazy.lazy_options` are built when first read,
    with ``--threads`` (applied before the command runs; not passed to it)."""

    @property
    def params(self) -> list[click.Parameter]:
        key = cli_lazy.cache_key()  # a plugin installed since the last read changes it
        if self._params is None or self._params_key != key:
            self._params = [*cli_lazy.expand(self.declared), threads_option()]
            self._params_key = key
        return self._params

    @params.setter
    def params(self, value: list[Any]) -> None:
        """The declared parameters (lazy groups included), expanded when next read."""
        self.declared, self._params, self._params_key = list(value), None, None

    def invoke(self, ctx: click.Context) -> Any:
        apply_threads(ctx.params.pop("threads", None))
        return super().invoke(ctx)


class Group(OneLineUsage, click.Group):
    command_class = Command


def option_group(*options: Callable) -> Callable[[Callable], Callable]:
    """A decorator applying click options so that --help lists them in the given order."""

    def apply(fn: Callable) -> Callable:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


def given(name: str) -> bool:
    """Whether option ``name`` was given on the command line (not its default)."""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, click.core.ParameterSource.DEFAULT)
