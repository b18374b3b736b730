"""Decoding one event: raw bytes to a validated ``Impression`` or ``Outcome``, or a ``DecodeError``.

``_parse`` does what both event types check first: the size, then msgspec's typed decode (its
failures mapped to an error code by ``_classify``), then the schema version.
``_check_impression`` adds every impression check except the finiteness of the features, which
``decode_impression`` checks with ``_non_finite`` on the float32 arrays (``event_columns``);
``decode_outcome`` checks an outcome's values. The batch decoders (``event_decode_batch``) send
every message their column checks do not clear through these functions, so a message gets the
same code and reason in a batch as alone.

Where a docstring below says "the module docstring", it means that of ``streaming.events``,
which documents the schemas, the two feature forms and the error codes.
"""

# The event_* modules are one module (``streaming.events``) split for size: they share their
# private helpers, and ``streaming.events`` re-exports them.
# pyright: reportPrivateUsage=false

from __future__ import annotations

import typing

import msgspec
import numpy as np
import numpy.typing as npt

from streaming.event_columns import _features
from streaming.event_contract import (
    _REASON_CODE,
    IMPRESSION_SCHEMA_V2,
    IMPRESSION_SCHEMAS,
    MAX_INT,
    MAX_PLAY_RATIO,
    MAX_POSITION,
    OUTCOME_SCHEMA,
    REASONS_END,
    DecodeError,
    Impression,
    Limits,
    Outcome,
    T,
)

__all__ = ["decode_impression", "decode_outcome"]


class _SchemaOnly(msgspec.Struct):
    schema: str


_IMPRESSION_DECODER = msgspec.json.Decoder(Impression)
_OUTCOME_DECODER = msgspec.json.Decoder(Outcome)
_SCHEMA_DECODER = msgspec.json.Decoder(_SchemaOnly)


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
