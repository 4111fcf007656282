"""The errors dmattack raises for a user's mistake, as opposed to a bug in dmattack.

Every :class:`DmattackError` carries a one-line message that names the bad value and what is
allowed. The command line prints that line and exits with code 2; anything else (a bug) keeps
its traceback. Each subclass also derives from the built-in exception a caller would expect
(``ValueError`` for a bad value, ``OSError`` for a file-system problem), so code written as
``except ValueError`` keeps working.
"""

from __future__ import annotations


class DmattackError(Exception):
    """Base of every user-facing error: one line naming the bad value and what is allowed."""


class ConfigError(DmattackError, ValueError):
    """A bad setting (a config field or a command-line option).

    ``field`` names the setting (e.g. ``"eps_scale"``) when one is to blame, else None.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InputFileError(DmattackError, ValueError):
    """A file given as input is missing, unreadable, unsafe (pickled code) or malformed:
    data, weights, a classifier, a pipeline folder."""


class RunFolderError(InputFileError):
    """A run folder (config.json, checkpoints, meta.json) is missing, damaged or inconsistent."""


class OutputError(DmattackError, OSError):
    """An output path cannot be written: not a folder, not empty, read-only, too long, full.

    Built like an ``OSError``: ``OutputError(errno.ENOSPC, "one line naming the path")``."""

    def __str__(self) -> str:
        return self.strerror if isinstance(self.strerror, str) else super().__str__()


class LockError(DmattackError, ValueError):
    """A folder is being written by another live process (one line naming its pid and host)."""


class MissingResourceError(DmattackError, RuntimeError):
    """Something a command needs is not available here (weights of a feature extractor, an
    optional package, a GPU); the message says how to provide it."""


class DivergedError(DmattackError, FloatingPointError):
    """Training diverged (a non-finite loss, gradient or weights); the message names the step
    and the last good checkpoint, which is kept."""


def first_line(error: BaseException) -> str:
    """The first line of ``str(error)``, or the exception's type name when it has no text."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


__all__ = ["ConfigError", "DivergedError", "DmattackError", "InputFileError", "LockError",
           "MissingResourceError", "OutputError", "RunFolderError", "first_line"]
