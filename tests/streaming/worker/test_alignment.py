"""Event-time alignment decisions (streaming.worker.alignment): which partition a daemon holds paused."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streaming.worker.alignment import Reading, to_pause

NOW = 100_000
STALL = 2_000
ALIGN = 10_000


def reading(ts: int | None, *, left: bool = True, delivered_ago: int | None = 0) -> Reading:
    """A partition read up to event time ``ts``, with records left or not, last delivering
    ``delivered_ago`` ms before ``NOW`` (None: never)."""
    return Reading(
        newest_ts=ts,
        next_offset=10,
        highwater=20 if left else 10,
        delivered_ms=None if delivered_ago is None else NOW - delivered_ago,
    )


def pause(imp: Reading, out: Reading, align_ms: int = ALIGN) -> tuple[set[int], set[int]]:
    got = to_pause({0: imp}, {0: out}, now_ms=NOW, align_ms=align_ms, stall_ms=STALL)
    return set(got[0]), set(got[1])


def test_outcomes_read_ahead_wait_for_their_impressions() -> None:
    assert pause(reading(1_000), reading(1_000 + ALIGN + 1)) == (set(), {0})
    assert pause(reading(1_000), reading(1_000 + ALIGN)) == (set(), set())  # within align_ms


def test_impressions_read_ahead_wait_for_their_outcomes() -> None:
    assert pause(reading(1_000 + ALIGN + 1), reading(1_000)) == ({0}, set())


def test_nothing_read_yet_counts_as_behind() -> None:
    assert pause(reading(None), reading(5_000)) == (set(), {0})
    assert pause(reading(None), reading(None)) == (set(), set())


def test_a_partition_read_to_its_end_holds_nothing_back() -> None:
    assert pause(reading(1_000, left=False), reading(60_000)) == (set(), set())


def test_a_partition_that_stopped_delivering_holds_nothing_back() -> None:
    assert pause(reading(1_000, delivered_ago=STALL), reading(60_000)) == (set(), set())
    assert pause(reading(1_000, delivered_ago=None), reading(60_000)) == (set(), set())
    assert pause(reading(1_000, delivered_ago=STALL - 1), reading(60_000)) == (set(), {0})


def test_a_partition_not_fetched_or_not_read_yet_may_have_records_left() -> None:
    """Until its next offset and high watermark are both known, a partition that began to be
    read within ``stall_ms`` counts as delivering; once it is stalled it holds nothing back."""
    for nxt, hw in ((None, 20), (10, None), (None, None)):
        behind = Reading(newest_ts=None, next_offset=nxt, highwater=hw, delivered_ms=NOW - 10)
        assert pause(behind, reading(60_000)) == (set(), {0})
        stalled = Reading(newest_ts=None, next_offset=nxt, highwater=hw, delivered_ms=NOW - STALL)
        assert pause(stalled, reading(60_000)) == (set(), set())


def test_zero_turns_alignment_off() -> None:
    assert pause(reading(1_000), reading(60_000), align_ms=0) == (set(), set())


def test_partitions_are_aligned_by_number_and_only_where_both_are_read() -> None:
    imps = {0: reading(1_000), 1: reading(50_000), 2: reading(1_000)}
    outs = {0: reading(50_000), 1: reading(1_000), 3: reading(90_000)}
    got = to_pause(imps, outs, now_ms=NOW, align_ms=ALIGN, stall_ms=STALL)
    assert got == (frozenset({1}), frozenset({0}))


_readings = st.builds(
    Reading,
    newest_ts=st.none() | st.integers(0, 100_000),
    next_offset=st.none() | st.integers(0, 50),
    highwater=st.none() | st.integers(0, 50),
    delivered_ms=st.none() | st.integers(NOW - 5_000, NOW),
)


@given(
    st.dictionaries(st.integers(0, 5), _readings),
    st.dictionaries(st.integers(0, 5), _readings),
    st.integers(0, 20_000),
)
def test_never_both_never_the_one_behind_never_without_a_delivering_partner(
    imps: dict[int, Reading], outs: dict[int, Reading], align_ms: int
) -> None:
    pause_imp, pause_out = to_pause(imps, outs, now_ms=NOW, align_ms=align_ms, stall_ms=STALL)
    assert not pause_imp & pause_out
    for paused, mine, other in ((pause_imp, imps, outs), (pause_out, outs, imps)):
        for p in paused:
            assert p in other
            assert other[p].delivering(NOW, STALL)
            ts = mine[p].newest_ts
            assert ts is not None
            assert other[p].newest_ts is None or ts - other[p].newest_ts > align_ms
