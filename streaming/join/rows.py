"""Array primitives the join algorithm is built from: rows, field groups, times and keys.

Row selection (``take_rows`` for any array, also the caller's side tables; ``_take`` for an
outcome batch), a state's field groups read and written as one batch (``_group``, ``_set``),
lateness within a stream (``_minus``, ``_late_in_stream``), and vectorised searches over keys
and times (``_expand``, ``_first_occurrence``, ``_among``, ``_oldest``). Pure numpy, no state
of its own.

Part of the reward-window join: ``streaming.join`` explains its rules and is the module to
import. ``__all__`` lists every name defined here, private ones included, for the other
``join_*`` modules and for the re-exports in ``streaming.join``.
"""

from __future__ import annotations

import numpy as np

from streaming.join.state import JoinState
from streaming.join.types import NO_TIME_MS, JoinOutcomes, _Array

__all__ = [
    "_among",
    "_expand",
    "_first_occurrence",
    "_group",
    "_late_in_stream",
    "_minus",
    "_oldest",
    "_set",
    "_take",
    "take_rows",
]


def _minus(t: _Array, lateness: int) -> _Array:
    """``t - lateness`` that keeps ``NO_TIME_MS`` without overflow."""
    return np.maximum(t, NO_TIME_MS + lateness) - lateness


def _late_in_stream(ts: _Array, prior_max: int, lateness: int) -> tuple[_Array, int]:
    """Rows behind the newest event time of the rows before them, and the new maximum."""
    running = np.maximum.accumulate(np.concatenate([np.array([prior_max], np.int64), ts]))
    return ts < _minus(running[:-1], lateness), int(running[-1])


def _expand(left: _Array, right: _Array) -> tuple[_Array, _Array]:
    """All pairs (query i, entry j) with ``left[i] <= j < right[i]``."""
    count = right - left
    query = np.repeat(np.arange(left.size), count)
    start = np.repeat(np.cumsum(count) - count, count)
    return query, left[query] + np.arange(query.size) - start


def _first_occurrence(key: _Array) -> _Array:
    """True at the first row of each distinct key (``np.unique`` without its stable sort)."""
    order = np.argsort(key)
    same = key[order][1:] == key[order][:-1]
    first = np.ones(key.size, bool)
    if same.any():
        start = np.flatnonzero(np.concatenate([[True], ~same]))
        first[:] = False
        first[np.minimum.reduceat(order, start)] = True
    return first


def take_rows(x: _Array, index: _Array) -> _Array:
    """``x[index]`` along the first axis (``index`` a boolean mask or row numbers), bit for bit.

    numpy copies a masked row of a 2-d or wider array value by value, which costs about ten
    times a byte copy for the narrow rows of the side tables and join buffers; viewing each
    C-contiguous row as one opaque ``void`` item first makes it one copy per row.
    """
    if x.ndim < 2 or x.dtype.hasobject or not x.flags.c_contiguous:
        return x[index]
    width = x.itemsize * int(np.prod(x.shape[1:]))
    if width == 0 or x.shape[0] == 0:
        return x[index]
    rows = x.reshape(x.shape[0], width // x.itemsize).view(np.dtype((np.void, width)))[:, 0]
    picked = rows[index]
    return np.ascontiguousarray(picked).view(x.dtype).reshape(picked.shape[0], *x.shape[1:])


def _take(batch: JoinOutcomes, index: _Array) -> JoinOutcomes:
    return JoinOutcomes(*(take_rows(column, index) for column in batch))


def _group(state: JoinState, names: tuple[str, ...]) -> JoinOutcomes:
    return JoinOutcomes(*(getattr(state, name) for name in names))


def _set(state: JoinState, names: tuple[str, ...], rows: tuple[_Array, ...]) -> JoinState:
    return state._replace(**dict(zip(names, rows, strict=True)))


def _among(key: _Array, ordered: _Array) -> _Array:
    """Whether each ``key`` is one of ``ordered`` (sorted): binary searches, so the cost grows
    with ``key.size * log(ordered.size)`` and ``key`` is never sorted (``np.isin`` sorts both)."""
    if key.size == 0 or ordered.size == 0:
        return np.zeros(key.size, bool)
    at = np.minimum(np.searchsorted(ordered, key), ordered.size - 1)
    return ordered[at] == key


def _oldest(ts: _Array, n: int) -> _Array:
    """Rows of the ``n`` oldest entries by (ts, arrival), ascending, in O(len(ts))."""
    cut = np.partition(ts, n - 1)[n - 1]
    older = np.flatnonzero(ts < cut)
    tied = np.flatnonzero(ts == cut)[: n - older.size]
    return np.sort(np.concatenate([older, tied]))
