"""The worker's state and static parts as the core passes them around: ``Engine``, ``WorkerState``.

``Engine`` is what stays fixed while a worker runs (the learners' functions, shapes and settings).
``WorkerState`` is everything a worker checkpoints together, atomically: the policy's and the
reward model's states, one join state per co-partitioned partition number, the row tables
(``Side``: what is kept of each open impression; ``Plays``: of each outcome until its impression
closes; ``History``: per partition, each listener's recent plays, for a reward model that reads
them; ``ModelRows``: joined plays waiting for the reward model's next mini-batch;
``PolicyRows``: feedback waiting for the policy's next update), the offsets,
counters and sums, and the scale-out deltas. ``Effects`` is what a step hands back to the shell;
``join_counters`` sums the join's counters over the partitions.

``streaming.core.step`` builds these (``init``) and advances them (``step``); ``streaming.core.tables``
fills the row tables and ``streaming.core.arrays`` turns a state into arrays and back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

import rewards
from bandits import Policy
from rewards.survival import survival_model
from streaming import join
from streaming.core.history import History
from streaming.core.records import JoinedRecords
from streaming.events import ImpressionBatch

__all__ = [
    "F32",
    "Effects",
    "Engine",
    "ModelPlays",
    "ModelRows",
    "Plays",
    "PolicyRows",
    "Side",
    "TopicPartitionKey",
    "WorkerState",
    "join_counters",
]

TopicPartitionKey = tuple[str, int]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Engine:
    """The static half of a worker: the learners' functions, shapes and settings."""

    policy: Policy
    join_config: join.JoinConfig
    d_user: int
    d_track: int
    reward_model: rewards.RewardModel = field(default_factory=survival_model)
    composite: rewards.CompositeReward = field(
        default_factory=lambda: rewards.CompositeReward(kind="stream30")
    )
    seed: int = 0
    id_space: int = 2**31 - 1
    log_candidates: int = 0  # candidates kept per impression for the Parquet log; 0 = no log
    log_features: bool = True  # keep the candidates' features in the log too
    share_deltas: bool = False  # accumulate linear statistics for the other workers (scale-out)
    log_predictions: bool = False  # return the reward model's plays with their predictions
    update_every_ms: int = 300_000  # event time a policy update may wait; 0: as windows close
    history_length: int = 0  # plays of each listener's history the reward model reads; 0: none
    history_dim: int = 0  # floats per history entry (the model's ``history_dim``)
    history_listeners: int = 20_000  # listeners whose history each partition keeps

    @property
    def slate_size(self) -> int:
        return self.join_config.slate_size

    @property
    def track_slots(self) -> int:
        """The policy's per-track table size (``n_ids``; 0 for a policy without one)."""
        return int(self.policy.spec.params.get("n_ids", 0) or 0)

    @property
    def n_model_features(self) -> int:
        return rewards.n_interaction_features(self.d_user, self.d_track)


class Side(NamedTuple):
    """What the daemon keeps of each open impression, by payload id (sorted, unique)."""

    payload: npt.NDArray[np.int64]  # (m,)
    context: F32  # (m, d_user)
    features: F32  # (m, s, d_track) of the shown items
    action: npt.NDArray[np.int32]  # (m, s) shown track ids (hashed into id_space)
    propensity: F32  # (m, s)
    shown: npt.NDArray[np.bool_]  # (m, s)
    provisional: F32  # (m, s) the composite reward the model expected at impression time
    policy_key: npt.NDArray[np.uint64]  # (m,) key64 of the logging policy's name
    log: ImpressionBatch  # (m, ...) the impression as decoded, candidates cut to log_candidates


class Plays(NamedTuple):
    """What the daemon keeps of each outcome until its impression closes, by payload id."""

    payload: npt.NDArray[np.int64]  # (j,)
    ms_played: npt.NDArray[np.int64]
    duration_ms: npt.NDArray[np.int64]
    reason_end: npt.NDArray[np.int8]  # rewards.REASONS codes
    saved: npt.NDArray[np.bool_]
    censored: npt.NDArray[np.bool_]
    listener: npt.NDArray[np.uint64]  # key64 of the listener's id (0 unless a history is kept)


class ModelRows(NamedTuple):
    """Joined plays queued for the reward model, until event time releases them in order.

    ``end_ms``, ``partition``, ``request_key`` and ``ts_ms`` place each row in the one order the
    reward model learns in, whatever the batches and the interleaving of partitions were
    (``streaming.core.learners.release_model_rows``).
    """

    features: F32  # (r, f)
    ms_played: npt.NDArray[np.int64]
    duration_ms: npt.NDArray[np.int64]
    reason_end: npt.NDArray[np.int8]
    saved: npt.NDArray[np.bool_]
    position: npt.NDArray[np.int32]
    censored: npt.NDArray[np.bool_]
    track_id: npt.NDArray[np.int32]
    end_ms: npt.NDArray[np.int64]  # the end of its impression's reward window (event time)
    partition: npt.NDArray[np.int32]  # the partition number of its join
    request_key: npt.NDArray[np.uint64]  # its impression's key
    ts_ms: npt.NDArray[np.int64]  # the outcome's event time
    history: F32  # (r, h, e) the listener's plays before this one (``streaming.core.history``)


class PolicyRows(NamedTuple):
    """Feedback rows queued for the policy, until event time releases them in order.

    A row is released once the smallest join watermark of the worker's partitions has passed the
    end of its window (``end_ms``), sorted by (``end_ms``, ``partition``, ``request_key``,
    ``position``), and learned in updates of ``UPDATE_CHUNK`` rows within one interval of
    ``Engine.update_every_ms``, or fewer at an interval's end: the same updates, whatever the
    batches and the interleaving of partitions were (``streaming.core.learners``).
    """

    context: F32  # (r, d_user)
    features: F32  # (r, d_track) of the shown track
    action: npt.NDArray[np.int32]  # its id
    position: npt.NDArray[np.int32]
    reward: F32  # the final composite reward
    propensity: F32
    end_ms: npt.NDArray[np.int64]  # the end of its impression's reward window (event time)
    partition: npt.NDArray[np.int32]  # the partition number of its join
    request_key: npt.NDArray[np.uint64]  # its impression's key


class ModelPlays(NamedTuple):
    """The plays the reward model learned from in one step, in the order it learned them, each
    with what the model predicted for it just before the update that learned it (prequential
    predictions, as ``UpdateMetrics.loss`` is a prequential loss): ``encore rewards report``
    scores these against the plays' outcomes."""

    ts_ms: npt.NDArray[np.int64]  # the outcome's event time
    request_key: npt.NDArray[np.uint64]  # its impression's key
    position: npt.NDArray[np.int32]
    track_id: npt.NDArray[np.int32]
    ms_played: npt.NDArray[np.int64]
    duration_ms: npt.NDArray[np.int64]
    reason_end: npt.NDArray[np.int8]
    saved: npt.NDArray[np.bool_]
    censored: npt.NDArray[np.bool_]
    p_skip: F32  # (n, 3): P(skip_1), P(skip_2), P(skip_3)
    p_complete: F32  # (n,)


class WorkerState(NamedTuple):
    """Everything a worker checkpoints together, atomically."""

    policy: Any
    model: rewards.ModelState
    join: Mapping[int, join.JoinState]  # one per co-partitioned partition number
    side: Side
    plays: Plays
    model_rows: ModelRows
    policy_rows: PolicyRows
    next_payload: int
    offsets: Mapping[TopicPartitionKey, int]  # next offset to read, per owned partition
    counters: Mapping[str, int]
    sums: Mapping[str, float]  # model log loss sums, reward sums
    reward_by_policy: Mapping[int, tuple[float, int]]  # policy_key -> (sum top reward, count)
    pending: Any = None  # LinearDelta learned here since the last sealed delta (scale-out)
    outbox: Any = None  # the sealed LinearDelta of sequence ``delta_seq``, until published
    delta_seq: int = 0  # sequence number of this worker's newest sealed delta
    seen: Mapping[str, int] = {}  # other worker id -> newest delta sequence folded in
    history: Mapping[int, History] = {}  # per partition number: its listeners' recent plays
    tracks: npt.NDArray[np.int32] = np.zeros(0, np.int32)  # ids the policy learned of, sorted


class Effects(NamedTuple):
    """What the shell must act on after a step."""

    rejected_impressions: join.RejectedImpressions
    rejected_outcomes: join.RejectedOutcomes
    closed: int
    feedback_rows: int
    records: list[JoinedRecords]  # the closed impressions, when logging
    model_plays: ModelPlays | None = None  # the reward model's plays, with engine.log_predictions


def join_counters(state: WorkerState, *, cut_dependent: bool = True) -> dict[str, int]:
    """The join's counters summed over every partition's join state.

    ``cut_dependent=False`` leaves out ``join.CUT_DEPENDENT`` (memory gauges whose value depends
    on where polls cut the stream): what is left is equal for any cut of the same stream.
    """
    total: dict[str, int] = {}
    for js in state.join.values():
        for k, v in join.counters(js).items():
            if cut_dependent or k not in join.CUT_DEPENDENT:
                total[k] = total.get(k, 0) + v
    return total
