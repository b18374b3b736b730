"""Lean consumer records against the real broker: the same records as kafka-python's own.

Each read is a script of ``(seek offset, records wanted)`` steps on one partition at a time, so
its result does not depend on how fetches happen to be cut: a stock and a lean consumer must
return the same ``(partition, offset, key, value)`` sequence and end at the same position.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from streaming.config import Config
from streaming.core import join_counters
from streaming.demo import produce_simulated
from streaming.kafka.clients import (
    LeanRecord,
    TopicPartition,
    ensure_topics,
    make_consumer,
    make_producer,
    use_lean_records,
    uses_lean_records,
)
from streaming.worker import daemon as daemon_module
from streaming.worker.daemon import Daemon
from tests.integration.test_scale_out import assert_same_statistics
from tests.integration.test_scale_out import config as scale_config

pytestmark = pytest.mark.integration

Row = tuple[int, int, bytes | None, bytes | None]


def config(servers: str) -> Config:
    run = uuid.uuid4().hex[:8]
    cfg = Config.load(env={}, overrides=[f"kafka.bootstrap_servers={servers}"])
    return dataclasses.replace(cfg, topics=cfg.topics.for_run(run))


def read(
    cfg: Config,
    servers: str,
    topic: str,
    partitions: Sequence[int],
    script: Sequence[tuple[int, int]],
    *,
    lean: bool,
    max_records: int = 37,
    **overrides: Any,
) -> list[Any]:
    """For each partition, each ``(offset, n)``: seek there, poll until ``n`` records or the end."""
    consumer: Any = make_consumer(cfg.kafka, servers, group_id=None, lean_records=lean, **overrides)
    assert uses_lean_records(consumer) == lean
    out: list[Any] = []
    try:
        for p in partitions:
            tp = TopicPartition(topic, p)
            consumer.assign([tp])
            end = consumer.end_offsets([tp])[tp]
            for offset, n in script:
                consumer.seek(tp, offset)
                got: list[Row] = []
                deadline = time.monotonic() + 30
                while len(got) < n and consumer.position(tp) < end:
                    assert time.monotonic() < deadline, f"stuck at {consumer.position(tp)}"
                    for r_tp, recs in consumer.poll(
                        timeout_ms=200, max_records=min(max_records, n - len(got))
                    ).items():
                        assert all(isinstance(r, LeanRecord) for r in recs) == lean
                        got.extend((r_tp.partition, r.offset, r.key, r.value) for r in recs)
                out.append((p, offset, got, consumer.position(tp)))
    finally:
        consumer.close(autocommit=False)
    return out


def test_same_records_as_kafka_python(kafka_broker: str) -> None:
    cfg = config(kafka_broker)
    topic = f"lean.{uuid.uuid4().hex[:8]}"
    ensure_topics(cfg, kafka_broker, extra={topic: {"num_partitions": 2, "replication_factor": 1}})
    plain = make_producer(cfg.kafka, kafka_broker, linger_ms=0, batch_size=4096)
    gzip = make_producer(cfg.kafka, kafka_broker, compression_type="gzip", linger_ms=20)
    for i in range(1500):
        producer = gzip if (i // 300) % 2 else plain
        key = None if i % 5 == 0 else b"user-%d" % i
        value = (
            None if i % 97 == 1 and key else (b"x" * 200_000 if i % 250 == 1 else b"v%d" % i * 20)
        )
        headers = [("h", b"%d" % i), ("empty", b"")] if i % 7 == 0 else []
        producer.send(topic, key=key, value=value, headers=headers, partition=i % 2)
    for producer in (plain, gzip):
        producer.flush(timeout=60)
        producer.close()
    script = [(0, 10_000), (123, 5), (700, 50), (3, 1), (745, 400), (2_000, 10)]
    for max_records in (1, 37, 500):
        stock = read(cfg, kafka_broker, topic, [0, 1], script, lean=False, max_records=max_records)
        lean = read(cfg, kafka_broker, topic, [0, 1], script, lean=True, max_records=max_records)
        assert lean == stock
    assert len(stock[0][2]) == 750 and stock[0][3] == 750  # the first step read all of p0


def test_transactions_committed_and_aborted(kafka_broker: str) -> None:
    cfg = config(kafka_broker)
    topic = f"lean-txn.{uuid.uuid4().hex[:8]}"
    ensure_topics(cfg, kafka_broker, extra={topic: {"num_partitions": 1, "replication_factor": 1}})
    producer: Any = make_producer(
        cfg.kafka, kafka_broker, transactional_id=f"t-{uuid.uuid4().hex[:8]}"
    )
    producer.init_transactions()
    plain = make_producer(cfg.kafka, kafka_broker)
    for round_ in range(6):
        producer.begin_transaction()
        for i in range(40):
            producer.send(topic, key=b"t%d" % round_, value=b"%d-%d" % (round_, i))
        producer.flush()
        plain.send(topic, value=b"between %d" % round_).get(timeout=30)
        if round_ % 3 == 1:
            producer.abort_transaction()
        else:
            producer.commit_transaction()
    producer.close()
    plain.close()
    script = [(0, 10_000), (30, 70), (41, 5), (90, 100)]
    for isolation in ("read_uncommitted", "read_committed"):
        stock = read(cfg, kafka_broker, topic, [0], script, lean=False, isolation_level=isolation)
        lean = read(cfg, kafka_broker, topic, [0], script, lean=True, isolation_level=isolation)
        assert lean == stock
        values = [v for _, _, _, v in stock[0][2]]
        aborted = [v for v in values if v is not None and v.startswith((b"1-", b"4-"))]
        assert len(aborted) == (0 if isolation == "read_committed" else 80)
        assert len(values) == (166 if isolation == "read_committed" else 246)


def test_compacted_topic_offset_gaps(kafka_broker: str) -> None:
    """The log cleaner removes overwritten keys: offsets with gaps, batches emptied."""
    cfg = config(kafka_broker)
    topic = f"lean-compact.{uuid.uuid4().hex[:8]}"
    spec = {
        "num_partitions": 1,
        "replication_factor": 1,
        "configs": {
            "cleanup.policy": "compact",
            "segment.ms": "100",
            "min.cleanable.dirty.ratio": "0.01",
            "delete.retention.ms": "100",
        },
    }
    ensure_topics(cfg, kafka_broker, extra={topic: spec})
    producer = make_producer(cfg.kafka, kafka_broker, linger_ms=0)
    n = 0
    for i in range(600):
        producer.send(topic, key=b"k%d" % (i % 50 if i % 3 else i), value=b"%d" % i)
        n += 1
    producer.flush()
    consumer: Any = make_consumer(cfg.kafka, kafka_broker, group_id=None)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    deadline = time.monotonic() + 40
    compacted = False
    while time.monotonic() < deadline and not compacted:
        time.sleep(0.5)
        producer.send(topic, key=b"roll", value=b"%d" % n).get(timeout=10)  # rolls the segment
        n += 1
        consumer.seek_to_beginning(tp)
        got = 0
        while consumer.position(tp) < 600:
            got += sum(len(r) for r in consumer.poll(timeout_ms=200).values())
        compacted = got < 600
    consumer.close(autocommit=False)
    producer.close()
    if not compacted:
        pytest.skip("the broker's log cleaner did not run within 40 s")
    script = [(0, 10_000), (1, 3), (17, 40), (301, 7), (599, 10)]
    for max_records in (1, 13):
        # The cleaner may run again between two reads: compare a lean read with stock reads
        # on both sides of it that agree with each other.
        stock: list[Any] = []
        lean: list[Any] = []
        after: list[Any] = [None]
        for _ in range(10):
            stock = read(cfg, kafka_broker, topic, [0], script, lean=False, max_records=max_records)
            lean = read(cfg, kafka_broker, topic, [0], script, lean=True, max_records=max_records)
            after = read(cfg, kafka_broker, topic, [0], script, lean=False, max_records=max_records)
            if after == stock:
                break
            time.sleep(1.0)
        assert stock == after, "the log cleaner kept changing the topic"
        assert lean == stock
    offsets = [o for _, o, _, _ in stock[0][2]]
    assert len(offsets) < n and offsets != list(range(len(offsets)))  # gaps


def test_daemon_learns_the_same_from_lean_records(
    kafka_broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon on lean records (its default) and on kafka-python's records: same counts,
    same join, same policy statistics."""
    run = uuid.uuid4().hex[:8]
    lean_cfg = scale_config(kafka_broker, run, tmp_path, "lean", share=False, group=f"l-{run}")
    stock_cfg = scale_config(kafka_broker, run, tmp_path, "stock", share=False, group=f"s-{run}")
    ensure_topics(lean_cfg, kafka_broker)
    produce_simulated(lean_cfg, kafka_broker, n_requests=500, slate_size=5, seed=5)
    answers: list[bool] = []

    def recorded(consumer: Any) -> bool:
        answers.append(use_lean_records(consumer))
        return answers[-1]

    monkeypatch.setattr(daemon_module, "use_lean_records", recorded)
    lean = Daemon(lean_cfg, servers=kafka_broker)
    lean.run(threading.Event(), exit_when_idle_ms=3000)
    assert answers and all(answers)

    def refused(consumer: Any) -> bool:
        return False

    monkeypatch.setattr(daemon_module, "use_lean_records", refused)
    stock = Daemon(stock_cfg, servers=kafka_broker)
    stock.run(threading.Event(), exit_when_idle_ms=3000)
    assert lean.stats.events == stock.stats.events > 0
    assert lean.stats.dead_letters == stock.stats.dead_letters
    for key in ("impressions", "outcomes", "closed", "feedback_rows"):
        assert lean.state.counters.get(key, 0) == stock.state.counters.get(key, 0), key
    assert join_counters(lean.state, cut_dependent=False) == join_counters(
        stock.state, cut_dependent=False
    )
    assert_same_statistics(lean, stock, [lean])
