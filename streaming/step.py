"""The functional core of the daemon: ``step(engine, state, batches) -> (state, Effects)``, no I/O.

One step takes decoded impression and outcome batches (with the offsets they end at) and:

1. keeps what the learners need of each new impression (context, the shown tracks' features,
   ids and logged propensities) in a side table; with the ``denoised`` composite it also asks
   the reward model for its prequential prediction of every shown track (the *provisional*
   reward, made before any outcome is seen; no other kind uses it, so none pays for it);
2. gives each outcome its raw composite reward (``CompositeReward.raw``) and feeds both streams
   to the reward-window join;
3. for every impression whose window closed: updates the reward model on the joined plays
   (scored against the predictions made at impression time), computes the *final* composite
   reward per shown position (the raw reward aggregated by the join; a mix of it and the
   provisional one for the ``denoised`` kind; the default reward where no play came), and
   updates the policy with one feedback row per shown position whose play was not censored.

Everything the shell must do afterwards (dead letters, late rows, metrics) comes back as values.
Given the same events, the learned state does not depend on how they were cut into batches: the
join guarantees it for the closed records, the reward model sees its updates in closing order,
and the linear policies' statistics are sums (only floating-point order can differ).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

import rewards
from bandits import Feedback, Policy, linear
from rewards.features import N_POSITIONS
from rewards.survival import survival_model
from streaming import join
from streaming.events import REASONS_END, ImpressionBatch, OutcomeBatch, key64

UPDATE_CHUNK = 2048
"""Feedback rows per policy update call; the last chunk is padded, so jit compiles once."""
MODEL_CHUNK = 4096
"""Rows per reward-model predict call (padded likewise)."""
MODEL_BATCH = 1024
"""Rows per reward-model update. Joined plays queue up in closing order (which does not depend on
how the stream was cut into batches) and every full mini-batch is one update, so the model's state
is reproducible too: a restarted worker makes exactly the updates an uninterrupted one made."""
NOMINAL_DURATION_MS = 210_000
"""Impressions carry no durations: predictions at impression time assume the catalogue median."""

TopicPartitionKey = tuple[str, int]
T = TypeVar("T", bound=tuple[Any, ...])
F32 = npt.NDArray[np.float32]

# reason_end of the event contract -> the reward models' five codes, and whether it censors.
# Listener-initiated switches count as forward skips; system ends (remote, errors, app load)
# and logouts cut the play off: censored, not a skip.
_R = rewards.REASONS
_REASON_MAP = {
    "trackdone": (_R.index("trackdone"), False),
    "fwdbtn": (_R.index("fwdbtn"), False),
    "backbtn": (_R.index("backbtn"), False),
    "endplay": (_R.index("endplay"), True),
    "logout": (_R.index("logout"), True),
    "clickrow": (_R.index("fwdbtn"), False),
    "clickside": (_R.index("fwdbtn"), False),
    "playbtn": (_R.index("fwdbtn"), False),
    "uriopen": (_R.index("fwdbtn"), False),
    "popup": (_R.index("fwdbtn"), False),
    "remote": (_R.index("endplay"), True),
    "trackerror": (_R.index("endplay"), True),
    "appload": (_R.index("endplay"), True),
}
REASON_CODE = np.array([_REASON_MAP[r][0] for r in REASONS_END], np.int8)
REASON_CENSORS = np.array([_REASON_MAP[r][1] for r in REASONS_END], bool)


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

    @property
    def slate_size(self) -> int:
        return self.join_config.slate_size

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


class ModelRows(NamedTuple):
    """Joined plays waiting to fill the reward model's next fixed-size mini-batch."""

    features: F32  # (r, f)
    ms_played: npt.NDArray[np.int64]
    duration_ms: npt.NDArray[np.int64]
    reason_end: npt.NDArray[np.int8]
    saved: npt.NDArray[np.bool_]
    position: npt.NDArray[np.int32]
    censored: npt.NDArray[np.bool_]
    track_id: npt.NDArray[np.int32]


class WorkerState(NamedTuple):
    """Everything a worker checkpoints together, atomically."""

    policy: Any
    model: rewards.ModelState
    join: Mapping[int, join.JoinState]  # one per co-partitioned partition number
    side: Side
    plays: Plays
    model_rows: ModelRows
    next_payload: int
    offsets: Mapping[TopicPartitionKey, int]  # next offset to read, per owned partition
    counters: Mapping[str, int]
    sums: Mapping[str, float]  # model log loss sums, reward sums
    reward_by_policy: Mapping[int, tuple[float, int]]  # policy_key -> (sum top reward, count)
    pending: Any = None  # LinearDelta learned here since the last sealed delta (scale-out)
    outbox: Any = None  # the sealed LinearDelta of sequence ``delta_seq``, until published
    delta_seq: int = 0  # sequence number of this worker's newest sealed delta
    seen: Mapping[str, int] = {}  # other worker id -> newest delta sequence folded in


class Effects(NamedTuple):
    """What the shell must act on after a step."""

    rejected_impressions: join.RejectedImpressions
    rejected_outcomes: join.RejectedOutcomes
    closed: int
    feedback_rows: int
    records: list[Any]  # parquet_log.JoinedRecords of the closed impressions, when logging


def _empty(engine: Engine) -> tuple[Side, Plays]:
    s, du, dt = engine.slate_size, engine.d_user, engine.d_track
    side = Side(
        payload=np.zeros(0, np.int64),
        context=np.zeros((0, du), np.float32),
        features=np.zeros((0, s, dt), np.float32),
        action=np.zeros((0, s), np.int32),
        propensity=np.ones((0, s), np.float32),
        shown=np.zeros((0, s), bool),
        provisional=np.zeros((0, s), np.float32),
        policy_key=np.zeros(0, np.uint64),
        log=_log_rows(engine, None),
    )
    plays = Plays(
        payload=np.zeros(0, np.int64),
        ms_played=np.zeros(0, np.int64),
        duration_ms=np.zeros(0, np.int64),
        reason_end=np.zeros(0, np.int8),
        saved=np.zeros(0, bool),
        censored=np.zeros(0, bool),
    )
    return side, plays


def _empty_rows(engine: Engine) -> ModelRows:
    return ModelRows(
        features=np.zeros((0, engine.n_model_features), np.float32),
        ms_played=np.zeros(0, np.int64),
        duration_ms=np.zeros(0, np.int64),
        reason_end=np.zeros(0, np.int8),
        saved=np.zeros(0, bool),
        position=np.zeros(0, np.int32),
        censored=np.zeros(0, bool),
        track_id=np.zeros(0, np.int32),
    )


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


PREDICT_SMALL = 1024
"""Predict calls of at most this many rows are padded to it, larger ones to ``MODEL_CHUNK``: two
compilations in all (each costs about as much as a few hundred padded predictions)."""


def _bucket(n: int, chunk: int) -> int:
    return PREDICT_SMALL if n <= PREDICT_SMALL else chunk


def _predict(
    engine: Engine, state: Any, x: F32, track_id: npt.NDArray[np.int32]
) -> rewards.Predictions:
    """The model's predictions for ``x``, in padded chunks (few compilations)."""
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
        pred = engine.reward_model.predict(state, rewards.Inputs(xp, dur, ids))
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
    predicts = engine.composite.kind == "denoised"  # only then does a step predict (_side_rows)
    for n in (1, PREDICT_SMALL + 1) if predicts else ():  # one call per predict size (_bucket)
        _predict(engine, state.model, np.zeros((n, f), np.float32), np.zeros(n, np.int32))
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
    )
    model, *_ = _update_model(engine, state.model, rows)
    if predicts:
        _predict(engine, model, np.zeros((1, f), np.float32), np.zeros(1, np.int32))
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
    buffer: no repeated contexts, outer-product temporaries or final concatenation (about 3x
    faster; this runs on every shown track of every impression).

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


def _side_rows(
    engine: Engine, model: Any, imps: ImpressionBatch, payload: npt.NDArray[np.int64]
) -> Side:
    n, s = imps.n, engine.slate_size
    width = min(s, imps.shown.shape[1])
    shown_idx = np.zeros((n, s), np.int64)
    shown_idx[:, :width] = np.maximum(imps.shown[:, :width], 0)
    shown = np.zeros((n, s), bool)
    shown[:, :width] = imps.shown_mask[:, :width]
    prop = np.ones((n, s), np.float32)
    prop[:, :width] = imps.propensity[:, :width]
    rows = np.arange(n)[:, None]
    feats = imps.candidate_features[rows, shown_idx].astype(np.float32)
    ids = (imps.candidate_key[rows, shown_idx] % np.uint64(engine.id_space)).astype(np.int32)
    prov = np.zeros((n, s), np.float32)
    if engine.composite.kind == "denoised":  # the only kind that mixes it into its reward
        # Prequential: predict every shown track now, before any of its outcomes exist.
        x = slate_features(imps.context, feats)
        pred = _predict(engine, model, x, ids.reshape(-1))
        prov = np.asarray(
            engine.composite.provisional(pred, np.full(n * s, NOMINAL_DURATION_MS, np.int64)),
            np.float32,
        ).reshape(n, s)
    return Side(
        payload=payload,
        context=imps.context,
        features=feats,
        action=ids,
        propensity=prop,
        shown=shown,
        provisional=np.nan_to_num(prov),
        policy_key=key64(imps.policy.tolist()),
        log=_log_rows(engine, imps),
    )


def _log_rows(engine: Engine, imps: ImpressionBatch | None) -> ImpressionBatch:
    """The impression columns the Parquet log needs, candidates cut to ``engine.log_candidates``."""
    k = engine.log_candidates
    dt = engine.d_track if engine.log_features else 0
    s = engine.slate_size
    if imps is None or k == 0:
        n = 0 if imps is None else imps.n
        du = engine.d_user
        k = 0  # candidate columns grow to the widest batch seen (``concat_side``)
        if engine.log_candidates == 0:  # no log: keep zero-width columns only
            dt, s, du = 0, 0, 0
        u = np.zeros(n, "<U1")
        return ImpressionBatch(
            request_id=u,
            request_key=np.zeros(n, np.uint64),
            user_id=u,
            surface=u,
            ts_ms=np.zeros(n, np.int64),
            context=np.zeros((n, du), np.float32),
            candidate_key=np.zeros((n, k), np.uint64),
            candidate_features=np.zeros((n, k, dt), np.float32),
            candidate_mask=np.zeros((n, k), bool),
            shown=np.full((n, s), -1, np.int32),
            propensity=np.ones((n, s), np.float32),
            shown_mask=np.zeros((n, s), bool),
            policy=u,
            policy_version=u,
        )
    # Candidates are kept as wide as the batch needs (at most ``k``), not padded to ``k``: the
    # log writes only the real ones, and the side table is copied on every step.
    n, kk = imps.n, min(k, imps.candidate_key.shape[1])
    ck = np.ascontiguousarray(imps.candidate_key[:, :kk])
    cm = np.ascontiguousarray(imps.candidate_mask[:, :kk])
    cf = (
        np.ascontiguousarray(imps.candidate_features[:, :kk], np.float32)
        if dt
        else np.zeros((n, kk, 0), np.float32)
    )
    ss = min(s, imps.shown.shape[1])
    shown = np.full((n, s), -1, np.int32)
    shown[:, :ss] = np.where(imps.shown[:, :ss] < kk, imps.shown[:, :ss], -1)
    prop = np.ones((n, s), np.float32)
    prop[:, :ss] = imps.propensity[:, :ss]
    smask = np.zeros((n, s), bool)
    smask[:, :ss] = imps.shown_mask[:, :ss] & (shown[:, :ss] >= 0)
    return imps._replace(
        candidate_key=ck,
        candidate_features=cf,
        candidate_mask=cm,
        shown=shown,
        propensity=prop,
        shown_mask=smask,
        context=imps.context,
    )


def _plays(outs: OutcomeBatch, payload: npt.NDArray[np.int64]) -> Plays:
    return Plays(
        payload=payload,
        ms_played=outs.ms_played,
        duration_ms=outs.duration_ms,
        reason_end=REASON_CODE[outs.reason_end],
        saved=outs.saved | outs.liked | outs.added_to_playlist,
        censored=REASON_CENSORS[outs.reason_end],
    )


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


def _partitions(part: npt.NDArray[np.int32] | None, n: int) -> npt.NDArray[np.int32]:
    return np.zeros(n, np.int32) if part is None else np.asarray(part, np.int32)


def _concat(a: T, b: T) -> T:
    return type(a)(
        *(
            _concat(x, y) if isinstance(x, tuple) else np.concatenate([x, y])
            for x, y in zip(a, b, strict=True)
        )
    )


def _widen(log: ImpressionBatch, k: int) -> ImpressionBatch:
    """``log`` with its candidate columns padded to width ``k`` (no copy when already that wide)."""
    n, have = log.candidate_key.shape
    if have == k:
        return log
    ck = np.zeros((n, k), np.uint64)
    ck[:, :have] = log.candidate_key
    cm = np.zeros((n, k), bool)
    cm[:, :have] = log.candidate_mask
    cf = np.zeros((n, k, log.candidate_features.shape[2]), np.float32)
    cf[:, :have] = log.candidate_features
    return log._replace(candidate_key=ck, candidate_mask=cm, candidate_features=cf)


def concat_side(a: Side, b: Side) -> Side:
    """Side rows ``a`` then ``b``; the log's candidate columns padded to the wider of the two."""
    k = max(a.log.candidate_key.shape[1], b.log.candidate_key.shape[1])
    return _concat(a._replace(log=_widen(a.log, k)), b._replace(log=_widen(b.log, k)))


def _concat_all(parts: list[T]) -> T:
    """``_concat`` over many tables at once (one copy, not one per table)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return type(first)(
        *(
            _concat_all(list(cols)) if isinstance(cols[0], tuple) else np.concatenate(cols)
            for cols in zip(*parts, strict=True)
        )
    )


def _take(t: T, keep: npt.NDArray[Any]) -> T:
    return type(t)(
        *(_take(x, keep) if isinstance(x, tuple) else join.take_rows(x, keep) for x in t)
    )


def _prune(t: T, live: npt.NDArray[np.int64]) -> T:
    """The rows of a payload-keyed table (``Side``, ``Plays``) whose payload is in ``live``."""
    payload: npt.NDArray[np.int64] = t[0]
    keep = np.isin(payload, live)
    return t if keep.all() else _take(t, keep)


def _bump(counters: Mapping[str, Any], **more: float) -> dict[str, Any]:
    out = dict(counters)
    for k, v in more.items():
        out[k] = out.get(k, 0) + v
    return out


_FILL = (0.0, 0.0, 0, 0, 0.0, 1.0, False)  # per Feedback field: padding rows are masked out


_delta = jax.jit(linear.delta)
_add = jax.jit(linear.add_deltas)
merge_delta = jax.jit(linear.merge)


def zero_delta(policy_state: Any) -> Any:
    """An empty delta shaped like ``policy_state``'s statistics (linear policies only)."""
    return linear.LinearDelta(
        precision=jnp.zeros_like(policy_state.precision),
        b=jnp.zeros_like(policy_state.b),
        id_count=jnp.zeros_like(policy_state.id_count),
        id_resid=jnp.zeros_like(policy_state.id_resid),
        n=jnp.zeros((), jnp.int32),
    )


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
            pending = _add(pending, _delta(policy_state, fb))
        policy_state = engine.policy.update(policy_state, fb)
    return policy_state, pending


def _joined_rows(
    side: Side, side_rows: npt.NDArray[np.int64], joined: join.JoinedOutcomes, plays: Plays
) -> ModelRows:
    """The reward model's training rows for the joined plays of one closed batch."""
    r = side_rows[joined.row]
    pos = joined.position.astype(np.int64)
    p = np.searchsorted(plays.payload, joined.payload)
    x = rewards.interaction_features(side.context[r], side.features[r, pos], pos.astype(np.int32))
    return ModelRows(
        features=x,
        ms_played=plays.ms_played[p],
        duration_ms=plays.duration_ms[p],
        reason_end=plays.reason_end[p],
        saved=plays.saved[p],
        position=pos.astype(np.int32),
        censored=plays.censored[p],
        track_id=side.action[r, pos],
    )


def _update_model(engine: Engine, model: Any, rows: ModelRows) -> tuple[Any, ModelRows, float, int]:
    """One update per full ``MODEL_BATCH`` of queued rows; returns the rest still queued."""
    n = rows.ms_played.shape[0]
    full = n - n % MODEL_BATCH
    loss_sum, used = 0.0, 0
    for lo in range(0, full, MODEL_BATCH):
        sl = slice(lo, lo + MODEL_BATCH)
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
        )
        model, metrics = engine.reward_model.update(model, batch)
        k = int(metrics.n_used)
        loss_sum += float(metrics.loss) * k
        used += k
    rest = ModelRows._make(x[full:] for x in rows)
    return model, rest, loss_sum, used


def _final_rewards(
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
    effects: list[join.JoinEffects] = []
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
            effects.append(eff)
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
            effects.append(eff)
        counters = _bump(counters, outcomes=n, outcomes_beyond_slate=int((~keep).sum()))
    for p in sorted(joins):
        joins[p], eff = join.advance(joins[p], cfg, watermark_ms=watermark_ms)
        effects.append(eff)

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
    for e in effects:
        closed = e.closed
        if closed.payload.size == 0:
            continue
        rows = np.searchsorted(side.payload, closed.payload)
        if e.joined.payload.size:
            new_rows.append(_joined_rows(side, rows, e.joined, plays))
        reward, learn = _final_rewards(engine, side, rows, closed, e.joined, plays)
        closed_rows.append(rows)
        closed_reward.append(reward)
        closed_learn.append(learn)
        closed_parts.append(closed)
    # The reward model first: reading its metrics waits for it, and the policy update dispatched
    # after it then runs on while the shell polls and decodes the next batch.
    model, model_rows, loss_sum, used = _update_model(engine, model, _concat_all(new_rows))
    sums = _bump(sums, model_loss_sum=loss_sum, model_rows=used)
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
    return new_state, Effects(
        rejected_impressions=join.RejectedImpressions(
            *(
                np.concatenate(c)
                for c in zip(*(e.rejected_impressions for e in effects), strict=True)
            )
        ),
        rejected_outcomes=join.RejectedOutcomes(
            *(np.concatenate(c) for c in zip(*(e.rejected_outcomes for e in effects), strict=True))
        ),
        closed=n_closed,
        feedback_rows=n_rows,
        records=records,
    )


# ---------------------------------------------------------------------------------- persistence
def to_arrays(engine: Engine, state: WorkerState) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The state as named arrays plus a JSON-able header part (offsets, counters)."""
    from bandits import save

    arrays: dict[str, np.ndarray] = {
        "policy_blob": np.frombuffer(save(engine.policy, state.policy), dtype=np.uint8),
        "next_payload": np.array(state.next_payload, np.int64),
    }
    leaves = jax.tree.leaves(state.model)
    arrays.update({f"model/{i:04d}": np.asarray(x) for i, x in enumerate(leaves)})
    for p, js in state.join.items():
        arrays.update({f"join/{p}/{k}": v for k, v in join.to_arrays(js).items()})
    arrays.update({f"side/{k}": v for k, v in state.side._asdict().items() if k != "log"})
    arrays.update({f"side/log/{k}": v for k, v in state.side.log._asdict().items()})
    arrays.update({f"plays/{k}": v for k, v in state.plays._asdict().items()})
    arrays.update({f"model_rows/{k}": v for k, v in state.model_rows._asdict().items()})
    for name, delta in (("pending", state.pending), ("outbox", state.outbox)):
        if delta is not None:
            arrays.update({f"{name}/{k}": np.asarray(v) for k, v in delta._asdict().items()})
    header = {
        "offsets": [[t, p, o] for (t, p), o in sorted(state.offsets.items())],
        "counters": dict(state.counters),
        "sums": dict(state.sums),
        "reward_by_policy": [[str(k), s, c] for k, (s, c) in state.reward_by_policy.items()],
        "reward_model": {
            "name": engine.reward_model.spec.name,
            "version": engine.reward_model.spec.version,
            "params": dict(engine.reward_model.spec.params),
            "n_leaves": len(leaves),
        },
        "composite_reward": engine.composite.to_spec(),
        "delta_seq": state.delta_seq,
        "seen": dict(state.seen),
    }
    return arrays, header


def _delta_from_arrays(arrays: Mapping[str, np.ndarray], name: str) -> Any:
    if f"{name}/precision" not in arrays:
        return None
    return linear.LinearDelta(
        **{f: jnp.asarray(arrays[f"{name}/{f}"]) for f in linear.LinearDelta._fields}
    )


def _joins_from_arrays(arrays: Mapping[str, np.ndarray]) -> dict[int, join.JoinState]:
    parts: dict[int, dict[str, np.ndarray]] = {}
    for name, value in arrays.items():
        if name.startswith("join/"):
            _, p, key = name.split("/", 2)
            parts.setdefault(int(p), {})[key] = value
    return {p: join.from_arrays(a) for p, a in sorted(parts.items())}


def from_arrays(
    engine: Engine, arrays: Mapping[str, np.ndarray], header: Mapping[str, Any]
) -> WorkerState:
    """Rebuild a state written by ``to_arrays``; another policy, model or reward is a clear error."""
    from bandits import load

    spec = header["reward_model"]
    mine = engine.reward_model.spec
    if (spec["name"], spec["version"]) != (mine.name, mine.version):
        raise ValueError(
            f"checkpoint holds reward model {spec['name']} v{spec['version']}, "
            f"the config runs {mine.name} v{mine.version}"
        )
    if header["composite_reward"] != engine.composite.to_spec():
        raise ValueError(
            f"checkpoint was learned with reward {header['composite_reward']}, "
            f"the config declares {engine.composite.to_spec()}"
        )
    like = engine.reward_model.init(jax.random.key(engine.seed), engine.n_model_features)
    leaves, treedef = jax.tree.flatten(like)
    if spec["n_leaves"] != len(leaves):
        raise ValueError(
            f"checkpoint's reward-model state has {spec['n_leaves']} arrays, the configured "
            f"{mine.name} model has {len(leaves)}: reward.model_params changed (the checkpoint "
            f"was written with {spec.get('params')}, the config says {dict(mine.params)}); "
            "use the same params or another checkpoint.dir"
        )
    model = jax.tree.unflatten(
        treedef, [jnp.asarray(arrays[f"model/{i:04d}"]) for i in range(len(leaves))]
    )
    policy_state = load(
        engine.policy,
        arrays["policy_blob"].tobytes(),
        like=engine.policy.init(engine.d_user, engine.d_track),
    )
    return WorkerState(
        policy=policy_state,
        model=model,
        join=_joins_from_arrays(arrays),
        side=Side(
            **{f: arrays[f"side/{f}"] for f in Side._fields if f != "log"},
            log=ImpressionBatch(**{f: arrays[f"side/log/{f}"] for f in ImpressionBatch._fields}),
        ),
        plays=Plays(**{f: arrays[f"plays/{f}"] for f in Plays._fields}),
        model_rows=ModelRows(**{f: arrays[f"model_rows/{f}"] for f in ModelRows._fields}),
        next_payload=int(arrays["next_payload"]),
        offsets={(str(t), int(p)): int(o) for t, p, o in header["offsets"]},
        counters={str(k): v for k, v in header["counters"].items()},
        sums={str(k): float(v) for k, v in header["sums"].items()},
        reward_by_policy={int(k): (float(s), int(c)) for k, s, c in header["reward_by_policy"]},
        pending=_delta_from_arrays(arrays, "pending"),
        outbox=_delta_from_arrays(arrays, "outbox"),
        delta_seq=int(header.get("delta_seq", 0)),
        seen={str(k): int(v) for k, v in header.get("seen", {}).items()},
    )
