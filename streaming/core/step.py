"""The functional core of the daemon: ``step(engine, state, batches) -> (state, Effects)``, no I/O.

One step takes decoded impression and outcome batches (with the offsets they end at) and:

1. keeps what the learners need of each new impression (context, the shown tracks' features,
   ids and logged propensities) in a side table; with the ``denoised`` composite it also asks
   the reward model for its prequential prediction of every shown track (the *provisional*
   reward, made before any outcome is seen; no other kind uses it, so none pays for it);
2. gives each outcome its raw composite reward (``CompositeReward.raw``) and feeds both streams
   to the reward-window join;
3. for every impression whose window closed: queues its joined plays for the reward model, which
   learns them once the smallest watermark of the worker's partitions passes their window, in
   one event-time order (``release_model_rows``), computes the *final* composite
   reward per shown position (the raw reward aggregated by the join; a mix of it and the
   provisional one for the ``denoised`` kind; the default reward where no play came), and
   queues one feedback row per shown position whose play was not censored for the policy, which
   learns them once every partition's watermark has passed their window, in one order and in
   updates cut from that order alone (``release_policy_rows``, ``learn_policy_rows``).

Everything the shell must do afterwards (dead letters, late rows, metrics) comes back as values.
Given the same events, the learned state does not depend on how they were cut into batches or how
the partitions' polls interleaved: the join guarantees it for the closed records, and the reward
model and the policy see the same updates in the same event-time order.

This module holds ``init`` and ``step``, whose phases (route, gather what closed, learn the
reward model, learn the policy, bookkeeping) are the functions below it; the package
``streaming.core`` exports them with the state types (``state``), the row tables (``tables``),
the learners (``learners``) and the checkpoint arrays (``arrays``). It is long because the
phases share the step's intermediate tables and read best in the order they run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import numpy.typing as npt

import rewards
from streaming import join
from streaming.core.history import History
from streaming.core.learners import (
    final_rewards,
    joined_model_rows,
    learn_policy_rows,
    raw_rewards,
    release_model_rows,
    release_policy_rows,
    update_model,
    zero_delta,
)
from streaming.core.records import JoinedRecords, from_impressions
from streaming.core.state import (
    F32,
    Effects,
    Engine,
    ModelPlays,
    ModelRows,
    Plays,
    PolicyRows,
    Side,
    TopicPartitionKey,
    WorkerState,
)
from streaming.core.tables import (
    concat_all_rows,
    concat_rows,
    concat_side,
    empty_model_rows,
    empty_policy_rows,
    empty_tables,
    plays_table,
    prune_rows,
    side_table,
    take_table_rows,
)
from streaming.events import ImpressionBatch, OutcomeBatch

__all__ = [
    "TRACKS_MAX",
    "init",
    "seen_tracks",
    "settle",
    "step",
]


def init(engine: Engine) -> WorkerState:
    side, plays = empty_tables(engine)
    return WorkerState(
        policy=engine.policy.init(engine.d_user, engine.d_track),
        model=engine.reward_model.init(jax.random.key(engine.seed), engine.n_model_features),
        join={},
        side=side,
        plays=plays,
        model_rows=empty_model_rows(engine),
        policy_rows=empty_policy_rows(engine),
        next_payload=0,
        offsets={},
        counters={},
        sums={},
        reward_by_policy={},
        pending=None
        if not engine.share_deltas
        else zero_delta(engine.policy.init(engine.d_user, engine.d_track)),
    )


def settle(engine: Engine, policy_state: Any, *queues: PolicyRows) -> Any:
    """``policy_state`` once it has learned the feedback of ``queues`` (``WorkerState.policy_rows``
    of one worker or of several) as if every partition's watermark had passed it: what the
    policy learns of a stream that has ended, or what a group of workers holds together."""
    rows, _, _ = release_policy_rows(concat_all_rows(list(queues)), join.MAX_TIME_MS)
    return learn_policy_rows(engine, policy_state, rows, join.MAX_TIME_MS)[0]


def _partitions(part: npt.NDArray[np.int32] | None, n: int) -> npt.NDArray[np.int32]:
    return np.zeros(n, np.int32) if part is None else np.asarray(part, np.int32)


def _bump(counters: Mapping[str, Any], **more: float) -> dict[str, Any]:
    out = dict(counters)
    for k, v in more.items():
        out[k] = out.get(k, 0) + v
    return out


@dataclass
class _Routed:
    """Where the events of one step went: the joins, the row tables, and each join's effects."""

    joins: dict[int, join.JoinState]
    side: Side
    plays: Plays
    next_payload: int
    counters: dict[str, Any]
    effects: list[tuple[int, join.JoinEffects]]


@dataclass
class _Closed:
    """Every impression closed in one step, gathered in the effects' order."""

    model_rows: list[ModelRows]  # the joined plays of the closed windows, for the reward model
    policy_rows: list[PolicyRows]  # their feedback rows that teach the policy
    rows: list[npt.NDArray[np.int64]]  # their side-table rows
    reward: list[F32]  # final reward per shown position
    learn: list[npt.NDArray[np.bool_]]  # positions that teach the policy
    parts: list[join.Closed]
    history: dict[int, History]  # each partition's listener history, the closed plays appended
    history_evicted: int  # listeners that left a full history table


def step(
    engine: Engine,
    state: WorkerState,
    impressions: ImpressionBatch | None,
    outcomes: OutcomeBatch | None,
    *,
    offsets: Mapping[TopicPartitionKey, int] | None = None,
    watermark_ms: int | None = None,
    impression_partition: npt.NDArray[np.int32] | None = None,
    outcome_partition: npt.NDArray[np.int32] | None = None,
) -> tuple[WorkerState, Effects]:
    """Feed one batch of each stream through the joins and the learners.

    Both topics are keyed by ``user_id`` and have the same partition count, so impressions and
    outcomes of one request share a partition number: each partition number has a join state of
    its own, with its own event-time watermarks. A backlog read unevenly across partitions (after
    a restart, say) then never makes one partition's events look late to another's.

    The phases: route each event to its partition's join, gather what closed, learn the reward
    model, learn the policy, then the bookkeeping (log records, rewards by policy, pruning).

    Args:
        engine: the worker's static parts.
        state: the state before the batch (not modified).
        impressions: decoded impressions in stream order, or None.
        outcomes: decoded outcomes in stream order, or None.
        offsets: the next offset per partition once this batch is applied (stored in the state).
        watermark_ms: force the join watermark at least this far (idle streams, final flush).
        impression_partition: ``(n,)`` partition of each impression (None: all partition 0).
        outcome_partition: ``(n,)`` partition of each outcome (None: all partition 0).

    Returns:
        The new state and the effects for the shell.
    """
    routed = _route(
        engine,
        state,
        impressions,
        outcomes,
        watermark_ms=watermark_ms,
        impression_partition=impression_partition,
        outcome_partition=outcome_partition,
    )
    closed = _gather_closed(engine, routed, state.model_rows, state.history)
    # The reward model first: reading its metrics waits for it, and the policy update dispatched
    # after it then runs on while the shell polls and decodes the next batch.
    model, model_rows, sums, counters, model_plays = _learn_model(
        engine, state.model, closed.model_rows, routed, dict(state.sums)
    )
    policy_state, pending, policy_rows, counters = _learn_policy(
        engine, state, closed, routed, counters
    )
    n_rows = sum(int(r.end_ms.size) for r in closed.policy_rows)
    sums = _bump(sums, reward_sum=float(sum(float(r.reward.sum()) for r in closed.policy_rows)))
    records, reward_by_policy = _bookkeeping(engine, routed.side, closed, state.reward_by_policy)
    # Drop side rows the joins no longer refer to (closed, refused, or joined and closed).
    live = [join.live_payloads(js) for js in routed.joins.values()]
    live_imp = np.concatenate([np.zeros(0, np.int64), *(a for a, _ in live)])
    live_out = np.concatenate([np.zeros(0, np.int64), *(b for _, b in live)])
    n_closed = sum(int(r.size) for r in closed.rows)
    counters = _bump(counters, closed=n_closed, feedback_rows=n_rows)
    if closed.history_evicted:
        counters = _bump(counters, history_listeners_evicted=closed.history_evicted)
    new_offsets = dict(state.offsets)
    if offsets:
        new_offsets.update(offsets)
    new_state = WorkerState(
        pending=pending,
        outbox=state.outbox,
        delta_seq=state.delta_seq,
        seen=state.seen,
        policy=policy_state,
        model=model,
        join=routed.joins,
        side=prune_rows(routed.side, live_imp),
        plays=prune_rows(routed.plays, live_out),
        model_rows=model_rows,
        policy_rows=policy_rows,
        next_payload=routed.next_payload,
        offsets=new_offsets,
        counters=counters,
        sums=sums,
        reward_by_policy=reward_by_policy,
        history=closed.history,
        tracks=(
            seen_tracks(state.tracks, [r.action for r in closed.policy_rows])
            if engine.track_slots
            else state.tracks
        ),
    )
    # (a step of nothing but rejected messages, before any join state exists, has no effects)
    parts = [e for _, e in routed.effects] or [join.concat_effects([], engine.slate_size)]
    return new_state, Effects(
        rejected_impressions=join.RejectedImpressions(
            *(np.concatenate(c) for c in zip(*(e.rejected_impressions for e in parts), strict=True))
        ),
        rejected_outcomes=join.RejectedOutcomes(
            *(np.concatenate(c) for c in zip(*(e.rejected_outcomes for e in parts), strict=True))
        ),
        closed=n_closed,
        feedback_rows=n_rows,
        records=records,
        model_plays=model_plays,
    )


def _route(
    engine: Engine,
    state: WorkerState,
    impressions: ImpressionBatch | None,
    outcomes: OutcomeBatch | None,
    *,
    watermark_ms: int | None,
    impression_partition: npt.NDArray[np.int32] | None,
    outcome_partition: npt.NDArray[np.int32] | None,
) -> _Routed:
    """Each new event into the row tables and into its partition's join; then every join advances."""
    cfg = engine.join_config
    joins = dict(state.join)
    side, plays, next_payload = state.side, state.plays, state.next_payload
    counters: dict[str, Any] = dict(state.counters)
    effects: list[tuple[int, join.JoinEffects]] = []
    if impressions is not None and impressions.n:
        n = impressions.n
        payload = np.arange(next_payload, next_payload + n, dtype=np.int64)
        next_payload += n
        side = concat_side(side, side_table(engine, state.model, impressions, payload))
        part = _partitions(impression_partition, n)
        for p in np.unique(part).tolist():
            sel = part == p
            js, eff = join.add_impressions(
                joins.get(p) or join.init(cfg),
                join.JoinImpressions(
                    impressions.request_key[sel], impressions.ts_ms[sel], payload[sel]
                ),
                cfg,
            )
            joins[p] = js
            effects.append((p, eff))
        counters = _bump(counters, impressions=n)
    if outcomes is not None and outcomes.n:
        n = outcomes.n
        keep = outcomes.position < engine.slate_size
        payload = np.arange(next_payload, next_payload + n, dtype=np.int64)
        next_payload += n
        new = plays_table(outcomes, payload, listeners=engine.history_length > 0)
        plays = concat_rows(plays, take_table_rows(new, keep))
        value = np.zeros(n, np.float32)
        value[keep] = raw_rewards(engine, take_table_rows(new, keep))
        part = _partitions(outcome_partition, n)
        for p in np.unique(part[keep]).tolist():
            sel = keep & (part == p)
            js, eff = join.add_outcomes(
                joins.get(p) or join.init(cfg),
                join.JoinOutcomes(
                    outcomes.request_key[sel],
                    outcomes.ts_ms[sel],
                    outcomes.position[sel].astype(np.int32),
                    value[sel],
                    payload[sel],
                ),
                cfg,
            )
            joins[p] = js
            effects.append((p, eff))
        counters = _bump(counters, outcomes=n, outcomes_beyond_slate=int((~keep).sum()))
    for p in sorted(joins):
        joins[p], eff = join.advance(joins[p], cfg, watermark_ms=watermark_ms)
        effects.append((p, eff))

    return _Routed(joins, side, plays, next_payload, counters, effects)


def _gather_closed(
    engine: Engine, routed: _Routed, queued: ModelRows, history: Mapping[int, History]
) -> _Closed:
    """Every closed impression of the step, in the effects' order: learn from all at once."""
    side, plays = routed.side, routed.plays
    out = _Closed([queued], [], [], [], [], [], dict(history), 0)
    for p, e in routed.effects:
        closed = e.closed
        if closed.payload.size == 0:
            continue
        rows = np.searchsorted(side.payload, closed.payload)
        if e.joined.payload.size:
            model_rows, table, evicted = joined_model_rows(
                engine, side, rows, closed, e.joined, plays, partition=p, history=out.history.get(p)
            )
            out.model_rows.append(model_rows)
            if table is not None:
                out.history[p] = table
                out.history_evicted += evicted
        reward, learn = final_rewards(engine, side, rows, closed, e.joined, plays)
        out.policy_rows.append(_policy_rows(engine, side, rows, closed, reward, learn, p))
        out.rows.append(rows)
        out.reward.append(reward)
        out.learn.append(learn)
        out.parts.append(closed)
    return out


def _learn_model(
    engine: Engine,
    model: Any,
    new_rows: list[ModelRows],
    routed: _Routed,
    sums: dict[str, float],
) -> tuple[Any, ModelRows, dict[str, float], dict[str, Any], ModelPlays | None]:
    """The reward model learns the queued plays whose windows every partition has passed (with
    ``engine.log_predictions``, also returned with its prediction for each)."""
    ready, waiting, early = release_model_rows(concat_all_rows(new_rows), _frontier(routed))
    model, rest, loss_sum, used, plays = update_model(
        engine, model, ready, predictions=engine.log_predictions
    )
    sums = _bump(sums, model_loss_sum=loss_sum, model_rows=used)
    counters = routed.counters
    if early:
        counters = _bump(counters, model_rows_released_early=early)
    return model, concat_all_rows([rest, waiting]), sums, counters, plays


def _policy_rows(
    engine: Engine,
    side: Side,
    rows: npt.NDArray[np.int64],
    closed: join.Closed,
    reward: F32,
    learn: npt.NDArray[np.bool_],
    partition: int,
) -> PolicyRows:
    """A feedback row per shown position of the closed impressions that teaches (row-major
    order), with the end of its window."""
    i, j = np.nonzero(learn)
    r = rows[i]
    end = closed.ts_ms[i].astype(np.int64) + np.int64(engine.join_config.window_ms)
    return PolicyRows(
        context=side.context[r],
        features=side.features[r, j],
        action=side.action[r, j],
        position=j.astype(np.int32),
        reward=reward[i, j],
        propensity=side.propensity[r, j],
        end_ms=end,
        partition=np.full(i.size, partition, np.int32),
        request_key=closed.request_key[i].astype(np.uint64),
    )


def _learn_policy(
    engine: Engine,
    state: WorkerState,
    closed: _Closed,
    routed: _Routed,
    counters: dict[str, Any],
) -> tuple[Any, Any, PolicyRows, dict[str, Any]]:
    """The policy learns its queued feedback as every partition's watermark releases it, in
    updates that do not depend on the polls (``learn_policy_rows``); ``engine.update_every_ms``
    0: this step's feedback at once, as it closed."""
    queued = concat_all_rows([state.policy_rows, *closed.policy_rows])
    frontier = _frontier(routed)
    if engine.update_every_ms > 0:
        ready, waiting, early = release_policy_rows(queued, frontier)
        if early:
            counters = _bump(counters, policy_rows_released_early=early)
    else:
        ready, waiting = queued, empty_policy_rows(engine)
    policy_state, pending, rest = learn_policy_rows(
        engine, state.policy, ready, frontier, state.pending
    )
    return policy_state, pending, concat_all_rows([rest, waiting]), counters


TRACKS_MAX = 1 << 22
"""The most distinct track ids a worker keeps (16 MiB) to measure per-track slot sharing."""


def seen_tracks(
    tracks: npt.NDArray[np.int32], new: list[npt.NDArray[np.int32]]
) -> npt.NDArray[np.int32]:
    """``tracks`` (sorted, unique) with the ids of ``new`` it lacks, up to ``TRACKS_MAX``."""
    ids = np.unique(np.concatenate([np.zeros(0, np.int32), *new]))
    if not ids.size or tracks.size >= TRACKS_MAX:
        return tracks
    at = np.searchsorted(tracks, ids)
    known = np.zeros(ids.size, bool)
    inside = at < tracks.size
    known[inside] = tracks[at[inside]] == ids[inside]
    if known.all():
        return tracks
    return np.insert(tracks, at[~known], ids[~known])


def _frontier(routed: _Routed) -> int:
    """The smallest join watermark of the worker's partitions: event time every one has passed."""
    return min((int(js.watermark_ms) for js in routed.joins.values()), default=join.NO_TIME_MS)


def _bookkeeping(
    engine: Engine,
    side: Side,
    closed: _Closed,
    reward_by_policy: Mapping[int, tuple[float, int]],
) -> tuple[list[JoinedRecords], dict[int, tuple[float, int]]]:
    """The closed impressions as log records, and the top position's reward by logging policy."""
    by_policy = dict(reward_by_policy)
    if not closed.rows:
        return [], by_policy
    rows = np.concatenate(closed.rows)
    reward = np.concatenate(closed.reward)
    records: list[JoinedRecords] = []
    if engine.log_candidates:
        records.append(
            from_impressions(
                take_table_rows(side.log, rows),
                reward=reward,
                n_outcomes=np.concatenate([c.n_outcomes for c in closed.parts]),
                defaulted=np.concatenate([c.defaulted for c in closed.parts]),
                reward_name=engine.composite.kind,
                reward_version=rewards.REWARD_VERSION,
                features=engine.log_features,
            )
        )
    top = reward[:, 0].astype(np.float64)
    keys = side.policy_key[rows]
    uniq, inverse = np.unique(keys, return_inverse=True)
    top_sum = np.bincount(inverse, weights=top, minlength=uniq.size)
    top_n = np.bincount(inverse, minlength=uniq.size)
    for k, total_k, count_k in zip(uniq.tolist(), top_sum.tolist(), top_n.tolist(), strict=True):
        total, count = by_policy.get(int(k), (0.0, 0))
        by_policy[int(k)] = (total + total_k, count + int(count_k))
    return records, by_policy
