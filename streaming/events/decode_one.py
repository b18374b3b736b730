"""Decoding one event: raw bytes to a validated ``Impression`` or ``Outcome``, or a ``DecodeError``.

``_parse`` does what both event types check first: the size, then msgspec's typed decode (its
failures mapped to an error code by ``_classify``, which measures a refused message's nesting
with ``_nesting`` before it probes for the schema), then the schema version.
``_check_impression`` adds every impression check except those on the float32 feature values,
which ``decode_impression`` makes with ``_feature_rejects`` on the arrays (``columns``):
finiteness, then the norms. ``decode_outcome`` checks an outcome's values. Both take the Kafka
record's timestamp (``record_ts_ms``, -1 where unknown) for the bound on how far ahead of it an
event's ``ts`` may be. The batch decoders (``decode_batch``) send every message their
column checks do not clear through these functions, so a message gets the same code and reason
in a batch as alone.

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

from streaming.events.columns import _features
from streaming.events.contract import (
    _REASON_CODE,
    IMPRESSION_SCHEMA_V2,
    IMPRESSION_SCHEMAS,
    MAX_DEPTH,
    MAX_INT,
    MAX_PLAY_RATIO,
    MAX_POSITION,
    OUTCOME_SCHEMA,
    REASONS_END,
    DecodeError,
    ErrorCode,
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
    # no more brackets than MAX_DEPTH in all (most messages): no need to measure
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and (depth := _nesting(raw)) > MAX_DEPTH:
        return DecodeError("too_deep", f"nested {depth} deep (at most {MAX_DEPTH})", raw)
    msg = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        try:  # skips the other fields' values recursively: at most MAX_DEPTH levels here
            schema = _SCHEMA_DECODER.decode(raw).schema
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError):
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


_F32_MAX = float(np.finfo(np.float32).max)
_OPEN = np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


def _nesting(raw: bytes) -> int:
    """How deep ``raw`` nests: the most ``[`` and ``{`` open at once outside JSON strings.

    A quote ends or starts a string unless an odd run of backslashes comes right before it.
    Up to the first byte that makes a message invalid JSON this is exactly how deep msgspec's
    parser has gone, so a message measured at most ``MAX_DEPTH`` deep never takes msgspec
    deeper than that. Vectorised over the bytes (and only refused messages are measured).
    """
    if not (b"[" in raw or b"{" in raw):
        return 0
    b = np.frombuffer(raw, np.uint8)
    at = np.arange(b.size)
    # the last position at or before each one that is not a backslash (-1: none)
    plain = np.maximum.accumulate(np.where(b == ord("\\"), -1, at))
    escaped = np.zeros(b.size, bool)
    escaped[1:] = (at[:-1] - plain[:-1]) % 2 == 1  # an odd run of backslashes just before
    quotes = (b == ord('"')) & ~escaped
    outside = np.cumsum(quotes) % 2 == 0  # quote characters themselves are no brackets
    step = np.where(outside, _OPEN[b], 0)
    return max(int(np.cumsum(step, dtype=np.int64).max()), 0)


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


def _ahead(ts: int, record_ts_ms: int, limits: Limits, raw: bytes) -> None:
    """``ts_ahead_of_record`` if ``ts`` is further ahead of a known record timestamp than the
    limit allows."""
    if record_ts_ms >= 0 and ts - record_ts_ms > limits.max_event_ahead_ms:
        raise DecodeError(
            "ts_ahead_of_record",
            f"ts {ts} is {ts - record_ts_ms} ms ahead of its record's timestamp {record_ts_ms} "
            f"(at most max_event_ahead_ms {limits.max_event_ahead_ms})",
            raw,
        )


def _check_impression(raw: bytes, limits: Limits, record_ts_ms: int = -1) -> Impression:
    ev = _parse(raw, limits, _IMPRESSION_DECODER, IMPRESSION_SCHEMAS)
    if not ev.request_id or not ev.user_id:
        raise DecodeError("bad_value", "request_id and user_id must be non-empty", raw)
    if not 0 <= ev.ts <= MAX_INT:
        raise DecodeError("bad_value", f"ts {ev.ts} is negative or too large", raw)
    _ahead(ev.ts, record_ts_ms, limits, raw)
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
    if min(ev.propensities) < limits.min_propensity:
        raise DecodeError(
            "low_propensity",
            f"propensity {min(ev.propensities)} is below min_propensity {limits.min_propensity}",
            raw,
        )
    return ev


def decode_impression(raw: bytes, limits: Limits = Limits(), record_ts_ms: int = -1) -> Impression:
    """Decode and validate one impression (either feature form; see the module docstring).

    Args:
        raw: the message's bytes.
        limits: what the decoder accepts.
        record_ts_ms: the Kafka record's timestamp, ms (-1: unknown, no bound on ``ts``).

    Raises:
        DecodeError: with one of ``ERROR_CODES``.
    """
    ev = _check_impression(raw, limits, record_ts_ms)
    context, features, _, lens = _features([ev], limits)
    for _, code, reason in _feature_rejects(context, features, lens, limits):
        raise DecodeError(code, reason, raw)
    return ev


def decode_outcome(raw: bytes, limits: Limits = Limits(), record_ts_ms: int = -1) -> Outcome:
    """Decode and validate one outcome.

    Args:
        raw: the message's bytes.
        limits: what the decoder accepts.
        record_ts_ms: the Kafka record's timestamp, ms (-1: unknown, no bound on ``ts``).

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
    _ahead(ev.ts, record_ts_ms, limits, raw)
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


def _feature_rejects(
    context: npt.NDArray[np.float32],
    features: npt.NDArray[np.float32],
    lens: npt.NDArray[np.int64],
    limits: Limits,
) -> list[tuple[int, ErrorCode, str]]:
    """``(row, code, reason)`` for each row whose float32 features cannot be learned from, in
    row order: ``non_finite`` first, then ``large_features`` (see ``_large``)."""
    out: list[tuple[int, ErrorCode, str]] = []
    for i, reason in _non_finite(context, features, lens):
        out.append((i, "non_finite", reason))
    for i, reason in _large(context, features, lens, limits, {i for i, _, _ in out}):
        out.append((i, "large_features", reason))
    return sorted(out, key=lambda r: r[0])


def _large(
    context: npt.NDArray[np.float32],
    features: npt.NDArray[np.float32],
    lens: npt.NDArray[np.int64],
    limits: Limits,
    non_finite: set[int],
) -> list[tuple[int, str]]:
    """``(row, reason)`` for each row whose context, or a candidate's features, has a Euclidean
    norm above ``limits.max_feature_norm`` (padding is zero), but for the ``non_finite`` rows.

    The rows are screened with their squared norms summed in float32 (fast; a sum of ``d``
    squares is within ``d`` float32 roundings of the exact one, far inside the screen's margin
    of 1e-4, and overflow or NaN makes a row a suspect too); the suspects' norms are then
    taken in float64, row by row, so a row gets the same verdict in any batch.
    """
    bound = limits.max_feature_norm
    if context.shape[0] == 0:
        return []
    screen = np.float32(min(bound * bound * (1.0 - 1e-4), _F32_MAX))
    with np.errstate(invalid="ignore", over="ignore"):  # a signalling NaN raises "invalid"
        suspect = ~(np.einsum("nd,nd->n", context, context) <= screen)
        suspect |= ~(np.einsum("nkd,nkd->nk", features, features) <= screen).all(axis=1)
    out: list[tuple[int, str]] = []
    limit = bound * bound
    for i in np.flatnonzero(suspect).tolist():
        if i in non_finite:
            continue
        c = context[i].astype(np.float64)  # finite float32: its squares sum without overflow
        norm2 = float(np.dot(c, c))
        if not norm2 <= limit:
            out.append((i, f"context has norm {np.sqrt(norm2):.6g} > max_feature_norm {bound:g}"))
            continue
        rows = features[i, : lens[i]].astype(np.float64)
        norms2 = np.einsum("kd,kd->k", rows, rows)
        bad = np.flatnonzero(~(norms2 <= limit))
        if bad.size:
            j = int(bad[0])
            out.append(
                (
                    i,
                    f"candidate {j} features have norm {np.sqrt(norms2[j]):.6g} > "
                    f"max_feature_norm {bound:g}",
                )
            )
    return out


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
