"""What the daemon writes to Kafka besides its state: dead letters, late rows, joined records.

Dead letters and late rows are at-least-once: the daemon's producer (``streaming.worker.outbound``)
sends each again until the broker acknowledges it, and a checkpoint waits for those
acknowledgements, so a replay after a crash may send some again but none is lost. A dead letter
is keyed by where it came from, ``topic/partition/offset`` (also in its ``encore.source``
header), so one sent again carries the same key and a reader, or a compacted topic, keeps one
per key.

A dead letter carries the original message's size and SHA-256 and, when they fit the topic,
its bytes; a message too large for that is cut to a prefix and the letter says
``truncated: true``, so one huge bad message can neither be refused nor take the side outputs
after it down.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import msgspec

from streaming import join
from streaming.core import JoinedRecords
from streaming.events import Reject
from streaming.kafka.polled import Polled
from streaming.worker.parquet_log import to_table

__all__ = [
    "LATE_IMPRESSION_KINDS",
    "LATE_OUTCOME_KINDS",
    "REASON_MAX_CHARS",
    "dead_letter",
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


REASON_MAX_CHARS = 1_000
"""The longest reason a truncated dead letter keeps."""


def dead_letter(
    r: Reject, source: tuple[str, int, int], *, max_bytes: int | None, prefix_bytes: int
) -> bytes:
    """``r`` as one JSON dead letter, of at most ``max_bytes`` (None: any size) where it can be.

    Fields: ``code``, ``reason``, the source's ``topic``, ``partition`` and ``offset``, the
    original's ``size`` and ``sha256`` (hex), ``truncated`` and ``raw_b64`` (the original bytes,
    base64). When the whole would take more than ``max_bytes``, ``raw_b64`` holds the first
    ``prefix_bytes`` of them at most (fewer if those do not fit), the reason is cut to
    ``REASON_MAX_CHARS`` and ``truncated`` is true.
    """
    src_topic, partition, offset = source
    letter: dict[str, Any] = {
        "code": r.code,
        "reason": r.reason,
        "topic": src_topic,
        "partition": partition,
        "offset": offset,
        "size": len(r.raw),
        "sha256": hashlib.sha256(r.raw).hexdigest(),
        "truncated": False,
        "raw_b64": "",
    }
    whole = len(msgspec.json.encode(letter)) + _b64_len(len(r.raw))
    if max_bytes is None or whole <= max_bytes:
        letter["raw_b64"] = base64.b64encode(r.raw).decode()
        return msgspec.json.encode(letter)
    letter["reason"] = r.reason[:REASON_MAX_CHARS]
    letter["truncated"] = True
    room = max_bytes - len(msgspec.json.encode(letter))
    keep = max(0, min(prefix_bytes, len(r.raw), room // 4 * 3))
    letter["raw_b64"] = base64.b64encode(r.raw[:keep]).decode()
    return msgspec.json.encode(letter)


def _b64_len(n: int) -> int:
    return (n + 2) // 3 * 4


def send_dead_letters(
    producer: Any, topic: str, rejects: list[Reject], where: Polled, *, prefix_bytes: int = 65_536
) -> None:
    """Each reject as one dead letter (``dead_letter``) keyed by its source.

    ``producer`` is a :class:`streaming.worker.outbound.Outbound` (or any object whose ``send`` takes
    ``shrink``): a letter too large for ``topic`` goes truncated, with at most
    ``prefix_bytes`` of the original.
    """
    for r in rejects:
        src = where.source(r.row)
        source = "/".join(map(str, src)).encode()

        def fit(budget: int, r: Reject = r, src: tuple[str, int, int] = src) -> bytes:
            return dead_letter(r, src, max_bytes=budget, prefix_bytes=prefix_bytes)

        producer.send(
            topic,
            key=source,
            value=dead_letter(r, src, max_bytes=None, prefix_bytes=prefix_bytes),
            headers=[("encore.code", r.code.encode()), ("encore.source", source)],
            shrink=fit,
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
