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
   updates the policy with one feedback row per shown position whose play was not censored.

Everything the shell must do afterwards (dead letters, late rows, metrics) comes back as values.
Given the same events, the learned state does not depend on how they were cut into batches or how
the partitions' polls interleaved: the join guarantees it for the closed records, the reward model
sees the same mini-batches in the same event-time order, and the linear policies' statistics are
sums (only floating-point order can differ).

The core is split by seam; this module keeps ``init`` and ``step`` and re-exports the rest, so
``streaming.step`` stays the one import for the daemon and the tests:

- ``streaming.worker_state``: ``Engine``, ``WorkerState``, its row types and ``Effects``;
- ``streaming.side_tables``: the ``Side`` and ``Plays`` rows of new events, and the row
  bookkeeping (concatenate, select, prune) of every row table;
- ``streaming.learners``: the reward model's predictions and updates, the rewards per position,
  the policy updates (and scale-out deltas), and ``warm_up``;
- ``streaming.state_arrays``: ``to_arrays`` and ``from_arrays`` for checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import numpy.typing as npt

import rewards
from streaming import join
from streaming.events import ImpressionBatch, OutcomeBatch
from streaming.learners import _FILL as _FILL
from streaming.learners import (
    MODEL_BATCH,
    MODEL_CHUNK,
    NOMINAL_DURATION_MS,
    PREDICT_SMALL,
    UPDATE_CHUNK,
    merge_delta,
    raw_rewards,
    release_model_rows,
    slate_features,
    update_policy,
    warm_up,
    zero_delta,
)
from streaming.learners import _add as _add
from streaming.learners import _bucket as _bucket
from streaming.learners import _delta as _delta
from streaming.learners import _final_rewards as _final_rewards
from streaming.learners import _joined_rows as _joined_rows
from streaming.learners import _predict as _predict
from streaming.learners import _update_model as _update_model
from streaming.side_tables import _R as _R
from streaming.side_tables import _REASON_MAP as _REASON_MAP
from streaming.side_tables import REASON_CENSORS, REASON_CODE, T, concat_side
from streaming.side_tables import _concat as _concat
from streaming.side_tables import _concat_all as _concat_all
from streaming.side_tables import _empty as _empty
from streaming.side_tables import _empty_rows as _empty_rows
from streaming.side_tables import _log_rows as _log_rows
from streaming.side_tables import _plays as _plays
from streaming.side_tables import _prune as _prune
from streaming.side_tables import _side_rows as _side_rows
from streaming.side_tables import _take as _take
from streaming.side_tables import _widen as _widen
from streaming.state_arrays import _delta_from_arrays as _delta_from_arrays
from streaming.state_arrays import _joins_from_arrays as _joins_from_arrays
from streaming.state_arrays import from_arrays, to_arrays
from streaming.worker_state import (
    F32,
    Effects,
    Engine,
    ModelRows,
    Plays,
    Side,
    TopicPartitionKey,
    WorkerState,
    join_counters,
)

__all__ = [
    "F32",
    "MODEL_BATCH",
    "MODEL_CHUNK",
    "NOMINAL_DURATION_MS",
    "PREDICT_SMALL",
    "REASON_CENSORS",
    "REASON_CODE",
    "UPDATE_CHUNK",
    "Effects",
    "Engine",
    "ModelRows",
    "Plays",
    "Side",
    "T",
    "TopicPartitionKey",
    "WorkerState",
    "concat_side",
    "from_arrays",
    "init",
    "join_counters",
    "merge_delta",
    "raw_rewards",
    "slate_features",
    "step",
    "to_arrays",
    "update_policy",
    "warm_up",
    "zero_delta",
]


def init(engine: Engine) -> WorkerState:
    side, plays = _empty(engine)
    return WorkerState(
        policy=engine.policy.init(engine.d_user, engine.d_track),
        model=engine.reward_model.init(jax.random.key(engine.seed), engine.n_model_features),
        join={},
        side=side,
        plays=plays,
        model_rows=_empty_rows(engine),
        next_payload=0,
        offsets={},
        counters={},
        sums={},
        reward_by_policy={},
        pending=None
        if not engine.share_deltas
        else zero_delta(engine.policy.init(engine.d_user, engine.d_track)),
    )


def _partitions(part: npt.NDArray[np.int32] | None, n: int) -> npt.NDArray[np.int32]:
    return np.zeros(n, np.int32) if part is None else np.asarray(part, np.int32)


def _bump(counters: Mapping[str, Any], **more: float) -> dict[str, Any]:
    out = dict(counters)
    for k, v in more.items():
        out[k] = out.get(k, 0) + v
    return out


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
    cfg = engine.join_config
    joins = dict(state.join)
    side, plays, next_payload = state.side, state.plays, state.next_payload
    counters: dict[str, Any] = dict(state.counters)
    effects: list[tuple[int, join.JoinEffects]] = []
    if impressions is not None and impressions.n:
        n = impressions.n
        payload = np.arange(next_payload, next_payload + n, dtype=np.int64)
        next_payload += n
        side = concat_side(side, _side_rows(engine, state.model, impressions, payload))
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
        new = _plays(outcomes, payload)
        plays = _concat(plays, _take(new, keep))
        value = np.zeros(n, np.float32)
        value[keep] = raw_rewards(engine, _take(new, keep))
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

    policy_state, model, model_rows = state.policy, state.model, state.model_rows
    pending = state.pending
    sums: dict[str, float] = dict(state.sums)
    reward_by_policy = dict(state.reward_by_policy)
    records: list[Any] = []
    # Gather every closed impression of the step first (in the effects' order), then learn from
    # all of them at once: one policy update and one log batch per step, not one per effect.
    new_rows: list[ModelRows] = [model_rows]
    closed_rows: list[npt.NDArray[np.int64]] = []
    closed_reward: list[F32] = []
    closed_learn: list[npt.NDArray[np.bool_]] = []
    closed_parts: list[join.Closed] = []
    for p, e in effects:
        closed = e.closed
        if closed.payload.size == 0:
            continue
        rows = np.searchsorted(side.payload, closed.payload)
        if e.joined.payload.size:
            new_rows.append(
                _joined_rows(
                    side, rows, closed, e.joined, plays, partition=p, window_ms=cfg.window_ms
                )
            )
        reward, learn = _final_rewards(engine, side, rows, closed, e.joined, plays)
        closed_rows.append(rows)
        closed_reward.append(reward)
        closed_learn.append(learn)
        closed_parts.append(closed)
    # The reward model first: reading its metrics waits for it, and the policy update dispatched
    # after it then runs on while the shell polls and decodes the next batch.
    frontier = min((int(js.watermark_ms) for js in joins.values()), default=join.NO_TIME_MS)
    ready, waiting, early = release_model_rows(_concat_all(new_rows), frontier)
    model, rest, loss_sum, used = _update_model(engine, model, ready)
    model_rows = _concat_all([rest, waiting])
    sums = _bump(sums, model_loss_sum=loss_sum, model_rows=used)
    if early:
        counters = _bump(counters, model_rows_released_early=early)
    n_closed = n_rows = 0
    if closed_rows:
        rows = np.concatenate(closed_rows)
        reward = np.concatenate(closed_reward)
        learn = np.concatenate(closed_learn)
        n_closed = int(rows.size)
        # Row-major order: the feedback rows come in the same order as effect by effect.
        i, j = np.nonzero(learn)
        if i.size:
            r = rows[i]
            policy_state, pending = update_policy(
                engine,
                policy_state,
                [
                    side.context[r],
                    side.features[r, j],
                    side.action[r, j],
                    j.astype(np.int32),
                    reward[i, j],
                    side.propensity[r, j],
                    np.ones(i.size, bool),
                ],
                pending,
            )
            n_rows = int(i.size)
            sums = _bump(sums, reward_sum=float(reward[i, j].sum()))
        if engine.log_candidates:
            from streaming.parquet_log import from_impressions

            records.append(
                from_impressions(
                    _take(side.log, rows),
                    reward=reward,
                    n_outcomes=np.concatenate([c.n_outcomes for c in closed_parts]),
                    defaulted=np.concatenate([c.defaulted for c in closed_parts]),
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
        for k, total_k, count_k in zip(
            uniq.tolist(), top_sum.tolist(), top_n.tolist(), strict=True
        ):
            total, count = reward_by_policy.get(int(k), (0.0, 0))
            reward_by_policy[int(k)] = (total + total_k, count + int(count_k))
    # Drop side rows the joins no longer refer to (closed, refused, or joined and closed).
    live = [join.live_payloads(js) for js in joins.values()]
    live_imp = np.concatenate([np.zeros(0, np.int64), *(a for a, _ in live)])
    live_out = np.concatenate([np.zeros(0, np.int64), *(b for _, b in live)])
    side = _prune(side, live_imp)
    plays = _prune(plays, live_out)
    counters = _bump(counters, closed=n_closed, feedback_rows=n_rows)
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
        join=joins,
        side=side,
        plays=plays,
        model_rows=model_rows,
        next_payload=next_payload,
        offsets=new_offsets,
        counters=counters,
        sums=sums,
        reward_by_policy=reward_by_policy,
    )
    # (a step of nothing but rejected messages, before any join state exists, has no effects)
    parts = [e for _, e in effects] or [join.concat_effects([], engine.slate_size)]
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
    )
