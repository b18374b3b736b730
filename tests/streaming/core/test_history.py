"""Each listener's recent plays, per partition: ``streaming.core.history.attach``."""

from __future__ import annotations

import numpy as np
import pytest

from streaming.core.history import NO_PLAY_MS, History, attach, empty_history

H, E = 3, 2


def reference(
    plays: list[tuple[int, int, list[float]]], h: int
) -> tuple[list[np.ndarray], dict[int, list[tuple[int, list[float]]]]]:
    """One play at a time: each sees its listener's last ``h`` earlier plays that ended before
    it (unknown listener 0: none), then joins them."""
    kept: dict[int, list[tuple[int, list[float]]]] = {}
    seen = []
    for who, ts, entry in plays:
        hist = np.zeros((h, E), np.float32)
        if who:
            last = kept.get(who, [])[-h:]
            for i, (t, e) in enumerate(last):
                if t < ts:
                    hist[h - len(last) + i] = e
            kept.setdefault(who, []).append((ts, entry))
        seen.append(hist)
    return seen, kept


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_attach_equals_one_play_at_a_time_however_the_plays_are_cut(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 400
    who = rng.integers(0, 12, n).astype(np.uint64)  # 0: unknown listener
    ts = np.cumsum(rng.integers(0, 3, n)).astype(np.int64)
    ts[rng.random(n) < 0.1] -= 5  # some plays ended before plays learned ahead of them
    entries = rng.random((n, E)).astype(np.float32) + 0.5
    want, kept = reference(list(zip(who.tolist(), ts.tolist(), entries.tolist(), strict=True)), H)
    cuts = np.sort(rng.choice(np.arange(1, n), 9, replace=False))
    table = empty_history(H, E)
    got = []
    for part in np.split(np.arange(n), cuts):
        table, hist, evicted = attach(table, who[part], ts[part], entries[part], capacity=100)
        assert evicted == 0
        got.append(hist)
    np.testing.assert_array_equal(np.concatenate(got), np.stack(want))
    assert table.listener.tolist() == sorted(kept)
    for i, listener in enumerate(table.listener.tolist()):
        last = kept[listener][-H:]
        assert table.ts_ms[i, H - len(last) :].tolist() == [t for t, _ in last]
        assert (table.ts_ms[i, : H - len(last)] == NO_PLAY_MS).all()
        assert table.last_ms[i] == max(t for t, _ in kept[listener])


def test_a_full_table_drops_the_listeners_whose_newest_play_is_oldest() -> None:
    table = empty_history(H, E)
    one = np.ones((1, E), np.float32)
    for listener, ts in ((5, 10), (6, 30), (7, 20)):
        table, _, evicted = attach(
            table, np.array([listener], np.uint64), np.array([ts]), one, capacity=2
        )
    assert evicted == 1 and table.listener.tolist() == [6, 7]
    # the dropped listener starts again from nothing
    table, hist, evicted = attach(table, np.array([5], np.uint64), np.array([40]), one, capacity=3)
    assert evicted == 0 and not hist.any() and table.listener.tolist() == [5, 6, 7]


def test_no_listener_and_no_history_length_change_nothing() -> None:
    table = empty_history(H, E)
    out, hist, _ = attach(
        table, np.zeros(4, np.uint64), np.arange(4), np.ones((4, E), np.float32), capacity=9
    )
    assert out is table and hist.shape == (4, H, E) and not hist.any()
    none = empty_history(0, E)
    out, hist, _ = attach(none, np.ones(2, np.uint64), np.arange(2), np.ones((2, E)), capacity=9)
    assert isinstance(out, History) and hist.shape == (2, 0, E)
