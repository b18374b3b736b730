"""The core's row tables: ``Side`` rows for new impressions, ``Plays`` rows for new outcomes.

``Side`` and ``Plays`` are NamedTuples of columns whose first is the payload id the joins refer
to rows by. ``side_table`` keeps what the learners need of each impression (with the ``denoised``
composite, the reward model's prequential prediction of every shown track too) and ``_log_rows``
what the Parquet log needs of it; ``plays_table`` keeps what the learners need of each outcome, its
``reason_end`` mapped to the reward models' codes (``REASON_CODE``) and to whether it censors the
play (``REASON_CENSORS``). ``empty_tables``, ``empty_model_rows`` and ``empty_policy_rows`` are the empty tables
a new state starts with. ``concat_rows``, ``concat_all_rows`` and ``take_table_rows`` append and select
rows of any such table (nested ones, like the impression columns in ``Side.log``, included);
``concat_side`` first pads the log's candidate columns to the wider of two side tables, and
``prune_rows`` drops the rows whose payload the joins no longer refer to.

Names with a leading underscore are the core's internals: they are in ``__all__`` because
``streaming.core.step`` uses or re-exports them.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

import rewards
from streaming import join
from streaming.core.learners import NOMINAL_DURATION_MS, predict_model, slate_features
from streaming.core.state import Engine, ModelRows, Plays, PolicyRows, Side
from streaming.events import REASONS_END, ImpressionBatch, OutcomeBatch, key64

__all__ = [
    "REASON_CENSORS",
    "REASON_CODE",
    "T",
    "concat_side",
]

T = TypeVar("T", bound=tuple[Any, ...])

# reason_end of the event contract -> the reward models' five codes, and whether it censors.
# Listener-initiated switches count as forward skips; system ends (remote, errors, app load)
# and logouts cut the play off: censored, not a skip.
_R = rewards.REASONS
_REASON_MAP = {
    "trackdone": (_R.index("trackdone"), False),
    "fwdbtn": (_R.index("fwdbtn"), False),
    "backbtn": (_R.index("backbtn"), False),
    "endplay": (_R.index("endplay"), True),
    "logout": (_R.index("logout"), True),
    "clickrow": (_R.index("fwdbtn"), False),
    "clickside": (_R.index("fwdbtn"), False),
    "playbtn": (_R.index("fwdbtn"), False),
    "uriopen": (_R.index("fwdbtn"), False),
    "popup": (_R.index("fwdbtn"), False),
    "remote": (_R.index("endplay"), True),
    "trackerror": (_R.index("endplay"), True),
    "appload": (_R.index("endplay"), True),
}
REASON_CODE = np.array([_REASON_MAP[r][0] for r in REASONS_END], np.int8)
REASON_CENSORS = np.array([_REASON_MAP[r][1] for r in REASONS_END], bool)


def empty_tables(engine: Engine) -> tuple[Side, Plays]:
    s, du, dt = engine.slate_size, engine.d_user, engine.d_track
    side = Side(
        payload=np.zeros(0, np.int64),
        context=np.zeros((0, du), np.float32),
        features=np.zeros((0, s, dt), np.float32),
        action=np.zeros((0, s), np.int32),
        propensity=np.ones((0, s), np.float32),
        shown=np.zeros((0, s), bool),
        provisional=np.zeros((0, s), np.float32),
        policy_key=np.zeros(0, np.uint64),
        log=_log_rows(engine, None),
    )
    plays = Plays(
        payload=np.zeros(0, np.int64),
        ms_played=np.zeros(0, np.int64),
        duration_ms=np.zeros(0, np.int64),
        reason_end=np.zeros(0, np.int8),
        saved=np.zeros(0, bool),
        censored=np.zeros(0, bool),
        listener=np.zeros(0, np.uint64),
    )
    return side, plays


def empty_model_rows(engine: Engine) -> ModelRows:
    return ModelRows(
        features=np.zeros((0, engine.n_model_features), np.float32),
        ms_played=np.zeros(0, np.int64),
        duration_ms=np.zeros(0, np.int64),
        reason_end=np.zeros(0, np.int8),
        saved=np.zeros(0, bool),
        position=np.zeros(0, np.int32),
        censored=np.zeros(0, bool),
        track_id=np.zeros(0, np.int32),
        end_ms=np.zeros(0, np.int64),
        partition=np.zeros(0, np.int32),
        request_key=np.zeros(0, np.uint64),
        ts_ms=np.zeros(0, np.int64),
        history=np.zeros((0, engine.history_length, engine.history_dim), np.float32),
    )


def empty_policy_rows(engine: Engine) -> PolicyRows:
    return PolicyRows(
        context=np.zeros((0, engine.d_user), np.float32),
        features=np.zeros((0, engine.d_track), np.float32),
        action=np.zeros(0, np.int32),
        position=np.zeros(0, np.int32),
        reward=np.zeros(0, np.float32),
        propensity=np.zeros(0, np.float32),
        end_ms=np.zeros(0, np.int64),
        partition=np.zeros(0, np.int32),
        request_key=np.zeros(0, np.uint64),
    )


def side_table(
    engine: Engine, model: Any, imps: ImpressionBatch, payload: npt.NDArray[np.int64]
) -> Side:
    n, s = imps.n, engine.slate_size
    width = min(s, imps.shown.shape[1])
    shown_idx = np.zeros((n, s), np.int64)
    shown_idx[:, :width] = np.maximum(imps.shown[:, :width], 0)
    shown = np.zeros((n, s), bool)
    shown[:, :width] = imps.shown_mask[:, :width]
    prop = np.ones((n, s), np.float32)
    prop[:, :width] = imps.propensity[:, :width]
    rows = np.arange(n)[:, None]
    feats = imps.candidate_features[rows, shown_idx].astype(np.float32)
    ids = (imps.candidate_key[rows, shown_idx] % np.uint64(engine.id_space)).astype(np.int32)
    prov = np.zeros((n, s), np.float32)
    if engine.composite.kind == "denoised":  # the only kind that mixes it into its reward
        # Prequential: predict every shown track now, before any of its outcomes exist.
        x = slate_features(imps.context, feats)
        pred = predict_model(engine, model, x, ids.reshape(-1))
        prov = np.asarray(
            engine.composite.provisional(pred, np.full(n * s, NOMINAL_DURATION_MS, np.int64)),
            np.float32,
        ).reshape(n, s)
    return Side(
        payload=payload,
        context=imps.context,
        features=feats,
        action=ids,
        propensity=prop,
        shown=shown,
        provisional=np.nan_to_num(prov),
        policy_key=key64(imps.policy.tolist()),
        log=_log_rows(engine, imps),
    )


def _log_rows(engine: Engine, imps: ImpressionBatch | None) -> ImpressionBatch:
    """The impression columns the Parquet log needs, candidates cut to ``engine.log_candidates``."""
    k = engine.log_candidates
    dt = engine.d_track if engine.log_features else 0
    s = engine.slate_size
    if imps is None or k == 0:
        n = 0 if imps is None else imps.n
        du = engine.d_user
        k = 0  # candidate columns grow to the widest batch seen (``concat_side``)
        if engine.log_candidates == 0:  # no log: keep zero-width columns only
            dt, s, du = 0, 0, 0
        u = np.zeros(n, "<U1")
        return ImpressionBatch(
            request_id=u,
            request_key=np.zeros(n, np.uint64),
            user_id=u,
            surface=u,
            ts_ms=np.zeros(n, np.int64),
            context=np.zeros((n, du), np.float32),
            candidate_key=np.zeros((n, k), np.uint64),
            candidate_features=np.zeros((n, k, dt), np.float32),
            candidate_mask=np.zeros((n, k), bool),
            shown=np.full((n, s), -1, np.int32),
            propensity=np.ones((n, s), np.float32),
            shown_mask=np.zeros((n, s), bool),
            policy=u,
            policy_version=u,
        )
    # Candidates are kept as wide as the batch needs (at most ``k``), not padded to ``k``: the
    # log writes only the real ones, and the side table is copied on every step.
    n, kk = imps.n, min(k, imps.candidate_key.shape[1])
    ck = np.ascontiguousarray(imps.candidate_key[:, :kk])
    cm = np.ascontiguousarray(imps.candidate_mask[:, :kk])
    cf = (
        np.ascontiguousarray(imps.candidate_features[:, :kk], np.float32)
        if dt
        else np.zeros((n, kk, 0), np.float32)
    )
    ss = min(s, imps.shown.shape[1])
    shown = np.full((n, s), -1, np.int32)
    shown[:, :ss] = np.where(imps.shown[:, :ss] < kk, imps.shown[:, :ss], -1)
    prop = np.ones((n, s), np.float32)
    prop[:, :ss] = imps.propensity[:, :ss]
    smask = np.zeros((n, s), bool)
    smask[:, :ss] = imps.shown_mask[:, :ss] & (shown[:, :ss] >= 0)
    return imps._replace(
        candidate_key=ck,
        candidate_features=cf,
        candidate_mask=cm,
        shown=shown,
        propensity=prop,
        shown_mask=smask,
        context=imps.context,
    )


def plays_table(
    outs: OutcomeBatch, payload: npt.NDArray[np.int64], *, listeners: bool = False
) -> Plays:
    """The learners' columns of new outcomes; with ``listeners``, each listener's key too (for the
    session history: never 0, which stands for an unknown listener)."""
    listener = np.zeros(outs.n, np.uint64)
    if listeners and outs.n:
        listener = np.maximum(key64(outs.user_id.tolist()), np.uint64(1))
    return Plays(
        payload=payload,
        ms_played=outs.ms_played,
        duration_ms=outs.duration_ms,
        reason_end=REASON_CODE[outs.reason_end],
        saved=outs.saved | outs.liked | outs.added_to_playlist,
        censored=REASON_CENSORS[outs.reason_end],
        listener=listener,
    )


def concat_rows(a: T, b: T) -> T:
    return type(a)(
        *(
            concat_rows(x, y) if isinstance(x, tuple) else np.concatenate([x, y])
            for x, y in zip(a, b, strict=True)
        )
    )


def _widen(log: ImpressionBatch, k: int) -> ImpressionBatch:
    """``log`` with its candidate columns padded to width ``k`` (no copy when already that wide)."""
    n, have = log.candidate_key.shape
    if have == k:
        return log
    ck = np.zeros((n, k), np.uint64)
    ck[:, :have] = log.candidate_key
    cm = np.zeros((n, k), bool)
    cm[:, :have] = log.candidate_mask
    cf = np.zeros((n, k, log.candidate_features.shape[2]), np.float32)
    cf[:, :have] = log.candidate_features
    return log._replace(candidate_key=ck, candidate_mask=cm, candidate_features=cf)


def concat_side(a: Side, b: Side) -> Side:
    """Side rows ``a`` then ``b``; the log's candidate columns padded to the wider of the two."""
    k = max(a.log.candidate_key.shape[1], b.log.candidate_key.shape[1])
    return concat_rows(a._replace(log=_widen(a.log, k)), b._replace(log=_widen(b.log, k)))


def concat_all_rows(parts: list[T]) -> T:
    """``concat_rows`` over many tables at once (one copy, not one per table)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return type(first)(
        *(
            concat_all_rows(list(cols)) if isinstance(cols[0], tuple) else np.concatenate(cols)
            for cols in zip(*parts, strict=True)
        )
    )


def take_table_rows(t: T, keep: npt.NDArray[Any]) -> T:
    return type(t)(
        *(take_table_rows(x, keep) if isinstance(x, tuple) else join.take_rows(x, keep) for x in t)
    )


def prune_rows(t: T, live: npt.NDArray[np.int64]) -> T:
    """The rows of a payload-keyed table (``Side``, ``Plays``) whose payload is in ``live``."""
    payload: npt.NDArray[np.int64] = t[0]
    keep = np.isin(payload, live)
    return t if keep.all() else take_table_rows(t, keep)
