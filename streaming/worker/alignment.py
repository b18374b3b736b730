"""Event-time alignment of the two streams a daemon reads: pause the one that reads ahead.

Kafka serves a backlog (a restart, a new consumer group, a replay) by bytes, not by event time:
each fetch returns up to ``max_partition_fetch_bytes`` of every partition it asks for. An
impression is about ten times the size of an outcome, so a fetch of outcomes spans about twice
the event time of a fetch of impressions, and read as fast as Kafka serves them, the outcomes run
further and further ahead. The join holds every outcome whose impression it has not seen yet in
its pending buffer; once that buffer is full it rejects the oldest (``OUTCOME_OVERFLOW``), and
they are never learned from. A daemon reading a long backlog unaligned loses a sizeable share
of its outcomes that way.

So the daemon keeps the newest event time it has read from each partition of each topic, and
pauses a partition (``KafkaConsumer.pause``: kafka-python parks what it already fetched and
fetches no more) while it is more than ``align_ms`` of event time ahead of the same partition
number of the other topic (impressions and outcomes are keyed alike, so partition ``p`` of one
holds the other's requests), until the other catches up. The one behind is never paused.

A pause waits only on a partition that is delivering: one that may have unread records (its
last known high watermark above the next offset to read, or either not known yet) and whose
newest event time moved on within ``stall_ms`` (or that began to be read within ``stall_ms``): a
partition that returns only malformed or older events does not count. A partition that stops
delivering (read to its end, or its remaining offsets hold no records, such as transaction
markers) lifts the pause within ``stall_ms``, so alignment can slow a read but never stop it.

Pausing never drops or reorders a record: the join's results do not depend on how the two
streams interleave (``streaming.join``), only its capacity limits do, and keeping the streams
close in event time is what keeps the pending buffer far from its limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Reading", "to_pause"]


@dataclass(frozen=True)
class Reading:
    """What the daemon knows of one topic partition it reads.

    Attributes:
        newest_ts: the newest event time read from it (None: nothing read yet).
        next_offset: the next offset to read (None: unknown, nothing read yet).
        highwater: its last known high watermark (None: not fetched yet).
        delivered_ms: when a poll last moved its newest event time on, or when the daemon began
            to read it if none has yet (None: not read at all); a monotonic clock.
    """

    newest_ts: int | None = None
    next_offset: int | None = None
    highwater: int | None = None
    delivered_ms: int | None = None

    def delivering(self, now_ms: int, stall_ms: int) -> bool:
        """Whether it may have records left to read and delivered within ``stall_ms``."""
        if self.delivered_ms is None or now_ms - self.delivered_ms >= stall_ms:
            return False
        return (
            self.next_offset is None or self.highwater is None or self.next_offset < self.highwater
        )


def to_pause(
    impressions: Mapping[int, Reading],
    outcomes: Mapping[int, Reading],
    *,
    now_ms: int,
    align_ms: int,
    stall_ms: int,
) -> tuple[frozenset[int], frozenset[int]]:
    """The partitions of each topic to hold paused now: ``(impressions, outcomes)``.

    ``impressions`` and ``outcomes`` map each partition number this worker reads to what it knows
    of it. A partition is paused while its newest event time is more than ``align_ms`` ahead of
    the other topic's same partition number, and that one is delivering. At most one of the two
    is ever paused, and never the one behind.

    >>> live = Reading(newest_ts=1_000, next_offset=5, highwater=9, delivered_ms=0)
    >>> ahead = Reading(newest_ts=60_000, next_offset=50, highwater=90, delivered_ms=0)
    >>> to_pause({0: live}, {0: ahead}, now_ms=100, align_ms=10_000, stall_ms=2_000)
    (frozenset(), frozenset({0}))
    >>> to_pause({0: live}, {0: ahead}, now_ms=5_000, align_ms=10_000, stall_ms=2_000)
    (frozenset(), frozenset())
    """
    pause_imp: set[int] = set()
    pause_out: set[int] = set()
    if align_ms <= 0:
        return frozenset(), frozenset()
    for p in impressions.keys() & outcomes.keys():
        imp, out = impressions[p], outcomes[p]
        if _ahead(out, imp, align_ms) and imp.delivering(now_ms, stall_ms):
            pause_out.add(p)
        elif _ahead(imp, out, align_ms) and out.delivering(now_ms, stall_ms):
            pause_imp.add(p)
    return frozenset(pause_imp), frozenset(pause_out)


def _ahead(a: Reading, b: Reading, align_ms: int) -> bool:
    """Whether ``a`` has been read more than ``align_ms`` of event time past ``b``."""
    if a.newest_ts is None:
        return False
    return b.newest_ts is None or a.newest_ts - b.newest_ts > align_ms
