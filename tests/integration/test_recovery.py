"""Recovery against the real broker: a damaged newest checkpoint, and a checkpoint directory that
cannot take another checkpoint.

Each test runs ``python -m streaming run`` as a subprocess on topics of its own (the helpers of
``test_faults``) and compares what it learned with an uninterrupted run of the same events.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from streaming.cli import EXIT_CHECKPOINT_WRITE
from streaming.demo import produce_simulated
from streaming.kafka.clients import ensure_topics
from streaming.worker import checkpoint
from tests.integration.test_faults import (
    RUN_TIMEOUT_S,
    SLATE,
    assert_same_learning,
    events_counted,
    final_state,
    fresh_topics,
    newest_sequence,
    produce_halves,
    start_daemon,
    stop,
    tail,
    wait_done,
    write_config,
)

pytestmark = pytest.mark.integration

REQUESTS = 24_000  # about 134,000 impressions and outcomes


def damage(path: Path) -> None:
    """Flip bytes in the middle of a checkpoint file (its digest no longer matches)."""
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["kill", "term"])
def test_a_damaged_newest_checkpoint_is_resumed_from_the_one_before_and_loses_nothing(
    kafka_broker: str, tmp_path: Path, how: str
) -> None:
    """Stopped mid-stream (SIGKILL, or SIGTERM's clean stop), its newest checkpoints damaged on
    disk: the restarted daemon resumes from an older one and reads the events after it again,
    although the damaged ones had committed their offsets and published their partitions.

    The stream comes in two halves: the daemon is stopped once it has learned the first, so the
    stop lands mid-stream however fast the machine is."""
    topics = fresh_topics()
    victim = write_config(
        tmp_path / "v.toml",
        kafka_broker,
        topics,
        group=f"v-{uuid.uuid4().hex[:6]}",
        ckpt_dir=tmp_path / "ck-v",
    )
    plain = write_config(
        tmp_path / "p.toml",
        kafka_broker,
        topics,
        group=f"p-{uuid.uuid4().hex[:6]}",
        ckpt_dir=tmp_path / "ck-p",
    )
    # Checkpoints by time only, each with new events; enough kept for one older than those a
    # clean stop adds (the end of the loop, then the revocation while closing).
    toml = (tmp_path / "v.toml").read_text()
    toml = toml.replace("every_events = 3000", "every_events = 100000000")
    toml = toml.replace("every_ms = 2000", "every_ms = 700").replace("keep = 3", "keep = 8")
    (tmp_path / "v.toml").write_text(toml)
    ensure_topics(victim, kafka_broker)
    halves = produce_halves(victim, kafka_broker, REQUESTS, seed=3)
    first = next(halves)
    log, ckpt_dir = tmp_path / "v.log", tmp_path / "ck-v"
    proc = start_daemon(tmp_path / "v.toml", log, idle_ms=600_000)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while (
            checkpoint.load_latest(ckpt_dir) is None or events_counted(final_state(victim)) < first
        ):
            assert proc.poll() is None, f"the daemon stopped early:\n{tail(log)}"
            assert time.monotonic() < deadline, f"the first half was not learned:\n{tail(log)}"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
        rc = proc.wait(timeout=60)
        assert rc == (-signal.SIGKILL if how == "kill" else 0), tail(log)
    finally:
        stop(proc)
    # Damage every checkpoint that holds the whole first half: the newest left is behind it.
    paths = checkpoint.list_checkpoints(ckpt_dir)
    newest = checkpoint.load(paths[-1])[1]["worker"]["offsets"]
    for path in paths:
        if checkpoint.load(path)[1]["worker"]["offsets"] == newest:
            damage(path)
    assert checkpoint.load_latest(ckpt_dir) is not None, "no older checkpoint to resume from"
    sent = next(halves)
    uninterrupted = start_daemon(tmp_path / "p.toml", tmp_path / "p.log")
    try:
        proc = start_daemon(tmp_path / "v.toml", log)
        try:
            wait_done(proc, log)
        finally:
            stop(proc)
        wait_done(uninterrupted, tmp_path / "p.log")
    finally:
        stop(uninterrupted)
    text = log.read_text(errors="replace")
    told = re.search(r"reading again the (\d+) events", text)
    assert told is not None and int(told.group(1)) > 0, tail(log)
    got, want = final_state(victim), final_state(plain)
    assert events_counted(want) == sent
    assert_same_learning(got, want)


def _run_to_a_checkpoint(toml: Path, log: Path, ckpt_dir: Path) -> subprocess.Popen[bytes]:
    proc = start_daemon(toml, log, idle_ms=60_000)
    deadline = time.monotonic() + 120
    while newest_sequence(ckpt_dir) < 1:
        assert proc.poll() is None, f"the daemon stopped early:\n{tail(log)}"
        assert time.monotonic() < deadline, f"no checkpoint:\n{tail(log)}"
        time.sleep(0.05)
    return proc


def _stopped_with_the_checkpoint_exit_code(proc: subprocess.Popen[bytes], log: Path) -> str:
    try:
        rc = proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop(proc)
        pytest.fail(f"the daemon did not stop:\n{tail(log)}")
    text = log.read_text(errors="replace")
    assert rc == EXIT_CHECKPOINT_WRITE, f"exit {rc}:\n{tail(log)}"
    assert "Traceback" not in text, tail(log)
    said = re.search(r"encore: cannot write (a checkpoint|the Parquet log) to", text)
    assert said is not None, tail(log)
    return text


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 256 MiB tmpfs: a file system that fills up for real (the tests run as root). It holds
    the checkpoints and the Parquet log: whichever finds the disk full first stops the run."""
    where = tmp_path / "disk"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(where)], capture_output=True
    )
    assert done.returncode == 0, f"mount tmpfs: {done.stderr.decode()} (needs root)"
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("full", ["checkpoints", "checkpoints and log"])
def test_a_full_disk_stops_with_its_exit_code_and_keeps_the_last_good_checkpoint(
    kafka_broker: str, tmp_path: Path, small_disk: Path, full: str
) -> None:
    topics = fresh_topics()
    ckpt_dir = small_disk / "ck"
    cfg = write_config(
        tmp_path / "d.toml",
        kafka_broker,
        topics,
        group=f"d-{uuid.uuid4().hex[:6]}",
        ckpt_dir=ckpt_dir,
    )
    if full == "checkpoints":  # the Parquet log elsewhere: only the checkpoints meet the full disk
        toml = (tmp_path / "d.toml").read_text()
        on_disk = json.dumps(str(small_disk / "ck-log"))
        elsewhere = json.dumps(str(tmp_path / "log"))
        (tmp_path / "d.toml").write_text(toml.replace(f"dir = {on_disk}", f"dir = {elsewhere}"))
    plain = write_config(
        tmp_path / "p.toml",
        kafka_broker,
        topics,
        group=f"p-{uuid.uuid4().hex[:6]}",
        ckpt_dir=tmp_path / "ck-p",
    )
    ensure_topics(cfg, kafka_broker)
    sent = produce_simulated(cfg, kafka_broker, n_requests=6_000, slate_size=SLATE, seed=4)
    log = tmp_path / "d.log"
    proc = _run_to_a_checkpoint(tmp_path / "d.toml", log, ckpt_dir)
    filler = small_disk / "filler"
    try:
        with open(filler, "wb") as out:  # fill what is left of the disk
            chunk = b"\0" * (1 << 20)
            try:
                while True:
                    out.write(chunk)
                    out.flush()
            except OSError:
                pass
        said = _stopped_with_the_checkpoint_exit_code(proc, log)
        if full == "checkpoints":
            assert "cannot write a checkpoint to" in said
    finally:
        stop(proc)
    good = checkpoint.list_checkpoints(ckpt_dir)
    assert good and checkpoint.load(good[-1])  # the newest left behind verifies
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".checkpoint-")]
    # Space again: it resumes from that checkpoint and learns what an uninterrupted run learns.
    filler.unlink()
    proc = start_daemon(tmp_path / "d.toml", log)
    try:
        wait_done(proc, log)
    finally:
        stop(proc)
    uninterrupted = start_daemon(tmp_path / "p.toml", tmp_path / "p.log")
    try:
        wait_done(uninterrupted, tmp_path / "p.log")
    finally:
        stop(uninterrupted)
    got, want = final_state(cfg), final_state(plain)
    assert events_counted(want) == sent
    assert_same_learning(got, want)


def test_a_checkpoint_directory_that_cannot_be_written_stops_with_its_exit_code(
    kafka_broker: str, tmp_path: Path
) -> None:
    """The directory replaced by a file mid-run (what root can do to any directory), then a
    start with it still in the way: both end with the exit code and one clear line."""
    topics = fresh_topics()
    ckpt_dir = tmp_path / "ck"
    cfg = write_config(
        tmp_path / "u.toml",
        kafka_broker,
        topics,
        group=f"u-{uuid.uuid4().hex[:6]}",
        ckpt_dir=ckpt_dir,
    )
    ensure_topics(cfg, kafka_broker)
    produce_simulated(cfg, kafka_broker, n_requests=6_000, slate_size=SLATE, seed=5)
    log = tmp_path / "u.log"
    proc = _run_to_a_checkpoint(tmp_path / "u.toml", log, ckpt_dir)
    kept = tmp_path / "ck-kept"
    try:
        os.rename(ckpt_dir, kept)
        ckpt_dir.write_bytes(b"in the way")
        _stopped_with_the_checkpoint_exit_code(proc, log)
    finally:
        stop(proc)
    assert checkpoint.load_latest(kept) is not None  # the last good one, intact
    start = tmp_path / "start.log"
    proc = start_daemon(tmp_path / "u.toml", start)
    try:
        _stopped_with_the_checkpoint_exit_code(proc, start)
    finally:
        stop(proc)
    ckpt_dir.unlink()
    shutil.move(kept, ckpt_dir)
