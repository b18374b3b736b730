"""Reward-window join: pure functions that pair outcomes with the impression they belong to.

Impressions and outcomes arrive as columnar batches keyed by ``request_key`` (a 64-bit hash of
``request_id``). An impression is *open* for the event-time window ``[ts_ms, ts_ms + window_ms)``;
every outcome with the same key whose ``ts_ms`` lies in that window joins it, aggregated per
slate position by ``JoinConfig.aggregate``. When the watermark passes the window's end the
impression is *closed* and returned, with ``default_reward`` wherever no outcome arrived.

The rules, chosen so that results never depend on how the streams are cut into batches:

- **Two watermarks.** Each stream keeps the largest ``ts_ms`` it has seen. A row whose ``ts_ms``
  is more than ``allowed_lateness_ms`` behind the largest ``ts_ms`` of the rows *before it in its
  own stream* is *late*: a late impression is rejected (``IMPRESSION_LATE``) and a late outcome is
  rejected (``OUTCOME_LATE``). This depends only on the order within each stream, so any batch cut
  and any interleaving of the two streams gives the same verdict.
- **Closing.** ``advance`` moves the join watermark to
  ``min(max impression ts, max outcome ts) - allowed_lateness_ms`` (never backwards) and closes
  every open impression whose window ends at or before it. An outcome that is not late can then
  never belong to a closed impression, because its own stream's watermark is at least the join
  watermark.
- **Outcome before impression.** An outcome with no open impression waits in a *pending* buffer.
  Each new impression takes the pending outcomes that fall in its window. Once the join watermark
  passes the outcome's ``ts_ms`` no impression that is not late can still claim it, so it is
  rejected: ``OUTCOME_CLOSED`` when a recently closed impression with its key started at or
  before it and ended less than ``late_horizon_ms`` before it (it came after its window), else
  ``OUTCOME_ORPHAN``.
- **Duplicates.** Keys are assumed unique per request. An impression whose key is already open
  (or appeared earlier in the same batch) is rejected as ``IMPRESSION_DUPLICATE``; a redelivered
  copy of an impression that has already closed is always late, so it is rejected too. (A key
  reused by a *different* impression after the first closed opens a new window; whether it
  collides with the first depends on timing, so reused keys are outside the guarantee.)
- **Bounded memory.** More than ``max_open`` open impressions evicts the oldest (smallest
  ``ts_ms``, then earliest arrival): they are returned as closed rows with ``evicted=True`` and
  counted. More than ``max_pending`` pending outcomes rejects the oldest as ``OUTCOME_OVERFLOW``.
  The memory of closed keys keeps at most ``max_closed_keys`` entries. Only these capacity limits
  can make results depend on batch cuts.
- **first** is the outcome with the smallest ``ts_ms`` (ties: the larger value), **max** the
  largest value, **sum** the float64 sum taken in ascending value order (so it is the same
  float for any arrival order); each outcome row joins at most one impression.

If one stream goes idle the join watermark stops; pass ``watermark_ms`` to ``advance`` (for example
``now_ms - idle_timeout_ms``, or ``MAX_TIME_MS`` to flush everything) to force progress. A forced
watermark is a promise that nothing at or before it is still to come: forcing it early makes
later rows late that event time alone would have joined.

Payloads are opaque row numbers into the caller's side tables (features, slates, raw outcome
fields). The buffer hands each one back exactly once: an impression's in ``closed`` or
``rejected_impressions``, an outcome's in ``joined`` (with ``row`` pointing at its impression in
``closed``) or ``rejected_outcomes``. ``live_payloads`` lists the ones still held, so the caller
can compact its side tables.

Example:
    >>> import numpy as np
    >>> cfg = JoinConfig(window_ms=100, allowed_lateness_ms=0, slate_size=2, aggregate="max")
    >>> state = init(cfg)
    >>> u64, i64 = np.uint64, np.int64
    >>> imps = JoinImpressions(np.array([7], u64), np.array([1000], i64), np.array([0], i64))
    >>> state, _ = add_impressions(state, imps, cfg)
    >>> outs = JoinOutcomes(np.array([7], u64), np.array([1050], i64), np.array([1], np.int32),
    ...                     np.array([1.0], np.float32), np.array([0], i64))
    >>> state, _ = add_outcomes(state, outs, cfg)
    >>> state, effects = advance(state, cfg, watermark_ms=MAX_TIME_MS)
    >>> effects.closed.reward.tolist(), effects.closed.defaulted.tolist()
    ([[0.0, 1.0]], [[True, False]])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt
from jaxtyping import Bool, Float32, Int8, Int32, Int64, UInt64

__all__ = [
    "IMPRESSION_DUPLICATE",
    "IMPRESSION_LATE",
    "MAX_TIME_MS",
    "NO_TIME_MS",
    "OUTCOME_CLOSED",
    "OUTCOME_LATE",
    "OUTCOME_ORPHAN",
    "OUTCOME_OVERFLOW",
    "Closed",
    "JoinConfig",
    "JoinEffects",
    "JoinImpressions",
    "JoinOutcomes",
    "JoinState",
    "JoinedOutcomes",
    "RejectedImpressions",
    "RejectedOutcomes",
    "add_impressions",
    "add_outcomes",
    "advance",
    "concat_effects",
    "counters",
    "from_arrays",
    "init",
    "live_payloads",
    "to_arrays",
]

NO_TIME_MS: Final = int(np.iinfo(np.int64).min)  # "nothing seen yet"
MAX_TIME_MS: Final = int(np.iinfo(np.int64).max)  # pass as watermark_ms to flush everything
_TS_LIMIT: Final = 2**61  # |ts_ms| bound so that ts + window + horizon never overflows int64
_DURATION_LIMIT: Final = 2**53

IMPRESSION_LATE: Final = 1  # behind the impression stream's watermark on arrival
IMPRESSION_DUPLICATE: Final = 2  # key already open, or earlier in the same batch
OUTCOME_LATE: Final = 1  # behind the outcome stream's watermark on arrival
OUTCOME_CLOSED: Final = 2  # its impression had already closed (window over, or evicted)
OUTCOME_ORPHAN: Final = 3  # no impression window covers it
OUTCOME_OVERFLOW: Final = 4  # pending buffer full, oldest pending outcome dropped

Aggregate = Literal["first", "max", "sum"]
_Array: TypeAlias = npt.NDArray[Any]


def _check_int(name: str, value: object, low: int, high: int = _DURATION_LIMIT) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"JoinConfig.{name} must be an int, got {type(value).__name__}")
    if not low <= int(value) <= high:
        raise ValueError(f"JoinConfig.{name} must be in [{low}, {high}], got {value}")


def _check_float(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise TypeError(f"JoinConfig.{name} must be a float, got {type(value).__name__}")
    if not np.isfinite(value):
        raise ValueError(f"JoinConfig.{name} must be finite, got {value}")


@dataclasses.dataclass(frozen=True)
class JoinConfig:
    """How the reward-window join behaves. Durations are integer milliseconds.

    Attributes:
        window_ms: length of each impression's reward window (> 0).
        allowed_lateness_ms: how far behind its stream's newest event time a row may be (>= 0).
        max_open: most open impressions held; beyond it the oldest are evicted (>= 1).
        aggregate: how several outcomes at one slate position combine: first, max or sum.
        default_reward: reward of a position with no outcome when its window closes (finite).
        slate_size: ``s``, positions per impression; outcome positions are in ``[0, s)``.
        max_pending: most outcomes held while waiting for their impression (>= 0).
        late_horizon_ms: how long after a window's end an outcome still counts as late for that
            impression rather than as an orphan (>= 0).
        max_closed_keys: most closed impressions remembered for that purpose (>= 0); beyond it
            the earliest-ending are forgotten, and their late outcomes count as orphans.
    """

    window_ms: int = 1_800_000
    allowed_lateness_ms: int = 60_000
    max_open: int = 1_000_000
    aggregate: Aggregate = "max"
    default_reward: float = 0.0
    slate_size: int = 10
    max_pending: int = 100_000
    late_horizon_ms: int = 3_600_000
    max_closed_keys: int = 1_000_000

    def __post_init__(self) -> None:
        _check_int("window_ms", self.window_ms, 1)
        _check_int("allowed_lateness_ms", self.allowed_lateness_ms, 0)
        _check_int("max_open", self.max_open, 1, 2**40)
        _check_int("slate_size", self.slate_size, 1, 2**16)
        _check_int("max_pending", self.max_pending, 0, 2**40)
        _check_int("late_horizon_ms", self.late_horizon_ms, 0)
        _check_int("max_closed_keys", self.max_closed_keys, 0, 2**40)
        if self.aggregate not in ("first", "max", "sum"):
            raise ValueError(
                f"JoinConfig.aggregate must be 'first', 'max' or 'sum', got {self.aggregate!r}"
            )
        _check_float("default_reward", self.default_reward)


class JoinImpressions(NamedTuple):
    """A batch of impressions, in stream order.

    Attributes:
        request_key: ``(n,)`` uint64 hash of ``request_id``.
        ts_ms: ``(n,)`` int64 event time, ms.
        payload: ``(n,)`` int64 row index into the caller's side table (features, slate, ...).
    """

    request_key: UInt64[np.ndarray, " n"]
    ts_ms: Int64[np.ndarray, " n"]
    payload: Int64[np.ndarray, " n"]


class JoinOutcomes(NamedTuple):
    """A batch of outcomes, in stream order.

    Attributes:
        request_key: ``(n,)`` uint64 hash of the ``request_id`` of the impression it belongs to.
        ts_ms: ``(n,)`` int64 event time, ms.
        position: ``(n,)`` int32 slate position in ``[0, s)``.
        value: ``(n,)`` float32 raw per-outcome reward (for example stream >= 30 s as 0/1).
        payload: ``(n,)`` int64 row index into the caller's side table.
    """

    request_key: UInt64[np.ndarray, " n"]
    ts_ms: Int64[np.ndarray, " n"]
    position: Int32[np.ndarray, " n"]
    value: Float32[np.ndarray, " n"]
    payload: Int64[np.ndarray, " n"]


class Closed(NamedTuple):
    """Impressions whose window ended (or that were evicted), in the order they arrived.

    Attributes:
        request_key: ``(m,)`` uint64.
        ts_ms: ``(m,)`` int64 impression event time, ms.
        payload: ``(m,)`` int64 the impression's payload.
        reward: ``(m, s)`` float32 aggregated reward per position (``default_reward`` where none).
        n_outcomes: ``(m, s)`` int32 outcomes joined per position.
        defaulted: ``(m, s)`` bool, True where the default reward was used.
        evicted: ``(m,)`` bool, True when closed early because the buffer was full.
    """

    request_key: UInt64[np.ndarray, " m"]
    ts_ms: Int64[np.ndarray, " m"]
    payload: Int64[np.ndarray, " m"]
    reward: Float32[np.ndarray, "m s"]
    n_outcomes: Int32[np.ndarray, "m s"]
    defaulted: Bool[np.ndarray, "m s"]
    evicted: Bool[np.ndarray, " m"]


class JoinedOutcomes(NamedTuple):
    """The outcome rows behind a ``Closed`` batch, grouped by impression and position, values
    ascending within a position.

    Attributes:
        row: ``(j,)`` int64 index of the impression in the ``Closed`` batch of the same effects.
        request_key, ts_ms, position, value, payload: ``(j,)`` the outcome's columns.
    """

    row: Int64[np.ndarray, " j"]
    request_key: UInt64[np.ndarray, " j"]
    ts_ms: Int64[np.ndarray, " j"]
    position: Int32[np.ndarray, " j"]
    value: Float32[np.ndarray, " j"]
    payload: Int64[np.ndarray, " j"]


class RejectedImpressions(NamedTuple):
    """Impressions that were not opened; ``reason`` is ``IMPRESSION_LATE`` or ``_DUPLICATE``."""

    request_key: UInt64[np.ndarray, " r"]
    ts_ms: Int64[np.ndarray, " r"]
    payload: Int64[np.ndarray, " r"]
    reason: Int8[np.ndarray, " r"]


class RejectedOutcomes(NamedTuple):
    """Outcomes that joined nothing; ``reason`` is one of the ``OUTCOME_*`` codes."""

    request_key: UInt64[np.ndarray, " r"]
    ts_ms: Int64[np.ndarray, " r"]
    position: Int32[np.ndarray, " r"]
    value: Float32[np.ndarray, " r"]
    payload: Int64[np.ndarray, " r"]
    reason: Int8[np.ndarray, " r"]


class JoinEffects(NamedTuple):
    """What one call produced. Every call returns all four parts; most are empty."""

    closed: Closed
    joined: JoinedOutcomes
    rejected_impressions: RejectedImpressions
    rejected_outcomes: RejectedOutcomes


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
    """The state as named arrays (for ``streaming.checkpoint.write``); no copies.

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


def _column(batch: str, name: str, value: object, dtype: type[np.generic]) -> _Array:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise ValueError(f"{batch}.{name} must be 1-d, got shape {arr.shape}")
    want = np.dtype(dtype)
    if arr.dtype == want:
        return arr
    same_family = (arr.dtype.kind in "iu" and want.kind in "iu") or (
        arr.dtype.kind in "iuf" and want.kind == "f"
    )
    if not same_family or (want.kind == "u" and arr.dtype.kind != "u"):
        raise ValueError(f"{batch}.{name} must be {want}, got {arr.dtype}")
    with np.errstate(over="ignore"):  # a float64 beyond float32 becomes inf: reported later
        return arr.astype(want)


def _check_ts(batch: str, ts: _Array) -> None:
    bad = np.flatnonzero((ts >= _TS_LIMIT) | (ts <= -_TS_LIMIT))
    if bad.size:
        raise ValueError(
            f"{batch}.ts_ms out of range (|ts_ms| < 2**61) at rows {bad[:10].tolist()}"
        )


def _check_lengths(batch: str, columns: Mapping[str, _Array]) -> None:
    lengths = {name: arr.shape[0] for name, arr in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{batch} columns differ in length: {lengths}")


def _check_impressions(batch: JoinImpressions) -> JoinImpressions:
    name = "JoinImpressions"
    out = JoinImpressions(
        _column(name, "request_key", batch.request_key, np.uint64),
        _column(name, "ts_ms", batch.ts_ms, np.int64),
        _column(name, "payload", batch.payload, np.int64),
    )
    _check_lengths(name, out._asdict())
    _check_ts(name, out.ts_ms)
    return out


def _check_outcomes(batch: JoinOutcomes, s: int) -> JoinOutcomes:
    name = "JoinOutcomes"
    position = _column(name, "position", batch.position, np.int64)
    out = JoinOutcomes(
        _column(name, "request_key", batch.request_key, np.uint64),
        _column(name, "ts_ms", batch.ts_ms, np.int64),
        position.astype(np.int32),
        _column(name, "value", batch.value, np.float32),
        _column(name, "payload", batch.payload, np.int64),
    )
    _check_lengths(name, out._asdict())
    _check_ts(name, out.ts_ms)
    bad = np.flatnonzero((position < 0) | (position >= s))
    if bad.size:
        raise ValueError(
            f"{name}.position must be in [0, {s}) (slate_size); "
            f"rows {bad[:10].tolist()} hold {position[bad[:10]].tolist()}"
        )
    bad = np.flatnonzero(~np.isfinite(out.value))
    if bad.size:
        raise ValueError(f"{name}.value must be finite; rows {bad[:10].tolist()}")
    return out


def _check_state(state: JoinState, config: JoinConfig) -> None:
    if int(state.slate_size) != config.slate_size:
        raise ValueError(
            f"join state was made with slate_size={int(state.slate_size)} but "
            f"JoinConfig.slate_size={config.slate_size}"
        )


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


def _rejected(rows: JoinOutcomes, reason: _Array | int) -> RejectedOutcomes:
    return RejectedOutcomes(
        *rows, np.broadcast_to(np.int8(reason), rows.ts_ms.shape).astype(np.int8)
    )


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


def _oldest(ts: _Array, n: int) -> _Array:
    """Rows of the ``n`` oldest entries by (ts, arrival), ascending, in O(len(ts))."""
    cut = np.partition(ts, n - 1)[n - 1]
    older = np.flatnonzero(ts < cut)
    tied = np.flatnonzero(ts == cut)[: n - older.size]
    return np.sort(np.concatenate([older, tied]))


def _effects(
    s: int,
    closed: Closed | None = None,
    joined: JoinedOutcomes | None = None,
    impressions: RejectedImpressions | None = None,
    outcomes: RejectedOutcomes | None = None,
) -> JoinEffects:
    u64, i64, i32, f32 = (np.zeros(0, t) for t in (np.uint64, np.int64, np.int32, np.float32))
    if closed is None:
        closed = Closed(
            u64,
            i64,
            i64,
            np.zeros((0, s), np.float32),
            np.zeros((0, s), np.int32),
            np.zeros((0, s), bool),
            np.zeros(0, bool),
        )
    if joined is None:
        joined = JoinedOutcomes(i64, u64, i64, i32, f32, i64)
    if impressions is None:
        impressions = RejectedImpressions(u64, i64, i64, np.zeros(0, np.int8))
    if outcomes is None:
        outcomes = RejectedOutcomes(u64, i64, i32, f32, i64, np.zeros(0, np.int8))
    return JoinEffects(closed, joined, impressions, outcomes)


def _stack(parts: Sequence[tuple[_Array, ...]]) -> list[_Array]:
    return [np.concatenate(columns) for columns in zip(*parts, strict=True)]


def concat_effects(parts: Sequence[JoinEffects], slate_size: int) -> JoinEffects:
    """Concatenate the effects of several calls, keeping ``joined.row`` pointing at ``closed``.

    Args:
        parts: effects in call order (may be empty).
        slate_size: ``s``, for the shape of an empty result.
    """
    if not parts:
        return _effects(slate_size)
    offsets = np.cumsum([0, *(fx.closed.ts_ms.size for fx in parts)])[:-1]
    rows = [fx.joined.row + off for fx, off in zip(parts, offsets, strict=True)]
    closed = Closed(*_stack([fx.closed for fx in parts]))
    joined = JoinedOutcomes(np.concatenate(rows), *_stack([fx.joined[1:] for fx in parts]))
    impressions = RejectedImpressions(*_stack([fx.rejected_impressions for fx in parts]))
    outcomes = RejectedOutcomes(*_stack([fx.rejected_outcomes for fx in parts]))
    return JoinEffects(closed, joined, impressions, outcomes)


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
        # of an add no longer grows with the pending buffer's size times its logarithm (a
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
