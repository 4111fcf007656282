"""Atomic file writes (temp file in the same folder + rename), output-folder pre-flight checks
and provenance records."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from .checkout import ROOT
from .errors import OutputError
from .oserrors import WRITE_ERRORS, describe, error_number, output_error

TRACKED_PACKAGES = ("torch", "torchvision", "diffusers", "torch-fidelity", "torchattacks",
                    "numpy", "scikit-learn", "safetensors")
MiB = 1 << 20
PROCESS_START = time.time()
# what a killed atomic_path / check_writable leaves: ".<name>.<mkstemp's 8 chars><suffix>"
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]*)?$")




def _describe(e: OSError) -> str:
    return (e.strerror or str(e) or type(e).__name__).splitlines()[0]


def check_writable(folder: str | os.PathLike, min_free_bytes: int = 0) -> Path:
    """Pre-flight check before long work: ``folder`` exists (created if needed), a file can be
    created, written, synced and removed in it, and at least ``min_free_bytes`` are free there.

    Raises :class:`OutputError` (one line naming the folder) otherwise; returns the folder.
    """
    folder = Path(folder)
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputError(errno.ENOTDIR, f"output folder {folder} is not writable: {blocker} "
                          "is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        try:
            os.write(fd, b"dmattack")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise OutputError(e.errno, f"output folder {folder} is not writable: {_describe(e)}"
                          ) from None
    free = shutil.disk_usage(folder).free
    if free < min_free_bytes:
        raise OutputError(errno.ENOSPC, f"output folder {folder} has {free / MiB:.0f} MiB free; "
                          f"this needs at least {min_free_bytes / MiB:.0f} MiB")
    return folder


def is_stale_temp_file(path: Path) -> bool:
    """Whether ``path`` is a temp file of a killed :func:`atomic_path` (``.<name>.XXXXXXXX``
    with ``<name>``'s suffix) or :func:`check_writable` probe (``.write-test.XXXXXXXX``),
    older than this process."""
    m = _TEMP_NAME.match(path.name)
    if m is None or not (m["name"] == "write-test" and not m["suffix"]
                         or (m["suffix"] or "") == Path(m["name"]).suffix):
        return False
    with contextlib.suppress(OSError):
        return path.is_file() and path.stat().st_mtime < PROCESS_START
    return False


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files a killed atomic write left in ``folder`` and its subfolders one
    level down (call while holding the folder's lock, so no live writer owns them); returns
    what was removed."""
    folder = Path(folder)
    removed = []
    for sub in (folder, *(p for p in folder.iterdir() if p.is_dir())):
        for path in sub.glob(".*"):
            if is_stale_temp_file(path):
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically,
    on error it is removed and ``path`` is left untouched.

    A storage failure (disk full, quota, read-only, permission) is raised as
    :class:`OutputError` naming ``path``; the previous file stays as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix,
                                   dir=path.parent)
    except OSError as e:  # the folder cannot hold the file (a file in the way, no space, …)
        blocker = next((p for p in (path.parent, *path.parent.parents)
                        if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is not a folder" if blocker is not None else _describe(e)
        raise OutputError(e.errno, f"cannot write {path}: {reason}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp's 0600 → the usual file mode
        os.replace(tmp_path, path)
    except WRITE_ERRORS as e:  # OSError and safetensors' SafetensorError
        raise _storage_error(e, path) from None
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


def _storage_error(e: BaseException, path: Path) -> BaseException:
    """``e`` as a one-line :class:`OutputError` naming ``path`` when it is a storage failure
    (disk full, file-size limit, name too long, read-only, permission), else ``e`` itself."""
    if isinstance(e, OutputError) or output_error(e, path) is None:
        return e
    return OutputError(error_number(e), f"cannot write {path}: {describe(e, path)}; the "
                       "previous version of the file, if any, is unchanged")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Run ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    return write_atomic(path, lambda p: p.write_text(text))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda p: p.write_text(text))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that change results, plus Python and platform."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision() -> str | None:
    """The commit of the dmattack checkout (with ``-dirty`` when modified), if any."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty.strip() else "")


def provenance() -> dict[str, Any]:
    """What every result file records besides its own config: versions and git revision."""
    return {"versions": library_versions(), "git_revision": git_revision()}
