"""Event-time alignment applied to a live consumer: what the daemon read, what it pauses.

``streaming.worker.alignment`` decides, from per-partition readings, which partitions read too far ahead in
event time; :class:`Aligner` keeps those readings as the polls come in (next offsets, newest
event times, high watermarks, when each last delivered) and pauses and resumes partitions of
the group consumer accordingly. It only ever touches the pauses it made itself.

Its clock counts polling time only: each gap between two calls counts up to ``max_gap_ms``, so
a daemon busy elsewhere (a checkpoint, a slow step, a collection) gave no partition a chance to
deliver meanwhile, and that time must not make the one waited on look stalled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from streaming.kafka.clients import TopicPartition
from streaming.worker import alignment as align

# A partition that another waits on (streaming.worker.alignment) but whose newest event time has not moved
# on for this long no longer holds the other back: alignment may slow a read, never stop it.
ALIGN_STALL_MS = 2_000
# Alignment's clock counts the time between two polls up to this much: a daemon busy elsewhere
# (a checkpoint, a slow step, a collection) gave no partition a chance to deliver meanwhile, so
# that time must not make the one waited on look stalled.
ALIGN_MAX_GAP_MS = 500

__all__ = ["ALIGN_MAX_GAP_MS", "ALIGN_STALL_MS", "Aligner"]


class Aligner:
    """Per-partition readings of the two topics and the pauses alignment holds on a consumer.

    Args:
        impressions, outcomes: the two topics (partition ``p`` of one holds the other's requests).
        align_ms: how far ahead in event time a partition may read (``kafka.align_ms``; 0: off).
        stall_ms: see ``ALIGN_STALL_MS``.
        max_gap_ms: see ``ALIGN_MAX_GAP_MS``.
    """

    def __init__(
        self,
        impressions: str,
        outcomes: str,
        align_ms: int,
        *,
        stall_ms: int = ALIGN_STALL_MS,
        max_gap_ms: int = ALIGN_MAX_GAP_MS,
    ) -> None:
        self.topics = (impressions, outcomes)
        self.align_ms = align_ms
        self.stall_ms = stall_ms
        self.max_gap_ms = max_gap_ms
        self.off = False  # set when kafka-python is not the version serve_parked knows
        self.reading: dict[tuple[str, int], align.Reading] = {}  # per partition
        self.clock = 0  # ms of polling, each gap capped at max_gap_ms
        self.last: int | None = None  # ticks at the last update
        self.paused: set[Any] = set()  # the TopicPartitions alignment holds paused
        self.reassigned: set[tuple[str, int]] = set()  # assigned since the last update

    @property
    def active(self) -> bool:
        return bool(self.align_ms) and not self.off

    def assigned(self, tps: Iterable[TopicPartition]) -> None:
        """``tps`` were (re)assigned: their positions may have moved (a handoff, a seek back)."""
        self.reassigned.update((tp.topic, tp.partition) for tp in tps)

    def new_consumer(self) -> None:
        """A new consumer starts with nothing paused."""
        self.paused = set()

    def update(
        self,
        consumer: Any,
        ticks: int,
        offsets: Mapping[tuple[str, int], int],
        *read: tuple[str, npt.NDArray[np.int64], npt.NDArray[np.int32]],
    ) -> int:
        """Pause the partitions read too far ahead in event time, resume the rest.

        ``ticks``: the daemon's monotonic ms now; ``offsets``: the next offset of each partition
        the poll returned records of; ``read``: per topic, the event times of the events that
        decoded and their partitions. Returns how many partitions it newly paused.
        """
        if not self.active:
            return 0
        if self.last is not None:
            self.clock += min(max(ticks - self.last, 0), self.max_gap_ms)
        self.last = ticks
        now = self.clock
        owned = consumer.assignment()
        # (re)assigned since the last call: its position may have moved (a handoff, a seek back),
        # so what was read of it before says nothing now
        reassigned, self.reassigned = self.reassigned, set()
        reading = {
            tp: r
            for tp, r in self.reading.items()
            if TopicPartition(*tp) in owned and tp not in reassigned
        }
        for tp, nxt in offsets.items():
            reading[tp] = replace(reading.get(tp, align.Reading(delivered_ms=now)), next_offset=nxt)
        # A partition delivers when its event time moves on: one that returns only dead letters
        # or older events does not help the other catch up, and must not hold it paused.
        for topic, ts, part in read:
            for p in np.unique(part).tolist():
                newest = int(ts[part == p].max())
                r = reading.get((topic, p), align.Reading())
                if r.newest_ts is None or newest > r.newest_ts:
                    reading[(topic, p)] = replace(r, newest_ts=newest, delivered_ms=now)
        for tp in owned:
            key = (tp.topic, tp.partition)
            r = reading.get(key) or align.Reading(delivered_ms=now)  # began to read it now
            reading[key] = replace(r, highwater=consumer.highwater(tp))
        self.reading = reading
        imp, out = self.topics
        by_part = [{p: r for (t, p), r in reading.items() if t == topic} for topic in (imp, out)]
        pause_imp, pause_out = align.to_pause(
            by_part[0], by_part[1], now_ms=now, align_ms=self.align_ms, stall_ms=self.stall_ms
        )
        want = {TopicPartition(imp, p) for p in pause_imp} | {
            TopicPartition(out, p) for p in pause_out
        }
        want &= owned
        # only what alignment paused and is paused still (a partition assigned again starts
        # unpaused); pauses made by anyone else stay as they are
        held = self.paused & consumer.paused()
        if want - held:
            consumer.pause(*(want - held))
        if held - want:
            consumer.resume(*(held - want))
        self.paused = want
        return len(want - held)
