"""Input checks for the join: batch columns, event-time range, slate positions, state vs config.

``_check_impressions`` and ``_check_outcomes`` return the batch with every column in its dtype
(cast only within a dtype family) or raise ``ValueError`` naming the batch, the column and the
first bad rows; ``_check_state`` refuses a state made with another ``slate_size``.
``JoinConfig`` checks its own fields when it is made (``streaming.join.types``).

Part of the reward-window join: ``streaming.join`` explains its rules and is the module to
import. ``__all__`` lists every name defined here, private ones included, for the other
``join_*`` modules and for the re-exports in ``streaming.join``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from streaming.join.state import JoinState
from streaming.join.types import _TS_LIMIT, JoinConfig, JoinImpressions, JoinOutcomes, _Array

__all__ = [
    "_check_impressions",
    "_check_lengths",
    "_check_outcomes",
    "_check_state",
    "_check_ts",
    "_column",
]


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
