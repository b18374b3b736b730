"""streaming.worker.lock: one holder at a time, across processes, and never stale after a kill."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from streaming.worker.lock import DirLock, InUseError

HOLD = textwrap.dedent(
    """
    import sys, time
    from streaming.worker.lock import DirLock
    lock = DirLock(sys.argv[1], "test lock")
    lock.acquire()
    print("held", flush=True)
    time.sleep(600)
    """
)


def test_a_lock_held_by_another_process_names_it_and_a_kill_frees_it(tmp_path: Path) -> None:
    path = tmp_path / "LOCK"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[3],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(InUseError) as caught:
            DirLock(path, "checkpoint.dir somewhere").acquire()
        message = str(caught.value)
        assert message.startswith("checkpoint.dir somewhere is in use by another worker")
        info = json.loads(message[message.index("{") : message.index("}") + 1])
        assert info["pid"] == holder.pid
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    lock = DirLock(path, "checkpoint.dir somewhere")
    lock.acquire()  # the kernel dropped the killed holder's lock; nothing stale is left
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def test_two_holders_in_one_process_conflict_and_release_is_idempotent(tmp_path: Path) -> None:
    a, b = DirLock(tmp_path / "LOCK", "x"), DirLock(tmp_path / "LOCK", "x")
    a.acquire()
    a.acquire()  # idempotent
    with pytest.raises(InUseError):
        b.acquire()
    assert a.held and not b.held
    a.release()
    a.release()
    b.acquire()
    assert b.held and not a.held


def test_an_unreleased_lock_is_dropped_when_its_owner_is_collected(tmp_path: Path) -> None:
    DirLock(tmp_path / "sub" / "LOCK", "x").acquire()  # the parent folder is created
    gc.collect()
    other = DirLock(tmp_path / "sub" / "LOCK", "x")
    other.acquire()
    assert other.held


def test_a_file_system_without_flock_runs_unguarded_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import errno
    import fcntl

    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    lock = DirLock(tmp_path / "LOCK", "checkpoint.dir x")
    with caplog.at_level("WARNING"):
        lock.acquire()
    assert lock.held and "not guarded" in caplog.text
    lock.release()
    assert not lock.held
