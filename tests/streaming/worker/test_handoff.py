"""Handing a partition's open join windows to another worker (pure part, no broker)."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from streaming import join
from streaming.core import WorkerState, init, step
from streaming.events import ImpressionBatch, OutcomeBatch, decode_impressions, decode_outcomes
from streaming.worker import checkpoint, handoff
from tests.streaming.core.test_step import LIM, engine, session_engine, traffic

TOPICS = ("imp", "out")
Batch = tuple[ImpressionBatch, OutcomeBatch, np.ndarray, np.ndarray]


def _partition(user_id: np.ndarray) -> np.ndarray:
    return np.array([sum(u.encode()) % 2 for u in user_id.tolist()], np.int32)


def _take(batch: Any, keep: np.ndarray) -> Any:
    return type(batch)(*(x[keep] for x in batch))


def batches(n: int, cuts: int, seed: int) -> list[Batch]:
    imps, outs = traffic(n, seed=seed)
    out: list[Batch] = []
    for ii, oo in zip(
        np.array_split(np.arange(len(imps)), cuts),
        np.array_split(np.arange(len(outs)), cuts),
        strict=True,
    ):
        ib, _ = decode_impressions([imps[i] for i in ii], LIM)
        ob, _ = decode_outcomes([outs[i] for i in oo], LIM)
        out.append((ib, ob, _partition(ib.user_id), _partition(ob.user_id)))
    return out


def feed(eng: Any, state: WorkerState, b: Batch, only: int | None = None) -> WorkerState:
    ib, ob, ip, op = b
    if only is not None:
        ib, ob, ip, op = (
            _take(ib, ip == only),
            _take(ob, op == only),
            ip[ip == only],
            op[op == only],
        )
    offsets = {(TOPICS[0], p): 0 for p in np.unique(ip).tolist()}
    state, _ = step(
        eng,
        state,
        ib,
        ob,
        offsets={**offsets, (TOPICS[1], 9): 0},
        impression_partition=ip,
        outcome_partition=op,
    )
    return state


def finish(eng: Any, state: WorkerState) -> WorkerState:
    state, _ = step(eng, state, None, None, watermark_ms=join.MAX_TIME_MS)
    return state


@pytest.mark.parametrize("move_at", [3, 6])
def test_a_moved_partition_ends_as_if_it_never_moved(move_at: int) -> None:
    eng = engine()
    stream = batches(900, cuts=10, seed=5)
    whole = init(eng)
    for b in stream:
        whole = feed(eng, whole, b)
    whole = finish(eng, whole)

    a = init(eng)
    for b in stream[:move_at]:
        a = feed(eng, a, b)
    assert a.join[1].open_key.size > 0  # windows are open when the partition moves
    record = handoff.extract(a, 1, TOPICS, "a")
    record = handoff.decode(handoff.encode(record, "g", created_ms=0), "test")
    a = handoff.without(a, [1], TOPICS)
    assert 1 not in a.join
    b_state = handoff.install(init(eng), record, TOPICS)
    for b in stream[move_at:]:
        a = feed(eng, a, b, only=0)
        b_state = feed(eng, b_state, b, only=1)
    a, b_state = finish(eng, a), finish(eng, b_state)

    for p, owner in ((0, a), (1, b_state)):
        assert join.counters(owner.join[p]) == join.counters(whole.join[p]), p
    for name in ("impressions", "outcomes", "closed", "feedback_rows"):
        assert a.counters[name] + b_state.counters[name] == whole.counters[name], name
    assert a.side.payload.size == b_state.side.payload.size == 0  # nothing stranded
    prior = init(eng).policy
    np.testing.assert_allclose(
        np.asarray(a.policy.precision) + np.asarray(b_state.policy.precision) - prior.precision,
        np.asarray(whole.policy.precision),
        rtol=1e-4,
        atol=1e-2,
    )
    np.testing.assert_allclose(
        np.asarray(a.policy.b) + np.asarray(b_state.policy.b),
        np.asarray(whole.policy.b),
        rtol=1e-4,
        atol=1e-2,
    )


def test_listening_histories_move_with_their_partition() -> None:
    """With the session reward model each partition keeps its listeners' recent plays: they go
    with the partition's record, so every listener's history ends as if nothing had moved."""
    eng = session_engine(window_ms=120_000, allowed_lateness_ms=30_000)
    stream = batches(900, cuts=10, seed=5)
    whole = init(eng)
    for b in stream:
        whole = feed(eng, whole, b)
    whole = finish(eng, whole)
    a = init(eng)
    for b in stream[:4]:
        a = feed(eng, a, b)
    assert a.history[1].listener.size > 0  # partition 1's listeners have played
    record = handoff.decode(handoff.encode(handoff.extract(a, 1, TOPICS, "a"), "g", 0), "test")
    a = handoff.without(a, [1], TOPICS)
    assert sorted(a.history) == [0]
    b_state = handoff.install(init(eng), record, TOPICS)
    for b in stream[4:]:
        a = feed(eng, a, b, only=0)
        b_state = feed(eng, b_state, b, only=1)
    a, b_state = finish(eng, a), finish(eng, b_state)
    for p, owner in ((0, a), (1, b_state)):
        for got, want in zip(owner.history[p], whole.history[p], strict=True):
            np.testing.assert_array_equal(got, want)
    assert a.sums["model_rows"] + b_state.sums["model_rows"] <= whole.sums["model_rows"]


def test_install_renumbers_payloads_after_the_receivers_own() -> None:
    eng = engine()
    stream = batches(400, cuts=4, seed=6)
    a = init(eng)
    b_state = init(eng)
    for b in stream[:2]:
        a = feed(eng, a, b)
        b_state = feed(eng, b_state, b, only=0)
    before = b_state.next_payload
    got = handoff.install(b_state, handoff.extract(a, 1, TOPICS, "a"), TOPICS)
    assert got.next_payload > before
    assert np.all(np.diff(got.side.payload) > 0) and np.all(np.diff(got.plays.payload) > 0)
    live_imp, live_out = join.live_payloads(got.join[1])
    assert np.isin(live_imp, got.side.payload).all() and np.isin(live_out, got.plays.payload).all()
    assert live_imp.min() >= before


def test_choose_prefers_the_newest_state_and_never_one_behind_the_commit() -> None:
    eng = engine()
    empty = handoff.extract(init(eng), 0, TOPICS, "x")

    def at(i: int, o: int) -> handoff.PartitionRecord:
        return empty._replace(impressions_offset=i, outcomes_offset=o)

    assert handoff.choose(at(5, 5), at(9, 7), (5, 5))[0] == "remote"
    assert handoff.choose(at(9, 7), at(5, 5), (5, 5))[0] == "local"
    assert handoff.choose(at(5, 5), at(5, 5), (5, 5))[0] == "local"  # a tie is the same state
    assert handoff.choose(None, at(5, 5), (None, None))[0] == "remote"
    assert handoff.choose(None, None, (None, None))[0] == "none"
    # A learned state somewhere is ahead of both: installing either would count events twice.
    assert handoff.choose(at(5, 5), at(6, 5), (8, 5))[0] == "fresh"


def test_what_a_lineage_published_after_its_surviving_checkpoint_is_void() -> None:
    eng = engine()
    empty = handoff.extract(init(eng), 0, TOPICS, "x")

    def at(i: int, lineage: str, seq: int) -> handoff.PartitionRecord:
        return empty._replace(
            impressions_offset=i, outcomes_offset=i, lineage=lineage, sequence=seq
        )

    mine = ("L", 3)  # this worker's lineage resumes from its checkpoint 3
    # Its own record from checkpoint 5 (since lost): not a candidate, and its commit no floor.
    lost_commit = handoff.Commit((90, 90), "L", 5)
    assert handoff.choose(at(40, "L", 3), at(90, "L", 5), lost_commit, mine) == (
        "local",
        at(40, "L", 3),
    )
    # A state that names no lineage (a record from before they did) stays behind the commit.
    assert handoff.choose(at(40, "", 0), None, lost_commit)[0] == "fresh"
    # Another worker sees the republished checkpoint-3 record: the lineage's later commit is void.
    assert handoff.choose(None, at(40, "L", 3), lost_commit) == ("remote", at(40, "L", 3))
    # Records and commits of other lineages, or of checkpoints up to the surviving one, count.
    assert (
        handoff.choose(at(40, "L", 3), at(90, "M", 7), handoff.Commit((90, 90), "M", 7), mine)[0]
        == "remote"
    )
    assert handoff.choose(None, at(40, "L", 3), handoff.Commit((90, 90), "M", 2))[0] == "fresh"
    assert handoff.parse_commit_metadata("") == ("", 0)
    assert handoff.parse_commit_metadata(handoff.commit_metadata("L", 12)) == ("L", 12)


def test_damaged_or_foreign_records_are_refused() -> None:
    eng = engine()
    data = handoff.encode(handoff.extract(init(eng), 0, TOPICS, "x"), "g", created_ms=0)
    with pytest.raises(checkpoint.CheckpointCorruptError, match="not compressed data"):
        handoff.decode(data[:-9], "handoff/0")
    with pytest.raises(checkpoint.CheckpointCorruptError, match="not compressed data"):
        handoff.decode(b"\x00" * 40, "handoff/0")
    # A record compressed with zlib reads as one compressed with zstd.
    assert data.startswith(b"ENCZSTD1")
    (size,) = struct.unpack_from("<Q", data, 8)
    raw = pa.Codec("zstd").decompress(data[16:], decompressed_size=size, asbytes=True)
    legacy = zlib.compress(raw, 1)
    assert handoff.decode(legacy, "handoff/0").worker == handoff.decode(data, "h").worker
    foreign = zlib.compress(checkpoint.encode({}, {"format": "other"}, created_at_ms=0))
    with pytest.raises(checkpoint.CheckpointError, match=r"is not 'encore\.partition/1'"):
        handoff.decode(foreign, "handoff/0")
