"""When the worker's loop does what it does besides polling: checkpoints, snapshots, ticks.

``Schedule`` keeps the loop's clocks (all on the monotonic ``ticks`` clock, in ms) and answers
"is it due?"; the daemon does the work and tells the schedule it did. Pure bookkeeping, no I/O.

Example:
    >>> s = Schedule(start_ms=0, checkpoint_every_ms=1_000, checkpoint_every_events=100,
    ...              snapshot_every_ms=500, tick_every_ms=200)
    >>> s.checkpoint_due(now_ms=999, events=99), s.checkpoint_due(now_ms=999, events=100)
    (False, True)
    >>> s.checkpointed(now_ms=999, events=100); s.checkpoint_due(now_ms=1_500, events=150)
    False
    >>> s.snapshot_due(500), s.tick_due(199)
    (True, False)
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Schedule"]


@dataclass
class Schedule:
    """The loop's timers.

    Attributes:
        start_ms: when the loop started (every timer starts there).
        checkpoint_every_ms: a checkpoint at least this often while events arrive.
        checkpoint_every_events: and at least every this many events.
        snapshot_every_ms: a policy snapshot this often.
        tick_every_ms: metrics, status, watchdogs and the caller's ``on_tick`` this often.
    """

    start_ms: int
    checkpoint_every_ms: int
    checkpoint_every_events: int
    snapshot_every_ms: int
    tick_every_ms: int
    last_checkpoint_ms: int = field(init=False)
    events_at_checkpoint: int = field(init=False, default=0)
    last_snapshot_ms: int = field(init=False)
    last_tick_ms: int = field(init=False)
    last_data_ms: int = field(init=False)  # records arrived, or the idle check last looked
    last_got_ms: int = field(init=False)  # records arrived

    def __post_init__(self) -> None:
        t = self.start_ms
        self.last_checkpoint_ms = self.last_snapshot_ms = self.last_tick_ms = t
        self.last_data_ms = self.last_got_ms = t

    def start_counting(self, events: int) -> None:
        """The event count the first checkpoint interval starts from."""
        self.events_at_checkpoint = events

    def got_records(self, now_ms: int) -> None:
        self.last_data_ms = self.last_got_ms = now_ms

    def idle_for(self, now_ms: int) -> int:
        """How long no records arrived (since the idle check last looked)."""
        return now_ms - self.last_data_ms

    def looked_idle(self, now_ms: int) -> None:
        self.last_data_ms = now_ms

    def checkpoint_due(self, now_ms: int, events: int) -> bool:
        return (
            events - self.events_at_checkpoint >= self.checkpoint_every_events
            or now_ms - self.last_checkpoint_ms >= self.checkpoint_every_ms
        )

    def checkpointed(self, now_ms: int, events: int) -> None:
        self.events_at_checkpoint, self.last_checkpoint_ms = events, now_ms

    def snapshot_due(self, now_ms: int) -> bool:
        return now_ms - self.last_snapshot_ms >= self.snapshot_every_ms

    def snapshotted(self, now_ms: int) -> None:
        self.last_snapshot_ms = now_ms

    def tick_due(self, now_ms: int) -> bool:
        return now_ms - self.last_tick_ms >= self.tick_every_ms

    def ticked(self, now_ms: int) -> None:
        self.last_tick_ms = now_ms
