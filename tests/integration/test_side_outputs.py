"""Side outputs against the real broker: bounded, never silently lost; broker outages ridden out.

Each test runs ``python -m streaming run`` as a subprocess on topics of its own (the helpers of
``test_faults``): a dead letter too large for its topic arrives truncated, with the original's
size and digest, and the side outputs after it keep flowing; a broker that stops for longer than
the producer's timeouts pauses the daemon instead of ending it; records the broker refuses for
good stop the daemon with ``EXIT_SIDE_REFUSED`` once more than ``kafka.side_max_refused`` were
counted, with its last checkpoint intact.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest
from kafka.admin import ConfigResource, ConfigResourceType

from streaming.cli import EXIT_SIDE_REFUSED
from streaming.config import Config
from streaming.demo import LOGGING
from streaming.kafka.broker import TEST_SETTINGS, LocalBroker
from streaming.kafka.clients import (
    ensure_topics,
    make_admin,
    make_consumer,
    make_producer,
    topic_specs,
)
from streaming.sim import traffic
from streaming.sim.simulator import SimConfig, Simulator
from tests.integration.test_faults import (
    SLATE,
    Topics,
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

# kafka-python leaves sockets of connection attempts made while the broker is down unclosed
QUIET = (
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
)


SIDE_FIELDS = ("dlq", "late", "snapshots", "deltas", "joined", "handoff")
"""The ``Topics`` fields a daemon writes to (a comparison run gets topics of its own)."""


# ------------------------------------------------------------------------------------ helpers
def read_all(config: Config, servers: str, topic: str, *, idle_s: float = 3.0) -> list[Any]:
    """Every record of ``topic``, read from the beginning until nothing came for ``idle_s``."""
    consumer = make_consumer(
        config.kafka,
        servers,
        group_id=None,
        topics=[topic],
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    out: list[Any] = []
    try:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle_s:
            got = consumer.poll(timeout_ms=500)
            for recs in got.values():
                out.extend(recs)
            if got:
                quiet_since = time.monotonic()
    finally:
        consumer.close(autocommit=False)
    return out


def stream_messages(n_requests: int, seed: int) -> list[traffic.Wire]:
    """Simulated impressions and outcomes in wire order (outcomes released in event time)."""
    sim = Simulator(SimConfig(seed=seed, request_gap_ms=1000))
    req = sim.requests(n_requests)
    sl = sim.log_slates(req, SLATE)
    plays = sim.play(req, sl.shown)
    imps = traffic.impressions(req, sl.shown, sl.propensity, policy=LOGGING)
    release = traffic.EventTimeRelease()
    release.hold(list(traffic.wire([], traffic.outcomes(req, plays))))
    return [*traffic.wire(imps, []), *release.release()]


def produce(
    config: Config, servers: str, topics: Topics, values: Sequence[tuple[str, bytes | None, bytes]]
) -> list[tuple[str, int, int]]:
    """Send ``(role, key, value)`` in order (one at a time); returns where each landed."""
    role_topic = {"impressions": topics.impressions, "outcomes": topics.outcomes}
    producer = make_producer(config.kafka, servers, max_request_size=8 * 1024 * 1024)
    try:
        futures = [producer.send(role_topic[r], key=k, value=v) for r, k, v in values]
        producer.flush(timeout=120)
        metas = [f.get(timeout=30) for f in futures]
    finally:
        producer.close(timeout=10)
    return [(m.topic, m.partition, m.offset) for m in metas]


def big_malformed(size: int) -> bytes:
    """``size`` bytes that are not JSON (and compress poorly: no codec hides the size)."""
    out = bytearray()
    seed = b"encore"
    while len(out) < size:
        seed = hashlib.sha256(seed).digest()
        out += seed
    return b"{" + bytes(out[: size - 1])


def dead_letters(config: Config, servers: str, topic: str) -> dict[tuple[str, int, int], Any]:
    """The dead-letter topic's records by source (a replay's second copy overwrites the first)."""
    out: dict[tuple[str, int, int], Any] = {}
    for r in read_all(config, servers, topic):
        d = json.loads(r.value)
        where = (d["topic"], d["partition"], d["offset"])
        assert r.key == "/".join(map(str, where)).encode()
        out[where] = d
    return out


def late_rows(config: Config, servers: str, topic: str) -> set[tuple[str, str, int]]:
    return {
        (d["kind"], d["request_key"], d["ts"])
        for d in (json.loads(r.value) for r in read_all(config, servers, topic))
    }


# ------------------------------------------------------------------- oversized dead letters
OVERSIZED_REQUESTS = 4_000  # 67 min of event time: windows (20 min + 20 min late) close


def _oversized_run(
    tmp_path: Path, servers: str, *, big_size: int, topic_max_bytes: int | None, name: str
) -> tuple[Config, Topics, list[tuple[str, int, int]], dict[tuple[str, int, int], bytes], int]:
    """Simulated traffic with one big malformed impression early on and every 100th message
    damaged; the daemon reads it all. Returns its config, topics, where each message landed,
    the damaged ones (where -> bytes) and the big one's index."""
    topics = fresh_topics()
    cfg = write_config(
        tmp_path / f"{name}.toml",
        servers,
        topics,
        group=f"{name}-{uuid.uuid4().hex[:6]}",
        ckpt_dir=tmp_path / f"ck-{name}",
    )
    extra: dict[str, Any] = {}
    if topic_max_bytes is not None:
        specs = topic_specs(cfg.topics)
        for t in (topics.impressions, topics.dlq):
            spec = specs[t]
            configs = {**spec["configs"], "max.message.bytes": str(topic_max_bytes)}
            extra[t] = {**spec, "configs": configs}
    ensure_topics(cfg, servers, extra=extra)
    messages = stream_messages(OVERSIZED_REQUESTS, seed=21)
    big_at = 40  # an impression early in the stream: most traffic comes after it
    assert messages[big_at].role == "impressions"
    values: list[tuple[str, bytes | None, bytes]] = []
    for i, w in enumerate(messages):
        if i == big_at:
            value = big_malformed(big_size)
        elif i % 100 == 99:
            value = b"not json"
        else:
            value = w.value
        values.append((w.role, w.key, value))
    landed = produce(cfg, servers, topics, values)
    bad = {landed[i]: v for i, (_, _, v) in enumerate(values) if i == big_at or i % 100 == 99}
    log = tmp_path / f"{name}.log"
    proc = start_daemon(tmp_path / f"{name}.toml", log)
    try:
        wait_done(proc, log)
    finally:
        stop(proc)
    assert events_counted(final_state(cfg)) == len(messages) - len(bad)
    return cfg, topics, landed, bad, big_at


def _check_dead_letters(
    cfg: Config,
    servers: str,
    topics: Topics,
    bad: dict[tuple[str, int, int], bytes],
    big: tuple[str, int, int],
) -> dict[tuple[str, int, int], Any]:
    dead = dead_letters(cfg, servers, topics.dlq)
    assert dead.keys() == bad.keys(), "every malformed message has its dead letter"
    for where, d in dead.items():
        raw = bad[where]
        assert d["size"] == len(raw) and d["sha256"] == hashlib.sha256(raw).hexdigest()
        if where == big:
            assert d["truncated"] is True
            prefix = base64.b64decode(d["raw_b64"])
            assert 0 < len(prefix) < len(raw) and raw.startswith(prefix)
        else:
            assert d["truncated"] is False and base64.b64decode(d["raw_b64"]) == raw
    return dead


def test_a_dead_letter_too_large_for_its_topic_is_truncated_and_the_side_outputs_go_on(
    kafka_broker: str, tmp_path: Path
) -> None:
    """A ~0.9 MB malformed message on topics with the broker's default limit (1 MiB): its dead
    letter (base64: 4/3 the size) would be refused. It arrives truncated with the original's
    size and SHA-256; every later dead letter, late row and snapshot arrives too; and the daemon
    learns what it learns when that message is a small malformed one."""
    cfg, topics, landed, bad, big_at = _oversized_run(
        tmp_path, kafka_broker, big_size=900_000, topic_max_bytes=None, name="big"
    )
    dead = _check_dead_letters(cfg, kafka_broker, topics, bad, landed[big_at])
    assert len(dead) >= 3
    # The same stream with the big message replaced by a small malformed one (same offsets).
    ref_cfg, ref_topics, ref_landed, _, _ = _oversized_run(
        tmp_path, kafka_broker, big_size=64, topic_max_bytes=None, name="ref"
    )
    assert [w[1:] for w in ref_landed] == [w[1:] for w in landed]
    got, want = final_state(cfg), final_state(ref_cfg)
    ref_offsets = {
        (
            t.replace(ref_topics.impressions, topics.impressions).replace(
                ref_topics.outcomes, topics.outcomes
            ),
            p,
        ): o
        for (t, p), o in want.offsets.items()
    }
    assert_same_learning(got, want._replace(offsets=ref_offsets))
    want_late = late_rows(ref_cfg, kafka_broker, ref_topics.late)
    assert want_late, "the stream makes late rows"
    assert late_rows(cfg, kafka_broker, topics.late) == want_late
    big_ts = max(
        r.timestamp
        for r in read_all(cfg, kafka_broker, topics.dlq)
        if json.loads(r.value)["truncated"]
    )
    snaps = read_all(cfg, kafka_broker, topics.snapshots)
    assert any(r.timestamp >= big_ts for r in snaps), "snapshots go on after the big dead letter"


def test_a_dead_letter_over_the_producers_request_size_is_truncated_not_fatal(
    kafka_broker: str, tmp_path: Path
) -> None:
    """A ~3.5 MiB malformed message on topics that allow 8 MiB: its dead letter (4.7 MB) is
    over the producer's max_request_size. The daemon goes on (exit 0) and the dead letter
    arrives truncated."""
    cfg, topics, landed, bad, big_at = _oversized_run(
        tmp_path,
        kafka_broker,
        big_size=3_600_000,
        topic_max_bytes=8 * 1024 * 1024,
        name="huge",
    )
    _check_dead_letters(cfg, kafka_broker, topics, bad, landed[big_at])


# ------------------------------------------------------------------------------ broker outage
OUTAGE_REQUESTS = 6_000
# Longer than kafka-python's max_block_ms (60 s): a send that needs a topic's metadata while the
# broker is away times out inside kafka-python, whatever its reconnect backoff does afterwards.
OUTAGE_S = 65.0


def malformed(config: Config, servers: str, topics: Topics, tag: str, n: int) -> set[Any]:
    """``n`` malformed impressions keyed over the partitions; returns where they landed."""
    rows: list[tuple[str, bytes | None, bytes]] = [
        ("impressions", f"{tag}-{i}".encode(), f"not json {tag} {i}".encode()) for i in range(n)
    ]
    return set(produce(config, servers, topics, rows))


@QUIET[0]
@QUIET[1]
def test_a_broker_outage_longer_than_the_producer_timeouts_pauses_the_daemon(
    tmp_path: Path,
) -> None:
    """The broker stops for 65 s while the daemon still has fetched records to work through
    (their dead letters are the first it sends: kafka-python knows nothing yet of the
    dead-letter topic) and comes back on the same ports. The daemon rides it out without an
    outside restart, every dead letter and late row arrives, snapshots go on, and it ends with
    what an uninterrupted run learned."""
    broker = LocalBroker(state_dir=tmp_path / "broker", settings=TEST_SETTINGS)
    servers = broker.start().bootstrap_servers
    procs: list[subprocess.Popen[bytes]] = []
    try:
        topics = fresh_topics()
        cfg = write_config(
            tmp_path / "a.toml",
            servers,
            topics,
            group=f"a-{uuid.uuid4().hex[:6]}",
            ckpt_dir=tmp_path / "ck-a",
        )
        ensure_topics(cfg, servers)
        halves = produce_halves(cfg, servers, OUTAGE_REQUESTS, seed=6)
        next(halves)
        bad = malformed(cfg, servers, topics, "first", 20)  # the end of each partition
        log = tmp_path / "a.log"
        procs.append(proc := start_daemon(tmp_path / "a.toml", log))
        deadline = time.monotonic() + 120
        while newest_sequence(tmp_path / "ck-a") == 0:
            assert proc.poll() is None and time.monotonic() < deadline, tail(log)
            time.sleep(0.05)
        # Frozen while the broker stops, so that the records it fetched meet a stopped broker.
        proc.send_signal(signal.SIGSTOP)
        try:
            broker.stop()
        finally:
            proc.send_signal(signal.SIGCONT)
        down = time.monotonic()
        while time.monotonic() - down < OUTAGE_S:
            assert proc.poll() is None, f"the daemon died with the broker:\n{tail(log)}"
            time.sleep(0.5)
        # Frozen again while the rest of the stream is produced: idle since the stop, it would
        # otherwise find itself caught up, and stop, before the test's producer (reconnecting
        # with kafka-python's backoff, up to 30 s) has sent the second half.
        proc.send_signal(signal.SIGSTOP)
        try:
            assert broker.start().bootstrap_servers == servers
            back_ms = int(time.time() * 1000)
            sent = next(halves)
            bad |= malformed(cfg, servers, topics, "second", 20)
        finally:
            proc.send_signal(signal.SIGCONT)
        wait_done(proc, log, timeout_s=360)
        got = final_state(cfg)
        assert events_counted(got) == sent
        assert dead_letters(cfg, servers, topics.dlq).keys() == bad
        snaps = read_all(cfg, servers, topics.snapshots)
        assert any(r.timestamp >= back_ms for r in snaps), "snapshots go on after the outage"
        # The same events read without an outage, with side topics of its own.
        run = uuid.uuid4().hex[:8]
        other = dataclasses.replace(
            topics, **{f: f"{getattr(topics, f)}-b{run}" for f in SIDE_FIELDS}
        )
        plain = write_config(
            tmp_path / "b.toml",
            servers,
            other,
            group=f"b-{uuid.uuid4().hex[:6]}",
            ckpt_dir=tmp_path / "ck-b",
        )
        ensure_topics(plain, servers)
        procs.append(proc := start_daemon(tmp_path / "b.toml", tmp_path / "b.log"))
        wait_done(proc, tmp_path / "b.log")
        assert_same_learning(got, final_state(plain))
        assert late_rows(cfg, servers, topics.late) == late_rows(plain, servers, other.late)
    finally:
        for p in procs:
            stop(p)
        broker.stop()


# ------------------------------------------------------------------------- refused for good
REFUSED_LIMIT = 2


def test_records_refused_past_the_limit_stop_the_daemon_with_its_exit_code(
    kafka_broker: str, tmp_path: Path
) -> None:
    """The late topic is compacted, so the broker refuses every late row (they have no key)
    and no retry can change that. Past ``kafka.side_max_refused`` the daemon stops with
    ``EXIT_SIDE_REFUSED`` and writes no checkpoint after the refusal: once the topic takes the
    rows, a restart ends with what an uninterrupted run learned and sends its late rows (but
    for the few refused within the limit)."""
    topics = fresh_topics()
    cfg = write_config(
        tmp_path / "r.toml",
        kafka_broker,
        topics,
        group=f"r-{uuid.uuid4().hex[:6]}",
        ckpt_dir=tmp_path / "ck-r",
        kafka=f"side_max_refused = {REFUSED_LIMIT}",
    )
    late_spec = topic_specs(cfg.topics)[topics.late]
    compacted = {**late_spec, "configs": {**late_spec["configs"], "cleanup.policy": "compact"}}
    ensure_topics(cfg, kafka_broker, extra={topics.late: compacted})
    messages = stream_messages(OVERSIZED_REQUESTS, seed=23)
    rows = [
        (w.role, w.key, b"not json" if i % 100 == 99 else w.value) for i, w in enumerate(messages)
    ]
    produce(cfg, kafka_broker, topics, rows)
    log = tmp_path / "r.log"
    proc = start_daemon(tmp_path / "r.toml", log)
    try:
        rc = proc.wait(timeout=240)
    finally:
        stop(proc)
    assert rc == EXIT_SIDE_REFUSED, f"the daemon exited with {rc}:\n{tail(log)}"
    assert "kafka.side_max_refused" in log.read_text(errors="replace")
    final_state(cfg)  # the newest checkpoint loads: whole, and of this stream
    admin = make_admin(cfg.kafka, kafka_broker)
    try:
        cast(Any, admin).alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC, topics.late, configs={"cleanup.policy": "delete"}
                )
            ]
        )
    finally:
        admin.close()
    time.sleep(2)  # the broker applies topic configs asynchronously
    proc = start_daemon(tmp_path / "r.toml", log)
    try:
        wait_done(proc, log)
    finally:
        stop(proc)
    got = final_state(cfg)
    run = uuid.uuid4().hex[:8]
    other = dataclasses.replace(topics, **{f: f"{getattr(topics, f)}-b{run}" for f in SIDE_FIELDS})
    plain = write_config(
        tmp_path / "p.toml",
        kafka_broker,
        other,
        group=f"p-{uuid.uuid4().hex[:6]}",
        ckpt_dir=tmp_path / "ck-p",
    )
    ensure_topics(plain, kafka_broker)
    proc = start_daemon(tmp_path / "p.toml", tmp_path / "p.log")
    try:
        wait_done(proc, tmp_path / "p.log")
    finally:
        stop(proc)
    assert_same_learning(got, final_state(plain))
    got_late = late_rows(cfg, kafka_broker, topics.late)
    want_late = late_rows(plain, kafka_broker, other.late)
    assert got_late <= want_late and len(want_late - got_late) <= REFUSED_LIMIT
