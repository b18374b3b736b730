"""The Kafka side of partition handoffs: publish partition records, read the newest ones back.

``streaming.worker.handoff`` decides what moves and encodes it; this module sends the records to the
compacted handoff topic (keyed by group and partition number) and reads that topic to its end
for the newest record of each partition a worker was assigned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from streaming.kafka.clients import HANDOFF_MAX_BYTES, TopicPartition
from streaming.worker import checkpoint, handoff

log = logging.getLogger(__name__)

__all__ = ["committed", "publish", "read_newest"]


def publish(
    producer: Any, topic: str, group: str, records: Iterable[handoff.PartitionRecord], now_ms: int
) -> int:
    """Send each record to ``topic``; returns how many, once the broker has them all."""
    sent = 0
    for record in records:
        value = handoff.encode(record, group, now_ms)
        if len(value) > HANDOFF_MAX_BYTES:
            raise RuntimeError(
                f"partition {record.partition}'s open windows take {len(value):,} bytes "
                f"compressed, over the handoff limit of {HANDOFF_MAX_BYTES:,}: lower "
                "join.max_open or log.max_candidates"
            )
        producer.send(topic, key=handoff.key(group, record.partition), value=value)
        sent += 1
    producer.flush(timeout=60)
    return sent


def read_newest(
    consumer: Any,
    topic: str,
    topic_partitions: Iterable[int],
    group: str,
    partitions: Iterable[int],
    timeout_s: float = 60.0,
) -> dict[int, handoff.PartitionRecord]:
    """The newest record of each of ``partitions`` on ``topic`` (damaged ones logged, skipped).

    ``consumer`` is assigned ``topic``'s partitions ``topic_partitions``; it is read from the
    beginning to the end offsets of when the call began.
    """
    wanted = {handoff.key(group, p): p for p in partitions}
    if not wanted:
        return {}
    tps = [TopicPartition(topic, q) for q in topic_partitions]
    consumer.seek_to_beginning(*tps)
    ends = consumer.end_offsets(tps)
    newest: dict[int, bytes | None] = {}
    deadline = time.monotonic() + timeout_s
    while any(consumer.position(tp) < ends[tp] for tp in tps):
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not read {topic} to its end")
        for recs in consumer.poll(timeout_ms=200, max_records=100).values():
            for r in recs:
                if r.key in wanted:
                    newest[wanted[r.key]] = r.value  # None: a tombstone
    out: dict[int, handoff.PartitionRecord] = {}
    for p, value in newest.items():
        if value is None:
            continue
        try:
            out[p] = handoff.decode(value, f"{topic} record of partition {p}")
        except checkpoint.CheckpointError as exc:
            log.error("ignoring a damaged handoff record: %s", exc)
    return out


def committed(
    consumer: Any, pair: tuple[str, str], numbers: Iterable[int]
) -> dict[int, handoff.Commit]:
    """Each partition's committed offsets on both topics of ``pair``, with the checkpoint they
    name (``handoff.commit_metadata``)."""
    out: dict[int, handoff.Commit] = {}
    for p in numbers:
        got = [consumer.committed(TopicPartition(t, p), metadata=True) for t in pair]
        meta = next((g.metadata for g in got if g is not None), None)
        lineage, seq = handoff.parse_commit_metadata(meta)
        offsets = (
            None if got[0] is None else int(got[0].offset),
            None if got[1] is None else int(got[1].offset),
        )
        out[p] = handoff.Commit(offsets, lineage, seq)
    return out
