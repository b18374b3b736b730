"""Closing windows: ``advance``, and how a closed impression's outcomes are aggregated.

``advance`` moves the join watermark, closes every open impression whose window it passed and
settles the pending outcomes it passed as ``OUTCOME_CLOSED`` or ``OUTCOME_ORPHAN``. ``_close``
(also used by ``add_impressions`` to evict) removes impressions and their joined outcomes from
the buffer, aggregates the outcomes per slate position in a canonical order (``_reduce``) and
remembers the closed keys (``_remember``).

Part of the reward-window join: ``streaming.join`` explains its rules and is the module to
import. ``__all__`` lists every name defined here, private ones included, for the other
``join_*`` modules and for the re-exports in ``streaming.join``.
"""

from __future__ import annotations

import numpy as np

from streaming.join.checks import _check_state
from streaming.join.rows import _expand, _group, _minus, _oldest, _set, _take
from streaming.join.state import _JOINED, _OPEN, _PENDING, JoinState, _i64
from streaming.join.types import (
    MAX_TIME_MS,
    NO_TIME_MS,
    OUTCOME_CLOSED,
    OUTCOME_ORPHAN,
    Closed,
    JoinConfig,
    JoinedOutcomes,
    JoinEffects,
    _Array,
    _effects,
    _rejected,
)

__all__ = [
    "_close",
    "_reduce",
    "_remember",
    "_sortable",
    "advance",
]


def _remember(
    state: JoinState, key: _Array, ts: _Array, end: _Array, max_entries: int
) -> JoinState:
    """Add closed impressions (sorted by key) to the key memory, keeping the ``max_entries``
    latest ends."""
    at = np.searchsorted(state.closed_key, key, side="right")
    k = np.insert(state.closed_key, at, key)
    t = np.insert(state.closed_ts_ms, at, ts)
    e = np.insert(state.closed_end_ms, at, end)
    if k.size > max_entries:
        keep = np.ones(k.size, bool)
        keep[_oldest(e, k.size - max_entries)] = False
        k, t, e = k[keep], t[keep], e[keep]
    return state._replace(closed_key=k, closed_ts_ms=t, closed_end_ms=e)


def _sortable(value: _Array) -> _Array:
    """float32 -> uint32 with the same order (IEEE-754 sign flip)."""
    bits = value.view(np.uint32)
    return bits ^ np.where(bits >> 31 == 1, np.uint32(0xFFFFFFFF), np.uint32(0x80000000))


def _reduce(
    config: JoinConfig, flat: _Array, ts: _Array, value: _Array, size: int
) -> tuple[_Array, _Array]:
    """Per-slot reward and count from outcomes grouped by slot, values ascending in a slot."""
    reward = np.full(size, config.default_reward, np.float64)
    count = np.bincount(flat, minlength=size).astype(np.int32)
    if flat.size:
        start = np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1]]))
        value64 = value.astype(np.float64)
        if config.aggregate == "sum":  # ascending values: the same float sum for any arrival
            reward[flat[start]] = np.add.reduceat(value64, start)
        elif config.aggregate == "max":
            reward[flat[start]] = np.maximum.reduceat(value64, start)
        else:  # the earliest outcome; on equal times the larger value
            group = np.cumsum(np.concatenate([[False], flat[1:] != flat[:-1]]))
            earliest = np.minimum.reduceat(ts, start)[group] == ts
            reward[flat[start]] = np.maximum.reduceat(np.where(earliest, value64, -np.inf), start)
    return reward, count


def _close(
    state: JoinState, rows: _Array, mine: _Array, config: JoinConfig, evicted: bool
) -> tuple[JoinState, Closed, JoinedOutcomes]:
    """Remove open ``rows`` (ascending) and the joined outcomes ``mine`` (exactly theirs),
    aggregate them, and return the impressions as closed, in arrival order."""
    s = config.slate_size
    key = state.open_key[rows]
    by_key = np.argsort(key)
    sorted_key = key[by_key]
    log = _take(_group(state, _JOINED), mine)
    out_row = np.empty(log.ts_ms.size, np.int64)
    by_log_key = np.argsort(log.request_key)  # sorted queries: cache-friendly binary searches
    out_row[by_log_key] = by_key[np.searchsorted(sorted_key, log.request_key[by_log_key])]
    flat = out_row * s + log.position
    if rows.size * s < 2**31:  # one fast sort on (slot, value)
        order = np.argsort(
            (flat.astype(np.uint64) << np.uint64(32)) | _sortable(log.value).astype(np.uint64)
        )
    else:
        order = np.lexsort((log.value, flat))
    log, out_row, flat = _take(log, order), out_row[order], flat[order]
    reward, count = _reduce(config, flat, log.ts_ms, log.value, rows.size * s)
    count = count.reshape(rows.size, s)
    closed = Closed(
        key,
        state.open_ts_ms[rows],
        state.open_payload[rows],
        reward.reshape(rows.size, s).astype(np.float32),
        count,
        count == 0,
        np.full(rows.size, evicted),
    )
    keep = np.ones(state.open_key.size, bool)
    keep[rows] = False
    index_keep = keep[state.index_row]
    new_row = np.cumsum(keep) - 1
    state = state._replace(
        index_key=state.index_key[index_keep],
        index_row=new_row[state.index_row[index_keep]],
        **{name: getattr(state, name)[keep] for name in _OPEN},
    )
    state = _set(state, _JOINED, _take(_group(state, _JOINED), ~mine))._replace(
        joined_impression_ts_ms=state.joined_impression_ts_ms[~mine]
    )
    ts = closed.ts_ms[by_key]
    state = _remember(state, sorted_key, ts, ts + config.window_ms, config.max_closed_keys)
    joined = JoinedOutcomes(out_row.astype(np.int64), *log)
    if evicted:
        return state._replace(evicted=_i64(int(state.evicted) + rows.size)), closed, joined
    n_default = int(np.count_nonzero((count == 0).all(axis=1)))
    state = state._replace(
        closed=_i64(int(state.closed) + rows.size),
        expired_default=_i64(int(state.expired_default) + n_default),
    )
    return state, closed, joined


def advance(
    state: JoinState, config: JoinConfig, *, watermark_ms: int | None = None
) -> tuple[JoinState, JoinEffects]:
    """Move the watermark, close the windows it passed, and settle pending outcomes it passed.

    Args:
        state: the join buffer (not modified).
        config: the join configuration the state was made with.
        watermark_ms: force the watermark at least this far (for an idle stream, or
            ``MAX_TIME_MS`` to flush). ``None`` uses event time only.

    Returns:
        The new state and effects: ``closed`` holds every impression whose window ended (in
        arrival order) and ``joined`` their outcomes; ``rejected_outcomes`` holds
        pending outcomes now known to be ``OUTCOME_CLOSED`` or ``OUTCOME_ORPHAN``.

    Raises:
        ValueError: ``watermark_ms`` is not an int64 value, or the state was made with another
            ``slate_size``.
    """
    _check_state(state, config)
    lateness = config.allowed_lateness_ms
    event = min(int(state.impression_max_ts_ms), int(state.outcome_max_ts_ms))
    wm = max(int(state.watermark_ms), int(_minus(np.array(event, np.int64), lateness)))
    if watermark_ms is not None:
        if isinstance(watermark_ms, bool) or not NO_TIME_MS <= int(watermark_ms) <= MAX_TIME_MS:
            raise ValueError(f"watermark_ms must be an int64 value, got {watermark_ms!r}")
        wm = max(wm, int(watermark_ms))
    state = state._replace(watermark_ms=_i64(wm))
    closed = joined = None
    done = np.flatnonzero(state.open_ts_ms + config.window_ms <= wm)
    if done.size:
        mine = state.joined_impression_ts_ms + config.window_ms <= wm
        state, closed, joined = _close(state, done, mine, config, evicted=False)
    pending = _group(state, _PENDING)
    due = pending.ts_ms < wm
    rejected = None
    if due.any():
        settle = _take(pending, due)
        left = np.searchsorted(state.closed_key, settle.request_key, "left")
        right = np.searchsorted(state.closed_key, settle.request_key, "right")
        query, entry = _expand(left, right)
        t = settle.ts_ms[query]
        match = (state.closed_ts_ms[entry] <= t) & (
            t < state.closed_end_ms[entry] + config.late_horizon_ms
        )
        after_window = np.zeros(settle.ts_ms.size, bool)
        after_window[query[match]] = True
        rejected = _rejected(settle, np.where(after_window, OUTCOME_CLOSED, OUTCOME_ORPHAN))
        n_late = int(np.count_nonzero(after_window))
        state = _set(state, _PENDING, _take(pending, ~due))._replace(
            late_outcomes=_i64(int(state.late_outcomes) + n_late),
            orphan_outcomes=_i64(int(state.orphan_outcomes) + settle.ts_ms.size - n_late),
        )
    # entries past end + late_horizon_ms can match no outcome still to come; drop them once
    # they are a quarter of the memory (amortised O(1) per entry)
    keep = state.closed_end_ms + config.late_horizon_ms > wm
    if 4 * (keep.size - np.count_nonzero(keep)) >= max(keep.size, 1):
        state = state._replace(
            closed_key=state.closed_key[keep],
            closed_ts_ms=state.closed_ts_ms[keep],
            closed_end_ms=state.closed_end_ms[keep],
        )
    return state, _effects(config.slate_size, closed, joined, outcomes=rejected)
