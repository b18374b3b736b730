"""A worker's live counts, for the console, the status table and the metrics endpoint."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LIMITS", "Stats", "metrics_snapshot", "summary_line"]


@dataclass
class Stats:
    """Live counts for the console, the status table and the metrics endpoint."""

    started_ms: int = 0
    events: int = 0
    dead_letters: int = 0
    late: int = 0
    checkpoints: int = 0
    snapshots: int = 0
    last_checkpoint_ms: int = 0
    counters: dict[str, int] = field(default_factory=dict[str, int])
    events_by_topic: dict[str, int] = field(default_factory=dict[str, int])
    dead_by_code: dict[str, int] = field(default_factory=dict[str, int])
    late_by_kind: dict[str, int] = field(default_factory=dict[str, int])
    lag: dict[str, int] = field(default_factory=dict[str, int])  # per held partition
    held: int = 0  # partitions the group consumer holds, as of the last refresh
    deltas_published: int = 0
    deltas_merged: int = 0
    handoffs_published: int = 0  # partition records sent (revoke, or a restart's republish)
    handoffs_installed: int = 0  # partitions taken over with another worker's open windows
    partitions_started_fresh: int = 0  # taken over behind the commit: open windows lost
    rejoins: int = 0  # times the watchdog made the consumer rejoin (streaming.worker.liveness)
    consumer_restarts: int = 0  # stalled group consumers replaced (Daemon.restart_consumer)
    gc_collections: int = 0  # the poll loop's timed full collections (streaming.worker.gc_tuning)
    gc_seconds: float = 0.0  # wall seconds they took
    align_pauses: int = (
        0  # partitions paused for reading ahead in event time (streaming.worker.alignment)
    )
    side_pending: int = 0  # output records sent, not yet acknowledged (streaming.worker.outbound)
    side_resent: int = 0  # output records sent again after a timeout or a lost connection
    side_truncated: dict[str, int] = field(default_factory=dict[str, int])  # by topic
    side_refused: dict[str, int] = field(default_factory=dict[str, int])  # dropped, by topic
    broker_away_s: float = 0.0  # how long the broker has not answered (0: it answers)
    reward_by_policy: dict[str, tuple[float, int]] = field(
        default_factory=dict[str, tuple[float, int]]
    )


def summary_line(s: Stats, now_ms: int) -> str:
    """One console line: events and their rate since start, joins, dead letters, checkpoints,
    the partitions held and their lag (records left), rewards."""
    c = s.counters
    elapsed = max(now_ms - s.started_ms, 1) / 1000.0
    rewards = "  ".join(
        f"{name}={tot / max(cnt, 1):.3f} (n={cnt})"
        for name, (tot, cnt) in sorted(s.reward_by_policy.items())
    )
    away = f"  BROKER AWAY {s.broker_away_s:,.0f} s" if s.broker_away_s else ""
    refused = sum(s.side_refused.values())
    return (
        f"{s.events:,} events ({s.events / elapsed:,.0f}/s)  joined {c.get('joined', 0):,}  "
        f"closed {c.get('closed', 0):,}  dlq {s.dead_letters}  late {s.late}  "
        f"ckpt {s.checkpoints}  held {s.held} (lag {sum(s.lag.values()):,})  "
        f"top-reward {rewards}" + (f"  refused {refused}" if refused else "") + away
    )


LIMITS = {
    "join_evicted": "evicted",
    "join_evicted_outcomes": "evicted_outcomes",
    "model_rows_released_early": "model_rows_released_early",
    "policy_rows_released_early": "policy_rows_released_early",
    "history_listeners_evicted": "history_listeners_evicted",
}
"""``limits_reached``'s kinds and the worker counters they read: where a capacity limit
acted (docs/reliability.md says what each does)."""


def metrics_snapshot(
    s: Stats,
    sums: Mapping[str, float],
    model_name: str,
    now_ms: int,
    queued: Mapping[str, int] | None = None,
    listeners: int = 0,
) -> dict[str, Any]:
    """The numbers in the form ``streaming.worker.metrics`` and ``encore status`` take.

    ``sums``: the worker state's running sums (the reward model's log-loss sum and row count);
    ``queued``: rows each learner has waiting for the event-time frontier; ``listeners``:
    listeners whose recent plays the worker holds.
    """
    c = s.counters
    loss = sums.get("model_loss_sum", 0.0) / max(sums.get("model_rows", 0.0), 1.0)
    return {
        "now_ms": now_ms,
        "started_ms": s.started_ms,
        "events_total": dict(s.events_by_topic),
        "outcomes_total": int(c.get("outcomes", 0)),
        "joined_total": int(c.get("joined", 0)),
        "closed_total": int(c.get("closed", 0)),
        "late_total": dict(s.late_by_kind),
        "dead_letters_total": dict(s.dead_by_code),
        "reward_mean": {k: tot / max(cnt, 1) for k, (tot, cnt) in s.reward_by_policy.items()},
        "model_log_loss": {model_name: loss},
        "learning_queued": dict(queued or {}),
        "limits_reached": {kind: int(c.get(name, 0)) for kind, name in LIMITS.items()},
        "history_listeners": listeners,
        "consumer_lag": dict(s.lag),
        "checkpoints_total": s.checkpoints,
        "snapshots_total": s.snapshots,
        "last_checkpoint_ms": s.last_checkpoint_ms,
        "handoffs_total": {
            "published": s.handoffs_published,
            "installed": s.handoffs_installed,
            "started_fresh": s.partitions_started_fresh,
        },
        "rejoins_total": s.rejoins,
        "consumer_restarts_total": s.consumer_restarts,
        "gc_collections_total": s.gc_collections,
        "gc_seconds_total": s.gc_seconds,
        "align_pauses_total": s.align_pauses,
        "side_pending": s.side_pending,
        "side_resent_total": s.side_resent,
        "side_truncated_total": dict(s.side_truncated),
        "side_refused_total": dict(s.side_refused),
        "broker_away_seconds": s.broker_away_s,
    }
