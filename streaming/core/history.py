"""Each listener's recent plays, per partition: the history the session reward model reads.

Both topics are keyed by listener, so all of a listener's plays are in one partition; each
partition number keeps a ``History`` table of its listeners' last ``h`` plays, checkpointed with
the rest of the state and moved with the partition on a rebalance (in its partition record).

``attach`` gives each joined play, taken in the reward model's order within its partition (window
end, impression key, position, outcome time), the last ``h`` plays of its listener that come
before it in that order, less those that had not ended before it (a later window's play can
end earlier: it is left out, so a play may see fewer than ``h``); then appends it to the table. Windows close in one order however the polls cut the
stream, so every play sees the same history after a restart or a rebalance. Past
``capacity`` listeners per partition, those whose newest play is oldest leave the table (counted
by the caller): only then can a history depend on timing, as the join's own capacity limits can.
"""

from __future__ import annotations

from typing import NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["History", "attach", "empty_history", "fit_history", "newest"]

_T = TypeVar("_T", bound=np.generic)

NO_PLAY_MS = np.iinfo(np.int64).min
"""The outcome time of an empty history slot: before every play."""


class History(NamedTuple):
    """One partition's listeners and their last ``h`` plays, oldest first."""

    listener: npt.NDArray[np.uint64]  # (u,) key64 of the listener's id, sorted, unique
    entries: npt.NDArray[np.float32]  # (u, h, e) ``rewards.session.history_entries``
    ts_ms: npt.NDArray[np.int64]  # (u, h) each entry's outcome time (``NO_PLAY_MS``: empty)
    last_ms: npt.NDArray[np.int64]  # (u,) the newest entry's outcome time


def empty_history(h: int, e: int) -> History:
    """A table of no listeners, for histories of ``h`` entries of ``e`` floats."""
    return History(
        listener=np.zeros(0, np.uint64),
        entries=np.zeros((0, h, e), np.float32),
        ts_ms=np.zeros((0, h), np.int64),
        last_ms=np.zeros(0, np.int64),
    )


def newest(x: npt.NDArray[_T], h: int, fill: object) -> npt.NDArray[_T]:
    """The newest ``h`` slots of each row of ``x`` (slots on axis 1, oldest first), the oldest
    filled with ``fill`` where ``x`` has fewer."""
    have = x.shape[1]
    keep = min(have, h)
    out = np.full((x.shape[0], h, *x.shape[2:]), fill, x.dtype)
    out[:, h - keep :] = x[:, have - keep :]
    return out


def fit_history(table: History, h: int, e: int) -> History:
    """``table`` with ``h`` entries per listener of ``e`` floats: its newest ``h`` entries (the
    oldest padded as empty), or no listeners at all when its entries have another width (a
    table written with another ``reward.history_length`` or ``history_dim``)."""
    _, have, width = table.entries.shape
    if width != e:
        return empty_history(h, e)
    if have == h:
        return table
    entries, ts = newest(table.entries, h, 0.0), newest(table.ts_ms, h, NO_PLAY_MS)
    return History(table.listener, entries, ts, table.last_ms)


def _with_listeners(table: History, keys: npt.NDArray[np.uint64]) -> History:
    """``table`` with an empty row for each of ``keys`` (sorted, unique) it lacks."""
    new = np.setdiff1d(keys, table.listener, assume_unique=True)
    if not new.size:
        return table
    _, h, e = table.entries.shape
    listener = np.concatenate([table.listener, new])
    order = np.argsort(listener, kind="stable")
    return History(
        listener=listener[order],
        entries=np.concatenate([table.entries, np.zeros((new.size, h, e), np.float32)])[order],
        ts_ms=np.concatenate([table.ts_ms, np.full((new.size, h), NO_PLAY_MS, np.int64)])[order],
        last_ms=np.concatenate([table.last_ms, np.full(new.size, NO_PLAY_MS, np.int64)])[order],
    )


def attach(
    table: History,
    listener: npt.NDArray[np.uint64],
    ts_ms: npt.NDArray[np.int64],
    entries: npt.NDArray[np.float32],
    capacity: int,
) -> tuple[History, npt.NDArray[np.float32], int]:
    """The history each play is learned with, and the table with the plays appended.

    Args:
        table: the partition's table before these plays.
        listener: ``(n,)`` key of each play's listener, rows in learning order; 0 is an unknown
            listener (a play from a table without a listener column): no history, not
            appended.
        ts_ms: ``(n,)`` each play's outcome time.
        entries: ``(n, e)`` each play's history entry.
        capacity: the most listeners the table keeps.

    Returns:
        ``(table, history, evicted)``: the new table, ``(n, h, e)`` the entries each play comes
        after (oldest first; a slot of a play that had not ended before this one is all zero, so
        not ``present``), and how many listeners left the table to stay within ``capacity``.
    """
    n = listener.size
    _, h, e = table.entries.shape
    history = np.zeros((n, h, e), np.float32)
    known = np.flatnonzero(listener != 0)
    if known.size == 0 or h == 0:
        return table, history, 0
    keys = listener[known]
    table = _with_listeners(table, np.unique(keys))
    slot = np.searchsorted(table.listener, keys)
    # Each listener's run: its h stored entries, then its new plays in order, laid end to end.
    groups, inv, counts = np.unique(slot, return_inverse=True, return_counts=True)
    base = np.zeros(groups.size, np.int64)
    base[1:] = np.cumsum(h + counts)[:-1]
    by_group = np.argsort(inv, kind="stable")
    rank = np.empty(keys.size, np.int64)
    starts = np.zeros(groups.size, np.int64)
    starts[1:] = np.cumsum(counts)[:-1]
    rank[by_group] = np.arange(keys.size) - np.repeat(starts, counts)
    size = int(groups.size * h + keys.size)
    run_entries = np.zeros((size, e), np.float32)
    run_ts = np.full(size, NO_PLAY_MS, np.int64)
    stored = (base[:, None] + np.arange(h)).reshape(-1)
    run_entries[stored] = table.entries[groups].reshape(-1, e)
    run_ts[stored] = table.ts_ms[groups].reshape(-1)
    new_at = base[inv] + h + rank
    run_entries[new_at] = entries[known]
    run_ts[new_at] = ts_ms[known]
    # A play sees the h entries before its own place in its listener's run ...
    seen = new_at[:, None] - h + np.arange(h)
    got = run_entries[seen]
    # ... of plays that ended before it (a later window's play can end earlier; never leak it).
    before = run_ts[seen] < ts_ms[known][:, None]
    history[known] = got * before[..., None]
    # The table keeps each listener's last h entries of the run.
    keep = (base + counts)[:, None] + np.arange(h)
    entries_out = table.entries.copy()
    ts_out = table.ts_ms.copy()
    last_out = table.last_ms.copy()
    entries_out[groups] = run_entries[keep]
    ts_out[groups] = run_ts[keep]
    np.maximum.at(last_out, slot, ts_ms[known])
    table = History(table.listener, entries_out, ts_out, last_out)
    evicted = max(0, table.listener.size - capacity)
    if evicted:
        oldest = np.lexsort((table.listener, table.last_ms))[:evicted]
        stay = np.ones(table.listener.size, bool)
        stay[oldest] = False
        table = History(
            table.listener[stay], table.entries[stay], table.ts_ms[stay], table.last_ms[stay]
        )
    return table, history, evicted
