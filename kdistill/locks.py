"""One writer per output folder: an advisory lock that names its holder.

``output_lock(folder, what)`` holds ``folder/.kdistill.lock`` with ``fcntl.flock`` for as long as
the block runs, and writes into it a JSON record of the holder (pid, host, start time, command).
A second kdistill process asking for the same folder gets a ``LockedError`` that names the
holder, instead of racing it. The kernel drops a flock when its process dies (``kill -9``
included), so a lock left by a killed run is free: it is taken over, and the stale holder record
is logged. Within one process the lock is reentrant (the pipeline holds a stage folder while the
stage's own code asks for it again).
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from kdistill.errors import DataError

log = logging.getLogger(__name__)

LOCK_FILE = ".kdistill.lock"

# errno of flock on a filesystem without locks (some network filesystems)
_UNSUPPORTED = {e for e in (getattr(errno, "ENOLCK", None), getattr(errno, "EOPNOTSUPP", None),
                            getattr(errno, "ENOTSUP", None)) if e is not None}

# folder (resolved) -> [fd, depth] for the locks this process holds
_held: dict[Path, list[int]] = {}


class LockedError(DataError):
    """The folder is being written by another kdistill process."""


def holder_record() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join([_program(), *sys.argv[1:]])[:300]}


def _program() -> str:
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return "kdistill" if name == "cli.py" else name  # python -m kdistill.cli


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process (no holder record yet)"
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('since')}"
            + (f" ({holder['command']})" if holder.get("command") else ""))


def read_holder(folder: str | Path) -> dict[str, Any]:
    """The holder record in ``folder``'s lock file ({} when there is none or it is unreadable)."""
    try:
        blob = json.loads((Path(folder) / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return blob if isinstance(blob, dict) else {}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _acquire(folder: Path, what: str) -> int:
    """Open and flock the lock file; retried when the file was replaced under us (a holder that
    unlinked it on release between our open and our flock)."""
    path = folder / LOCK_FILE
    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in _UNSUPPORTED:
                log.warning("%s: this filesystem does not support file locks (%s); writing without one", folder,
                            os.strerror(err.errno))
                return fd
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise LockedError(folder, f"{what} is in use by another kdistill process: {_describe(read_holder(folder))}; "
                                      "wait for it to finish or stop it (a killed process frees its lock)") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
    raise LockedError(folder, f"{what}: could not take {path} (it keeps being replaced)")


class FolderLock:
    """The lock of one folder; ``with FolderLock(folder, what):`` or ``acquire()`` / ``release()``."""

    def __init__(self, folder: str | Path, what: str = "output folder"):
        self.folder, self.what = Path(folder), what
        self._key: Path | None = None

    def acquire(self) -> "FolderLock":
        if self._key is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        key = self.folder.resolve()
        if key in _held:
            _held[key][1] += 1
            self._key = key
            return self
        fd = _acquire(self.folder, self.what)
        stale = read_holder(self.folder)
        if stale:
            pid = int(stale.get("pid", 0) or 0)
            gone = "it released the lock" if stale.get("host") == socket.gethostname() and pid_alive(pid) \
                else "that process is gone"
            log.warning("%s: taking over the lock of %s: %s", self.folder, _describe(stale), gone)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder_record()).encode(), 0)
        _held[key] = [fd, 1]
        self._key = key
        return self

    def release(self) -> None:
        key, self._key = self._key, None
        if key is None or key not in _held:
            return
        _held[key][1] -= 1
        if _held[key][1] > 0:
            return
        fd, _ = _held.pop(key)
        # Unlinked while still held, so a waiting process never locks a file about to vanish
        # (it re-checks the inode after locking).
        with contextlib.suppress(OSError):
            os.unlink(self.folder / LOCK_FILE)
        os.close(fd)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def output_lock(folder: str | Path, what: str = "output folder") -> FolderLock:
    """The lock of ``folder`` (created if missing), to hold with ``with``; see the module docstring."""
    return FolderLock(folder, what)


def holds(folder: str | Path) -> bool:
    """Whether this process holds ``folder``'s lock."""
    return Path(folder).resolve() in _held
