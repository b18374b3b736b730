"""The event contract's types and constants, shared by every decoder and encoder of events.

The schema versions and feature encodings, ``REASONS_END`` and the censoring reasons,
``ERROR_CODES`` with ``DecodeError``, the wire structs ``Impression`` and ``Outcome``
(msgspec), ``Limits`` (what the decoder accepts), ``Reject`` (a dead-letter row), the columnar
``ImpressionBatch`` and ``OutcomeBatch``, and ``key64``, the stable 64-bit key of an id that the
batches carry instead of the id.

The contract itself (the fields of each schema, the two feature forms of ``impression/2`` and
what each error code means) is documented in ``streaming.events``, the public entry point that
re-exports all of this: import from there.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

__all__ = [
    "CENSORING_REASONS",
    "ERROR_CODES",
    "FEATURE_ENCODINGS",
    "IMPRESSION_SCHEMA",
    "IMPRESSION_SCHEMAS",
    "IMPRESSION_SCHEMA_V2",
    "MAX_DEPTH",
    "MAX_INT",
    "MAX_PLAY_RATIO",
    "MAX_POSITION",
    "OUTCOME_SCHEMA",
    "REASONS_END",
    "DecodeError",
    "ErrorCode",
    "FeatureEncoding",
    "Impression",
    "ImpressionBatch",
    "Limits",
    "Outcome",
    "OutcomeBatch",
    "Reject",
    "T",
    "key64",
]


IMPRESSION_SCHEMA = "impression/1"
"""Features as JSON number arrays only (what every encore version decodes)."""
IMPRESSION_SCHEMA_V2 = "impression/2"
"""Features as JSON number arrays or base64 float32 strings, each field on its own."""
IMPRESSION_SCHEMAS = (IMPRESSION_SCHEMA, IMPRESSION_SCHEMA_V2)
FeatureEncoding = Literal["float32", "json"]
FEATURE_ENCODINGS: tuple[FeatureEncoding, ...] = ("float32", "json")
"""How a producer writes float features: base64 float32 (``impression/2``) or JSON numbers."""
_F32 = np.dtype("<f4")
OUTCOME_SCHEMA = "outcome/1"

REASONS_END: tuple[str, ...] = (
    "trackdone",
    "fwdbtn",
    "backbtn",
    "endplay",
    "logout",
    "clickrow",
    "clickside",
    "playbtn",
    "remote",
    "trackerror",
    "appload",
    "popup",
    "uriopen",
)
"""Known ``reason_end`` values, by code (index); the first five match the simulator's REASONS."""
_REASON_CODE = {r: i for i, r in enumerate(REASONS_END)}
CENSORING_REASONS = frozenset({"logout", "endplay", "trackerror", "appload", "remote"})
"""Plays that ended for a reason other than the listener's choice: not skips (censored)."""

ErrorCode = Literal[
    "too_large",
    "invalid_utf8",
    "invalid_json",
    "unknown_schema",
    "missing_field",
    "unknown_field",
    "wrong_type",
    "non_finite",
    "bad_value",
    "empty_candidates",
    "bad_shape",
    "bad_shown",
    "bad_propensity",
    "unknown_reason_end",
    "too_deep",
    "low_propensity",
    "large_features",
    "ts_ahead_of_record",
]
ERROR_CODES: tuple[ErrorCode, ...] = typing.get_args(ErrorCode)

T = TypeVar("T")
MAX_PLAY_RATIO = 10.0
MAX_INT = 2**53
"""Integers (times, durations) above this are rejected as ``bad_value``."""
MAX_POSITION = 2**31 - 1
"""Slate positions above this are rejected as ``bad_value`` (the batch holds them as int32)."""
MAX_DEPTH = 32
"""Messages nested deeper than this (``[`` and ``{`` open at once outside strings) are
``too_deep``. A valid event nests 3 deep; the bound keeps the decoder's own recursion (msgspec's
schema probe skips unknown values recursively, against Python's recursion limit) far from that
limit, so the verdict on a message never depends on how deep the caller's stack is."""


class DecodeError(ValueError):
    """A malformed event: ``code`` (see ``ERROR_CODES``), a human ``reason`` and the ``raw`` bytes."""

    def __init__(self, code: ErrorCode, reason: str, raw: bytes) -> None:
        super().__init__(f"{code}: {reason}")
        self.code: ErrorCode = code
        self.reason = reason
        self.raw = raw


class Impression(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    """One impression. ``context`` and ``candidate_features`` are JSON number arrays, or (schema
    ``"impression/2"`` only) little-endian float32 bytes, row-major, sent as base64 strings.

    Instances are not tracked by the cyclic garbage collector (``gc=False``: decoding is ~10 %
    faster and a poll's impressions trigger fewer collections). Its fields hold only strings,
    numbers and lists of them, so an impression is never part of a reference cycle unless one
    of its lists is made to hold the impression itself: don't.
    """

    schema: str
    request_id: str
    user_id: str
    surface: str
    ts: int
    context: list[float] | bytes
    candidates: list[str]
    candidate_features: list[list[float]] | bytes
    shown: list[int]
    propensities: list[float]
    policy: str
    policy_version: str


class Outcome(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    """One play's outcome (strings, integers and booleans only: never in a reference cycle, so
    not tracked by the cyclic garbage collector)."""

    schema: str
    request_id: str
    user_id: str
    track_id: str
    position: int
    ts: int
    ms_played: int
    track_duration_ms: int
    reason_end: str
    saved: bool = False
    liked: bool = False
    added_to_playlist: bool = False


@dataclass(frozen=True)
class Limits:
    """What the decoder accepts: sizes, and the values every later stage can learn from.

    Attributes:
        d_user: features in ``context``.
        d_track: features per candidate.
        max_candidates: most candidates in one impression.
        max_message_bytes: largest message, bytes.
        min_propensity: smallest logged propensity (``low_propensity`` below it). The batch
            holds propensities as float32, where 1e-50 is 0 (which the policies refuse) and
            1e-40 loses digits (subnormal), and the off-policy estimators weight a row by
            ``target / propensity``: at 1e-6 that weight is at most 1e6, exact to float32's
            seven digits and a trillion of them still far inside its range, while one row
            logged at 1e-30 would outweigh 1e30 ordinary rows. A logging policy that shows an
            item this rarely gives no usable evidence about it anyway.
        max_feature_norm: largest Euclidean norm of ``context`` and of each candidate's
            features (``large_features`` above it). The linear policies keep float32 statistics
            of ``phi = [x, 1] (x) [z, 1]``, whose squared norm ``(1 + |x|^2)(1 + |z|^2)`` enters
            their precision matrix next to a ridge of 1: at norms of 10 it is about 1e4, so
            float32's rounding (6e-8 of it) stays a thousandth of the ridge, while at norms of
            50 to 100 it is of the ridge's size and their Woodbury and Cholesky updates turn
            into NaN. ``inf``: no bound.
        max_event_ahead_ms: most an event's ``ts`` may be ahead of its Kafka record's timestamp
            (``ts_ahead_of_record`` beyond it; no bound where the timestamp is unknown). The
            join keeps the newest event time it has seen; an event ahead by more than the join's
            allowed lateness makes the on-time events after it look late. The record's
            timestamp is part of the log, so every replay gives a record the same verdict.
            The default is ``JoinConfig``'s default allowed lateness; the daemon passes its
            join's (``streaming.core.engine.limits``).
    """

    d_user: int = 16
    d_track: int = 16
    max_candidates: int = 4096
    max_message_bytes: int = 1_000_000
    min_propensity: float = 1e-6
    max_feature_norm: float = 10.0
    max_event_ahead_ms: int = 60_000

    def __post_init__(self) -> None:
        if not _F32_TINY <= self.min_propensity <= 1.0:
            raise ValueError(
                f"Limits.min_propensity must be in [{_F32_TINY:.3g}, 1] (a positive normal "
                f"float32), got {self.min_propensity}"
            )
        if not self.max_feature_norm > 0.0:
            raise ValueError(
                f"Limits.max_feature_norm must be positive (inf: no bound), got "
                f"{self.max_feature_norm}"
            )
        if self.max_event_ahead_ms < 0:
            raise ValueError(
                f"Limits.max_event_ahead_ms must be >= 0, got {self.max_event_ahead_ms}"
            )


_F32_TINY = float(np.finfo(np.float32).tiny)


class Reject(NamedTuple):
    """A message that failed to decode, ready for the dead-letter topic."""

    code: ErrorCode
    reason: str
    raw: bytes
    row: int  # position in the input sequence


try:
    from streaming.kafka._native import key64 as _native_key64
except ImportError:  # not built (no C compiler at install): numpy computes the same keys
    _native_key64 = None

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def key64(values: Sequence[str]) -> npt.NDArray[np.uint64]:
    """A stable 64-bit key per id (FNV-1a over its UTF-8 bytes, then a 64-bit finaliser).

    Computed by the compiled twin (``streaming.kafka._native.key64``) where it is built, else by
    :func:`key64_numpy`, the reference (the two are tested equal).
    """
    if _native_key64 is None:
        return key64_numpy(values)
    return np.frombuffer(_native_key64(list(values)), np.uint64).copy()


def key64_numpy(values: Sequence[str]) -> npt.NDArray[np.uint64]:
    """:func:`key64` in numpy: the reference definition, and the path without the compiled one.

    Vectorised over the ids: one pass over the concatenated UTF-8 bytes per character position,
    so hashing the candidate lists of a batch costs well under a microsecond per id, not a Python
    call per id.

    >>> key64(["t1", "t1", "t2"]).tolist()[0] == key64(["t1"]).tolist()[0]
    True
    """
    n = len(values)
    if n == 0:
        return np.zeros(0, np.uint64)
    joined = "\x00".join(values)
    if joined.isascii() and joined.count("\x00") == n - 1:
        # One byte per character and NUL between the ids only: one encode, and the ids' starts
        # and lengths from where the NULs are (the hash reads only each id's own bytes).
        data = np.frombuffer(joined.encode("ascii"), np.uint8)
        starts = np.zeros(n, np.int64)
        starts[1:] = np.flatnonzero(data == 0) + 1
        lengths = np.empty(n, np.int64)
        lengths[:-1] = starts[1:] - starts[:-1] - 1
        lengths[-1] = data.size - starts[-1]
    else:
        encoded = [v.encode() for v in values]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=n)
        data = np.frombuffer(b"".join(encoded), np.uint8)
        starts = np.cumsum(lengths) - lengths
    shortest, longest = int(lengths.min()), int(lengths.max())
    h = np.full(n, _FNV_OFFSET, np.uint64)
    for j in range(longest):
        if j < shortest:  # every id has a byte here
            h ^= data[starts + j]
            h *= _FNV_PRIME
        else:
            byte = data[np.minimum(starts + j, data.size - 1)]
            h = np.where(lengths > j, (h ^ byte) * _FNV_PRIME, h)
    # splitmix64 finaliser: spreads short ids over all 64 bits (they are used modulo a table size)
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


class ImpressionBatch(NamedTuple):
    """``n`` decoded impressions as columns; candidate lists padded to the batch's ``k``."""

    request_id: npt.NDArray[np.str_]  # (n,)
    request_key: npt.NDArray[np.uint64]  # (n,)
    user_id: npt.NDArray[np.str_]  # (n,)
    surface: npt.NDArray[np.str_]  # (n,)
    ts_ms: npt.NDArray[np.int64]  # (n,)
    context: npt.NDArray[np.float32]  # (n, d_user)
    candidate_key: npt.NDArray[np.uint64]  # (n, k) 0 where padded
    candidate_features: npt.NDArray[np.float32]  # (n, k, d_track)
    candidate_mask: npt.NDArray[np.bool_]  # (n, k)
    shown: npt.NDArray[np.int32]  # (n, s) indices into candidates, -1 where padded
    propensity: npt.NDArray[np.float32]  # (n, s) 1.0 where padded
    shown_mask: npt.NDArray[np.bool_]  # (n, s)
    policy: npt.NDArray[np.str_]  # (n,)
    policy_version: npt.NDArray[np.str_]  # (n,)

    @property
    def n(self) -> int:
        """Rows in the batch (``len`` is the tuple's field count, as for any NamedTuple)."""
        return int(self.ts_ms.shape[0])


class OutcomeBatch(NamedTuple):
    """``n`` decoded outcomes as columns."""

    request_key: npt.NDArray[np.uint64]  # (n,)
    user_id: npt.NDArray[np.str_]  # (n,)
    track_key: npt.NDArray[np.uint64]  # (n,)
    position: npt.NDArray[np.int32]  # (n,)
    ts_ms: npt.NDArray[np.int64]  # (n,)
    ms_played: npt.NDArray[np.int64]  # (n,)
    duration_ms: npt.NDArray[np.int64]  # (n,)
    reason_end: npt.NDArray[np.int8]  # (n,) index into REASONS_END
    saved: npt.NDArray[np.bool_]  # (n,)
    liked: npt.NDArray[np.bool_]  # (n,)
    added_to_playlist: npt.NDArray[np.bool_]  # (n,)

    @property
    def n(self) -> int:
        """Rows in the batch (``len`` is the tuple's field count, as for any NamedTuple)."""
        return int(self.ts_ms.shape[0])

    @property
    def censored(self) -> npt.NDArray[np.bool_]:
        codes = np.array([_REASON_CODE[r] for r in CENSORING_REASONS], dtype=np.int8)
        return np.isin(self.reason_end, codes)
