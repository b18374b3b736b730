"""What the daemon writes to Kafka besides its state: dead letters, late rows, joined records.

Dead letters and late rows are at-least-once: a replay after a crash may send them again. A
dead letter is keyed by where it came from, ``topic/partition/offset`` (also in its
``encore.source`` header), so one sent again carries the same key and a reader, or a compacted
topic, keeps one per key.
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from streaming import join
from streaming.events import Reject
from streaming.parquet_log import JoinedRecords, to_table
from streaming.polled import Polled

__all__ = [
    "LATE_IMPRESSION_KINDS",
    "LATE_OUTCOME_KINDS",
    "send_dead_letters",
    "send_joined",
    "send_late",
]

LATE_IMPRESSION_KINDS = {
    join.IMPRESSION_LATE: "impression_late",
    join.IMPRESSION_DUPLICATE: "impression_duplicate",
}
"""The ``kind`` of a late row, by the join's reason code (an unknown code is written as is)."""
LATE_OUTCOME_KINDS = {
    join.OUTCOME_LATE: "outcome_late",
    join.OUTCOME_CLOSED: "outcome_after_window",
    join.OUTCOME_ORPHAN: "outcome_orphan",
    join.OUTCOME_OVERFLOW: "outcome_overflow",
}


def send_dead_letters(producer: Any, topic: str, rejects: list[Reject], where: Polled) -> None:
    """Each reject as one JSON message: its code, reason, source and original bytes (base64)."""
    for r in rejects:
        src_topic, partition, offset = where.source(r.row)
        source = f"{src_topic}/{partition}/{offset}".encode()
        value = msgspec.json.encode(
            {
                "code": r.code,
                "reason": r.reason,
                "topic": src_topic,
                "partition": partition,
                "offset": offset,
                "raw_b64": base64.b64encode(r.raw).decode(),
            }
        )
        producer.send(
            topic,
            key=source,
            value=value,
            headers=[("encore.code", r.code.encode()), ("encore.source", source)],
        )


def send_late(
    producer: Any, topic: str, imps: join.RejectedImpressions, outs: join.RejectedOutcomes
) -> list[str]:
    """Each rejected impression and outcome as one JSON message; returns their kinds, in order."""
    kinds: list[str] = []
    for key, ts, reason in zip(
        imps.request_key.tolist(), imps.ts_ms.tolist(), imps.reason.tolist(), strict=True
    ):
        kind = LATE_IMPRESSION_KINDS.get(reason, str(reason))
        producer.send(
            topic, value=msgspec.json.encode({"kind": kind, "request_key": key, "ts": ts})
        )
        kinds.append(kind)
    for key, ts, pos, reason in zip(
        outs.request_key.tolist(),
        outs.ts_ms.tolist(),
        outs.position.tolist(),
        outs.reason.tolist(),
        strict=True,
    ):
        kind = LATE_OUTCOME_KINDS.get(reason, str(reason))
        producer.send(
            topic,
            value=msgspec.json.encode(
                {"kind": kind, "request_key": key, "ts": ts, "position": pos}
            ),
        )
        kinds.append(kind)
    return kinds


def send_joined(producer: Any, topic: str, records: JoinedRecords) -> None:
    """Each joined record as one JSON message (the Parquet log's columns), for live OPE."""
    for row in to_table(records).to_pylist():
        producer.send(topic, key=str(row["user_id"]).encode(), value=msgspec.json.encode(row))
