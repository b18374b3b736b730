"""The functional core of the daemon: ``step(engine, state, batches) -> (state, Effects)``, no I/O.

One step takes decoded impression and outcome batches (with the offsets they end at), feeds them
to the reward-window join, turns every closed impression into one feedback row per shown
position, and updates the policy. Everything the shell must do afterwards (dead letters, late
rows, metrics) comes back as values in ``Effects``. Given the same events, the learned state does
not depend on how they were cut into batches (the join guarantees it for the closed records; the
linear policies' statistics are sums, so only floating-point order can differ).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from bandits import Feedback, Policy
from streaming import join
from streaming.events import ImpressionBatch, OutcomeBatch, key64

UPDATE_CHUNK = 2048
"""Feedback rows per policy update call; the last chunk is padded, so jit compiles once."""

TopicPartitionKey = tuple[str, int]


@dataclass(frozen=True)
class Engine:
    """The static half of a worker: the policy's functions and the shapes and settings."""

    policy: Policy
    join_config: join.JoinConfig
    d_user: int
    d_track: int
    id_space: int = 2**31 - 1

    @property
    def slate_size(self) -> int:
        return self.join_config.slate_size


class Side(NamedTuple):
    """What the daemon keeps of each open impression, by payload id (sorted, unique)."""

    payload: npt.NDArray[np.int64]  # (m,)
    context: npt.NDArray[np.float32]  # (m, d_user)
    features: npt.NDArray[np.float32]  # (m, s, d_track) of the shown items
    action: npt.NDArray[np.int32]  # (m, s) shown track ids (hashed into id_space)
    propensity: npt.NDArray[np.float32]  # (m, s)
    shown: npt.NDArray[np.bool_]  # (m, s)
    policy_key: npt.NDArray[np.uint64]  # (m,) key64 of the logging policy's name


class WorkerState(NamedTuple):
    """Everything a worker checkpoints together, atomically."""

    policy: Any
    join: join.JoinState
    side: Side
    next_payload: int
    offsets: Mapping[TopicPartitionKey, int]  # next offset to read, per owned partition
    counters: Mapping[str, int]
    reward_by_policy: Mapping[int, tuple[float, int]]  # policy_key -> (sum top reward, count)


class Effects(NamedTuple):
    """What the shell must act on after a step."""

    rejected_impressions: join.RejectedImpressions
    rejected_outcomes: join.RejectedOutcomes
    closed: int
    feedback_rows: int


def empty_side(engine: Engine) -> Side:
    s, du, dt = engine.slate_size, engine.d_user, engine.d_track
    return Side(
        payload=np.zeros(0, np.int64),
        context=np.zeros((0, du), np.float32),
        features=np.zeros((0, s, dt), np.float32),
        action=np.zeros((0, s), np.int32),
        propensity=np.ones((0, s), np.float32),
        shown=np.zeros((0, s), bool),
        policy_key=np.zeros(0, np.uint64),
    )


def init(engine: Engine) -> WorkerState:
    return WorkerState(
        policy=engine.policy.init(engine.d_user, engine.d_track),
        join=join.init(engine.join_config),
        side=empty_side(engine),
        next_payload=0,
        offsets={},
        counters={},
        reward_by_policy={},
    )


def stream30(outcomes: OutcomeBatch) -> npt.NDArray[np.float32]:
    """The first reward: 1.0 when the track streamed for at least 30 seconds, else 0.0."""
    return (outcomes.ms_played >= 30_000).astype(np.float32)


def _side_rows(engine: Engine, imps: ImpressionBatch, payload: npt.NDArray[np.int64]) -> Side:
    n, s = len(imps), engine.slate_size
    width = min(s, imps.shown.shape[1])
    shown_idx = np.zeros((n, s), np.int64)
    shown_idx[:, :width] = np.maximum(imps.shown[:, :width], 0)
    shown = np.zeros((n, s), bool)
    shown[:, :width] = imps.shown_mask[:, :width]
    prop = np.ones((n, s), np.float32)
    prop[:, :width] = imps.propensity[:, :width]
    rows = np.arange(n)[:, None]
    feats = imps.candidate_features[rows, shown_idx]
    ids = (imps.candidate_key[rows, shown_idx] % np.uint64(engine.id_space)).astype(np.int32)
    return Side(
        payload=payload,
        context=imps.context,
        features=feats.astype(np.float32),
        action=ids,
        propensity=prop,
        shown=shown,
        policy_key=key64([str(p) for p in imps.policy]),
    )


def _concat(a: Side, b: Side) -> Side:
    return Side(*(np.concatenate([x, y]) for x, y in zip(a, b, strict=True)))


def _take(side: Side, keep: npt.NDArray[np.bool_]) -> Side:
    return Side(*(x[keep] for x in side))


def _bump(counters: Mapping[str, int], **more: int) -> dict[str, int]:
    out = dict(counters)
    for k, v in more.items():
        out[k] = out.get(k, 0) + int(v)
    return out


def _feedback(
    engine: Engine, side: Side, rows: npt.NDArray[np.int64], reward: npt.NDArray[np.float32]
) -> list[np.ndarray] | None:
    """Columns of one feedback row per shown position of the closed impressions at ``rows``."""
    i, j = np.nonzero(side.shown[rows])
    if i.size == 0:
        return None
    r = rows[i]
    return [
        side.context[r],
        side.features[r, j],
        side.action[r, j],
        j.astype(np.int32),
        reward[i, j].astype(np.float32),
        side.propensity[r, j],
        np.ones(i.size, dtype=bool),
    ]


_FILL = (0.0, 0.0, 0, 0, 0.0, 1.0, False)  # per Feedback field: padding rows are masked out


def update_policy(engine: Engine, policy_state: Any, columns: list[np.ndarray]) -> Any:
    """Apply feedback in chunks of ``UPDATE_CHUNK`` rows, padded in numpy so jit compiles once."""
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
            chunk.append(jnp.asarray(part))
        policy_state = engine.policy.update(policy_state, Feedback(*chunk))
    return policy_state


def step(
    engine: Engine,
    state: WorkerState,
    impressions: ImpressionBatch | None,
    outcomes: OutcomeBatch | None,
    *,
    offsets: Mapping[TopicPartitionKey, int] | None = None,
    watermark_ms: int | None = None,
) -> tuple[WorkerState, Effects]:
    """Feed one batch of each stream through join and learning.

    Args:
        engine: the worker's static parts.
        state: the state before the batch (not modified).
        impressions: decoded impressions in stream order, or None.
        outcomes: decoded outcomes in stream order, or None.
        offsets: the next offset per partition once this batch is applied (stored in the state).
        watermark_ms: force the join watermark at least this far (idle streams, final flush).

    Returns:
        The new state and the effects for the shell.
    """
    cfg = engine.join_config
    js, side, next_payload = state.join, state.side, state.next_payload
    counters = dict(state.counters)
    rej_imp: list[join.RejectedImpressions] = []
    rej_out: list[join.RejectedOutcomes] = []
    closed_parts: list[join.Closed] = []
    if impressions is not None and len(impressions):
        n = len(impressions)
        payload = np.arange(next_payload, next_payload + n, dtype=np.int64)
        next_payload += n
        side = _concat(side, _side_rows(engine, impressions, payload))
        js, eff = join.add_impressions(
            js, join.JoinImpressions(impressions.request_key, impressions.ts_ms, payload), cfg
        )
        rej_imp.append(eff.rejected_impressions)
        closed_parts.append(eff.closed)
        counters = _bump(counters, impressions=n)
    if outcomes is not None and len(outcomes):
        n = len(outcomes)
        keep = outcomes.position < engine.slate_size
        pos = np.where(keep, outcomes.position, 0).astype(np.int32)
        js, eff = join.add_outcomes(
            js,
            join.JoinOutcomes(
                outcomes.request_key[keep],
                outcomes.ts_ms[keep],
                pos[keep],
                stream30(outcomes)[keep],
                np.flatnonzero(keep).astype(np.int64),
            ),
            cfg,
        )
        rej_out.append(eff.rejected_outcomes)
        closed_parts.append(eff.closed)
        counters = _bump(counters, outcomes=n, outcomes_beyond_slate=int((~keep).sum()))
    js, eff = join.advance(js, cfg, watermark_ms=watermark_ms)
    rej_out.append(eff.rejected_outcomes)
    closed_parts.append(eff.closed)

    policy_state = state.policy
    reward_by_policy = dict(state.reward_by_policy)
    n_closed = n_rows = 0
    for closed in closed_parts:
        if closed.payload.size == 0:
            continue
        rows = np.searchsorted(side.payload, closed.payload)
        fb = _feedback(engine, side, rows, closed.reward)
        if fb is not None:
            policy_state = update_policy(engine, policy_state, fb)
            n_rows += int(fb[-1].shape[0])
        n_closed += int(closed.payload.size)
        top = closed.reward[:, 0].astype(np.float64)
        keys = side.policy_key[rows]
        for k in np.unique(keys).tolist():
            sel = keys == k
            total, count = reward_by_policy.get(int(k), (0.0, 0))
            reward_by_policy[int(k)] = (total + float(top[sel].sum()), count + int(sel.sum()))
        gone = np.zeros(side.payload.size, bool)
        gone[rows] = True
        side = _take(side, ~gone)
    # Impressions the join refused never open: drop their side rows too.
    for rej in rej_imp:
        if rej.payload.size:
            side = _take(side, ~np.isin(side.payload, rej.payload))
    counters = _bump(counters, closed=n_closed, feedback_rows=n_rows)
    new_offsets = dict(state.offsets)
    if offsets:
        new_offsets.update(offsets)
    new_state = WorkerState(
        policy=policy_state,
        join=js,
        side=side,
        next_payload=next_payload,
        offsets=new_offsets,
        counters=counters,
        reward_by_policy=reward_by_policy,
    )
    return new_state, Effects(
        rejected_impressions=_cat_rej_imp(rej_imp),
        rejected_outcomes=_cat_rej_out(rej_out),
        closed=n_closed,
        feedback_rows=n_rows,
    )


def _cat_rej_imp(parts: list[join.RejectedImpressions]) -> join.RejectedImpressions:
    if not parts:
        return join.RejectedImpressions(
            np.zeros(0, np.uint64),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.int8),
        )
    return join.RejectedImpressions(*(np.concatenate(cols) for cols in zip(*parts, strict=True)))


def _cat_rej_out(parts: list[join.RejectedOutcomes]) -> join.RejectedOutcomes:
    return join.RejectedOutcomes(*(np.concatenate(cols) for cols in zip(*parts, strict=True)))


# ---------------------------------------------------------------------------------- persistence
def to_arrays(engine: Engine, state: WorkerState) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The state as named arrays plus a JSON-able header part (offsets, counters)."""
    from bandits import save

    arrays: dict[str, np.ndarray] = {
        "policy_blob": np.frombuffer(save(engine.policy, state.policy), dtype=np.uint8),
        "next_payload": np.array(state.next_payload, np.int64),
    }
    arrays.update({f"join.{k}": v for k, v in join.to_arrays(state.join).items()})
    arrays.update({f"side.{k}": v for k, v in state.side._asdict().items()})
    header = {
        "offsets": [[t, p, o] for (t, p), o in sorted(state.offsets.items())],
        "counters": dict(state.counters),
        "reward_by_policy": [[str(k), s, c] for k, (s, c) in state.reward_by_policy.items()],
    }
    return arrays, header


def from_arrays(
    engine: Engine, arrays: Mapping[str, np.ndarray], header: Mapping[str, Any]
) -> WorkerState:
    """Rebuild a state written by ``to_arrays`` (a policy of another kind is a clear error)."""
    from bandits import load

    policy_state = load(
        engine.policy,
        arrays["policy_blob"].tobytes(),
        like=engine.policy.init(engine.d_user, engine.d_track),
    )
    js = join.from_arrays(
        {k[len("join.") :]: v for k, v in arrays.items() if k.startswith("join.")}
    )
    side = Side(**{f: arrays[f"side.{f}"] for f in Side._fields})
    return WorkerState(
        policy=policy_state,
        join=js,
        side=side,
        next_payload=int(arrays["next_payload"]),
        offsets={(str(t), int(p)): int(o) for t, p, o in header["offsets"]},
        counters={str(k): int(v) for k, v in header["counters"].items()},
        reward_by_policy={int(k): (float(s), int(c)) for k, s, c in header["reward_by_policy"]},
    )
