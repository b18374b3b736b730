"""The join buffer's state: ``JoinState`` and what makes, reads and saves it whole.

``init`` makes an empty buffer; ``counters`` (with ``CUT_DEPENDENT``) and ``live_payloads``
report on one; ``to_arrays`` and ``from_arrays`` are its checkpoint form, which leaves out the
derived by-key index and rebuilds it on load. The groups of field names (``_OPEN``,
``_JOINED``, ``_PENDING``, ...) and ``_i64`` are shared with the algorithm modules.

Part of the reward-window join: ``streaming.join`` explains its rules and is the module to
import. ``__all__`` lists every name defined here, private ones included, for the other
``join_*`` modules and for the re-exports in ``streaming.join``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, NamedTuple

import numpy as np
from jaxtyping import Float32, Int32, Int64, UInt64

from streaming.join.types import NO_TIME_MS, JoinConfig, _Array

__all__ = [
    "CUT_DEPENDENT",
    "_COUNTERS",
    "_DERIVED",
    "_GROUPS",
    "_JOINED",
    "_OPEN",
    "_PENDING",
    "_SAVED",
    "JoinState",
    "_dtype",
    "_i64",
    "counters",
    "from_arrays",
    "init",
    "live_payloads",
    "to_arrays",
]


class JoinState(NamedTuple):
    """The whole join buffer: 1-d arrays and 0-d scalars only, so it checkpoints as it is.

    ``m`` open impressions in arrival order (keys unique), with a by-key index that is derived
    (not saved); ``j`` outcomes joined to an open impression, kept raw until it closes (they are
    aggregated then, in a canonical order); ``p`` pending outcomes in arrival order; ``c``
    recently closed impressions sorted by key. Rows never move on insert, so a call costs a few
    sequential copies of 1-d arrays, never a re-sort of the buffer.
    """

    open_key: UInt64[np.ndarray, " m"]
    open_ts_ms: Int64[np.ndarray, " m"]
    open_payload: Int64[np.ndarray, " m"]
    index_key: UInt64[np.ndarray, " m"]  # open_key sorted (derived)
    index_row: Int64[np.ndarray, " m"]  # open row of each index_key (derived)
    joined_key: UInt64[np.ndarray, " j"]
    joined_ts_ms: Int64[np.ndarray, " j"]
    joined_position: Int32[np.ndarray, " j"]
    joined_value: Float32[np.ndarray, " j"]
    joined_payload: Int64[np.ndarray, " j"]
    joined_impression_ts_ms: Int64[np.ndarray, " j"]  # ts_ms of the impression it joined
    pending_key: UInt64[np.ndarray, " p"]
    pending_ts_ms: Int64[np.ndarray, " p"]
    pending_position: Int32[np.ndarray, " p"]
    pending_value: Float32[np.ndarray, " p"]
    pending_payload: Int64[np.ndarray, " p"]
    closed_key: UInt64[np.ndarray, " c"]
    closed_ts_ms: Int64[np.ndarray, " c"]
    closed_end_ms: Int64[np.ndarray, " c"]
    slate_size: Int64[np.ndarray, ""]
    impression_max_ts_ms: Int64[np.ndarray, ""]
    outcome_max_ts_ms: Int64[np.ndarray, ""]
    watermark_ms: Int64[np.ndarray, ""]
    opened: Int64[np.ndarray, ""]  # impressions accepted
    joined: Int64[np.ndarray, ""]  # outcomes joined to an impression
    closed: Int64[np.ndarray, ""]  # impressions closed because their window ended
    expired_default: Int64[np.ndarray, ""]  # ... of which with no outcome at all
    evicted: Int64[np.ndarray, ""]  # impressions closed early, buffer full
    duplicates: Int64[np.ndarray, ""]
    late_impressions: Int64[np.ndarray, ""]
    late_outcomes: Int64[np.ndarray, ""]  # OUTCOME_LATE + OUTCOME_CLOSED
    orphan_outcomes: Int64[np.ndarray, ""]
    evicted_outcomes: Int64[np.ndarray, ""]  # OUTCOME_OVERFLOW


_COUNTERS: Final = JoinState._fields[JoinState._fields.index("opened") :]
_GROUPS: Final = ("open", "joined", "pending", "closed")
_OPEN: Final = ("open_key", "open_ts_ms", "open_payload")
_JOINED: Final = ("joined_key", "joined_ts_ms", "joined_position", "joined_value", "joined_payload")
_PENDING: Final = (
    "pending_key",
    "pending_ts_ms",
    "pending_position",
    "pending_value",
    "pending_payload",
)
_DERIVED: Final = ("index_key", "index_row")
_SAVED: Final = tuple(name for name in JoinState._fields if name not in _DERIVED)


def _dtype(name: str) -> np.dtype[np.generic]:
    if name.endswith("_key"):
        return np.dtype(np.uint64)
    if name.endswith("_position"):
        return np.dtype(np.int32)
    if name.endswith("_value"):
        return np.dtype(np.float32)
    return np.dtype(np.int64)


def _i64(value: int) -> Int64[np.ndarray, ""]:
    return np.array(value, dtype=np.int64)


def init(config: JoinConfig) -> JoinState:
    """An empty join buffer for ``config``."""
    arrays = {
        name: np.zeros(0, _dtype(name))
        for name in JoinState._fields
        if name.split("_", 1)[0] in (*_GROUPS, "index") and name not in _COUNTERS
    }
    clocks = dict.fromkeys(
        ("impression_max_ts_ms", "outcome_max_ts_ms", "watermark_ms"), NO_TIME_MS
    )
    scalars = {
        name: _i64(v)
        for name, v in {
            **clocks,
            "slate_size": config.slate_size,
            **dict.fromkeys(_COUNTERS, 0),
        }.items()
    }
    return JoinState(**arrays, **scalars)


CUT_DEPENDENT = frozenset({"n_closed_memory"})
"""Entries of ``counters`` that depend on how the stream was cut into batches: expired entries
of the closed-key memory are dropped in amortised steps, so its size does (what it answers does
not). Every other entry is the same for any cut."""


def counters(state: JoinState) -> dict[str, int]:
    """Counters, buffer sizes and clocks as plain ints, for metrics and logs."""
    out = {name: int(getattr(state, name)) for name in _COUNTERS}
    out.update(
        n_open=state.open_key.size,
        n_joined_open=state.joined_key.size,
        n_pending=state.pending_key.size,
        n_closed_memory=state.closed_key.size,
        watermark_ms=int(state.watermark_ms),
    )
    return out


def live_payloads(state: JoinState) -> tuple[_Array, _Array]:
    """Payloads the buffer still refers to: ``(impressions (m,), outcomes (j + p,))``.

    Side-table rows outside these can be dropped by the caller; every other payload has come
    back in some effects.
    """
    return state.open_payload, np.concatenate([state.joined_payload, state.pending_payload])


def to_arrays(state: JoinState) -> dict[str, _Array]:
    """The state as named arrays (for ``streaming.worker.checkpoint.write``); no copies.

    The by-key index is left out: ``from_arrays`` rebuilds it.
    """
    return {name: getattr(state, name) for name in _SAVED}


def from_arrays(arrays: Mapping[str, _Array]) -> JoinState:
    """Rebuild a state from ``to_arrays`` output, checking names, dtypes and shapes.

    Raises:
        ValueError: a name is missing or unknown, a dtype or shape does not fit, or an open
            key appears twice.
    """
    missing = sorted(set(_SAVED) - set(arrays))
    unknown = sorted(set(arrays) - set(_SAVED))
    if missing or unknown:
        raise ValueError(f"join state arrays: missing {missing}, unknown {unknown}")
    length = {group: np.asarray(arrays[f"{group}_key"]).shape[:1] for group in _GROUPS}
    for name in _SAVED:
        arr = np.asarray(arrays[name])
        group = name.split("_", 1)[0]
        shape = length[group] if group in _GROUPS and name not in _COUNTERS else ()
        if arr.dtype != _dtype(name) or arr.shape != shape:
            raise ValueError(
                f"join state array {name!r}: expected {_dtype(name)} with shape "
                f"{shape}, got {arr.dtype} with shape {arr.shape}"
            )
    key = np.asarray(arrays["open_key"])
    order = np.argsort(key)
    if np.any(key[order][1:] == key[order][:-1]):
        raise ValueError("join state array 'open_key' holds a key twice")
    return JoinState(
        **{name: np.asarray(arrays[name]) for name in _SAVED},
        index_key=key[order],
        index_row=order.astype(np.int64),
    )
