"""Against the real local broker: a checkpoint's partition records reach their readers all
together or not at all, whenever the worker that sends them is killed."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from streaming.config import Config
from streaming.core import init
from streaming.kafka.clients import TopicPartition, ensure_topics, make_consumer
from streaming.worker import handoff
from streaming.worker import handoff_topic as handoff_io
from streaming.worker.connections import open_records
from tests.streaming.core.test_step import engine

pytestmark = pytest.mark.integration

PAIR = ("imps", "outs")

# Sends the values in files argv[3:] as one transaction of transactional id argv[2], keyed by
# the file names, then dies like a killed worker: the transaction stays open.
_KILLED_MID_TRANSACTION = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from kafka import KafkaProducer
    servers, topic, tid, timeout_ms, *files = sys.argv[1:]
    p = KafkaProducer(bootstrap_servers=servers, transactional_id=tid, acks="all",
                      transaction_timeout_ms=int(timeout_ms), max_request_size=8 << 20)
    p.init_transactions()
    p.begin_transaction()
    for f in files:
        p.send(topic, key=Path(f).name.replace("%", "/").encode(), value=Path(f).read_bytes())
    p.flush()
    os._exit(9)
    """
)


def setup(servers: str) -> tuple[Config, str]:
    run = uuid.uuid4().hex[:8]
    cfg = Config.load(
        env={},
        overrides=[
            f"kafka.bootstrap_servers={servers}",
            f"kafka.group_id=g-{run}",
            f"kafka.client_id=handoff-{run}",
        ],
    )
    cfg = dataclasses.replace(cfg, topics=cfg.topics.for_run(run))
    ensure_topics(cfg, servers)
    return cfg, cfg.topics.handoff


def records(sequence: int, at: int) -> list[handoff.PartitionRecord]:
    """Partition records of partitions 0 and 1 at offsets ``at`` (checkpoint ``sequence``)."""
    state = init(engine())
    state = state._replace(offsets={(t, p): at for t in PAIR for p in (0, 1)})
    return [handoff.extract(state, p, PAIR, "w", lineage="L", sequence=sequence) for p in (0, 1)]


def read(cfg: Config, servers: str, topic: str, timeout_s: float = 60.0) -> dict[int, int]:
    """Each partition's newest record on ``topic`` as a reader of committed records sees it:
    partition -> its checkpoint sequence."""
    consumer = make_consumer(cfg.kafka, servers, group_id=None, isolation_level="read_committed")
    try:
        consumer.assign([TopicPartition(topic, 0)])
        got = handoff_io.read_newest(consumer, topic, [0], cfg.kafka.group_id, [0, 1], timeout_s)
    finally:
        consumer.close(autocommit=False)
    return {p: r.sequence for p, r in got.items()}


def first_checkpoint_published(servers: str) -> tuple[Config, str, str]:
    """A fresh group and topics, with checkpoint 1's records committed by the worker whose
    transactional id is returned (with the config and the handoff topic)."""
    cfg, topic = setup(servers)
    tid = f"encore-{cfg.kafka.group_id}-w"
    writer = open_records(cfg, servers, tid)
    handoff_io.publish(
        writer, topic, cfg.kafka.group_id, records(1, at=10), 0, reopen=lambda: writer
    )
    writer.close()
    return cfg, topic, tid


def killed_mid_transaction(
    cfg: Config, servers: str, topic: str, tid: str, tmp: Path, timeout_ms: int
) -> None:
    files = []
    for r in records(2, at=20):
        f = tmp / handoff.key(cfg.kafka.group_id, r.partition).decode().replace("/", "%")
        f.write_bytes(handoff.encode(r, cfg.kafka.group_id, 0))
        files.append(str(f))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILLED_MID_TRANSACTION,
            servers,
            topic,
            tid,
            str(timeout_ms),
            *files,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 9, proc.stderr


def test_records_of_a_worker_killed_mid_transaction_are_never_read_and_its_next_run_frees_readers(
    kafka_broker: str, tmp_path: Path
) -> None:
    cfg, topic, tid = first_checkpoint_published(kafka_broker)
    assert read(cfg, kafka_broker, topic) == {0: 1, 1: 1}

    # Killed after both records of checkpoint 2 reached the broker, before their commit; then
    # another worker's record of partition 1 lands behind the open transaction.
    killed_mid_transaction(cfg, kafka_broker, topic, tid, tmp_path, timeout_ms=600_000)
    other = open_records(cfg, kafka_broker, f"encore-{cfg.kafka.group_id}-other")
    later = records(3, at=30)[1]._replace(lineage="M")
    handoff_io.publish(other, topic, cfg.kafka.group_id, [later], 0, reopen=lambda: other)
    other.close()

    # Behind an open transaction a reader sees nothing new: it waits, and says so.
    with pytest.raises(TimeoutError, match="transaction"):
        read(cfg, kafka_broker, topic, timeout_s=3)

    # The worker's next run (same transactional id) aborts it at its start: the readers see
    # checkpoint 1's records of partition 0, never checkpoint 2's, and the later record.
    started = time.monotonic()
    open_records(cfg, kafka_broker, tid).close()
    assert read(cfg, kafka_broker, topic) == {0: 1, 1: 3}
    assert time.monotonic() - started < 30


def test_a_transaction_nobody_ends_is_aborted_by_the_broker_and_readers_go_on(
    kafka_broker: str, tmp_path: Path
) -> None:
    cfg, topic, tid = first_checkpoint_published(kafka_broker)
    killed_mid_transaction(cfg, kafka_broker, topic, tid, tmp_path, timeout_ms=3_000)
    started = time.monotonic()
    assert read(cfg, kafka_broker, topic, timeout_s=60) == {0: 1, 1: 1}
    assert time.monotonic() - started < 30  # its timeout, then the broker's check each second
