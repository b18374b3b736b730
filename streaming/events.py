"""The event contract (JSON, versioned by ``schema``) and its decoder to columnar batches.

Two event types travel on two topics, both keyed by ``user_id``:

``impression`` (schema ``"impression/1"`` or ``"impression/2"``)
    ``request_id``, ``user_id``, ``surface``, ``ts`` (event time, ms), ``context`` (the user and
    request features, ``d_user`` floats), ``candidates`` (track ids, up to ``max_candidates``),
    ``candidate_features`` (one ``d_track`` list per candidate), ``shown`` (indices into
    ``candidates``, in the order shown), ``propensities`` (the logging policy's probability of each
    shown choice given the ones above it), ``policy`` and ``policy_version``.

``outcome`` (schema ``"outcome/1"``)
    ``request_id``, ``user_id``, ``track_id``, ``position`` (0 = top of the slate), ``ts``,
    ``ms_played``, ``track_duration_ms``, ``reason_end`` (one of ``REASONS_END``), and optionally
    ``saved``, ``liked``, ``added_to_playlist`` (default false).

Field names follow the public music-streaming skip-prediction data where one exists.

The two impression versions differ only in how float features may be written:

==================  ==================================================================
schema              ``context`` / ``candidate_features``
==================  ==================================================================
``impression/1``    JSON number arrays (``[0.1, ...]`` / ``[[0.5, ...], ...]``)
``impression/2``    each field on its own: the JSON arrays above, or a string holding the
                    standard base64 (RFC 4648, ``+/``, ``=``-padded, no line breaks) of
                    little-endian float32 values, row-major: ``d_user`` values for
                    ``context``, ``len(candidates) x d_track`` for ``candidate_features``
==================  ==================================================================

The binary form is about a third of the size (an impression of 20 candidates x 16 features:
~2.3 KB instead of ~7.3 KB) and decodes without a Python float per value: msgspec decodes the
base64 to bytes, and a batch's bytes become its feature arrays in one ``np.frombuffer``. Values
are float32 either way (JSON numbers are rounded to float32 in the batch), so an event decodes
to the same batch in both forms. Producers writing the binary form say ``impression/2``, so a
decoder that only knows ``impression/1`` rejects it as ``unknown_schema`` instead of misreading
it; a base64 string under ``impression/1`` is ``wrong_type``. ``with_features`` and
``float32_bytes`` write the binary form.

Decoding goes from raw bytes straight to typed msgspec structs and then to numpy columns; no
per-event dicts reach the math. Every malformed message raises (or, in batch decoding, becomes a
``Reject`` carrying) a ``DecodeError`` whose ``code`` is one of ``ERROR_CODES``:

=====================  ============================================================
code                   meaning
=====================  ============================================================
``too_large``          the message is over ``max_message_bytes``
``invalid_utf8``       the bytes are not UTF-8
``invalid_json``       not one JSON object (malformed, trailing data)
``unknown_schema``     ``schema`` is missing or not a version this decoder knows
``missing_field``      a required field is absent
``unknown_field``      a field the schema does not define
``wrong_type``         a field has the wrong JSON type (or a number is out of range);
                       a base64 feature string under ``impression/1``
``non_finite``         a NaN or infinite number, a binary float32 NaN or infinity, or a
                       JSON number beyond float32's range
``bad_value``          an impossible value: negative time or duration, an empty id,
                       ``ms_played`` over 10x the duration, a position < 0 or >= 2**31; a feature
                       string that is not standard base64
``empty_candidates``   an impression with no candidates, or nothing shown
``bad_shape``          lengths disagree (features per candidate, context size,
                       propensities per shown item, bytes of a binary feature field
                       other than 4 x its value count) or too many candidates
``bad_shown``          a shown index out of range or repeated
``bad_propensity``     a propensity outside (0, 1]
``unknown_reason_end`` ``reason_end`` not in ``REASONS_END``
=====================  ============================================================
"""

from __future__ import annotations

import gc
import itertools
import operator
import typing
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, NamedTuple, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

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

ERROR_CODES = (
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
)
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
]

T = TypeVar("T")
MAX_PLAY_RATIO = 10.0
MAX_INT = 2**53
"""Integers (times, durations) above this are rejected as ``bad_value``."""
MAX_POSITION = 2**31 - 1
"""Slate positions above this are rejected as ``bad_value`` (the batch holds them as int32)."""


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


class _SchemaOnly(msgspec.Struct):
    schema: str


@dataclass(frozen=True)
class Limits:
    """What the decoder accepts: sizes of messages, candidate lists and feature vectors."""

    d_user: int = 16
    d_track: int = 16
    max_candidates: int = 4096
    max_message_bytes: int = 1_000_000


class Reject(NamedTuple):
    """A message that failed to decode, ready for the dead-letter topic."""

    code: ErrorCode
    reason: str
    raw: bytes
    row: int  # position in the input sequence


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def key64(values: Sequence[str]) -> npt.NDArray[np.uint64]:
    """A stable 64-bit key per id (FNV-1a over its UTF-8 bytes, then a 64-bit finaliser).

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


_CANDIDATES = operator.attrgetter("candidates")
_IMPRESSION_DECODER = msgspec.json.Decoder(Impression)
_OUTCOME_DECODER = msgspec.json.Decoder(Outcome)
_SCHEMA_DECODER = msgspec.json.Decoder(_SchemaOnly)
_ENCODER = msgspec.json.Encoder()


def _classify(exc: Exception, raw: bytes, expected: tuple[str, ...]) -> DecodeError:
    """Turn a msgspec failure into the documented error, most specific first."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as u:
        return DecodeError("invalid_utf8", f"not UTF-8 at byte {u.start}", raw)
    msg = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        try:
            schema = _SCHEMA_DECODER.decode(raw).schema
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
            schema = None
        if schema is None:
            return DecodeError(
                "unknown_schema", f"no string `schema` field (expected {_names(expected)})", raw
            )
        if schema not in expected:
            return DecodeError(
                "unknown_schema", f"schema {schema!r} is not {_names(expected)}", raw
            )
        if "missing required field" in msg:
            return DecodeError("missing_field", msg, raw)
        if "unknown field" in msg:
            return DecodeError("unknown_field", msg, raw)
        if "base64" in msg:  # msgspec decodes the feature strings of either schema
            if schema == IMPRESSION_SCHEMA_V2:
                return DecodeError("bad_value", f"{msg} (standard base64 of float32 values)", raw)
            return DecodeError(
                "wrong_type",
                f"{msg}: base64 float32 features need schema {IMPRESSION_SCHEMA_V2!r}",
                raw,
            )
        if "out of range" in msg:
            return DecodeError("non_finite", f"{msg} (a number too large for a float)", raw)
        return DecodeError("wrong_type", msg, raw)
    return DecodeError("invalid_json", msg, raw)


def _names(schemas: tuple[str, ...]) -> str:
    return " or ".join(map(repr, schemas))


def _parse(
    raw: bytes, limits: Limits, decoder: msgspec.json.Decoder[T], schemas: tuple[str, ...]
) -> T:
    """What both event types check first: size, JSON and field types, then the schema version."""
    if len(raw) > limits.max_message_bytes:
        raise DecodeError(
            "too_large", f"{len(raw)} bytes > max_message_bytes {limits.max_message_bytes}", raw
        )
    try:
        ev = decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _classify(exc, raw, schemas) from None
    found = getattr(ev, "schema", None)
    if found not in schemas:
        raise DecodeError("unknown_schema", f"schema {found!r} is not {_names(schemas)}", raw)
    return ev


def _binary(
    value: list[float] | list[list[float]] | bytes, name: str, schema: str, raw: bytes
) -> bool:
    """Whether a feature field came as base64 float32 (msgspec has decoded it to bytes)."""
    if not isinstance(value, bytes):
        return False
    if schema != IMPRESSION_SCHEMA_V2:
        raise DecodeError(
            "wrong_type",
            f"{name} is a string; base64 float32 features need schema {IMPRESSION_SCHEMA_V2!r}",
            raw,
        )
    return True


def _check_impression(raw: bytes, limits: Limits) -> Impression:
    ev = _parse(raw, limits, _IMPRESSION_DECODER, IMPRESSION_SCHEMAS)
    if not ev.request_id or not ev.user_id:
        raise DecodeError("bad_value", "request_id and user_id must be non-empty", raw)
    if not 0 <= ev.ts <= MAX_INT:
        raise DecodeError("bad_value", f"ts {ev.ts} is negative or too large", raw)
    k = len(ev.candidates)
    if k == 0 or not ev.shown:
        raise DecodeError("empty_candidates", f"{k} candidates, {len(ev.shown)} shown", raw)
    if k > limits.max_candidates:
        raise DecodeError(
            "bad_shape", f"{k} candidates > max_candidates {limits.max_candidates}", raw
        )
    if _binary(ev.context, "context", ev.schema, raw):
        if len(ev.context) != 4 * limits.d_user:
            raise DecodeError(
                "bad_shape",
                f"context has {len(ev.context)} bytes, expected d_user {limits.d_user} x 4 "
                "(float32)",
                raw,
            )
    elif len(ev.context) != limits.d_user:
        raise DecodeError(
            "bad_shape", f"context has {len(ev.context)} features, expected {limits.d_user}", raw
        )
    d = limits.d_track
    if _binary(ev.candidate_features, "candidate_features", ev.schema, raw):
        if len(ev.candidate_features) != 4 * k * d:
            raise DecodeError(
                "bad_shape",
                f"candidate_features has {len(ev.candidate_features)} bytes, expected "
                f"{k} candidates x d_track {d} x 4 (float32) = {4 * k * d}",
                raw,
            )
    else:
        rows = typing.cast(list[list[float]], ev.candidate_features)
        if len(rows) != k:
            raise DecodeError("bad_shape", f"{len(rows)} feature rows for {k} candidates", raw)
        if set(map(len, rows)) != {d}:
            i = next(i for i, row in enumerate(rows) if len(row) != d)
            raise DecodeError(
                "bad_shape", f"candidate {i} has {len(rows[i])} features, expected {d}", raw
            )
    if len(ev.propensities) != len(ev.shown):
        raise DecodeError(
            "bad_shape", f"{len(ev.propensities)} propensities for {len(ev.shown)} shown", raw
        )
    if len(set(ev.shown)) != len(ev.shown) or min(ev.shown) < 0 or max(ev.shown) >= k:
        raise DecodeError(
            "bad_shown", f"shown {ev.shown[:20]} must be distinct indices in [0, {k})", raw
        )
    if not (min(ev.propensities) > 0.0 and max(ev.propensities) <= 1.0):
        p = next(p for p in ev.propensities if not 0.0 < p <= 1.0)
        raise DecodeError("bad_propensity", f"propensity {p} is outside (0, 1]", raw)
    return ev


def decode_impression(raw: bytes, limits: Limits = Limits()) -> Impression:
    """Decode and validate one impression (either feature form; see the module docstring).

    Raises:
        DecodeError: with one of ``ERROR_CODES``.
    """
    ev = _check_impression(raw, limits)
    context, features, _, lens = _features([ev], limits)
    for _, reason in _non_finite(context, features, lens):
        raise DecodeError("non_finite", reason, raw)
    return ev


def decode_outcome(raw: bytes, limits: Limits = Limits()) -> Outcome:
    """Decode and validate one outcome.

    Raises:
        DecodeError: with one of ``ERROR_CODES``.
    """
    ev = _parse(raw, limits, _OUTCOME_DECODER, (OUTCOME_SCHEMA,))
    if not ev.request_id or not ev.user_id or not ev.track_id:
        raise DecodeError("bad_value", "request_id, user_id and track_id must be non-empty", raw)
    if not (0 <= ev.ts <= MAX_INT and 0 <= ev.position <= MAX_POSITION):
        raise DecodeError(
            "bad_value",
            f"ts {ev.ts} must be in [0, 2**53] and position {ev.position} in [0, 2**31)",
            raw,
        )
    if ev.track_duration_ms > MAX_INT:
        raise DecodeError(
            "bad_value", f"track_duration_ms {ev.track_duration_ms} is too large", raw
        )
    if ev.ms_played < 0 or ev.track_duration_ms <= 0:
        raise DecodeError(
            "bad_value",
            f"ms_played {ev.ms_played} must be >= 0 and track_duration_ms {ev.track_duration_ms} > 0",
            raw,
        )
    if ev.ms_played > MAX_PLAY_RATIO * ev.track_duration_ms:
        raise DecodeError(
            "bad_value",
            f"ms_played {ev.ms_played} is over {MAX_PLAY_RATIO:g}x track_duration_ms {ev.track_duration_ms}",
            raw,
        )
    if ev.reason_end not in _REASON_CODE:
        raise DecodeError(
            "unknown_reason_end",
            f"reason_end {ev.reason_end!r} is not one of {list(REASONS_END)}",
            raw,
        )
    return ev


def _float32(parts: Sequence[bytes]) -> npt.NDArray[np.float32]:
    """Little-endian float32 bytes, concatenated, as one writable native float32 vector."""
    flat = np.frombuffer(bytearray().join(parts), dtype=_F32)
    return flat.astype(np.float32, copy=False)


def _features(
    events: Sequence[Impression], limits: Limits
) -> tuple[
    npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.bool_], npt.NDArray[np.int64]
]:
    """``context`` (n, d_user), ``candidate_features`` (n, k, d_track) padded with zeros, the
    candidate mask (n, k) and the candidate counts (n,), from either form, row by row."""
    n, d_u, d_t = len(events), limits.d_user, limits.d_track
    lens = np.fromiter((len(e.candidates) for e in events), dtype=np.int64, count=n)
    k = int(lens.max()) if n else 1
    cmask = np.arange(k)[None, :] < lens[:, None]
    same_k = bool((lens == k).all())
    ctx_bin = [e.context for e in events if isinstance(e.context, bytes)]
    feat_bin = [e.candidate_features for e in events if isinstance(e.candidate_features, bytes)]
    # A JSON number beyond float32's range becomes inf here: ``_non_finite`` rejects it.
    with np.errstate(over="ignore"):
        if len(ctx_bin) == n:  # binary (or empty): one concatenation, no Python floats
            context = _float32(ctx_bin).reshape(n, d_u)
        elif not ctx_bin:
            context = np.array([e.context for e in events], np.float32).reshape(n, d_u)
        else:
            is_bin = np.fromiter((isinstance(e.context, bytes) for e in events), bool, count=n)
            context = np.empty((n, d_u), np.float32)
            context[is_bin] = _float32(ctx_bin).reshape(-1, d_u)
            context[~is_bin] = np.array(
                [e.context for e in events if not isinstance(e.context, bytes)], np.float32
            ).reshape(-1, d_u)
        if same_k and len(feat_bin) == n:
            features = _float32(feat_bin).reshape(n, k, d_t)
        elif same_k and not feat_bin:
            features = np.array([e.candidate_features for e in events], np.float32).reshape(
                n, k, d_t
            )
        else:
            is_bin = np.fromiter(
                (isinstance(e.candidate_features, bytes) for e in events), bool, count=n
            )
            features = np.zeros((n, k, d_t), np.float32)
            if feat_bin:
                features[cmask & is_bin[:, None]] = _float32(feat_bin).reshape(-1, d_t)
            for i in np.flatnonzero(~is_bin).tolist():
                features[i, : lens[i]] = events[i].candidate_features
    return context, features, cmask, lens


def _non_finite(
    context: npt.NDArray[np.float32],
    features: npt.NDArray[np.float32],
    lens: npt.NDArray[np.int64],
) -> list[tuple[int, str]]:
    """``(row, reason)`` for each row with a NaN or infinite float32 feature (padding is zero)."""
    # A float64 sum of float32 values cannot overflow, and any NaN or inf makes it non-finite.
    with np.errstate(invalid="ignore"):  # +inf and -inf in one row sum to NaN: still caught
        total = context.sum(axis=1, dtype=np.float64) + features.sum(axis=(1, 2), dtype=np.float64)
    out: list[tuple[int, str]] = []
    for i in np.flatnonzero(~np.isfinite(total)).tolist():
        bad = np.flatnonzero(~np.isfinite(context[i]))
        if bad.size:
            j = int(bad[0])
            out.append((i, f"context feature {j} is {context[i, j]} as float32"))
            continue
        row = features[i, : lens[i]]
        c, j = (int(x) for x in np.argwhere(~np.isfinite(row))[0])
        out.append((i, f"candidate {c} feature {j} is {row[c, j]} as float32"))
    return out


def _impression_batch(
    events: Sequence[Impression],
    context: npt.NDArray[np.float32],
    features: npt.NDArray[np.float32],
    cmask: npt.NDArray[np.bool_],
) -> ImpressionBatch:
    n = len(events)
    s = max((len(e.shown) for e in events), default=1)
    cand_key = np.zeros(cmask.shape, dtype=np.uint64)
    cand_key[cmask] = key64(list(itertools.chain.from_iterable(map(_CANDIDATES, events))))
    shown_lens = np.fromiter((len(e.shown) for e in events), dtype=np.int64, count=n)
    smask = np.arange(s)[None, :] < shown_lens[:, None]
    if n and (shown_lens == s).all():  # the common case: slates of one length
        shown = np.array([e.shown for e in events], dtype=np.int32).reshape(n, s)
        prop = np.array([e.propensities for e in events], dtype=np.float32).reshape(n, s)
    else:
        shown = np.full((n, s), -1, dtype=np.int32)
        prop = np.ones((n, s), dtype=np.float32)
        shown[smask] = np.fromiter((j for e in events for j in e.shown), np.int32)
        prop[smask] = np.fromiter((p for e in events for p in e.propensities), np.float32)
    request_ids = [e.request_id for e in events]
    return ImpressionBatch(
        request_id=np.array(request_ids, dtype=np.str_),
        request_key=key64(request_ids),
        user_id=np.array([e.user_id for e in events], dtype=np.str_),
        surface=np.array([e.surface for e in events], dtype=np.str_),
        ts_ms=np.fromiter((e.ts for e in events), dtype=np.int64, count=n),
        context=context,
        candidate_key=cand_key,
        candidate_features=features,
        candidate_mask=cmask,
        shown=shown,
        propensity=prop,
        shown_mask=smask,
        policy=np.array([e.policy for e in events], dtype=np.str_),
        policy_version=np.array([e.policy_version for e in events], dtype=np.str_),
    )


def impressions_to_batch(
    events: Sequence[Impression], limits: Limits = Limits()
) -> ImpressionBatch:
    """Columns for validated impressions (either feature form); candidate lists are padded to
    the longest one."""
    context, features, cmask, _ = _features(events, limits)
    return _impression_batch(events, context, features, cmask)


def outcomes_to_batch(events: Sequence[Outcome]) -> OutcomeBatch:
    """Columns for validated outcomes."""
    return OutcomeBatch(
        request_key=key64([e.request_id for e in events]),
        user_id=np.array([e.user_id for e in events], dtype=np.str_),
        track_key=key64([e.track_id for e in events]),
        position=np.array([e.position for e in events], dtype=np.int32),
        ts_ms=np.array([e.ts for e in events], dtype=np.int64),
        ms_played=np.array([e.ms_played for e in events], dtype=np.int64),
        duration_ms=np.array([e.track_duration_ms for e in events], dtype=np.int64),
        reason_end=np.array([_REASON_CODE[e.reason_end] for e in events], dtype=np.int8),
        saved=np.array([e.saved for e in events], dtype=bool),
        liked=np.array([e.liked for e in events], dtype=bool),
        added_to_playlist=np.array([e.added_to_playlist for e in events], dtype=bool),
    )


@contextmanager
def _collector_paused() -> Generator[None, None, None]:
    """No cyclic garbage collection inside the block (reference counting goes on as ever).

    A batch's decoded events hold thousands of lists that all live until the columns are built
    and are freed together right after, and none is part of a cycle. With the collector on,
    every 700 of them start a young collection that scans them and moves them to older
    generations, to be scanned again there: in a replay of the benchmark's float32 stream,
    collections triggered inside decoding took about a tenth of the daemon's CPU time. Paused,
    they are freed by reference counting before the collector ever looks at them.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def decode_impressions(
    raws: Sequence[bytes], limits: Limits = Limits()
) -> tuple[ImpressionBatch, list[Reject]]:
    """Decode many impressions: the good ones as one batch, the bad ones as rejects (in order).

    Base64 features go from their bytes to the batch's arrays in one concatenation per batch.
    """
    with _collector_paused():
        return _decode_impressions(raws, limits)


def _cleared_impressions(events: list[Impression], limits: Limits) -> npt.NDArray[np.bool_]:
    """Which parsed impressions ``_check_impression`` accepts, decided on the batch's columns.

    It only ever clears: an impression it does not clear is checked on its own, so every
    message gets the code and reason it gets alone. Integers beyond int64 clear nothing.
    """
    m = len(events)
    v1, v2 = IMPRESSION_SCHEMA, IMPRESSION_SCHEMA_V2
    schemas = [e.schema for e in events]
    is_v2 = np.fromiter((x == v2 for x in schemas), bool, count=m)
    ok = is_v2 | np.fromiter((x == v1 for x in schemas), bool, count=m)
    ok &= np.fromiter((bool(e.request_id and e.user_id) for e in events), bool, count=m)
    k = np.fromiter((len(e.candidates) for e in events), np.int64, count=m)
    n_shown = np.fromiter((len(e.shown) for e in events), np.int64, count=m)
    n_prop = np.fromiter((len(e.propensities) for e in events), np.int64, count=m)
    ok &= (k > 0) & (k <= limits.max_candidates) & (n_shown > 0) & (n_prop == n_shown)
    d_u, d_t = limits.d_user, limits.d_track
    ctx_bin = np.fromiter((isinstance(e.context, bytes) for e in events), bool, count=m)
    ctx_len = np.fromiter((len(e.context) for e in events), np.int64, count=m)
    ok &= np.where(ctx_bin, is_v2 & (ctx_len == 4 * d_u), ctx_len == d_u)
    feats = [e.candidate_features for e in events]
    f_bin = np.fromiter((isinstance(f, bytes) for f in feats), bool, count=m)
    f_len = np.fromiter(map(len, feats), np.int64, count=m)
    ok &= np.where(f_bin, is_v2 & (f_len == 4 * k * d_t), f_len == k)
    if not f_bin.all():  # JSON rows: every row of every list has d_track features
        rows = [
            typing.cast(list[list[float]], f)
            for f, b in zip(feats, f_bin.tolist(), strict=True)
            if not b
        ]
        row_lens = np.fromiter(map(len, itertools.chain.from_iterable(rows)), np.int64)
        per_event = np.repeat(np.arange(len(rows)), [len(f) for f in rows])
        bad_rows = np.zeros(len(rows), bool)
        np.logical_or.at(bad_rows, per_event, row_lens != d_t)
        ok[~f_bin] &= ~bad_rows
    try:
        ts = np.fromiter((e.ts for e in events), np.int64, count=m)
        shown = np.fromiter(itertools.chain.from_iterable(e.shown for e in events), np.int64)
    except OverflowError:  # an integer beyond int64 (msgspec reads up to 2**64 - 1)
        return np.zeros(m, bool)
    ok &= (ts >= 0) & (ts <= MAX_INT)
    owner = np.repeat(np.arange(m), n_shown)
    in_range = (shown >= 0) & (shown < k[owner])
    # distinct within each slate: (owner, index) pairs of in-range indices are unique
    pair = np.where(
        in_range, owner * (limits.max_candidates + 1) + shown, -1 - np.arange(len(shown))
    )
    order = np.sort(pair)
    dup = order[1:] == order[:-1]
    bad = ~in_range
    if dup.any():
        bad |= np.isin(pair, order[1:][dup])
    prop = np.fromiter(itertools.chain.from_iterable(e.propensities for e in events), np.float64)
    owner_p = np.repeat(np.arange(m), n_prop)
    bad_p = ~((prop > 0.0) & (prop <= 1.0))
    if bad.any() or bad_p.any():
        hit = np.zeros(m, bool)
        hit[owner[bad]] = True
        hit[owner_p[bad_p]] = True
        ok &= ~hit
    return ok


def _decode_impressions(
    raws: Sequence[bytes], limits: Limits
) -> tuple[ImpressionBatch, list[Reject]]:
    parsed = _parse_each(raws, _IMPRESSION_DECODER, limits)
    events = [e for e in parsed if e is not None]
    cleared = _cleared_impressions(events, limits).tolist()
    good: list[Impression] = []
    rows: list[int] = []
    rejects: list[Reject] = []
    it = iter(cleared)
    for i, (raw, e) in enumerate(zip(raws, parsed, strict=True)):
        if e is not None and next(it):
            good.append(e)
            rows.append(i)
            continue
        try:  # the rest one by one, in order: a reject with its own code and reason
            good.append(_check_impression(raw, limits))
            rows.append(i)
        except DecodeError as err:
            rejects.append(Reject(err.code, err.reason, raw, i))
    context, features, cmask, lens = _features(good, limits)
    bad = _non_finite(context, features, lens)
    if bad:
        for j, reason in bad:
            rejects.append(Reject("non_finite", reason, raws[rows[j]], rows[j]))
        rejects.sort(key=lambda r: r.row)
        keep = np.ones(len(good), bool)
        keep[[j for j, _ in bad]] = False
        good = [e for e, ok in zip(good, keep.tolist(), strict=True) if ok]
        k = int(lens[keep].max()) if good else 1  # pad to the longest list still in the batch
        context, features, cmask = context[keep], features[keep, :k], cmask[keep, :k]
    return _impression_batch(good, context, features, cmask), rejects


def decode_outcomes(
    raws: Sequence[bytes], limits: Limits = Limits()
) -> tuple[OutcomeBatch, list[Reject]]:
    """Decode many outcomes: the good ones as one batch, the bad ones as rejects (in order).

    Each message is parsed on its own (one message never takes part in another's parse); the
    checks of ``decode_outcome`` then run on the batch's columns at once. Those checks only ever
    clear a message: every message they do not clear goes through ``decode_outcome`` itself,
    so a bad one gets exactly the code and reason it gets alone.
    """
    with _collector_paused():
        return _decode_outcomes(raws, limits)


_RATIO_EXACT = 2**49
"""Durations up to this make ``MAX_PLAY_RATIO * duration`` an exact float64 integer, so the
batch's int64 check of ``ms_played`` agrees with ``decode_outcome``'s float one."""


def _parse_each(
    raws: Sequence[bytes], decoder: msgspec.json.Decoder[T], limits: Limits
) -> list[T | None]:
    """Each message parsed on its own (None where msgspec refuses it, or it is too large)."""
    decode = decoder.decode
    if not raws or max(map(len, raws)) <= limits.max_message_bytes:
        try:
            return list(map(decode, raws))
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, TypeError):
            pass
    out: list[T | None] = []
    for raw in raws:
        if len(raw) > limits.max_message_bytes:
            out.append(None)
            continue
        try:
            out.append(decode(raw))
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, TypeError):
            out.append(None)
    return out


def _decode_outcomes(raws: Sequence[bytes], limits: Limits) -> tuple[OutcomeBatch, list[Reject]]:
    n = len(raws)
    parsed = _parse_each(raws, _OUTCOME_DECODER, limits)
    events = [e for e in parsed if e is not None]
    m = len(events)
    try:
        ts = np.array([e.ts for e in events], np.int64)
        pos = np.array([e.position for e in events], np.int64)
        played = np.array([e.ms_played for e in events], np.int64)
        dur = np.array([e.track_duration_ms for e in events], np.int64)
    except OverflowError:  # an integer beyond int64 (msgspec reads up to 2**64 - 1)
        ts = pos = played = dur = np.zeros(m, np.int64)
        cleared = np.zeros(m, bool)
    else:
        cleared = (
            (ts >= 0)
            & (ts <= MAX_INT)
            & (pos >= 0)
            & (pos <= MAX_POSITION)
            & (dur > 0)
            & (dur <= _RATIO_EXACT)
            & (played >= 0)
            & (played <= np.int64(MAX_PLAY_RATIO) * np.minimum(dur, _RATIO_EXACT))
        )
    code = np.array([_REASON_CODE.get(e.reason_end, -1) for e in events], np.int8)
    cleared &= code >= 0
    for name in ("request_id", "user_id", "track_id"):
        values = [getattr(e, name) for e in events]
        if "" in values:
            cleared &= np.array([bool(v) for v in values], bool)
    schemas = [e.schema for e in events]
    if schemas.count(OUTCOME_SCHEMA) != m:
        cleared &= np.array([s == OUTCOME_SCHEMA for s in schemas], bool)
    if m == n and bool(cleared.all()):
        return _outcome_columns(events, ts, pos, played, dur, code), []
    # The rest one by one, in order: a reject with its reason, or (a duration beyond
    # ``_RATIO_EXACT``, an integer beyond int64) a good message after all.
    keep = np.zeros(n, bool)
    keep[[i for i, e in enumerate(parsed) if e is not None]] = cleared
    rejects: list[Reject] = []
    for i in np.flatnonzero(~keep).tolist():
        try:
            decode_outcome(raws[i], limits)
        except DecodeError as err:
            rejects.append(Reject(err.code, err.reason, raws[i], i))
        else:
            keep[i] = True
    bad = {r.row for r in rejects}
    good = [e for i, e in enumerate(parsed) if i not in bad and e is not None]
    return outcomes_to_batch(good), rejects


def _outcome_columns(
    events: list[Outcome],
    ts: npt.NDArray[np.int64],
    position: npt.NDArray[np.int64],
    ms_played: npt.NDArray[np.int64],
    duration: npt.NDArray[np.int64],
    reason_end: npt.NDArray[np.int8],
) -> OutcomeBatch:
    """``outcomes_to_batch(events)`` from the columns already built (the same values, dtypes)."""
    return OutcomeBatch(
        request_key=key64([e.request_id for e in events]),
        user_id=np.array([e.user_id for e in events], dtype=np.str_),
        track_key=key64([e.track_id for e in events]),
        position=position.astype(np.int32),
        ts_ms=ts,
        ms_played=ms_played,
        duration_ms=duration,
        reason_end=reason_end,
        saved=np.array([e.saved for e in events], dtype=bool),
        liked=np.array([e.liked for e in events], dtype=bool),
        added_to_playlist=np.array([e.added_to_playlist for e in events], dtype=bool),
    )


def encode(event: Impression | Outcome) -> bytes:
    """JSON bytes of an event (what producers send)."""
    return _ENCODER.encode(event)


def float32_bytes(values: npt.ArrayLike) -> bytes:
    """``values`` as little-endian float32 bytes, row-major: a binary feature field before base64.

    >>> import base64
    >>> base64.b64encode(float32_bytes([1.0, -2.0])).decode()
    'AACAPwAAAMA='
    """
    if isinstance(values, bytes):
        return values
    with np.errstate(over="ignore"):  # beyond float32's range: inf, which decoding rejects
        return np.ascontiguousarray(values, dtype=_F32).tobytes()


def with_features(event: Impression, encoding: FeatureEncoding) -> Impression:
    """``event`` with its features written as ``encoding`` says.

    ``"float32"`` makes ``context`` and ``candidate_features`` base64 float32 strings under
    schema ``"impression/2"`` (~3x smaller, decoded without Python floats); ``"json"`` returns
    ``event`` unchanged (number arrays under ``"impression/1"``, which every encore decodes).
    Values are rounded to float32, as the decoder does with JSON numbers anyway.
    """
    if encoding == "json":
        return event
    return msgspec.structs.replace(
        event,
        schema=IMPRESSION_SCHEMA_V2,
        context=float32_bytes(event.context),
        candidate_features=float32_bytes(event.candidate_features),
    )
