"""The in-memory track catalogue: updates, tombstones, views that never change, records."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from streaming.core.catalogue import (
    BYTES_PER_TRACK_BASE,
    Catalogue,
    TrackBatch,
    decode_tracks,
    encode_track,
    encode_withdrawal,
)
from streaming.events import key64

D = 4


def batch(ids: list[str], values: list[float], *, alive: list[bool] | None = None) -> TrackBatch:
    """Tracks whose every feature is ``value`` (version = int(value), slot = position)."""
    n = len(ids)
    return TrackBatch(
        key64(ids),
        np.ones(n, bool) if alive is None else np.asarray(alive, bool),
        np.repeat(np.asarray(values, np.float32)[:, None], D, axis=1),
        np.asarray(values, np.int32),
        np.full(n, 200_000, np.int64),
        np.arange(n, dtype=np.int64),
    )


def test_updates_replace_tombstones_withdraw_and_the_last_record_per_track_wins() -> None:
    cat = Catalogue(D, capacity=2)
    cat.apply(batch(["a", "b", "c"], [1, 2, 3]))
    view = cat.apply(batch(["b", "c", "b", "d"], [20, 0, 22, 4], alive=[True, False, True, True]))
    feats, version, slot, known = view.lookup(key64(["a", "b", "c", "d", "zz"]))
    assert known.tolist() == [True, True, False, True, False]
    np.testing.assert_array_equal(feats[:, 0], [1, 22, 0, 4, 0])
    assert version.tolist() == [1, 22, 0, 4, 0]
    assert slot.tolist()[-1] == -1 and view.size == 3
    assert cat.counts["withdrawn"] == 1 and cat.counts["updated"] == 1
    assert cat.counts["added"] == 4


def test_a_view_taken_before_a_batch_reads_the_same_vectors_after_it() -> None:
    cat = Catalogue(D, capacity=4)
    ids = [f"t{i}" for i in range(50)]
    before = cat.apply(batch(ids, list(range(50))))
    snapshot = before.lookup(key64(ids))[0].copy()
    for round_ in range(1, 30):  # updates, growth and compactions behind the old view's back
        cat.apply(batch(ids[::3], [1000.0 * round_] * len(ids[::3])))
    assert cat.counts["compactions"] > 0
    np.testing.assert_array_equal(before.lookup(key64(ids))[0], snapshot)
    now = cat.view().lookup(key64(ids))[0]
    assert (now[::3] == 29_000).all() and (now[1::3] == snapshot[1::3]).all()


def test_storage_stays_within_about_twice_the_live_tracks() -> None:
    cat = Catalogue(D)
    ids = [f"t{i}" for i in range(2_000)]
    for round_ in range(40):
        cat.apply(batch(ids, [float(round_)] * len(ids)))
    live = cat.view().size * (4 * D + BYTES_PER_TRACK_BASE)
    assert cat.view().size == 2_000 and cat.storage_bytes <= 2.5 * live + 1024 * (4 * D + 28)


def test_readers_racing_a_writer_never_see_a_half_written_vector() -> None:
    cat = Catalogue(D, capacity=8)
    ids = [f"t{i}" for i in range(200)]
    keys = key64(ids)
    cat.apply(batch(ids, [0.0] * 200))
    stop = threading.Event()
    bad: list[str] = []

    def read() -> None:
        while not stop.is_set():
            view = cat.view()
            feats, version, _, known = view.lookup(keys)
            if not known.all():
                bad.append("a live track went missing")
            # every vector is uniform and equals its version: one write, whole
            if not (feats == feats[:, :1]).all() or not (feats[:, 0] == version).all():
                bad.append("a vector was half-written")

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    for round_ in range(1, 300):
        part = ids[round_ % 7 :: 7]
        cat.apply(batch(part, [float(round_)] * len(part)))
    stop.set()
    for t in readers:
        t.join()
    assert not bad, bad[:3]


def test_records_round_trip_and_bad_ones_are_refused_with_a_reason() -> None:
    vec = np.arange(D, dtype=np.float32) / 3
    good = encode_track("a", 7, 2, vec, 180_000)
    records = [
        (b"a", good),
        (b"b", None),  # tombstone
        (None, good),
        (b"x", good),  # key and track id differ
        (b"a", b'{"schema": "track/9"}'),
        (b"c", encode_track("c", 1, 1, np.ones(D + 1, np.float32))),
        (
            b"d",
            b'{"schema":"track/1","track_id":"d","slot":0,"embedding_version":1,'
            b'"features":[1,2,"x",4]}',
        ),
        (
            b"e",
            b'{"schema":"track/1","track_id":"e","slot":0,"embedding_version":1,'
            b'"features":[1,2,1e39,4]}',
        ),
        (
            b"f",
            b'{"schema":"track/1","track_id":"f","slot":-1,"embedding_version":1,'
            b'"features":[1,2,3,4]}',
        ),
    ]
    got, refused = decode_tracks(records, D)
    assert [i for i, _ in refused] == [2, 3, 4, 5, 6, 7, 8]
    assert "track id as its key" in refused[0][1] and "under key" in refused[1][1]
    assert got.alive.tolist() == [True, False]
    np.testing.assert_array_equal(got.features[0], vec)
    assert (got.slot[0], got.version[0], got.duration_ms[0]) == (7, 2, 180_000)
    assert got.keys.tolist() == key64(["a", "b"]).tolist()


def test_a_withdrawal_that_keeps_its_slot_is_remembered_and_slots_are_never_handed_out_twice() -> (
    None
):
    cat = Catalogue(D)
    cat.apply(batch(["a", "b"], [1, 2]))
    records = [
        (b"b", encode_withdrawal("b", 1)),
        (b"c", encode_track("c", 5, 1, np.zeros(D, np.float32))),
        (b"c", encode_withdrawal("c", 5)),  # added and withdrawn in one batch
    ]
    got, refused = decode_tracks(records, D)
    assert not refused and got.alive.tolist() == [False, True, False]
    view = cat.apply(got)
    assert view.size == 1 and cat.max_slot == 5
    assert cat.slot_of(key64(["a", "b", "c", "zz"])).tolist() == [0, 1, 5, -1]
    cat.apply(batch(["b"], [7]))  # back: live again, no longer withdrawn
    assert cat.view().size == 2 and cat.slot_of(key64(["b"])).tolist() == [0]


def test_a_batch_that_fails_part_way_leaves_the_catalogue_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cat = Catalogue(D, capacity=2)
    before = cat.apply(batch(["a", "b"], [1, 2]))
    used = cat._used  # pyright: ignore[reportPrivateUsage]

    def no_memory(rows: int) -> object:
        raise MemoryError(rows)

    monkeypatch.setattr(cat, "_storage", no_memory)
    with pytest.raises(MemoryError):
        cat.apply(batch(["c", "d", "e"], [3, 4, 5]))  # needs new storage
    assert cat.view() is before and cat._used == used  # pyright: ignore[reportPrivateUsage]
    monkeypatch.undo()
    after = cat.apply(batch(["c"], [3]))
    assert after.lookup(key64(["a", "b", "c"]))[0][:, 0].tolist() == [1, 2, 3]


def test_features_longer_than_the_limit_are_refused() -> None:
    long = encode_track("a", 0, 1, np.full(D, 10.0, np.float32))
    got, refused = decode_tracks([(b"a", long)], D, max_norm=10.0)
    assert got.keys.size == 0 and "norm 20" in refused[0][1]
