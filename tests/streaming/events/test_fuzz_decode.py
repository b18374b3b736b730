"""Decoding is total: any bytes either decode to events every stage of ``step`` takes, or are
rejected with a code, once each; and nothing that decodes can break the learned state.

The generators and the checks are ``benchmarks.fuzz``'s (``python -m benchmarks fuzz`` runs a
million messages through them); here hypothesis drives them with a fixed seed, and adds its own
arbitrary bytes and JSON. Every example starts from the state of a worker that has learned from
a little valid traffic on both partitions and ends with every window closed, so the reward
model, the policy update and the log records all see what decoded.
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz import (
    LIMITS,
    YEAR_3000_MS,
    Fuzz,
    Message,
    Stream,
    fuzz_engine,
    messages,
    traffic,
    valid_impression,
    valid_outcome,
)
from streaming.core import init, join_counters, step
from streaming.events import MAX_DEPTH, decode_impressions, decode_outcomes

pytestmark = pytest.mark.slow  # thousands of generated messages through decode and step

ENGINE = fuzz_engine()  # built once: its jitted functions compile once for the whole module
WARM = Fuzz(engine=ENGINE).state
FUZZ = settings(
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fresh() -> Fuzz:
    """A worker that has learned from a little valid traffic (``Fuzz``'s start)."""
    return Fuzz(engine=ENGINE, state=WARM)


def cold() -> Fuzz:
    """A worker that has learned nothing (its first batch must decode something)."""
    return Fuzz(engine=ENGINE, state=init(ENGINE))


@settings(FUZZ, max_examples=2000)
@given(st.integers(0, 2**64 - 1), st.integers(1, 40))
def test_generated_messages_decode_and_step_without_raising(seed: int, n: int) -> None:
    """Valid, mutated, damaged, deep, huge and random messages on both topics (the generator
    is seeded from hypothesis's draw: a failure names its seed)."""
    fuzz = fresh()
    fuzz.feed(messages(random.Random(seed), n))
    fuzz.flush()
    assert fuzz.messages == n


json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities too: json.dumps writes them as tokens JSON lacks
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@st.composite
def arbitrary_messages(draw: st.DrawFn) -> Message:
    """hypothesis's own inputs: bytes, JSON of any shape, JSON nested to any depth, and valid
    events with one field replaced by any JSON value."""
    role = draw(st.sampled_from(["impressions", "outcomes"]))
    kind = draw(st.sampled_from(["bytes", "json", "deep", "field"]))
    if kind == "bytes":
        value = draw(st.binary(max_size=200))
    elif kind == "json":
        value = json.dumps(draw(json_values)).encode()
    elif kind == "deep":
        depth = draw(st.integers(0, 3_000))
        value = b"[" * depth + draw(st.binary(max_size=8)) + b"]" * draw(st.integers(0, depth))
    else:
        rng = random.Random(draw(st.integers(0, 2**32)))
        make = valid_impression if role == "impressions" else valid_outcome
        obj = make(rng, Stream(requests=["r1"]))
        obj[draw(st.sampled_from([*obj, "extra"]))] = draw(json_values)
        value = json.dumps(obj).encode()
    stamp = draw(st.sampled_from([-1, 0, 1_700_000_000_000]) | st.integers(-(2**63), 2**63 - 1))
    return Message(role, value, stamp, kind)


@settings(FUZZ, max_examples=1000)
@given(st.lists(arbitrary_messages(), min_size=1, max_size=12), st.integers(0, 2**64 - 1))
def test_arbitrary_bytes_and_json_decode_and_step_without_raising(
    extra: list[Message], seed: int
) -> None:
    """hypothesis's inputs among generated traffic (so windows close with them in the batch)."""
    fuzz = fresh()
    rng = random.Random(seed)
    batch = messages(rng, 8) + extra
    rng.shuffle(batch)
    fuzz.feed(batch)
    fuzz.flush()
    assert fuzz.messages == len(batch)


def nested(depth: int, field: str = "context") -> bytes:
    body = json.dumps(valid_impression(random.Random(0), Stream()))[:-1]
    return (body + f',"{field}":' + "[" * depth + "]" * depth + "}").encode()


def at_stack_depth(frames: int, fn: Any) -> Any:
    """``fn()`` called ``frames`` Python frames deeper than this one."""
    if frames <= 0:
        return fn()
    return at_stack_depth(frames - 1, fn)


@pytest.mark.parametrize("field", ["context", "extra", "policy"])
def test_the_verdict_on_a_nested_message_does_not_depend_on_the_callers_stack(field: str) -> None:
    """msgspec's recursion is bounded by Python's recursion limit, which counts the caller's
    frames too: a message near that depth could pass at the top of a stack and fail deep in
    one. ``too_deep`` is decided on the bytes (``MAX_DEPTH``), before msgspec goes deep."""
    raws = [nested(d, field) for d in (1, MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, 500, 5_000)]

    def codes() -> list[tuple[int, str]]:
        return [(r.row, r.code) for r in decode_impressions(raws, LIMITS)[1]]

    shallow = codes()
    deep = at_stack_depth(sys.getrecursionlimit() - 150, codes)
    assert shallow == deep
    assert [c for _, c in shallow][-3:] == ["too_deep"] * 3


def test_a_first_step_of_only_rejected_messages() -> None:
    imps, _ = decode_impressions([b"{"], LIMITS)
    outs, _ = decode_outcomes([], LIMITS)
    state, effects = step(ENGINE, init(ENGINE), imps, outs)
    assert effects.rejected_impressions.request_key.size == 0 and effects.closed == 0
    assert state.counters == {"closed": 0, "feedback_rows": 0}


def with_field(m: Message, **values: Any) -> Message:
    return Message(m.role, json.dumps(json.loads(m.value) | values).encode(), m.record_ts_ms, "bad")


def learned(batch: list[Message]) -> tuple[dict[str, Any], Any]:
    """Counters and policy after one step with ``batch`` and every window closed."""
    fuzz = cold()
    fuzz.feed(batch, partitions=1)
    fuzz.flush()
    return {**fuzz.state.counters, **join_counters(fuzz.state)}, fuzz.state.policy


def test_the_three_crash_loops_are_rejects_and_leave_learning_as_without_them() -> None:
    """A deeply nested impression, a propensity of 1e-50 and two impressions stamped in the
    year 3000 each get their own code, and the rest is learned as if they had never been sent
    (their outcomes stay: orphans either way)."""
    good = traffic(60)
    imps = [i for i, m in enumerate(good) if m.role == "impressions"]
    tiny, future = imps[10], imps[20:22]
    n_shown = len(json.loads(good[tiny].value)["shown"])
    replaced = {
        tiny: with_field(good[tiny], propensities=[1e-50] * n_shown),
        **{i: with_field(good[i], ts=YEAR_3000_MS) for i in future},
    }
    mixed = [replaced.get(i, m) for i, m in enumerate(good)]
    mixed.insert(5, Message("impressions", nested(20_000), good[4].record_ts_ms, "deep"))
    fuzz = cold()
    fuzz.feed(mixed, partitions=1)
    fuzz.flush()
    assert fuzz.codes == {"too_deep": 1, "low_propensity": 1, "ts_ahead_of_record": 2}
    want_counters, want_policy = learned([m for i, m in enumerate(good) if i not in replaced])
    got_counters = {**fuzz.state.counters, **join_counters(fuzz.state)}
    assert got_counters == want_counters
    assert got_counters["closed"] == len(imps) - 3
    for a, b in zip(fuzz.state.policy, want_policy, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_without_the_record_bound_year_3000_events_make_on_time_events_late() -> None:
    """Why the bound exists: the same stream with the record timestamps unknown accepts the
    year-3000 events, whose time moves the watermark, and later on-time events are late."""
    good = traffic(40)
    first = next(i for i, m in enumerate(good) if m.role == "impressions" and i >= 20)
    stamped = [*good[:first], with_field(good[first], ts=YEAR_3000_MS), *good[first + 1 :]]
    unknown = [Message(m.role, m.value, -1, m.kind) for m in stamped]
    state = init(ENGINE)
    for batch in (unknown[:30], unknown[30:]):  # the year-3000 event lands in the first step
        imps, _ = decode_impressions([m.value for m in batch if m.role == "impressions"], LIMITS)
        outs, _ = decode_outcomes([m.value for m in batch if m.role == "outcomes"], LIMITS)
        state, _ = step(ENGINE, state, imps, outs)
    late = join_counters(state)
    assert sum(v for k, v in late.items() if k.startswith("late")) > 0, late
    fuzz = cold()
    fuzz.feed(stamped[:30], partitions=1)
    fuzz.feed(stamped[30:], partitions=1)
    counts = join_counters(fuzz.state)
    assert fuzz.codes == {"ts_ahead_of_record": 1}
    assert sum(v for k, v in counts.items() if k.startswith("late")) == 0, counts
