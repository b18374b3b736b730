"""The reward-window join: examples for each rule, validation, and properties against a reference."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming import join
from streaming.join import (
    IMPRESSION_DUPLICATE,
    IMPRESSION_LATE,
    MAX_TIME_MS,
    OUTCOME_CLOSED,
    OUTCOME_LATE,
    OUTCOME_ORPHAN,
    OUTCOME_OVERFLOW,
    JoinConfig,
    JoinEffects,
    JoinImpressions,
    JoinOutcomes,
    JoinState,
    rows,
)


def imps(
    keys: Sequence[int], ts: Sequence[int], payload: Sequence[int] | None = None
) -> JoinImpressions:
    pay = list(range(len(keys))) if payload is None else payload
    return JoinImpressions(
        np.array(keys, np.uint64), np.array(ts, np.int64), np.array(pay, np.int64)
    )


def outs(
    keys: Sequence[int],
    ts: Sequence[int],
    position: Sequence[int] | None = None,
    value: Sequence[float] | None = None,
    payload: Sequence[int] | None = None,
) -> JoinOutcomes:
    n = len(keys)
    return JoinOutcomes(
        np.array(keys, np.uint64),
        np.array(ts, np.int64),
        np.array([0] * n if position is None else position, np.int32),
        np.array([1.0] * n if value is None else value, np.float32),
        np.array(list(range(n)) if payload is None else payload, np.int64),
    )


CFG = JoinConfig(
    window_ms=100,
    allowed_lateness_ms=10,
    max_open=1000,
    aggregate="max",
    default_reward=-1.0,
    slate_size=3,
    max_pending=1000,
    late_horizon_ms=500,
)


def flush(state: JoinState, cfg: JoinConfig = CFG) -> tuple[JoinState, JoinEffects]:
    return join.advance(state, cfg, watermark_ms=MAX_TIME_MS)


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"window_ms": 0}, ValueError, "JoinConfig.window_ms must be in"),
        ({"window_ms": 1.5}, TypeError, "JoinConfig.window_ms must be an int"),
        ({"allowed_lateness_ms": -1}, ValueError, "JoinConfig.allowed_lateness_ms"),
        ({"max_open": 0}, ValueError, "JoinConfig.max_open"),
        ({"max_open": True}, TypeError, "JoinConfig.max_open must be an int"),
        ({"slate_size": 0}, ValueError, "JoinConfig.slate_size"),
        ({"max_pending": -1}, ValueError, "JoinConfig.max_pending"),
        ({"late_horizon_ms": -5}, ValueError, "JoinConfig.late_horizon_ms"),
        ({"max_closed_keys": -1}, ValueError, "JoinConfig.max_closed_keys"),
        ({"aggregate": "mean"}, ValueError, "JoinConfig.aggregate must be 'first', 'max' or 'sum'"),
        ({"default_reward": float("nan")}, ValueError, "JoinConfig.default_reward must be finite"),
        ({"default_reward": "0"}, TypeError, "JoinConfig.default_reward must be a float"),
    ],
)
def test_config_rejects_bad_fields(
    changes: dict[str, Any], error: type[Exception], message: str
) -> None:
    fields = {**CFG.__dict__, **changes}
    with pytest.raises(error, match=message):
        JoinConfig(**fields)


# --- examples ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aggregate", "expected"),
    [("first", [0.5, -1.0, 3.0]), ("max", [2.0, -1.0, 3.0]), ("sum", [4.5, -1.0, 3.0])],
)
def test_aggregates_per_position_and_default(aggregate: str, expected: list[float]) -> None:
    cfg = JoinConfig(**{**CFG.__dict__, "aggregate": aggregate})
    state = join.init(cfg)
    state, _ = join.add_impressions(state, imps([7, 8], [1000, 1001], [40, 41]), cfg)
    # position 0 of key 7 gets 0.5 (earliest), 2.0, 2.0; position 2 gets 3.0; key 8 gets nothing
    state, fx = join.add_outcomes(
        state, outs([7, 7, 7, 7], [1030, 1040, 1050, 1060], [0, 0, 0, 2], [0.5, 2.0, 2.0, 3.0]), cfg
    )
    assert fx.rejected_outcomes.ts_ms.size == 0
    state, fx = flush(state, cfg)
    closed = fx.closed
    assert closed.request_key.tolist() == [7, 8]  # arrival order
    assert closed.payload.tolist() == [40, 41]
    np.testing.assert_array_equal(closed.reward[0], np.array(expected, np.float32))
    assert closed.n_outcomes.tolist() == [[3, 0, 1], [0, 0, 0]]
    assert closed.defaulted.tolist() == [[False, True, False], [True, True, True]]
    assert closed.reward[1].tolist() == [-1.0, -1.0, -1.0]
    assert not closed.evicted.any()
    c = join.counters(state)
    assert (c["opened"], c["joined"], c["closed"], c["expired_default"]) == (2, 4, 2, 1)
    assert (c["n_open"], c["n_pending"]) == (0, 0)


def test_first_breaks_equal_times_by_larger_value_whatever_the_order() -> None:
    cfg = JoinConfig(**{**CFG.__dict__, "aggregate": "first", "allowed_lateness_ms": 100})
    state, _ = join.add_impressions(join.init(cfg), imps([1], [0]), cfg)
    state, _ = join.add_outcomes(state, outs([1, 1], [50, 20], value=[0.0, 0.25]), cfg)
    state, _ = join.add_outcomes(state, outs([1], [20], value=[0.75]), cfg)
    state, _ = join.add_outcomes(state, outs([1], [20], value=[0.5]), cfg)
    _, fx = flush(state, cfg)
    assert fx.closed.reward[0, 0] == np.float32(0.75)


def test_window_closes_only_when_the_watermark_passes_its_end() -> None:
    state, _ = join.add_impressions(join.init(CFG), imps([1], [1000]), CFG)
    # watermark = min(impression max, outcome max) - lateness
    state, _ = join.add_outcomes(state, outs([99], [1109]), CFG)  # orphan-to-be, moves outcomes
    state, _ = join.add_impressions(state, imps([2], [1200]), CFG)
    state, fx = join.advance(state, CFG)
    assert int(state.watermark_ms) == 1099 and fx.closed.ts_ms.size == 0
    state, _ = join.add_outcomes(state, outs([1], [1110]), CFG)  # after window [1000, 1100)
    state, fx = join.advance(state, CFG)
    assert int(state.watermark_ms) == 1100
    assert fx.closed.request_key.tolist() == [1]
    assert fx.closed.defaulted.all()


def test_outcome_before_its_impression_waits_then_joins() -> None:
    state, _ = join.add_outcomes(join.init(CFG), outs([5], [1010], [1], [1.0]), CFG)
    state, fx = join.advance(state, CFG)
    assert fx.rejected_outcomes.ts_ms.size == 0 and state.pending_key.size == 1
    state, _ = join.add_impressions(state, imps([5], [1000]), CFG)
    assert state.pending_key.size == 0
    _, fx = flush(state)
    assert fx.closed.n_outcomes.tolist() == [[0, 1, 0]]


def test_pending_outcomes_join_only_their_new_impression_and_the_rest_keep_their_order() -> None:
    # Outcomes of keys 5, 9, 6 and 5 wait (impression 7 is open, none of them is its); then
    # impressions 6 and 5 open: their outcomes join in pending order, 9's keeps waiting.
    state, _ = join.add_impressions(join.init(CFG), imps([7], [1000]), CFG)
    state, _ = join.add_outcomes(
        state, outs([5, 9, 6, 5], [1010, 1020, 1015, 1030], [0, 1, 2, 1]), CFG
    )
    assert state.pending_key.tolist() == [5, 9, 6, 5]
    state, _ = join.add_impressions(state, imps([6, 5], [1000, 1000], [1, 2]), CFG)
    assert state.pending_key.tolist() == [9]
    assert state.joined_key.tolist() == [5, 6, 5]
    assert state.joined_ts_ms.tolist() == [1010, 1015, 1030]
    state, _ = join.add_impressions(state, imps([11], [1000], [3]), CFG)  # shares no pending key
    assert state.pending_key.tolist() == [9] and state.joined_key.size == 3
    state, _ = join.add_impressions(state, imps([9], [1000], [4]), CFG)
    assert state.pending_key.size == 0 and state.joined_key.tolist() == [5, 6, 5, 9]


@settings(max_examples=200, deadline=None)
@given(
    key=st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 5), max_size=30),
    of=st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 5), max_size=10),
)
def test_among_is_isin(key: list[int], of: list[int]) -> None:
    k, o = np.array(key, np.uint64), np.array(of, np.uint64)
    among = rows._among(k, np.sort(o))  # pyright: ignore[reportPrivateUsage]
    assert among.dtype == bool and among.tolist() == np.isin(k, o).tolist()


def test_pending_outcome_becomes_orphan_or_closed_after_the_watermark() -> None:
    state, _ = join.add_impressions(join.init(CFG), imps([1], [1000]), CFG)
    # key 1 after its window (but within the late horizon), key 2 never had an impression,
    # key 1 before its impression started.
    state, fx = join.add_outcomes(state, outs([1, 1, 2], [999, 1150, 1150], payload=[2, 0, 1]), CFG)
    assert fx.rejected_outcomes.ts_ms.size == 0
    state, fx = flush(state)
    rejected = sorted(
        zip(
            fx.rejected_outcomes.payload.tolist(), fx.rejected_outcomes.reason.tolist(), strict=True
        )
    )
    assert rejected == [(0, OUTCOME_CLOSED), (1, OUTCOME_ORPHAN), (2, OUTCOME_ORPHAN)]
    c = join.counters(state)
    assert (c["late_outcomes"], c["orphan_outcomes"], c["joined"]) == (1, 2, 0)


def test_outcome_past_the_late_horizon_is_an_orphan() -> None:
    state, _ = join.add_impressions(join.init(CFG), imps([1], [1000]), CFG)
    state, _ = join.add_outcomes(state, outs([1], [1000 + 100 + 500]), CFG)
    _, fx = flush(state)
    assert fx.rejected_outcomes.reason.tolist() == [OUTCOME_ORPHAN]


def test_outcome_behind_its_stream_watermark_is_rejected_at_once() -> None:
    state, _ = join.add_impressions(join.init(CFG), imps([1], [1000]), CFG)
    state, fx = join.add_outcomes(
        state, outs([2, 1, 1], [1080, 1069, 1070], payload=[0, 1, 2]), CFG
    )
    assert fx.rejected_outcomes.payload.tolist() == [1]
    assert fx.rejected_outcomes.reason.tolist() == [OUTCOME_LATE]
    assert join.counters(state)["late_outcomes"] == 1
    _, fx = flush(state)
    assert fx.closed.n_outcomes[0].tolist() == [1, 0, 0]


def test_late_and_duplicate_impressions_are_rejected_and_counted() -> None:
    state, fx = join.add_impressions(
        join.init(CFG), imps([1, 2, 1, 3], [1000, 1050, 1045, 1039], [10, 11, 12, 13]), CFG
    )
    rej = fx.rejected_impressions
    assert rej.payload.tolist() == [12, 13]
    assert rej.reason.tolist() == [IMPRESSION_DUPLICATE, IMPRESSION_LATE]
    state, fx = join.add_impressions(state, imps([2], [1050], [14]), CFG)
    assert fx.rejected_impressions.reason.tolist() == [IMPRESSION_DUPLICATE]
    c = join.counters(state)
    assert (c["opened"], c["duplicates"], c["late_impressions"], c["n_open"]) == (2, 2, 1, 2)


def test_full_buffer_evicts_the_oldest_with_what_they_have() -> None:
    cfg = JoinConfig(**{**CFG.__dict__, "max_open": 2})
    state, _ = join.add_impressions(join.init(cfg), imps([1, 2], [1000, 1001]), cfg)
    state, _ = join.add_outcomes(state, outs([1], [1005], [2], [1.0]), cfg)
    state, fx = join.add_impressions(state, imps([3, 4], [1003, 1002]), cfg)
    assert fx.closed.request_key.tolist() == [1, 2]
    assert fx.closed.evicted.all()
    assert fx.closed.n_outcomes[0].tolist() == [0, 0, 1]
    assert join.counters(state)["evicted"] == 2
    assert state.open_key.tolist() == [3, 4]
    # an outcome for an evicted impression is late (its impression already closed)
    state, _ = join.add_outcomes(state, outs([2], [1006]), cfg)
    state, fx = flush(state, cfg)
    assert fx.rejected_outcomes.reason.tolist() == [OUTCOME_CLOSED]
    assert not fx.closed.evicted.any()
    c = join.counters(state)
    assert (c["evicted"], c["closed"], c["opened"]) == (2, 2, 4)


def test_full_pending_buffer_rejects_the_oldest_outcomes() -> None:
    cfg = JoinConfig(**{**CFG.__dict__, "max_pending": 2})
    state, fx = join.add_outcomes(join.init(cfg), outs([1, 2, 3], [1005, 1001, 1003]), cfg)
    assert fx.rejected_outcomes.payload.tolist() == [1]
    assert fx.rejected_outcomes.reason.tolist() == [OUTCOME_OVERFLOW]
    assert state.pending_ts_ms.tolist() == [1005, 1003]
    assert join.counters(state)["evicted_outcomes"] == 1


def test_closed_key_memory_is_bounded_by_time_and_count() -> None:
    cfg = JoinConfig(**{**CFG.__dict__, "max_closed_keys": 3})
    state, _ = join.add_impressions(join.init(cfg), imps([1, 2, 3], [0, 10, 20]), cfg)
    state, _ = join.advance(state, cfg, watermark_ms=200)
    assert state.closed_key.tolist() == [1, 2, 3]
    state, _ = join.add_impressions(state, imps([4, 5], [300, 600]), cfg)
    state, _ = join.advance(state, cfg, watermark_ms=615)
    # closing 4 makes four entries: the count bound drops 1 (oldest end), the time bound drops
    # 2 (ended at 110, 110 + 500 <= 615); 3 ended at 120 and stays.
    assert state.closed_key.tolist() == [3, 4]
    assert state.open_key.tolist() == [5]


def test_calls_do_not_modify_their_input_state() -> None:
    state, _ = join.add_impressions(join.init(CFG), imps([1, 2], [1000, 1010]), CFG)
    state, _ = join.add_outcomes(state, outs([3], [1020]), CFG)
    before = {k: v.copy() for k, v in join.to_arrays(state).items()}
    join.add_outcomes(state, outs([1, 2], [1030, 1040], [1, 2], [1.0, 2.0]), CFG)
    join.add_impressions(state, imps([3], [1015]), CFG)
    flush(state)
    for name, arr in join.to_arrays(state).items():
        np.testing.assert_array_equal(arr, before[name], err_msg=name)


def test_live_payloads_are_what_has_not_come_back_yet() -> None:
    state, _ = join.add_impressions(join.init(CFG), imps([1, 2], [1000, 1010], [50, 51]), CFG)
    state, _ = join.add_outcomes(state, outs([1, 9], [1030, 1040], payload=[70, 71]), CFG)
    live_imps, live_outs = join.live_payloads(state)
    assert live_imps.tolist() == [50, 51] and sorted(live_outs.tolist()) == [70, 71]
    state, fx = flush(state)
    assert [a.size for a in join.live_payloads(state)] == [0, 0]
    assert sorted(fx.closed.payload.tolist()) == [50, 51]
    assert fx.joined.payload.tolist() == [70] and fx.rejected_outcomes.payload.tolist() == [71]
    assert fx.closed.request_key[fx.joined.row].tolist() == [1]


def test_state_round_trips_through_arrays() -> None:
    state, _ = join.add_impressions(join.init(CFG), imps([1, 2], [1000, 1010]), CFG)
    state, _ = join.add_outcomes(state, outs([1, 9], [1030, 1040], [1, 2], [1.0, 2.0]), CFG)
    arrays = {k: v.copy() for k, v in join.to_arrays(state).items()}
    back = join.from_arrays(arrays)
    for a, b in zip(state, back, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    _, fx1 = flush(state)
    _, fx2 = flush(back)
    np.testing.assert_array_equal(fx1.closed.reward, fx2.closed.reward)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a: a.pop("joined_value"), r"missing \['joined_value'\]"),
        (lambda a: a.__setitem__("extra", np.zeros(1)), r"unknown \['extra'\]"),
        (lambda a: a.__setitem__("joined", np.zeros(1, np.int64)), "'joined': expected int64 with"),
        (lambda a: a.__setitem__("open_ts_ms", np.zeros(5, np.int64)), "'open_ts_ms'"),
        (lambda a: a.__setitem__("pending_value", np.zeros(0, np.float64)), "'pending_value'"),
        (lambda a: a.__setitem__("open_key", np.zeros((1, 1), np.uint64)), "'open_key'"),
        (
            lambda a: (
                a.__setitem__("open_key", np.zeros(2, np.uint64))
                or a.update(open_ts_ms=np.zeros(2, np.int64), open_payload=np.zeros(2, np.int64))
            ),
            "'open_key' holds a key twice",
        ),
    ],
)
def test_from_arrays_names_the_bad_array(edit: Any, message: str) -> None:
    arrays = join.to_arrays(join.init(CFG))
    edit(arrays)
    with pytest.raises(ValueError, match=message):
        join.from_arrays(arrays)


def test_state_and_config_slate_sizes_must_agree() -> None:
    other = JoinConfig(**{**CFG.__dict__, "slate_size": 4})
    with pytest.raises(ValueError, match="slate_size=4"):
        join.advance(join.init(CFG), other)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (outs([1], [0], position=[3]), r"position must be in \[0, 3\).*rows \[0\] hold \[3\]"),
        (outs([1, 1], [0, 0], position=[0, -1]), r"rows \[1\] hold \[-1\]"),
        (outs([1], [0], value=[float("nan")]), r"value must be finite; rows \[0\]"),
        (
            JoinOutcomes(
                np.array([1, 1], np.uint64),
                np.array([0, 0]),
                np.array([0, 0]),
                np.array([1.0, 1e300]),
                np.array([0, 1]),
            ),
            r"value must be finite; rows \[1\]",
        ),
        (outs([1], [2**62]), r"ts_ms out of range"),
        (
            JoinOutcomes(
                np.array([1], np.int64),
                np.array([0]),
                np.array([0]),
                np.array([1.0]),
                np.array([0]),
            ),
            "request_key must be uint64, got int64",
        ),
        (
            JoinOutcomes(
                np.array([1], np.uint64),
                np.array([0, 1]),
                np.array([0]),
                np.array([1.0]),
                np.array([0]),
            ),
            "columns differ in length",
        ),
        (
            JoinOutcomes(
                np.array([1], np.uint64),
                np.array([[0]]),
                np.array([0]),
                np.array([1.0]),
                np.array([0]),
            ),
            r"ts_ms must be 1-d",
        ),
    ],
)
def test_outcome_batches_are_validated(batch: JoinOutcomes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        join.add_outcomes(join.init(CFG), batch, CFG)


def test_impression_batches_are_validated() -> None:
    bad = JoinImpressions(np.array([1], np.uint64), np.array([0.5]), np.array([0]))
    with pytest.raises(ValueError, match=r"JoinImpressions\.ts_ms must be int64, got float64"):
        join.add_impressions(join.init(CFG), bad, CFG)
    with pytest.raises(ValueError, match="watermark_ms must be an int64"):
        join.advance(join.init(CFG), CFG, watermark_ms=2**64)


# --- properties --------------------------------------------------------------------------------


class Event(NamedTuple):
    is_impression: bool
    key: int
    ts: int
    position: int
    value: float


PROP_CFG = dict(
    window_ms=20,
    allowed_lateness_ms=5,
    max_open=10**6,
    default_reward=0.5,
    slate_size=2,
    max_pending=10**6,
    late_horizon_ms=15,
    max_closed_keys=10**6,
)


@st.composite
def streams(draw: st.DrawFn) -> list[Event]:
    n = draw(st.integers(0, 40))
    events: list[Event] = []
    clock = 0
    for _ in range(n):
        clock += draw(st.integers(0, 8))
        ts = clock + draw(st.sampled_from([0, 0, 0, -2, -4, -9, -30, 3]))
        if draw(st.booleans()):
            if events and draw(st.integers(0, 5)) == 0:  # exact redelivery of an impression
                prev = draw(st.sampled_from([e for e in events if e.is_impression] or [None]))
                if prev is not None:
                    events.append(prev)
                    continue
            events.append(
                Event(
                    True,
                    2**64 - 1 - len(events) if draw(st.integers(0, 9)) == 0 else len(events),
                    ts,
                    0,
                    0.0,
                )
            )
        else:
            known = [e.key for e in events if e.is_impression]
            key = draw(st.sampled_from(known)) if known and draw(st.integers(0, 4)) else 10**6
            events.append(
                Event(
                    False,
                    key,
                    ts,
                    draw(st.integers(0, 1)),
                    draw(st.sampled_from([0.0, 0.25, 1.0, 2.0])),
                )
            )
    return events


def run_cuts(
    events: list[Event], cuts: list[int], cfg: JoinConfig
) -> tuple[JoinState, list[JoinEffects]]:
    state, effects = join.init(cfg), []
    bounds = [0, *sorted(set(cuts)), len(events)]
    for lo, hi in itertools.pairwise(bounds):
        seg = [(i, e) for i, e in enumerate(events[lo:hi], start=lo)]
        im = [(i, e) for i, e in seg if e.is_impression]
        oc = [(i, e) for i, e in seg if not e.is_impression]
        state, fx = join.add_impressions(
            state, imps([e.key for _, e in im], [e.ts for _, e in im], [i for i, _ in im]), cfg
        )
        effects.append(fx)
        state, fx = join.add_outcomes(
            state,
            outs(
                [e.key for _, e in oc],
                [e.ts for _, e in oc],
                [e.position for _, e in oc],
                [e.value for _, e in oc],
                [i for i, _ in oc],
            ),
            cfg,
        )
        effects.append(fx)
        state, fx = join.advance(state, cfg)
        effects.append(fx)
    state, fx = flush(state, cfg)
    effects.append(fx)
    return state, effects


def canonical(effects: list[JoinEffects]) -> tuple[list[tuple[Any, ...]], ...]:
    joined = sorted(
        (int(fx.closed.request_key[r]), int(t), int(p), float(v), int(y))
        for fx in effects
        for r, _, t, p, v, y in zip(*fx.joined, strict=True)
    )
    closed = sorted(
        (int(k), int(t), int(p), tuple(r.tolist()), tuple(n.tolist()), tuple(d.tolist()), bool(e))
        for fx in effects
        for k, t, p, r, n, d, e in zip(*fx.closed, strict=True)
    )
    rej_i = sorted(
        tuple(int(x) for x in row)
        for fx in effects
        for row in zip(*fx.rejected_impressions, strict=True)
    )
    rej_o = sorted(
        (int(k), int(t), int(p), float(v), int(y), int(r))
        for fx in effects
        for k, t, p, v, y, r in zip(*fx.rejected_outcomes, strict=True)
    )
    return closed, rej_i, rej_o, joined


def reference(
    events: list[Event], cfg: JoinConfig
) -> tuple[tuple[list[tuple[Any, ...]], ...], dict[str, int]]:
    """The documented semantics, written event by event without any buffering."""
    lateness, window, s = cfg.allowed_lateness_ms, cfg.window_ms, cfg.slate_size
    imp_max = out_max = None
    accepted: dict[int, tuple[int, int]] = {}  # key -> (ts, payload)
    rej_i: list[tuple[int, ...]] = []
    late_o: list[int] = []
    for i, e in enumerate(events):
        if e.is_impression:
            if imp_max is not None and e.ts < imp_max - lateness:
                rej_i.append((e.key, e.ts, i, IMPRESSION_LATE))
            elif e.key in accepted:
                rej_i.append((e.key, e.ts, i, IMPRESSION_DUPLICATE))
            else:
                accepted[e.key] = (e.ts, i)
            imp_max = e.ts if imp_max is None else max(imp_max, e.ts)
        else:
            if out_max is not None and e.ts < out_max - lateness:
                late_o.append(i)
            out_max = e.ts if out_max is None else max(out_max, e.ts)
    joined: dict[int, list[list[tuple[int, float]]]] = {k: [[] for _ in range(s)] for k in accepted}
    rej_o: list[tuple[Any, ...]] = []
    joined_rows: list[tuple[Any, ...]] = []
    for i, e in enumerate(events):
        if e.is_impression:
            continue
        row = (e.key, e.ts, e.position, e.value, i)
        start = accepted.get(e.key, (None, None))[0]
        if i in late_o:
            rej_o.append((*row, OUTCOME_LATE))
        elif start is not None and start <= e.ts < start + window:
            joined[e.key][e.position].append((e.ts, e.value))
            joined_rows.append((e.key, e.ts, e.position, e.value, i))
        elif start is not None and start <= e.ts < start + window + cfg.late_horizon_ms:
            rej_o.append((*row, OUTCOME_CLOSED))
        else:
            rej_o.append((*row, OUTCOME_ORPHAN))
    closed = []
    for key, (ts, payload) in accepted.items():
        rewards, counts = [], []
        for pos in joined[key]:
            counts.append(len(pos))
            if not pos:
                rewards.append(cfg.default_reward)
            elif cfg.aggregate == "sum":
                rewards.append(sum(v for _, v in pos))
            elif cfg.aggregate == "max":
                rewards.append(max(v for _, v in pos))
            else:
                rewards.append(min(pos, key=lambda tv: (tv[0], -tv[1]))[1])
        closed.append(
            (
                key,
                ts,
                payload,
                tuple(float(np.float32(r)) for r in rewards),
                tuple(counts),
                tuple(c == 0 for c in counts),
                False,
            )
        )
    n_joined = sum(sum(counts) for *_, counts, _, _ in closed)
    counters = {
        "opened": len(accepted),
        "joined": n_joined,
        "closed": len(accepted),
        "expired_default": sum(all(d) for *_, d, _ in closed),
        "evicted": 0,
        "duplicates": sum(r[3] == IMPRESSION_DUPLICATE for r in rej_i),
        "late_impressions": sum(r[3] == IMPRESSION_LATE for r in rej_i),
        "late_outcomes": sum(r[5] in (OUTCOME_LATE, OUTCOME_CLOSED) for r in rej_o),
        "orphan_outcomes": sum(r[5] == OUTCOME_ORPHAN for r in rej_o),
        "evicted_outcomes": 0,
    }
    return (sorted(closed), sorted(rej_i), sorted(rej_o), sorted(joined_rows)), counters


def without_sizes(state: JoinState) -> dict[str, int]:
    c = join.counters(state)
    assert (c.pop("n_open"), c.pop("n_pending"), c.pop("n_joined_open")) == (0, 0, 0)
    c.pop("n_closed_memory"), c.pop("watermark_ms")
    return c


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(events=streams(), data=st.data(), aggregate=st.sampled_from(["first", "max", "sum"]))
def test_any_batch_cut_matches_the_reference(
    events: list[Event], data: st.DataObject, aggregate: str
) -> None:
    cfg = JoinConfig(aggregate=aggregate, **PROP_CFG)  # type: ignore[arg-type]
    expected, expected_counters = reference(events, cfg)
    cuts = data.draw(st.lists(st.integers(0, len(events)), max_size=len(events)))
    for cut in (cuts, [], list(range(len(events)))):
        state, effects = run_cuts(events, cut, cfg)
        assert canonical(effects) == expected
        assert without_sizes(state) == expected_counters
    # each outcome is accounted for exactly once: joined, or rejected with one reason
    n_outcomes = sum(not e.is_impression for e in events)
    assert expected_counters["joined"] + len(expected[2]) == n_outcomes


@settings(max_examples=100, deadline=None)
@given(events=streams(), marks=st.lists(st.integers(-10, 400), min_size=1, max_size=6))
def test_expiry_is_monotone_in_the_watermark(events: list[Event], marks: list[int]) -> None:
    cfg = JoinConfig(aggregate="sum", **PROP_CFG)  # type: ignore[arg-type]
    state = join.init(cfg)
    im = [(i, e) for i, e in enumerate(events) if e.is_impression]
    oc = [(i, e) for i, e in enumerate(events) if not e.is_impression]
    state, _ = join.add_impressions(
        state, imps([e.key for _, e in im], [e.ts for _, e in im], [i for i, _ in im]), cfg
    )
    state, _ = join.add_outcomes(
        state,
        outs(
            [e.key for _, e in oc],
            [e.ts for _, e in oc],
            [e.position for _, e in oc],
            [e.value for _, e in oc],
            [i for i, _ in oc],
        ),
        cfg,
    )
    stepped, closed_so_far, last_wm = state, set(), None
    for mark in marks:
        stepped, fx = join.advance(stepped, cfg, watermark_ms=mark)
        wm = int(stepped.watermark_ms)
        assert last_wm is None or wm >= last_wm  # the watermark never moves back
        last_wm = wm
        closed_so_far |= set(fx.closed.request_key.tolist())
        # exactly the impressions whose window ended by the watermark are closed
        direct, fx_direct = join.advance(state, cfg, watermark_ms=wm)
        assert set(fx_direct.closed.request_key.tolist()) == closed_so_far
        assert set(direct.open_key.tolist()) == set(stepped.open_key.tolist())
        assert all(t + cfg.window_ms > wm for t in stepped.open_ts_ms.tolist())


def test_outcome_at_the_watermark_still_waits_for_its_impression() -> None:
    state, _ = join.add_impressions(join.init(CFG), imps([9], [1000]), CFG)
    state, _ = join.add_outcomes(state, outs([5, 99], [990, 1000]), CFG)
    state, fx = join.advance(state, CFG)
    assert int(state.watermark_ms) == 990
    assert fx.rejected_outcomes.ts_ms.size == 0  # an impression at ts 990 is not late yet
    state, fx = join.add_impressions(state, imps([5], [990]), CFG)
    assert fx.rejected_impressions.ts_ms.size == 0
    assert join.counters(state)["joined"] == 1


@settings(max_examples=100, deadline=None)
@given(
    events=streams(),
    data=st.data(),
    max_open=st.integers(1, 4),
    max_pending=st.integers(0, 3),
    max_closed_keys=st.integers(0, 3),
)
def test_every_payload_comes_back_exactly_once_even_at_capacity(
    events: list[Event], data: st.DataObject, max_open: int, max_pending: int, max_closed_keys: int
) -> None:
    cfg = JoinConfig(
        **{
            **PROP_CFG,
            "max_open": max_open,
            "max_pending": max_pending,
            "max_closed_keys": max_closed_keys,
        }
    )  # type: ignore[arg-type]
    cuts = data.draw(st.lists(st.integers(0, len(events)), max_size=len(events)))
    state, effects = run_cuts(events, cuts, cfg)
    imp_back = sorted(
        p
        for fx in effects
        for p in [*fx.closed.payload.tolist(), *fx.rejected_impressions.payload.tolist()]
    )
    out_back = sorted(
        p
        for fx in effects
        for p in [*fx.joined.payload.tolist(), *fx.rejected_outcomes.payload.tolist()]
    )
    assert imp_back == [i for i, e in enumerate(events) if e.is_impression]
    assert out_back == [i for i, e in enumerate(events) if not e.is_impression]
    c = without_sizes(state)
    closed = [fx.closed for fx in effects]
    merged = join.concat_effects(effects, cfg.slate_size)
    assert sorted(
        merged.closed.payload.tolist() + merged.rejected_impressions.payload.tolist()
    ) == (imp_back)
    np.testing.assert_array_equal(
        merged.closed.request_key[merged.joined.row], merged.joined.request_key
    )
    assert join.concat_effects([], 2).closed.reward.shape == (0, 2)
    assert c["opened"] == c["closed"] + c["evicted"] == sum(x.ts_ms.size for x in closed)
    assert c["evicted"] == sum(int(x.evicted.sum()) for x in closed)
    assert c["joined"] == sum(fx.joined.ts_ms.size for fx in effects)
    assert c["joined"] == sum(int(x.n_outcomes.sum()) for x in closed)
    reasons = np.concatenate([fx.rejected_outcomes.reason for fx in effects])
    assert c["late_outcomes"] == np.isin(reasons, [OUTCOME_LATE, OUTCOME_CLOSED]).sum()
    assert c["orphan_outcomes"] == (reasons == OUTCOME_ORPHAN).sum()
    assert c["evicted_outcomes"] == (reasons == OUTCOME_OVERFLOW).sum()
    for fx in effects:  # every joined outcome lies in its impression's window
        start = fx.closed.ts_ms[fx.joined.row]
        assert np.all((fx.joined.ts_ms >= start) & (fx.joined.ts_ms < start + cfg.window_ms))
        assert np.all(fx.closed.request_key[fx.joined.row] == fx.joined.request_key)
