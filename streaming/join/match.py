"""Adding rows to the join: ``add_impressions`` and ``add_outcomes``.

An impression that is neither late nor a duplicate opens its window and claims the pending
outcomes that fall in it; an outcome that is not late joins the open impression whose window
covers it (``_lookup`` in the by-key index, then ``_join_found``) or waits pending. Beyond
``max_open`` the oldest impressions are evicted (closed by ``streaming.join.close``); beyond
``max_pending`` the oldest pending outcomes are rejected.

Part of the reward-window join: ``streaming.join`` explains its rules and is the module to
import. ``__all__`` lists every name defined here, private ones included, for the other
``join_*`` modules and for the re-exports in ``streaming.join``.
"""

from __future__ import annotations

import numpy as np

from streaming.join.checks import _check_impressions, _check_outcomes, _check_state
from streaming.join.close import _close
from streaming.join.rows import (
    _among,
    _first_occurrence,
    _group,
    _late_in_stream,
    _oldest,
    _set,
    _take,
)
from streaming.join.state import _JOINED, _OPEN, _PENDING, JoinState, _i64
from streaming.join.types import (
    IMPRESSION_DUPLICATE,
    IMPRESSION_LATE,
    OUTCOME_LATE,
    OUTCOME_OVERFLOW,
    JoinConfig,
    JoinEffects,
    JoinImpressions,
    JoinOutcomes,
    RejectedImpressions,
    RejectedOutcomes,
    _Array,
    _effects,
    _rejected,
)

__all__ = [
    "_join_found",
    "_join_open",
    "_lookup",
    "add_impressions",
    "add_outcomes",
]


def _lookup(state: JoinState, key: _Array) -> tuple[_Array, _Array]:
    """For each key: whether it is open, and its open row (0 where not)."""
    m = state.index_key.size
    if m == 0 or key.size == 0:
        return np.zeros(key.size, bool), np.zeros(key.size, np.int64)
    order = np.argsort(key)  # sorted queries make the binary searches cache-friendly
    at = np.empty(key.size, np.int64)
    at[order] = np.minimum(np.searchsorted(state.index_key, key[order]), m - 1)
    found = state.index_key[at] == key
    return found, np.where(found, state.index_row[at], 0)


def _join_open(
    state: JoinState, rows: JoinOutcomes, window_ms: int
) -> tuple[JoinState, JoinOutcomes]:
    """Move outcomes covered by an open impression's window into the joined log; return the rest."""
    state, found = _join_found(state, rows, window_ms)
    return state, (_take(rows, ~found) if found.any() else rows)


def _join_found(state: JoinState, rows: JoinOutcomes, window_ms: int) -> tuple[JoinState, _Array]:
    """Move outcomes covered by an open impression's window into the joined log; return which."""
    found, row = _lookup(state, rows.request_key)
    if found.any():
        start = state.open_ts_ms[row]
        found &= (rows.ts_ms >= start) & (rows.ts_ms - start < window_ms)
    if not found.any():
        return state, found
    hit = _take(rows, found)
    log = tuple(
        np.concatenate([old, new]) for old, new in zip(_group(state, _JOINED), hit, strict=True)
    )
    state = _set(state, _JOINED, log)._replace(
        joined_impression_ts_ms=np.concatenate(
            [state.joined_impression_ts_ms, state.open_ts_ms[row[found]]]
        ),
        joined=_i64(int(state.joined) + hit.ts_ms.size),
    )
    return state, found


def add_impressions(
    state: JoinState, batch: JoinImpressions, config: JoinConfig
) -> tuple[JoinState, JoinEffects]:
    """Open a window for each new impression and let it claim pending outcomes.

    Args:
        state: the join buffer (not modified).
        batch: impressions in stream order.
        config: the join configuration the state was made with.

    Returns:
        The new state and effects: late and duplicate impressions in ``rejected_impressions``;
        impressions evicted because more than ``max_open`` were open in ``closed`` (with
        ``evicted=True``) and their outcomes in ``joined``.

    Raises:
        ValueError: a column has the wrong dtype, shape or length, a ``ts_ms`` is out of range,
            or the state was made with another ``slate_size``.
    """
    _check_state(state, config)
    batch = _check_impressions(batch)
    late, new_max = _late_in_stream(
        batch.ts_ms, int(state.impression_max_ts_ms), config.allowed_lateness_ms
    )
    candidate = np.flatnonzero(~late)
    duplicate = np.zeros(batch.ts_ms.size, bool)
    duplicate[candidate] = ~_first_occurrence(batch.request_key[candidate])
    duplicate |= ~late & _lookup(state, batch.request_key)[0]
    accept = ~late & ~duplicate
    n_new = int(np.count_nonzero(accept))
    reason = np.where(late, IMPRESSION_LATE, IMPRESSION_DUPLICATE)[~accept]
    rejected = RejectedImpressions(
        batch.request_key[~accept],
        batch.ts_ms[~accept],
        batch.payload[~accept],
        reason.astype(np.int8),
    )
    state = state._replace(
        impression_max_ts_ms=_i64(new_max),
        opened=_i64(int(state.opened) + n_new),
        duplicates=_i64(int(state.duplicates) + int(np.count_nonzero(duplicate))),
        late_impressions=_i64(int(state.late_impressions) + int(np.count_nonzero(late))),
    )
    if n_new:
        new = JoinImpressions(*(column[accept] for column in batch))
        order = np.argsort(new.request_key)
        new_keys = new.request_key[order]  # sorted: the index inserts and the pending lookup
        at = np.searchsorted(state.index_key, new_keys)
        state = state._replace(
            index_key=np.insert(state.index_key, at, new_keys),
            index_row=np.insert(state.index_row, at, state.open_key.size + order),
            **{
                name: np.concatenate([getattr(state, name), add])
                for name, add in zip(_OPEN, new, strict=True)
            },
        )
        # Only the impressions opened now can take a pending outcome: every pending outcome was
        # looked up against each impression open before and matched none of them. So the
        # lookup runs on the pending outcomes that share a key with one of them, and the cost
        # of an add does not grow with the pending buffer's size times its logarithm (a
        # backlog where outcomes run ahead of impressions keeps many pending). The same holds
        # across a restart only under the same join.window_ms: a pending outcome outside its
        # impression's old window is not looked up again under a wider one.
        pending = _group(state, _PENDING)
        maybe = np.flatnonzero(_among(pending.request_key, new_keys))
        if maybe.size:
            state, found = _join_found(state, _take(pending, maybe), config.window_ms)
            if found.any():
                keep = np.ones(pending.request_key.size, bool)
                keep[maybe[found]] = False
                state = _set(state, _PENDING, _take(pending, keep))
    excess = state.open_key.size - config.max_open
    if excess <= 0:
        return state, _effects(config.slate_size, impressions=rejected)
    oldest = _oldest(state.open_ts_ms, excess)
    mine = np.isin(state.joined_key, state.open_key[oldest])
    state, closed, joined = _close(state, oldest, mine, config, evicted=True)
    return state, _effects(config.slate_size, closed, joined, rejected)


def add_outcomes(
    state: JoinState, batch: JoinOutcomes, config: JoinConfig
) -> tuple[JoinState, JoinEffects]:
    """Join each outcome to the open impression whose window covers it, or hold it pending.

    Args:
        state: the join buffer (not modified).
        batch: outcomes in stream order.
        config: the join configuration the state was made with.

    Returns:
        The new state and effects: outcomes behind the outcome watermark (``OUTCOME_LATE``) and
        pending outcomes pushed out by ``max_pending`` (``OUTCOME_OVERFLOW``) in
        ``rejected_outcomes``.

    Raises:
        ValueError: a column has the wrong dtype, shape or length, a position is outside
            ``[0, slate_size)``, a value is not finite, a ``ts_ms`` is out of range, or the state
            was made with another ``slate_size``.
    """
    _check_state(state, config)
    batch = _check_outcomes(batch, config.slate_size)
    late, new_max = _late_in_stream(
        batch.ts_ms, int(state.outcome_max_ts_ms), config.allowed_lateness_ms
    )
    n_late = int(np.count_nonzero(late))
    rejected = [_rejected(_take(batch, late), OUTCOME_LATE)]
    state, waiting = _join_open(state, _take(batch, ~late), config.window_ms)
    pending = JoinOutcomes(
        *(
            np.concatenate([old, add])
            for old, add in zip(_group(state, _PENDING), waiting, strict=True)
        )
    )
    excess = pending.ts_ms.size - config.max_pending
    if excess > 0:
        drop = np.zeros(pending.ts_ms.size, bool)
        drop[_oldest(pending.ts_ms, excess)] = True
        rejected.append(_rejected(_take(pending, drop), OUTCOME_OVERFLOW))
        pending = _take(pending, ~drop)
        state = state._replace(evicted_outcomes=_i64(int(state.evicted_outcomes) + excess))
    state = _set(state, _PENDING, pending)._replace(
        outcome_max_ts_ms=_i64(new_max), late_outcomes=_i64(int(state.late_outcomes) + n_late)
    )
    out = RejectedOutcomes(*(np.concatenate(cols) for cols in zip(*rejected, strict=True)))
    return state, _effects(config.slate_size, outcomes=out)
