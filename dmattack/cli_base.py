"""Click plumbing of the `dmattack` command line: user errors as one line and exit code 2,
usage errors without the usage block, options listed in a given order."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from .errors import DmattackError, first_line
from .oserrors import output_error


def friendly_errors(fn: Callable) -> Callable:
    """A DmattackError or a storage OSError (dmattack.oserrors): one line on stderr, exit code 2;
    anything else propagates. DMATTACK_DEBUG=1 shows the traceback of a user error too."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (DmattackError, OSError) as e:  # OSError: a full disk, a name too long, …
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


class Command(OneLineUsage, click.Command):
    pass


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
