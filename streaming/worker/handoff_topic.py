"""The Kafka side of partition handoffs: publish partition records, read the newest ones back.

``streaming.worker.handoff`` decides what moves and encodes it; this module sends the records to the
compacted handoff topic (keyed by group and partition number) and reads that topic to its end
for the newest record of each partition a worker was assigned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from streaming.kafka.clients import (
    HANDOFF_MAX_BYTES,
    AuthorizationError,
    KafkaError,
    TopicPartition,
)
from streaming.worker import checkpoint, handoff

log = logging.getLogger(__name__)

__all__ = ["committed", "publish", "read_newest"]


def publish(
    producer: Any,
    topic: str,
    group: str,
    records: Iterable[handoff.PartitionRecord],
    now_ms: int,
    *,
    reopen: Callable[[], Any] | None = None,
) -> int:
    """Send each record to ``topic``; returns how many, once the broker has them all.

    With ``reopen`` (which closes ``producer`` and returns a new one of the same transactional
    id, its transactions initialised), ``producer`` is transactional and the records go out in
    one transaction: a reader of committed records (``read_newest``) sees all of them or none,
    whenever the worker stops. A transaction that fails is aborted and sent again (a broker away
    for a while); one the broker ended (it aborts a transaction open longer than its timeout, and
    fences the producer) is sent again from a new producer. An authorisation refusal raises.
    """
    values = []
    for record in records:
        value = handoff.encode(record, group, now_ms)
        if len(value) > HANDOFF_MAX_BYTES:
            raise RuntimeError(
                f"partition {record.partition}'s open windows take {len(value):,} bytes "
                f"compressed, over the handoff limit of {HANDOFF_MAX_BYTES:,}: lower "
                "join.max_open or log.max_candidates (with the session reward model, "
                "reward.history_listeners or reward.history_length)"
            )
        values.append((handoff.key(group, record.partition), value))
    if reopen is None:
        for key, value in values:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=60)
        return len(values)
    tries = 0
    while True:
        tries += 1
        try:
            producer.begin_transaction()
            for key, value in values:
                producer.send(topic, key=key, value=value)
            producer.flush()
            producer.commit_transaction()
            return len(values)
        except AuthorizationError:
            raise
        except KafkaError as exc:
            log.warning(
                "sending %d partition records to %s failed (%s: %s); sending them again (try %d)",
                len(values),
                topic,
                type(exc).__name__,
                exc,
                tries,
            )
            time.sleep(min(5.0, 0.5 * tries))
            try:
                producer.abort_transaction()
            except KafkaError:  # fenced or failed for good: start over with a new producer
                producer = reopen()


def read_newest(
    consumer: Any,
    topic: str,
    topic_partitions: Iterable[int],
    group: str,
    partitions: Iterable[int],
    timeout_s: float = 60.0,
) -> dict[int, handoff.PartitionRecord]:
    """The newest record of each of ``partitions`` on ``topic`` (damaged ones logged, skipped).

    ``consumer`` is assigned ``topic``'s partitions ``topic_partitions`` and reads committed
    records only (``isolation_level="read_committed"``); it is read from the beginning to the
    end of what was written when the call began. A transaction still open there (a worker
    killed while it sent its records) holds the reading back until it ends: the broker aborts it
    after its timeout, or the worker's next run does at its start. Reading only what came before
    it would miss the records other workers wrote after it.
    """
    wanted = {handoff.key(group, p): p for p in partitions}
    if not wanted:
        return {}
    tps = [TopicPartition(topic, q) for q in topic_partitions]
    consumer.seek_to_beginning(*tps)
    ends = consumer.end_offsets(tps)  # the last stable offsets: no open transaction before them
    highwater = getattr(consumer, "highwater", None)  # None: a client that cannot tell
    written: dict[TopicPartition, int] = {}  # the high watermarks: every record written
    newest: dict[int, bytes | None] = {}
    deadline = time.monotonic() + timeout_s
    warned = False
    while True:
        if highwater is not None:
            for tp in tps:
                if tp not in written and (hw := highwater(tp)) is not None:
                    written[tp] = int(hw)
        targets = {tp: max(ends[tp], written.get(tp, 0)) for tp in tps}
        behind = [tp for tp in tps if consumer.position(tp) < targets[tp]]
        if not behind and (highwater is None or len(written) == len(tps)):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"could not read {topic} to its end in {timeout_s:.0f} s"
                + (" (a transaction there stays open)" if warned else "")
            )
        if not warned and any(consumer.position(tp) >= ends[tp] for tp in behind):
            warned = True
            log.warning(
                "a transaction of partition records on %s is still open (a worker stopped while "
                "it sent them): waiting until it ends",
                topic,
            )
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
