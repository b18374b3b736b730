"""Labels: bins, completion, skips at three horizons, censoring, survival targets, bad rows."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.labels import (
    COMPLETE,
    MAX_OVERPLAY,
    bin_edges_ms,
    bin_widths_ms,
    completion_label,
    hazard_targets,
    listen_bin,
    listen_fraction,
    skip_labels,
    stream30_label,
    valid_rows,
)
from rewards.types import FWDBTN, LOGOUT, TRACKDONE, Outcomes

D = 200_000


def test_bin_edges_long_and_short_tracks() -> None:
    edges = np.asarray(bin_edges_ms(np.array([D, 20_000, 3_000])))
    np.testing.assert_allclose(edges[0], [5_000, 30_000, 100_000, 180_000, 200_000])
    # A 20 s track has no bins beyond its end: they are empty (zero width).
    np.testing.assert_allclose(edges[1], [5_000, 20_000, 20_000, 20_000, 20_000])
    np.testing.assert_allclose(edges[2], [3_000] * 5)
    widths = np.asarray(bin_widths_ms(np.array([20_000])))
    assert widths.tolist() == [[5_000, 15_000, 0, 0, 0]]


def test_listen_bin_and_completion() -> None:
    ms = np.array([0, 4_999, 5_000, 29_999, 30_000, 100_000, 180_000, 199_999, 200_000, 150_000])
    reason = np.full(ms.shape, FWDBTN, np.int8)
    reason[-1] = TRACKDONE  # trackdone counts as complete whatever ms_played says
    bins = np.asarray(listen_bin(ms, np.full(ms.shape, D), reason))
    assert bins.tolist() == [0, 0, 1, 1, 2, 3, 4, 4, COMPLETE, COMPLETE]
    done = np.asarray(completion_label(ms, np.full(ms.shape, D), reason))
    assert done.tolist() == [False] * 8 + [True, True]


def test_skip_labels_horizons_and_censoring() -> None:
    ms = np.array([1_000, 10_000, 60_000, D, 1_000, 60_000])
    censored = np.array([False, False, False, False, True, True])
    reason = np.where(censored, LOGOUT, np.where(ms >= D, TRACKDONE, FWDBTN)).astype(np.int8)
    y, k = (np.asarray(a) for a in skip_labels(ms, np.full(6, D), reason, censored))
    assert y.tolist() == [
        [True, True, True],
        [False, True, True],
        [False, False, True],
        [False, False, False],
        [False, False, False],  # censored: never a skip
        [False, False, False],
    ]
    # A play cut at 1 s says nothing about any horizon; one cut at 60 s passed 5 s and 30 s.
    assert k.tolist()[4] == [False, False, False]
    assert k.tolist()[5] == [True, True, False]
    assert k[:4].all()


def test_hazard_targets_event_and_censoring() -> None:
    ms = np.array([10_000, 60_000, D, 60_000])
    censored = np.array([False, False, False, True])
    reason = np.array([FWDBTN, FWDBTN, TRACKDONE, LOGOUT], np.int8)
    at_risk, event = (np.asarray(a) for a in hazard_targets(ms, np.full(4, D), reason, censored))
    assert at_risk.tolist() == [
        [True, True, False, False, False],
        [True, True, True, False, False],
        [True] * 5,
        [True, True, False, False, False],  # survived bins 0, 1; bin 2 is censored
    ]
    assert event.tolist() == [
        [False, True, False, False, False],
        [False, False, True, False, False],
        [False] * 5,
        [False] * 5,
    ]


def test_empty_bins_never_at_risk() -> None:
    at_risk, event = hazard_targets(
        np.array([20_000]), np.array([20_000]), np.array([TRACKDONE], np.int8), np.array([False])
    )
    assert np.asarray(at_risk).tolist() == [[True, True, False, False, False]]
    assert not np.asarray(event).any()


@settings(max_examples=200, deadline=None)
@given(
    ms=st.integers(0, 900_000),
    duration=st.integers(1_000, 900_000),
    reason=st.integers(0, 4),
    censored=st.booleans(),
)
def test_label_invariants(ms: int, duration: int, reason: int, censored: bool) -> None:
    ms = min(ms, duration)
    a = (np.array([ms]), np.array([duration]), np.array([reason], np.int8))
    y, k = (np.asarray(v)[0] for v in skip_labels(*a, np.array([censored])))
    # skip_1 implies skip_2 implies skip_3; censored plays are never skips.
    assert y[0] <= y[1] <= y[2]
    assert not (censored and y.any())
    # Known labels are known at every shorter horizon too.
    assert k[2] <= k[1] <= k[0] or not censored
    done = bool(np.asarray(completion_label(*a))[0])
    if k[2]:
        assert done == (not y[2])
    at_risk, event = (np.asarray(v)[0] for v in hazard_targets(*a, np.array([censored])))
    assert event.sum() <= 1 and not (event & ~at_risk).any()
    assert event.any() == (y[2] and not censored)
    f = float(np.asarray(listen_fraction(*a[:2]))[0])
    assert 0.0 <= f <= 1.0


def test_stream30_and_listen_fraction() -> None:
    assert np.asarray(stream30_label(np.array([29_999, 30_000]))).tolist() == [False, True]
    f = np.asarray(listen_fraction(np.array([50, 300, 10]), np.array([100, 100, 0])))
    np.testing.assert_allclose(f, [0.5, 1.0, 0.0])


def test_valid_rows_names_each_rule() -> None:
    n = 7
    x = np.zeros((n, 2), np.float32)
    x[1, 0] = np.nan
    x[2, 1] = np.inf
    o = Outcomes(
        features=x,
        ms_played=np.array([1, 1, 1, -5, 1, int(MAX_OVERPLAY * 1000) + 1, 1]),
        duration_ms=np.array([1000, 1000, 1000, 1000, -1, 1000, 1000]),
        reason_end=np.array([0, 0, 0, 0, 0, 0, 9], np.int8),
        saved=np.zeros(n, bool),
        position=np.zeros(n, np.int32),
        censored=np.zeros(n, bool),
        mask=np.ones(n, bool),
    )
    assert np.asarray(valid_rows(o)).tolist() == [True] + [False] * 6
    # Slight over-play (seek back, replay) is clipped, not invalid.
    over = o._replace(
        ms_played=np.full(n, 1200),
        features=np.zeros((n, 2), np.float32),
        duration_ms=np.full(n, 1000),
        reason_end=np.zeros(n, np.int8),
    )
    assert np.asarray(valid_rows(over)).all()
