"""One owner at a time for a worker's files: an advisory lock (``flock``) on a lock file.

A worker's checkpoint directory and its Parquet log files each belong to one process. Two
daemons started with the same ``checkpoint.dir`` (the default is relative to the working
directory, so two ``encore run`` in one directory share it) would load each other's
checkpoints and count events twice; two writers with one id in one ``log.dir`` would delete
each other's open files. :class:`DirLock` makes the second one fail at start with an error
that names the holder, instead.

The lock is ``flock`` on an open file: the kernel drops it when the process exits or is
killed, so a crashed worker never leaves a stale lock behind, and the file (which records the
holder's pid and host, for the error message) is left in place. It conflicts between two
opens in one process as well, so two workers in one process are caught too. It is advisory
and local: it guards against other encore processes on the same host, and is only as good as
``flock`` on network file systems.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "LOCK"
    >>> first = DirLock(path, "checkpoint.dir x")
    >>> first.acquire()
    >>> try:
    ...     DirLock(path, "checkpoint.dir x").acquire()
    ... except InUseError as exc:
    ...     print(str(exc).split(" (")[0])
    checkpoint.dir x is in use by another worker
    >>> first.release()
    >>> DirLock(path, "checkpoint.dir x").acquire()
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
import weakref
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["DirLock", "InUseError"]


class InUseError(RuntimeError):
    """Another process (or another worker in this one) holds the lock."""


class DirLock:
    """An exclusive, non-blocking lock on ``path``; ``what`` names it in errors.

    ``acquire`` and ``release`` are idempotent. The lock is held until ``release``, or until
    the object is garbage collected or the process ends (the file closes).
    """

    def __init__(self, path: str | Path, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self._release: weakref.finalize[[int], DirLock] | None = None  # closes the file
        self._unguarded = False  # the file system has no flock: held without a lock

    @property
    def held(self) -> bool:
        return self._unguarded or (self._release is not None and self._release.alive)

    def acquire(self) -> None:
        """Take the lock, or raise :class:`InUseError` naming the process that holds it."""
        if self.held:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise InUseError(
                f"{self.what} is in use by another worker ({holder or 'holder unknown'}; "
                f"lock file {self.path}): give each worker its own"
            ) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                # some network and FUSE file systems have no flock: run unguarded, as before
                log.warning("no lock on %s (%s): %s is not guarded", self.path, exc, self.what)
                self._unguarded = True
                return
            raise
        except BaseException:
            os.close(fd)
            raise
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since_ms": _now()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        # a raw descriptor, closed by release or when this object is collected (no warning)
        self._release = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        """Let go of the lock (closing the file drops it); the lock file stays."""
        self._unguarded = False
        if self._release is not None:
            self._release()
            self._release = None


def _now() -> int:
    return time.time_ns() // 1_000_000
