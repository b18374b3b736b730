"""What the core asks of the learners: predictions, rewards, and reward-model and policy updates.

- ``predict_model`` and ``slate_features``: the reward model's prequential predictions of shown tracks
  (made at impression time, before any outcome), on the interaction features of every shown
  position, in padded chunks so that jit compiles two sizes in all;
- ``raw_rewards``: each play's composite reward from its outcome alone (what the join
  aggregates); ``final_rewards``: the composite reward per closed impression and position, and
  which positions the policy learns from (censored plays are left out);
- ``joined_model_rows``, ``release_model_rows`` and ``update_model``: the reward model's training rows
  for the joined plays, released in event-time order and learned in fixed ``MODEL_BATCH``
  mini-batches (the same updates however the stream was cut, so reproducible after a restart);
- ``release_policy_rows`` and ``learn_policy_rows``: the policy's feedback, released in
  event-time order and learned one update interval at a time (the same updates however the
  stream was cut); ``update_policy``: feedback in padded ``UPDATE_CHUNK`` chunks, its linear
  statistics also summed into a ``LinearDelta`` for the other workers of a scaled-out group
  (``zero_delta``, ``merge_delta``);
- ``warm_up``: compiles all of the above at the padded sizes ``step`` calls them with.

Why one long module: every learner call of the core is padded, chunked and ordered here, by the
same rules (fixed shapes for jit, one event-time order for what is learned).

Names with a leading underscore are the core's internals: they are in ``__all__`` because
``streaming.core.tables`` or ``streaming.core.step`` use them, and ``streaming.core.step`` re-exports them all.
"""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import numpy as np
import numpy.typing as npt

import rewards
from bandits import Feedback, linear
from rewards.features import N_POSITIONS
from rewards.session import HISTORY_DIM, history_entries
from streaming import join
from streaming.core.history import History, attach, empty_history, fit_history
from streaming.core.state import (
    F32,
    Engine,
    ModelPlays,
    ModelRows,
    Plays,
    PolicyRows,
    Side,
    WorkerState,
)

__all__ = [
    "MODEL_BATCH",
    "MODEL_CHUNK",
    "MODEL_QUEUE_MAX",
    "NOMINAL_DURATION_MS",
    "POLICY_QUEUE_MAX",
    "PREDICT_SMALL",
    "UPDATE_CHUNK",
    "learn_policy_rows",
    "merge_delta",
    "raw_rewards",
    "release_model_rows",
    "release_policy_rows",
    "slate_features",
    "update_policy",
    "warm_up",
    "zero_delta",
]

_Queued = TypeVar("_Queued", ModelRows, PolicyRows)

UPDATE_CHUNK = 2048
"""Feedback rows per policy update call; the last chunk is padded, so jit compiles once."""
MODEL_CHUNK = 4096
"""Rows per reward-model predict call (padded likewise)."""
MODEL_BATCH = 1024
"""Rows per reward-model update. Joined plays are released in one order that does not depend on
how the streams were cut into batches (``release_model_rows``) and every full mini-batch is one
update, so the model's state is reproducible too: a restarted worker makes exactly the updates an
uninterrupted one made."""
MODEL_QUEUE_MAX = 65_536
"""Joined plays that may wait for the event-time frontier (``release_model_rows``) before the
oldest are released early."""
POLICY_QUEUE_MAX = 262_144
"""Feedback rows that may wait for the event-time frontier (``release_policy_rows``) before the
oldest are released early."""
NOMINAL_DURATION_MS = 210_000
"""Impressions carry no durations: predictions at impression time assume the catalogue median."""


PREDICT_SMALL = 1024
"""Predict calls of at most this many rows are padded to it, larger ones to ``MODEL_CHUNK``: two
compilations in all (each costs about as much as a few hundred padded predictions)."""


def _bucket(n: int, chunk: int) -> int:
    return PREDICT_SMALL if n <= PREDICT_SMALL else chunk


def _no_history(engine: Engine, n: int) -> F32 | None:
    """An empty history per row for a model that reads one (None for one that does not)."""
    if not engine.history_length:
        return None
    return np.zeros((n, engine.history_length, engine.history_dim), np.float32)


def predict_model(
    engine: Engine, state: Any, x: F32, track_id: npt.NDArray[np.int32]
) -> rewards.Predictions:
    """The model's predictions for ``x``, in padded chunks (few compilations).

    These are the predictions made when an impression arrives; a model that reads listening
    history gets none here (the listener's plays reach the partition's table only as their
    windows close, so what it held at an impression would depend on how the stream was cut).
    """
    n = x.shape[0]
    skip = np.zeros((n, 3), np.float32)
    complete = np.zeros(n, np.float32)
    for lo in range(0, n, MODEL_CHUNK):
        part = x[lo : lo + MODEL_CHUNK]
        m = part.shape[0]
        size = _bucket(m, MODEL_CHUNK)
        if m == size and part.dtype == np.float32 and part.flags.c_contiguous:  # no padding
            xp = part
        else:
            xp = np.zeros((size, x.shape[1]), np.float32)
            xp[:m] = part
        ids = np.zeros(size, np.int32)
        ids[:m] = track_id[lo : lo + m]
        dur = np.full(size, NOMINAL_DURATION_MS, np.int64)
        inputs = rewards.Inputs(xp, dur, ids, _no_history(engine, size))
        pred = engine.reward_model.predict(state, inputs)
        skip[lo : lo + m] = np.asarray(pred.skip)[:m]
        complete[lo : lo + m] = np.asarray(pred.complete)[:m]
    return rewards.Predictions(skip=skip, complete=complete)  # type: ignore[arg-type]


def warm_up(engine: Engine, state: WorkerState) -> None:
    """Compile every jitted function ``step`` calls, at the padded sizes it calls them with.

    Runs the reward model's two predict sizes (with the ``denoised`` composite, the only one
    that predicts), one model update and two policy updates (the second on the first's output,
    in case its array types differ from the initial state's) on throwaway all-padding inputs; ``state`` is only read and every result is dropped. A daemon
    runs it on a thread while it connects and joins its group, so its first polls do not wait
    for the compiler (JAX compiles a function once even when two threads call it together).

    Args:
        engine: the worker's static parts.
        state: the state the first steps will start from (its arrays give the shapes).
    """
    f = engine.n_model_features
    predicts = engine.composite.kind == "denoised"  # only then does a step predict (side_table)
    for n in (1, PREDICT_SMALL + 1) if predicts else ():  # one call per predict size (_bucket)
        predict_model(engine, state.model, np.zeros((n, f), np.float32), np.zeros(n, np.int32))
    b = MODEL_BATCH
    rows = ModelRows(
        features=np.zeros((b, f), np.float32),
        ms_played=np.zeros(b, np.int64),
        duration_ms=np.full(b, NOMINAL_DURATION_MS, np.int64),
        reason_end=np.zeros(b, np.int8),
        saved=np.zeros(b, bool),
        position=np.zeros(b, np.int32),
        censored=np.zeros(b, bool),
        track_id=np.zeros(b, np.int32),
        end_ms=np.zeros(b, np.int64),
        partition=np.zeros(b, np.int32),
        request_key=np.zeros(b, np.uint64),
        ts_ms=np.zeros(b, np.int64),
        history=np.zeros((b, engine.history_length, engine.history_dim), np.float32),
    )
    model, *_ = update_model(engine, state.model, rows)
    if predicts:
        predict_model(engine, model, np.zeros((1, f), np.float32), np.zeros(1, np.int32))
    columns: list[np.ndarray] = [
        np.zeros((1, engine.d_user), np.float32),
        np.zeros((1, engine.d_track), np.float32),
        np.zeros(1, np.int32),
        np.zeros(1, np.int32),
        np.zeros(1, np.float32),
        np.ones(1, np.float32),
        np.zeros(1, bool),  # masked out: the update changes nothing
    ]
    policy, pending = update_policy(engine, state.policy, columns, state.pending)
    policy, _ = update_policy(engine, policy, columns, pending)
    jax.block_until_ready(policy)


def slate_features(context: F32, features: F32) -> F32:
    """``rewards.interaction_features`` of every shown position of ``n`` slates, row-major.

    The same values bit for bit as ``interaction_features(np.repeat(context, s, axis=0),
    features.reshape(n * s, -1), np.tile(np.arange(s), n))`` (tested), written straight into one
    buffer: no repeated contexts, outer-product temporaries or final concatenation (this runs
    on every shown track of every impression, so each copy saved counts).

    Args:
        context: ``(n, d_user)`` float32 request contexts.
        features: ``(n, s, d_track)`` float32 features of the shown tracks.

    Returns:
        ``(n * s, n_interaction_features(d_user, d_track))`` float32.
    """
    n, s, dt = features.shape
    du = context.shape[1]
    outer_at, onehot_at = du + dt, du + dt + du * dt
    out = np.empty((n, s, onehot_at + N_POSITIONS), np.float32)
    out[:, :, :du] = context[:, None, :]
    out[:, :, du:outer_at] = features
    outer = out[:, :, outer_at:onehot_at].reshape(n, s, du, dt)  # a view: one axis split
    # The products in a contiguous temporary, then scaled into the strided block: one pass over
    # the block instead of a write and a read-modify-write (the same two float32 roundings).
    product = np.multiply(
        np.asarray(context, np.float32)[:, None, :, None],
        np.asarray(features, np.float32)[:, :, None, :],
    )
    np.multiply(product, np.float32(np.sqrt(du)), out=outer)
    out[:, :, onehot_at:] = 0.0
    positions = np.arange(s)
    out[:, positions, onehot_at + np.minimum(positions, N_POSITIONS - 1)] = 1.0
    return out.reshape(n * s, -1)


def raw_rewards(engine: Engine, plays: Plays) -> F32:
    """Each play's composite reward from the outcome alone (what the join aggregates)."""
    o = rewards.Outcomes(
        features=np.zeros((plays.payload.size, 1), np.float32),
        ms_played=plays.ms_played,
        duration_ms=plays.duration_ms,
        reason_end=plays.reason_end,
        saved=plays.saved,
        position=np.zeros(plays.payload.size, np.int32),
        censored=plays.censored,
        mask=np.ones(plays.payload.size, bool),
    )
    return np.asarray(engine.composite.raw(o), np.float32)


_FILL = (0.0, 0.0, 0, 0, 0.0, 1.0, False)  # per Feedback field: padding rows are masked out


_delta = jax.jit(linear.delta, static_argnames="id_ridge")
_add = jax.jit(linear.add_deltas)
merge_delta = jax.jit(linear.merge)


def zero_delta(policy_state: Any) -> Any:
    """An empty delta shaped like ``policy_state``'s statistics (linear policies only)."""
    return linear.empty_delta(policy_state)


def update_policy(
    engine: Engine, policy_state: Any, columns: list[np.ndarray], pending: Any = None
) -> tuple[Any, Any]:
    """Apply feedback in chunks of ``UPDATE_CHUNK`` rows, padded in numpy so jit compiles once.

    With ``pending`` (a ``LinearDelta``), each chunk's additive statistics are added to it too,
    for the other workers of a scaled-out group; returns ``(policy_state, pending)``.
    """
    n = int(columns[-1].shape[0])
    for lo in range(0, n, UPDATE_CHUNK):
        chunk = []
        for col, fill in zip(columns, _FILL, strict=True):
            part = col[lo : lo + UPDATE_CHUNK]
            if part.shape[0] < UPDATE_CHUNK:
                pad = np.full(
                    (UPDATE_CHUNK - part.shape[0], *part.shape[1:]), fill, dtype=part.dtype
                )
                part = np.concatenate([part, pad])
            chunk.append(part)  # numpy: checked on the host as it is, moved once by jit
        fb = Feedback(*chunk)
        if pending is not None:
            id_ridge = float(engine.policy.spec.params["id_ridge"])
            pending = _add(pending, _delta(policy_state, fb, id_ridge=id_ridge))
        policy_state = engine.policy.update(policy_state, fb)
    return policy_state, pending


def joined_model_rows(
    engine: Engine,
    side: Side,
    side_rows: npt.NDArray[np.int64],
    closed: join.Closed,
    joined: join.JoinedOutcomes,
    plays: Plays,
    *,
    partition: int,
    history: History | None = None,
) -> tuple[ModelRows, History | None, int]:
    """The reward model's training rows for the joined plays of one closed batch of a partition.

    With a reward model that reads listening history (``engine.history_length``), each row gets
    its listener's plays before it from ``history``, the partition's table, in learning order
    (``streaming.core.history.attach``). Returns the rows, the table with them appended (None
    without a history), and how many listeners left the table to stay within its capacity.
    """
    r = side_rows[joined.row]
    pos = joined.position.astype(np.int64)
    p = np.searchsorted(plays.payload, joined.payload)
    end_ms = closed.ts_ms[joined.row].astype(np.int64) + np.int64(engine.join_config.window_ms)
    request_key = joined.request_key.astype(np.uint64)
    ts_ms = joined.ts_ms.astype(np.int64)
    order = np.lexsort((ts_ms, pos, request_key, end_ms))  # the learning order (release_*)
    r, pos, p = r[order], pos[order], p[order]
    end_ms, request_key, ts_ms = end_ms[order], request_key[order], ts_ms[order]
    x = rewards.interaction_features(side.context[r], side.features[r, pos], pos.astype(np.int32))
    rows = ModelRows(
        features=x,
        ms_played=plays.ms_played[p],
        duration_ms=plays.duration_ms[p],
        reason_end=plays.reason_end[p],
        saved=plays.saved[p],
        position=pos.astype(np.int32),
        censored=plays.censored[p],
        track_id=side.action[r, pos],
        end_ms=end_ms,
        partition=np.full(pos.size, partition, np.int32),
        request_key=request_key,
        ts_ms=ts_ms,
        history=np.zeros((pos.size, engine.history_length, engine.history_dim), np.float32),
    )
    if not engine.history_length:
        return rows, None, 0
    extra = side.features[r, pos] if engine.history_dim > HISTORY_DIM else None
    entries = history_entries(
        rows.ms_played,
        rows.duration_ms,
        rows.reason_end,
        rows.censored,
        rows.saved,
        np.ones(pos.size, bool),
        extra,
    )
    h, e = engine.history_length, engine.history_dim
    table = empty_history(h, e) if history is None else fit_history(history, h, e)
    table, seen, evicted = attach(
        table, plays.listener[p], ts_ms, entries, engine.history_listeners
    )
    return rows._replace(history=seen), table, evicted


def _release(
    rows: _Queued, frontier_ms: int, queue_max: int, order: tuple[str, ...]
) -> tuple[_Queued, _Queued, int]:
    """Split queued rows into those whose ``end_ms`` the frontier has reached, sorted by the
    columns ``order`` names (first name first), and the rest; past ``queue_max`` waiting rows,
    the oldest are released early. Returns ``(released, still_queued, released_early)``."""
    n = rows.end_ms.size
    ready = rows.end_ms <= frontier_ms
    early = 0
    waiting = n - int(ready.sum())
    if waiting > queue_max:
        early = waiting - queue_max
        oldest = np.lexsort((rows.request_key, rows.partition, rows.end_ms))
        held = oldest[~ready[oldest]][:early]
        ready[held] = True
    take = np.flatnonzero(ready)
    columns = rows._asdict()
    sort = np.lexsort(tuple(columns[name][take] for name in reversed(order)))
    released = type(rows)._make(x[take[sort]] for x in rows)
    rest = type(rows)._make(x[~ready] for x in rows)
    return released, rest, early


def release_model_rows(rows: ModelRows, frontier_ms: int) -> tuple[ModelRows, ModelRows, int]:
    """Split queued rows into those event time has released, in learning order, and the rest.

    A row is released once ``frontier_ms``, the smallest join watermark of the worker's
    partitions, has reached the end of its impression's window. Every row whose window ends at or
    before the frontier has closed by then in its partition, and none can close later (its
    impression or outcome would be late), so the released rows, sorted by (window end, partition,
    impression key, position, outcome time), always continue one and the same sequence: the
    reward model's mini-batches do not depend on how the partitions' streams were cut into polls
    or interleaved. Rows beyond ``MODEL_QUEUE_MAX`` are released early, oldest window first, and
    counted (a partition that stays idle holds the frontier back; only then can the order depend
    on timing, as the join's own capacity limits can).

    Returns:
        ``(released, still_queued, released_early)``.
    """
    return _release(
        rows,
        frontier_ms,
        MODEL_QUEUE_MAX,
        ("end_ms", "partition", "request_key", "position", "ts_ms"),
    )


def release_policy_rows(rows: PolicyRows, frontier_ms: int) -> tuple[PolicyRows, PolicyRows, int]:
    """``release_model_rows`` for the policy's feedback: a row is released once the frontier has
    reached the end of its window, sorted by (window end, partition, impression key, position);
    past ``POLICY_QUEUE_MAX`` waiting rows the oldest are released early, and counted."""
    return _release(
        rows, frontier_ms, POLICY_QUEUE_MAX, ("end_ms", "partition", "request_key", "position")
    )


def learn_policy_rows(
    engine: Engine, policy_state: Any, rows: PolicyRows, frontier_ms: int, pending: Any = None
) -> tuple[Any, Any, PolicyRows]:
    """Learn released ``rows`` (``release_policy_rows``'s order) in the updates that one cut of
    that sequence makes, whatever the polls: an update is ``UPDATE_CHUNK`` rows of one interval of
    ``engine.update_every_ms`` (by window end), or the last rows of an interval that the frontier
    has passed. Returns the policy, ``pending`` and the rows not learned yet (an update still
    filling, and every row after it), which stay first in the queue."""
    n = rows.end_ms.size
    if not n:
        return policy_state, pending, rows
    every = engine.update_every_ms
    interval = rows.end_ms // every if every > 0 else np.zeros(n, np.int64)
    starts = np.flatnonzero(np.r_[True, interval[1:] != interval[:-1]])
    ends = [*starts[1:].tolist(), n]
    done = 0
    for lo, hi in zip(starts.tolist(), ends, strict=True):
        passed = every <= 0 or (int(interval[lo]) + 1) * every - 1 <= frontier_ms
        stop = hi if passed else lo + (hi - lo) // UPDATE_CHUNK * UPDATE_CHUNK
        if stop > lo:
            sl = slice(lo, stop)
            policy_state, pending = update_policy(
                engine,
                policy_state,
                [
                    rows.context[sl],
                    rows.features[sl],
                    rows.action[sl],
                    rows.position[sl],
                    rows.reward[sl],
                    rows.propensity[sl],
                    np.ones(stop - lo, bool),
                ],
                pending,
            )
        done = stop
        if stop < hi:  # the interval is still filling: it and everything after it wait
            break
    rest = PolicyRows._make(x[done:] for x in rows)
    return policy_state, pending, rest


def update_model(
    engine: Engine, model: Any, rows: ModelRows, *, predictions: bool = False
) -> tuple[Any, ModelRows, float, int, ModelPlays | None]:
    """One update per full ``MODEL_BATCH`` of queued rows; returns the model, the rest still
    queued, the loss sum and the rows used, and with ``predictions`` the plays it learned from
    with the model's prediction for each just before its update (else None)."""
    n = rows.ms_played.shape[0]
    full = n - n % MODEL_BATCH
    loss_sum, used = 0.0, 0
    metrics_of_each: list[tuple[Any, Any]] = []
    predicted: list[tuple[Any, Any]] = []
    reads = engine.history_length > 0
    for lo in range(0, full, MODEL_BATCH):
        sl = slice(lo, lo + MODEL_BATCH)
        if predictions:
            inputs = rewards.Inputs(
                rows.features[sl],
                rows.duration_ms[sl],
                rows.track_id[sl],
                rows.history[sl] if reads else None,
            )
            pred = engine.reward_model.predict(model, inputs)
            predicted.append((pred.skip, pred.complete))
        batch = rewards.Outcomes(
            features=rows.features[sl],
            ms_played=rows.ms_played[sl],
            duration_ms=rows.duration_ms[sl],
            reason_end=rows.reason_end[sl],
            saved=rows.saved[sl],
            position=rows.position[sl],
            censored=rows.censored[sl],
            mask=np.ones(MODEL_BATCH, bool),
            track_id=rows.track_id[sl],
            history=rows.history[sl] if reads else None,
        )
        model, metrics = engine.reward_model.update(model, batch)
        metrics_of_each.append((metrics.loss, metrics.n_used))
    # Read once after every update is dispatched (each read waits for XLA): the same sums, in
    # the same order, as reading each batch's metrics after its update.
    for loss, k in jax.device_get(metrics_of_each):
        loss_sum += float(loss) * int(k)
        used += int(k)
    rest = ModelRows._make(x[full:] for x in rows)
    if not predictions:
        return model, rest, loss_sum, used, None
    got = jax.device_get(predicted)
    plays = ModelPlays(
        ts_ms=rows.ts_ms[:full],
        request_key=rows.request_key[:full],
        position=rows.position[:full],
        track_id=rows.track_id[:full],
        ms_played=rows.ms_played[:full],
        duration_ms=rows.duration_ms[:full],
        reason_end=rows.reason_end[:full],
        saved=rows.saved[:full],
        censored=rows.censored[:full],
        p_skip=np.concatenate(
            [np.zeros((0, 3), np.float32), *(np.asarray(a, np.float32) for a, _ in got)]
        ),
        p_complete=np.concatenate(
            [np.zeros(0, np.float32), *(np.asarray(b, np.float32) for _, b in got)]
        ),
    )
    return model, rest, loss_sum, used, plays


def final_rewards(
    engine: Engine,
    side: Side,
    side_rows: npt.NDArray[np.int64],
    closed: join.Closed,
    joined: join.JoinedOutcomes,
    plays: Plays,
) -> tuple[F32, npt.NDArray[np.bool_]]:
    """The composite reward per (closed impression, position), and which positions to learn from.

    A position whose play was censored (logout, session end, error) is left out: the listener
    did not choose how it ended, so it says nothing of their taste (and leaving it out, rather
    than substituting a model guess, keeps the policy's statistics exactly reproducible).
    """
    reward = closed.reward.astype(np.float32).copy()
    has = ~closed.defaulted
    censored = np.zeros(reward.shape, bool)
    if joined.payload.size:
        p = np.searchsorted(plays.payload, joined.payload)
        np.logical_or.at(
            censored, (joined.row, joined.position.astype(np.int64)), plays.censored[p]
        )
    if engine.composite.kind == "denoised":
        prov = side.provisional[side_rows]
        mixed = engine.composite.shrink * reward + (1.0 - engine.composite.shrink) * prov
        reward = np.where(has, mixed, reward)
    return reward, side.shown[side_rows] & ~censored
