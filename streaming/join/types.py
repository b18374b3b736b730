"""The reward-window join's vocabulary: configuration, reason codes, batches and effects.

``JoinConfig`` (checked when it is made), the time bounds ``NO_TIME_MS`` and ``MAX_TIME_MS``,
the ``IMPRESSION_*`` and ``OUTCOME_*`` reject reasons, the batches that go in
(``JoinImpressions``, ``JoinOutcomes``) and the parts of ``JoinEffects`` that come out
(``Closed``, ``JoinedOutcomes``, ``RejectedImpressions``, ``RejectedOutcomes``), with the
helpers that build effects: empty ones, rejected-outcome rows, and ``concat_effects``.

Part of the reward-window join: ``streaming.join`` explains its rules and is the module to
import. ``__all__`` lists every name defined here, private ones included, for the other
``join_*`` modules and for the re-exports in ``streaming.join``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
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
    "_DURATION_LIMIT",
    "_TS_LIMIT",
    "Aggregate",
    "Closed",
    "JoinConfig",
    "JoinEffects",
    "JoinImpressions",
    "JoinOutcomes",
    "JoinedOutcomes",
    "RejectedImpressions",
    "RejectedOutcomes",
    "_Array",
    "_check_float",
    "_check_int",
    "_effects",
    "_rejected",
    "_stack",
    "concat_effects",
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


def _rejected(rows: JoinOutcomes, reason: _Array | int) -> RejectedOutcomes:
    return RejectedOutcomes(
        *rows, np.broadcast_to(np.int8(reason), rows.ts_ms.shape).astype(np.int8)
    )


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
