"""Strict validation of outcome batches on the host, with errors that name fields and rows.

``update`` already drops bad rows on its own (see :mod:`rewards.labels`); these functions are
for callers that want to know which rows and why, e.g. to send them to a dead-letter topic.
"""

from __future__ import annotations

import numpy as np

from rewards.labels import MAX_OVERPLAY
from rewards.types import REASONS, Outcomes

_SHOW = 10


def invalid_rows(outcomes: Outcomes) -> dict[str, np.ndarray]:
    """Rows (with ``mask`` True) that break a rule, by the rule's name.

    Returns:
        ``{reason: row indices}`` for every rule broken by at least one row; empty if all good.
        Reasons: ``features_not_finite``, ``history_not_finite``, ``duration_ms_not_positive``,
        ``ms_played_negative``, ``ms_played_beyond_duration`` (more than ``MAX_OVERPLAY``
        times the duration), ``reason_end_unknown``, ``track_id_negative``, ``shape``.

    >>> import numpy as np
    >>> o = Outcomes(np.array([[0.0], [np.nan]], np.float32), np.array([1, 2]), np.array([10, 10]),
    ...     np.array([0, 9], np.int8), np.zeros(2, bool), np.zeros(2, np.int32), np.zeros(2, bool),
    ...     np.ones(2, bool))
    >>> {k: v.tolist() for k, v in invalid_rows(o).items()}
    {'features_not_finite': [1], 'reason_end_unknown': [1]}
    """
    o = outcomes
    mask = np.asarray(o.mask, dtype=bool)
    n = mask.shape[0]
    shapes = {name: np.shape(a) for name, a in zip(o._fields, o, strict=True) if a is not None}
    wrong = [name for name, s in shapes.items() if len(s) == 0 or s[0] != n]
    if wrong or len(shapes["features"]) != 2:
        return {"shape": np.arange(n)}
    ms = np.asarray(o.ms_played, dtype=np.float64)
    d = np.asarray(o.duration_ms, dtype=np.float64)
    reason = np.asarray(o.reason_end, dtype=np.int64)
    rules = {
        "features_not_finite": ~np.isfinite(np.asarray(o.features)).all(axis=1),
        "duration_ms_not_positive": ~(d > 0),
        "ms_played_negative": ms < 0,
        "ms_played_beyond_duration": (d > 0) & (ms > MAX_OVERPLAY * d),
        "reason_end_unknown": (reason < 0) | (reason >= len(REASONS)),
    }
    if o.history is not None:
        rules["history_not_finite"] = ~np.isfinite(np.asarray(o.history)).all(axis=(1, 2))
    if o.track_id is not None:
        rules["track_id_negative"] = np.asarray(o.track_id) < 0
    found = {k: np.flatnonzero(v & mask) for k, v in rules.items()}
    return {k: v for k, v in found.items() if v.size}


def check_outcomes(outcomes: Outcomes) -> None:
    """Raise ``ValueError`` naming every broken rule and its first rows; return None if clean.

    Raises:
        ValueError: e.g. ``Outcomes: ms_played_negative in rows [3, 7]; reason_end_unknown in
            rows [5]``.
    """
    bad = invalid_rows(outcomes)
    if bad:
        parts = [
            f"{k} in rows {v[:_SHOW].tolist()}{' ...' if v.size > _SHOW else ''} ({v.size} rows)"
            for k, v in bad.items()
        ]
        raise ValueError("Outcomes: " + "; ".join(parts))
