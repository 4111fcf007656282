"""Operating-system errors of a write as one line naming the path.

A full disk, a file-size limit (``ulimit -f``), a quota, a read-only or permission-denied
folder, or a path component over the file system's name limit is not a bug in dmattack: it is
reported as :class:`~dmattack.core.errors.OutputError` ("cannot write PATH: file too large (…)"),
which the command line prints as one line with exit code 2. safetensors reports the same
conditions as ``SafetensorError("… I/O error: File too large (os error 27)")``; it is mapped
the same way.

Use :func:`os_errors` around a write, :func:`save_file` and :func:`torch_save` instead of
safetensors' and torch's own, and :func:`output_error` where an error is caught already.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError

from .errors import OutputError, first_line

# errno → what it means for the user; anything else is re-raised unchanged (a bug, or a
# condition dmattack does not know how to explain)
REASONS: dict[int, str] = {
    errno.ENAMETOOLONG: "file name too long",
    errno.EFBIG: "file too large (the file-size limit, ulimit -f, was reached)",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a component of the path is not a folder",
    errno.EISDIR: "it is a folder",
    errno.EIO: "input/output error (a failing disk or network file system)",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EMFILE: "too many open files (raise ulimit -n)",
    errno.ENFILE: "too many open files in the system",
}
# what a write may raise for a storage failure (for ``except WRITE_ERRORS``)
WRITE_ERRORS: tuple[type[BaseException], ...] = (OSError, SafetensorError)
_OS_ERROR = re.compile(r"\(os error (\d+)\)")
NAME_MAX = 255  # bytes per path component on Linux, macOS and Windows file systems


def error_number(error: BaseException) -> int | None:
    """The errno of an ``OSError``, or the one a ``SafetensorError``'s text reports."""
    if isinstance(error, OSError):
        return error.errno
    if isinstance(error, SafetensorError):
        found = _OS_ERROR.search(str(error))
        return int(found.group(1)) if found else None
    return None


def describe(error: BaseException, path: str | os.PathLike | None = None) -> str:
    """A short reason for ``error`` ("file too large (…)"); for a too-long name, which
    component of ``path`` is too long. dmattack's own OutputError keeps its message."""
    if isinstance(error, OutputError):
        return first_line(error)
    number = error_number(error)
    if number == errno.ENAMETOOLONG and path is not None:
        longest = max(Path(path).parts, key=lambda part: len(os.fsencode(part)))
        size = len(os.fsencode(longest))
        if size > NAME_MAX:
            return (f"file name too long (a path component is {size} bytes; file systems "
                    f"allow {NAME_MAX})")
    if number in REASONS:
        return REASONS[number]
    text = str(error.strerror if isinstance(error, OSError) and error.strerror else error)
    return (text.strip().splitlines() or [type(error).__name__])[0]


def output_error(error: BaseException, path: str | os.PathLike | None = None
                 ) -> OutputError | None:
    """``error`` as a one-line :class:`OutputError` naming ``path`` (default: the error's
    own ``filename``) when it is a storage failure, else None (the caller re-raises it).

    An OutputError is returned as it is."""
    if isinstance(error, OutputError):
        return error
    number = error_number(error)
    if number not in REASONS:
        return None
    if path is None and isinstance(error, OSError):
        path = error.filename
    where = f"cannot write {os.fspath(path)}" if path is not None else "a write failed"
    converted = OutputError(f"{where}: {describe(error, path)}")
    converted.errno = number  # one argument: str() is the message alone
    return converted


@contextlib.contextmanager
def os_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a storage failure of the writes inside into a one-line OutputError naming
    ``path``; other errors pass through unchanged."""
    try:
        yield
    except WRITE_ERRORS as e:
        converted = output_error(e, path)
        if converted is None or converted is e:
            raise
        raise converted from None


def save_file(tensors: dict[str, Any], filename: str | os.PathLike,
              metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` whose storage failures are one-line OutputErrors
    naming ``filename``."""
    with os_errors(filename):
        safetensors.torch.save_file(tensors, os.fspath(filename), metadata)


def torch_save(obj: Any, filename: str | os.PathLike) -> None:
    """``torch.save`` whose storage failures are one-line OutputErrors naming ``filename``.

    torch's zip writer reports a full disk as "unexpected pos 340480 vs 340372"; serialising
    into memory first and writing the bytes with ``open`` keeps the operating system's errno.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with os_errors(filename), open(filename, "wb") as f:
        f.write(buffer.getbuffer())
