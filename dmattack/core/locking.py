"""One writer per folder: a lock file ``<folder>/.lock`` holding the owner's pid and host.

The lock is an ``fcntl.flock`` on that file, which the kernel drops when the owner exits in
any way (SIGKILL included), so a lock left by a dead process never blocks: it is taken over
with a warning naming the old pid. A live owner makes a second writer fail at once with a
one-line :class:`LockError` naming the owner's pid and host. On systems without ``flock``
(or file systems that refuse it) the owner's pid is checked instead (same host only; a lock
from another host is never taken over).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from .errors import LockError
from .io import remove_stale_temp_files

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
log = logging.getLogger("dmattack")




def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def read_owner(path: str | os.PathLike) -> dict[str, Any]:
    """The owner record of a lock file ({} when missing or unreadable)."""
    try:
        owner = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict[str, Any]) -> str:
    pid, host = owner.get("pid", "?"), owner.get("host", "?")
    what = f" ({owner['command']})" if owner.get("command") else ""
    return f"process {pid} on {host}{what}"


class FolderLock:
    """Exclusive lock of ``folder`` for the lifetime of a ``with`` block (or acquire/release).

    ``what`` names the folder in messages ("run folder", "curve folder", ...).
    """

    def __init__(self, folder: str | os.PathLike, what: str = "folder",
                 command: str | None = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.command = command
        self._fd: int | None = None

    # ----------------------------------------------------------------- acquire / release
    def acquire(self) -> FolderLock:
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(20):  # retries only when a finishing owner removes the file under us
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not self._lock_fd(fd):
                    raise self._busy(read_owner(self.path))
                if not self._same_file(fd):
                    os.close(fd)
                    continue
                previous = read_owner(self.path)
                if previous and not self._flock_works:
                    self._check_pid_owner(previous)
                if previous.get("pid") not in (None, os.getpid()):
                    log.warning("%s %s: taking over the stale lock of %s, which is no longer "
                                "running", self.what, self.folder, _describe(previous))
                self._write_owner(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            with contextlib.suppress(OSError):  # only tidying: never a reason to fail
                remove_stale_temp_files(self.folder)
            return self
        raise LockError(f"could not lock {self.what} {self.folder}: {self.path} keeps changing")

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._same_file(fd):
                with contextlib.suppress(OSError):
                    os.unlink(self.path)  # while still holding the lock: see _same_file
        finally:
            os.close(fd)  # drops the flock

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ----------------------------------------------------------------- helpers
    _flock_works = True

    def _lock_fd(self, fd: int) -> bool:
        """Take the flock without waiting; False when another open file holds it."""
        if fcntl is None:
            self._flock_works = False
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:  # e.g. ENOLCK / EOPNOTSUPP on some network file systems
            self._flock_works = False
        return True

    def _same_file(self, fd: int) -> bool:
        """Whether ``fd`` is still the file at ``self.path`` (a releasing owner unlinks it)."""
        try:
            st, fst = os.stat(self.path), os.fstat(fd)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)

    def _check_pid_owner(self, owner: dict[str, Any]) -> None:
        """Without flock: refuse when the recorded owner may still be running."""
        pid, host = owner.get("pid"), owner.get("host")
        if pid == os.getpid() and host == socket.gethostname():
            return
        if host != socket.gethostname() or not isinstance(pid, int) or _pid_alive(pid):
            raise self._busy(owner)

    def _busy(self, owner: dict[str, Any]) -> LockError:
        who = _describe(owner) if owner else "another process"
        return LockError(f"{self.what} {self.folder} is in use by {who}; wait for it to finish "
                         f"(if it is gone, delete {self.path})")

    def _write_owner(self, fd: int) -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if self.command:
            record["command"] = self.command
        data = (json.dumps(record) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        with contextlib.suppress(OSError):
            os.fsync(fd)


def lock_folder(folder: str | os.PathLike, what: str = "folder",
                command: str | None = None) -> FolderLock:
    """``with lock_folder(run_dir, "run folder"): ...`` — see :class:`FolderLock`."""
    return FolderLock(folder, what, command)
