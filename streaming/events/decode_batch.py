"""Batch decoding: many messages to one columnar batch, plus a ``Reject`` per bad message.

``decode_impressions`` and ``decode_outcomes`` parse each message on its own (``_parse_each``:
one message never takes part in another's parse), then run the checks of ``decode_one``
on the batch's columns at once (``_cleared_impressions`` for impressions, inline in
``_decode_outcomes`` for outcomes). Those column checks only ever clear a message: each message
they do not clear is decoded alone by ``decode_one``, so its reject carries exactly the
code and reason it gets alone, and rejects come in input order. Each message may come with its
Kafka record's timestamp (``record_ts_ms``, -1 where unknown), which bounds how far ahead of it
the event's ``ts`` may be. The cyclic garbage collector is paused while a batch decodes
(``_collector_paused``).
"""

# The event_* modules are one module (``streaming.events``) split for size: they share their
# private helpers, and ``streaming.events`` re-exports them.
# pyright: reportPrivateUsage=false

from __future__ import annotations

import gc
import itertools
import operator
import typing
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from typing import TypeAlias

import msgspec
import numpy as np
import numpy.typing as npt

from streaming.events.columns import _features, _impression_batch, outcomes_to_batch
from streaming.events.contract import (
    _REASON_CODE,
    IMPRESSION_SCHEMA,
    IMPRESSION_SCHEMA_V2,
    MAX_INT,
    MAX_PLAY_RATIO,
    MAX_POSITION,
    OUTCOME_SCHEMA,
    DecodeError,
    Impression,
    ImpressionBatch,
    Limits,
    Outcome,
    OutcomeBatch,
    Reject,
    T,
    key64,
)
from streaming.events.decode_one import (
    _IMPRESSION_DECODER,
    _OUTCOME_DECODER,
    _check_impression,
    _feature_rejects,
    decode_outcome,
)

__all__ = ["RecordTimestamps", "decode_impressions", "decode_outcomes"]

RecordTimestamps: TypeAlias = Sequence[int] | npt.NDArray[np.int64] | None
"""Each message's Kafka record timestamp, ms (-1 where unknown), or None: all unknown."""


def _record_ts(record_ts_ms: RecordTimestamps, n: int) -> npt.NDArray[np.int64]:
    if record_ts_ms is None:
        return np.full(n, -1, np.int64)
    out = np.asarray(record_ts_ms, np.int64).reshape(-1)
    if out.size != n:
        raise ValueError(f"{out.size} record timestamps for {n} messages")
    return out


def _not_ahead(
    ts: npt.NDArray[np.int64], record_ts: npt.NDArray[np.int64], limits: Limits
) -> npt.NDArray[np.bool_]:
    """Events whose ``ts`` (already in [0, MAX_INT] where it matters) is not too far ahead of
    their known record timestamp (no overflow: both are then non-negative)."""
    return (record_ts < 0) | (ts - record_ts <= limits.max_event_ahead_ms)


@contextmanager
def _collector_paused() -> Generator[None, None, None]:
    """No cyclic garbage collection inside the block (reference counting goes on as ever).

    A batch's decoded events hold thousands of lists that all live until the columns are built
    and are freed together right after, and none is part of a cycle. With the collector on,
    every 700 of them start a young collection that scans them and moves them to older
    generations, to be scanned again there: work on every batch that frees nothing. Paused,
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
    raws: Sequence[bytes], limits: Limits = Limits(), record_ts_ms: RecordTimestamps = None
) -> tuple[ImpressionBatch, list[Reject]]:
    """Decode many impressions: the good ones as one batch, the bad ones as rejects (in order).

    Base64 features go from their bytes to the batch's arrays in one concatenation per batch.
    ``record_ts_ms``: each message's Kafka record timestamp, ms (-1 or None: unknown).
    """
    with _collector_paused():
        return _decode_impressions(raws, limits, _record_ts(record_ts_ms, len(raws)))


def _cleared_impressions(
    events: list[Impression], limits: Limits, record_ts: npt.NDArray[np.int64] | None = None
) -> npt.NDArray[np.bool_]:
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
    if record_ts is not None:
        ok &= _not_ahead(ts, record_ts, limits)
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
    bad_p = ~((prop >= limits.min_propensity) & (prop <= 1.0))
    if bad.any() or bad_p.any():
        hit = np.zeros(m, bool)
        hit[owner[bad]] = True
        hit[owner_p[bad_p]] = True
        ok &= ~hit
    return ok


def _decode_impressions(
    raws: Sequence[bytes], limits: Limits, record_ts: npt.NDArray[np.int64]
) -> tuple[ImpressionBatch, list[Reject]]:
    parsed = _parse_each(raws, _IMPRESSION_DECODER, limits)
    events = [e for e in parsed if e is not None]
    present = np.fromiter((e is not None for e in parsed), bool, count=len(parsed))
    cleared = _cleared_impressions(events, limits, record_ts[present]).tolist()
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
            good.append(_check_impression(raw, limits, int(record_ts[i])))
            rows.append(i)
        except DecodeError as err:
            rejects.append(Reject(err.code, err.reason, raw, i))
    context, features, cmask, lens = _features(good, limits)
    bad = _feature_rejects(context, features, lens, limits)
    if bad:
        for j, code, reason in bad:
            rejects.append(Reject(code, reason, raws[rows[j]], rows[j]))
        rejects.sort(key=lambda r: r.row)
        keep = np.ones(len(good), bool)
        keep[[j for j, _, _ in bad]] = False
        good = [e for e, ok in zip(good, keep.tolist(), strict=True) if ok]
        k = int(lens[keep].max()) if good else 1  # pad to the longest list still in the batch
        context, features, cmask = context[keep], features[keep, :k], cmask[keep, :k]
    return _impression_batch(good, context, features, cmask), rejects


def decode_outcomes(
    raws: Sequence[bytes], limits: Limits = Limits(), record_ts_ms: RecordTimestamps = None
) -> tuple[OutcomeBatch, list[Reject]]:
    """Decode many outcomes: the good ones as one batch, the bad ones as rejects (in order).

    Each message is parsed on its own (one message never takes part in another's parse); the
    checks of ``decode_outcome`` then run on the batch's columns at once. Those checks only ever
    clear a message: every message they do not clear goes through ``decode_outcome`` itself,
    so a bad one gets exactly the code and reason it gets alone. ``record_ts_ms``: each
    message's Kafka record timestamp, ms (-1 or None: unknown).
    """
    with _collector_paused():
        return _decode_outcomes(raws, limits, _record_ts(record_ts_ms, len(raws)))


# Field readers for the outcome columns: np.fromiter over map() with these runs in C (no list,
# no generator), with none of the intermediate list that np.array(list(...)) builds.
_TS = operator.attrgetter("ts")
_POSITION = operator.attrgetter("position")
_MS_PLAYED = operator.attrgetter("ms_played")
_DURATION = operator.attrgetter("track_duration_ms")
_REASON_END = operator.attrgetter("reason_end")
_SCHEMA = operator.attrgetter("schema")
_IDS = tuple(map(operator.attrgetter, ("request_id", "user_id", "track_id")))
_SAVED, _LIKED, _ADDED = map(operator.attrgetter, ("saved", "liked", "added_to_playlist"))
_NO_CODE = itertools.repeat(-1)  # the default of _REASON_CODE.get, for map()

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


def _decode_outcomes(
    raws: Sequence[bytes], limits: Limits, record_ts: npt.NDArray[np.int64]
) -> tuple[OutcomeBatch, list[Reject]]:
    n = len(raws)
    parsed = _parse_each(raws, _OUTCOME_DECODER, limits)
    events = [e for e in parsed if e is not None]
    m = len(events)
    try:
        ts = np.fromiter(map(_TS, events), np.int64, count=m)
        pos = np.fromiter(map(_POSITION, events), np.int64, count=m)
        played = np.fromiter(map(_MS_PLAYED, events), np.int64, count=m)
        dur = np.fromiter(map(_DURATION, events), np.int64, count=m)
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
        if m == n:
            cleared &= _not_ahead(ts, record_ts, limits)
        else:
            present = np.fromiter((e is not None for e in parsed), bool, count=n)
            cleared &= _not_ahead(ts, record_ts[present], limits)
    code = np.fromiter(map(_REASON_CODE.get, map(_REASON_END, events), _NO_CODE), np.int8, count=m)
    cleared &= code >= 0
    ids = [list(map(get, events)) for get in _IDS]  # request, user and track ids
    for values in ids:
        if "" in values:
            cleared &= np.array([bool(v) for v in values], bool)
    schemas = list(map(_SCHEMA, events))
    if schemas.count(OUTCOME_SCHEMA) != m:
        cleared &= np.array([s == OUTCOME_SCHEMA for s in schemas], bool)
    if m == n and bool(cleared.all()):
        return _outcome_columns(events, ids, ts, pos, played, dur, code), []
    # The rest one by one, in order: a reject with its reason, or (a duration beyond
    # ``_RATIO_EXACT``, an integer beyond int64) a good message after all.
    keep = np.zeros(n, bool)
    keep[[i for i, e in enumerate(parsed) if e is not None]] = cleared
    rejects: list[Reject] = []
    for i in np.flatnonzero(~keep).tolist():
        try:
            decode_outcome(raws[i], limits, int(record_ts[i]))
        except DecodeError as err:
            rejects.append(Reject(err.code, err.reason, raws[i], i))
        else:
            keep[i] = True
    bad = {r.row for r in rejects}
    good = [e for i, e in enumerate(parsed) if i not in bad and e is not None]
    return outcomes_to_batch(good), rejects


def _outcome_columns(
    events: list[Outcome],
    ids: list[list[str]],
    ts: npt.NDArray[np.int64],
    position: npt.NDArray[np.int64],
    ms_played: npt.NDArray[np.int64],
    duration: npt.NDArray[np.int64],
    reason_end: npt.NDArray[np.int8],
) -> OutcomeBatch:
    """``outcomes_to_batch(events)`` from the columns already built (the same values, dtypes);
    ``ids`` are the events' request, user and track ids."""
    request_id, user_id, track_id = ids
    n = len(events)
    return OutcomeBatch(
        request_key=key64(request_id),
        user_id=np.array(user_id, dtype=np.str_),
        track_key=key64(track_id),
        position=position.astype(np.int32),
        ts_ms=ts,
        ms_played=ms_played,
        duration_ms=duration,
        reason_end=reason_end,
        saved=np.fromiter(map(_SAVED, events), bool, count=n),
        liked=np.fromiter(map(_LIKED, events), bool, count=n),
        added_to_playlist=np.fromiter(map(_ADDED, events), bool, count=n),
    )
