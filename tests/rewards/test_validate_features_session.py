"""Strict validation messages, the feature layout and the session-history helpers."""

from __future__ import annotations

import numpy as np
import pytest

from rewards import Outcomes, check_outcomes, interaction_features, invalid_rows
from rewards.features import n_interaction_features
from rewards.session import HISTORY_DIM, history_entries, push_history, slate_history
from rewards.types import FWDBTN, LOGOUT, TRACKDONE


def test_check_outcomes_names_rules_and_rows(batch: Outcomes) -> None:
    check_outcomes(batch)  # clean
    o = Outcomes(*(None if a is None else np.array(a, copy=True) for a in batch))
    o.features[[3, 7], 0] = np.nan
    o.reason_end[5] = 17
    o.duration_ms[9] = -4
    o.mask[7] = False  # padding is never reported
    assert {k: v.tolist() for k, v in invalid_rows(o).items()} == {
        "features_not_finite": [3],
        "duration_ms_not_positive": [9],
        "reason_end_unknown": [5],
    }
    with pytest.raises(ValueError, match=r"features_not_finite in rows \[3\] \(1 rows\)"):
        check_outcomes(o)
    ragged = o._replace(ms_played=np.zeros(3, np.int64))
    assert list(invalid_rows(ragged)) == ["shape"]


def test_interaction_features_layout() -> None:
    u = np.array([[1.0, 2.0]])
    t = np.array([[3.0, 5.0, 7.0]])
    x = interaction_features(u, t, np.array([11]), n_positions=4)
    assert x.shape == (1, n_interaction_features(2, 3, 4)) and x.dtype == np.float32
    outer = np.sqrt(2) * np.array([3, 5, 7, 6, 10, 14])
    np.testing.assert_allclose(x[0], [1, 2, 3, 5, 7, *outer, 0, 0, 0, 1], rtol=1e-6)
    with pytest.raises(ValueError, match="row counts differ"):
        interaction_features(u, np.zeros((2, 3)), np.array([0]))
    with pytest.raises(ValueError, match="negative position"):
        interaction_features(u, t, np.array([-1]))


def _blocks_reference(
    u: np.ndarray, t: np.ndarray, pos: np.ndarray, n_positions: int
) -> np.ndarray:
    """The layout built block by block and concatenated (how the features were first written)."""
    u, t = u.astype(np.float32), t.astype(np.float32)
    n = u.shape[0]
    outer = (u[:, :, None] * t[:, None, :]).reshape(n, -1) * np.float32(np.sqrt(u.shape[1]))
    onehot = np.zeros((n, n_positions), np.float32)
    onehot[np.arange(n), np.minimum(pos, n_positions - 1)] = 1.0
    return np.concatenate([u, t, outer, onehot], axis=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_interaction_features_written_in_place_equal_the_blocks_bit_for_bit(dtype: type) -> None:
    rng = np.random.default_rng(3)
    n, du, dt = 50, 4, 3
    # Up to 1e25: some products overflow float32 and some underflow, in both forms alike.
    u = (rng.standard_normal((n, du)) * 10 ** rng.uniform(-25, 25, (n, du))).astype(dtype)
    t = (rng.standard_normal((n, dt)) * 10 ** rng.uniform(-25, 25, (n, dt))).astype(dtype)
    pos = rng.integers(0, 12, n)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        want = _blocks_reference(u, t, pos, 10)
        got = interaction_features(u, t, pos)
        buf = np.full((n + 2, want.shape[1]), np.nan, np.float32)
        into = interaction_features(u, t, pos, out=buf[1:-1])
    assert got.tobytes() == want.tobytes()
    assert into.base is buf and buf[1:-1].tobytes() == want.tobytes()
    assert np.isnan(buf[[0, -1]]).all()  # nothing written outside ``out``
    assert interaction_features(u[:0], t[:0], pos[:0]).shape == (0, want.shape[1])
    with pytest.raises(ValueError, match="out is"):
        interaction_features(u, t, pos, out=np.zeros((n, want.shape[1] + 1), np.float32))
    with pytest.raises(ValueError, match="out is"):
        interaction_features(u, t, pos, out=np.zeros((want.shape[1], n), np.float32).T)


def test_history_entries_encode_the_end_bin() -> None:
    e = history_entries(
        np.array([1_000, 200_000, 50_000]),
        np.full(3, 200_000),
        np.array([FWDBTN, TRACKDONE, LOGOUT], np.int8),
        np.array([False, False, True]),
        np.array([False, True, False]),
        np.array([True, True, False]),
    )
    assert e.shape == (3, HISTORY_DIM)
    assert e[0].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert e[1].tolist() == [0, 0, 0, 0, 0, 1, 0, 1, 1]
    assert not e[2].any()  # not present


def test_slate_history_shifts_in_earlier_positions() -> None:
    prior = np.arange(2 * 3).reshape(1, 3, 2).astype(np.float32)  # entries 0,1 | 2,3 | 4,5
    entries = 100 + np.arange(2 * 2).reshape(1, 2, 2).astype(np.float32)
    h = slate_history(prior, entries)
    assert h.shape == (1, 2, 3, 2)
    np.testing.assert_array_equal(h[0, 0], prior[0])
    np.testing.assert_array_equal(h[0, 1], [[2, 3], [4, 5], [100, 101]])


def test_push_history_matches_a_naive_loop() -> None:
    rng = np.random.default_rng(0)
    buffer = rng.normal(size=(5, 3, 2)).astype(np.float32)
    user = rng.integers(0, 5, size=40)
    entries = rng.normal(size=(40, 2)).astype(np.float32)
    expected = [list(buffer[u]) for u in range(5)]
    for u, e in zip(user, entries, strict=True):
        expected[u] = [*expected[u][1:], e]
    got = push_history(buffer, user, entries)
    np.testing.assert_array_equal(got, np.array(expected))
    np.testing.assert_array_equal(push_history(buffer, user[:0], entries[:0]), buffer)
