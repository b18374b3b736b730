"""Validated events to numpy columns: the float32 feature arrays and the batches.

``_features`` turns the features of validated impressions, in either form (JSON number arrays
or base64 float32 bytes), into zero-padded float32 arrays with the candidate mask and the
candidate counts; ``_impression_batch`` assembles an ``ImpressionBatch`` around them.
``impressions_to_batch`` and ``outcomes_to_batch`` are the public entry points, re-exported by
``streaming.events``. Nothing here checks a message: the events are already validated
(``decode_one``, ``decode_batch``).
"""

# The event_* modules are one module (``streaming.events``) split for size: they share their
# private helpers, and ``streaming.events`` re-exports them.
# pyright: reportPrivateUsage=false

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from streaming.events.contract import (
    _F32,
    _REASON_CODE,
    Impression,
    ImpressionBatch,
    Limits,
    Outcome,
    OutcomeBatch,
    key64,
)

__all__ = ["impressions_to_batch", "outcomes_to_batch"]


_CANDIDATES = operator.attrgetter("candidates")


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
