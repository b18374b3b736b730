"""The event contract: valid events decode to columns; every malformed case has its documented code."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming import events as ev
from streaming.events import DecodeError, Limits, decode_one
from streaming.events.contract import key64_numpy

T = TypeVar("T")

LIM = Limits(d_user=2, d_track=2, max_candidates=4, max_message_bytes=2048)
WIDE = dataclasses.replace(LIM, max_feature_norm=math.inf)
"""``LIM`` without the bound on feature norms: float32's whole range decodes."""


def impression(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema": "impression/1",
        "request_id": "r1",
        "user_id": "u1",
        "surface": "home",
        "ts": 1000,
        "context": [0.1, 0.2],
        "candidates": ["t1", "t2", "t3"],
        "candidate_features": [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]],
        "shown": [2, 0],
        "propensities": [0.5, 0.25],
        "policy": "uniform",
        "policy_version": "1",
    }
    base.update(over)
    return base


def b64(values: Any, dtype: str = "<f4") -> str:
    """Standard base64 of ``values`` as little-endian float32 (or ``dtype``), row-major."""
    return base64.b64encode(np.asarray(values, dtype=dtype).tobytes()).decode()


def impression2(**over: Any) -> dict[str, Any]:
    """The same impression as ``impression()`` with base64 float32 features (schema 2)."""
    base = impression(schema="impression/2")
    base["context"] = b64(base["context"])
    base["candidate_features"] = b64(base["candidate_features"])
    base.update(over)
    return base


def outcome(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema": "outcome/1",
        "request_id": "r1",
        "user_id": "u1",
        "track_id": "t3",
        "position": 0,
        "ts": 2000,
        "ms_played": 45_000,
        "track_duration_ms": 200_000,
        "reason_end": "fwdbtn",
    }
    base.update(over)
    return base


def raw(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


def drop(obj: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != key}


def nested(depth: int, field: str = "context", schema: str = "impression/1") -> bytes:
    """A message with ``depth`` arrays nested in ``field`` (the object itself is one more)."""
    inner = b"[" * depth + b"]" * depth
    return b'{"schema":"%s","%s":%s}' % (schema.encode(), field.encode(), inner)


IMPRESSION_CASES: list[tuple[str, bytes, str]] = [
    ("too large", raw(impression(surface="x" * 3000)), "too_large"),
    ("invalid utf-8", b'{"schema": "impression/1", "request_id": "\xff\xfe"}', "invalid_utf8"),
    ("not json", b"{not json", "invalid_json"),
    ("trailing data", raw(impression()) + b" {}", "invalid_json"),
    ("a json array", b"[1, 2]", "unknown_schema"),
    ("no schema", raw(drop(impression(), "schema")), "unknown_schema"),
    ("future schema", raw(impression(schema="impression/3")), "unknown_schema"),
    ("missing field", raw(drop(impression(), "user_id")), "missing_field"),
    ("extra field", raw(impression(extra=1)), "unknown_field"),
    ("wrong type", raw(impression(ts="1000")), "wrong_type"),
    ("bool for float", raw(impression(context=[True, 0.2])), "wrong_type"),
    ("NaN literal", raw(impression()).replace(b"0.1", b"NaN"), "invalid_json"),
    ("infinite number", raw(impression()).replace(b"0.1", b"1e999"), "non_finite"),
    ("negative ts", raw(impression(ts=-1)), "bad_value"),
    ("huge ts", raw(impression(ts=2**70)), "bad_value"),
    ("empty request id", raw(impression(request_id="")), "bad_value"),
    (
        "no candidates",
        raw(impression(candidates=[], candidate_features=[], shown=[], propensities=[])),
        "empty_candidates",
    ),
    ("nothing shown", raw(impression(shown=[], propensities=[])), "empty_candidates"),
    (
        "too many candidates",
        raw(impression(candidates=list("abcde"), candidate_features=[[0.0, 0.0]] * 5)),
        "bad_shape",
    ),
    ("context size", raw(impression(context=[0.1])), "bad_shape"),
    ("feature rows", raw(impression(candidate_features=[[1.0, 0.0]])), "bad_shape"),
    (
        "feature size",
        raw(impression(candidate_features=[[1.0], [0.0, 1.0], [0.5, 0.5]])),
        "bad_shape",
    ),
    ("propensity count", raw(impression(propensities=[0.5])), "bad_shape"),
    ("shown out of range", raw(impression(shown=[3, 0])), "bad_shown"),
    ("shown repeated", raw(impression(shown=[1, 1])), "bad_shown"),
    ("float32 overflow", raw(impression(context=[1e39, 0.0])), "non_finite"),
    ("propensity zero", raw(impression(propensities=[0.0, 0.5])), "bad_propensity"),
    ("propensity above one", raw(impression(propensities=[1.5, 0.5])), "bad_propensity"),
    ("negative propensity", raw(impression(propensities=[-0.1, 0.5])), "bad_propensity"),
    ("nested in a known field", nested(500), "too_deep"),
    ("nested in an unknown field", nested(500, "extra"), "too_deep"),
    ("nested just too deep", nested(ev.MAX_DEPTH), "too_deep"),
    ("nested and not UTF-8", nested(500) + b"\xff", "invalid_utf8"),
    ("nested and cut short", nested(500)[:700], "too_deep"),
    ("propensity 0 in float32", raw(impression(propensities=[0.5, 1e-50])), "low_propensity"),
    (
        "propensity below the minimum",
        raw(impression(propensities=[9.99e-7, 0.5])),
        "low_propensity",
    ),
    ("large context", raw(impression(context=[10.0, 0.5])), "large_features"),
    (
        "large candidate features",
        raw(impression(candidate_features=[[1.0, 0.0], [0.0, 1.0], [8.0, -6.01]])),
        "large_features",
    ),
    ("huge context", raw(impression(context=[3e38, 3e38])), "large_features"),
    (
        "inf and large",
        raw(
            impression(
                context=[1e39, 0.0],
                candidates=["a"],
                candidate_features=[[99.0, 0.0]],
                shown=[0],
                propensities=[1.0],
            )
        ),
        "non_finite",
    ),
]

BINARY_CASES: list[tuple[str, bytes, str]] = [
    ("future schema, binary", raw(impression2(schema="impression/3")), "unknown_schema"),
    ("base64 under schema 1", raw(impression2(schema="impression/1")), "wrong_type"),
    (
        "bad base64 under schema 1",
        raw(impression(context="not base64!")),
        "wrong_type",
    ),
    ("number for base64", raw(impression2(context=5)), "wrong_type"),
    ("null for base64", raw(impression2(candidate_features=None)), "wrong_type"),
    ("base64 with a space", raw(impression2(context="zczM PczMTD4=")), "bad_value"),
    ("base64 with a newline", raw(impression2(context=b64([0.1, 0.2]) + "\n")), "bad_value"),
    ("url-safe base64", raw(impression2(context="-_-_-_-_-_-_")), "bad_value"),
    ("base64 unpadded", raw(impression2(context=b64([0.1, 0.2]).rstrip("="))), "bad_value"),
    ("base64 non-ascii", raw(impression2(context="zczMPczMTD4é")), "bad_value"),
    ("base64 data after padding", raw(impression2(context="AAA=AAA=")), "bad_value"),
    ("context bytes", raw(impression2(context=b64([0.1, 0.2, 0.3]))), "bad_shape"),
    ("context float64", raw(impression2(context=b64([0.1, 0.2], "<f8"))), "bad_shape"),
    (
        "context odd bytes",
        raw(impression2(context=base64.b64encode(b"12345").decode())),
        "bad_shape",
    ),
    ("empty context", raw(impression2(context="")), "bad_shape"),
    ("feature bytes", raw(impression2(candidate_features=b64([[1.0, 0.0]] * 2))), "bad_shape"),
    (
        "feature width",
        raw(impression2(candidate_features=b64([[1.0, 0.0, 0.0]] * 3))),
        "bad_shape",
    ),
    ("NaN float32", raw(impression2(context=b64([0.1, float("nan")]))), "non_finite"),
    (
        "inf float32 feature",
        raw(impression2(candidate_features=b64([[1.0, 0.0], [0.0, float("-inf")], [0.5, 0.5]]))),
        "non_finite",
    ),
    (  # their float64 sum is NaN: numpy's "invalid value" warning must not escape the decoder
        "+inf and -inf in one context",
        raw(impression2(context=b64([float("inf"), float("-inf")]))),
        "non_finite",
    ),
    ("NaN in JSON row, binary context", raw(impression2(context=[0.1, 1e39])), "non_finite"),
    (  # numpy's casts of a signalling NaN raise "invalid value": no warning may escape
        "signalling NaN float32",
        raw(impression2(context=base64.b64encode(b"\x01\x00\xa0\xff" * 2).decode())),
        "non_finite",
    ),
    ("too many candidates, binary", raw(impression2(candidates=list("abcde"))), "bad_shape"),
    ("shown out of range, binary", raw(impression2(shown=[3])), "bad_shape"),
]

OUTCOME_CASES: list[tuple[str, bytes, str]] = [
    ("not json", b"\x00\x01", "invalid_json"),
    ("old schema", raw(outcome(schema="outcome/0")), "unknown_schema"),
    ("missing ms_played", raw(drop(outcome(), "ms_played")), "missing_field"),
    ("extra field", raw(outcome(skip_1=True)), "unknown_field"),
    ("float ms", raw(outcome(ms_played=1.5)), "wrong_type"),
    ("saved as string", raw(outcome(saved="yes")), "wrong_type"),
    ("negative ms_played", raw(outcome(ms_played=-5)), "bad_value"),
    ("zero duration", raw(outcome(track_duration_ms=0)), "bad_value"),
    ("negative duration", raw(outcome(track_duration_ms=-200)), "bad_value"),
    ("ms_played > 10x duration", raw(outcome(ms_played=2_000_001)), "bad_value"),
    ("negative position", raw(outcome(position=-1)), "bad_value"),
    ("position beyond int32", raw(outcome(position=2**31)), "bad_value"),
    ("unknown reason", raw(outcome(reason_end="teleported")), "unknown_reason_end"),
    ("nested in a known field", nested(500, "ts", "outcome/1"), "too_deep"),
    (
        "nested objects",
        b'{"schema":"outcome/1","a":' + b'{"b":' * 40 + b"1" + b"}" * 41,
        "too_deep",
    ),
]

AHEAD = 60_000  # Limits().max_event_ahead_ms
RECORD_TS_CASES: list[tuple[str, bytes, int, str | None]] = [
    # (name, message, its record's timestamp, code or None for accepted)
    (
        "impression ts ahead",
        raw(impression(ts=10_000_000)),
        10_000_000 - AHEAD - 1,
        "ts_ahead_of_record",
    ),
    ("impression ts at the bound", raw(impression(ts=10_000_000)), 10_000_000 - AHEAD, None),
    ("impression ts behind", raw(impression(ts=10_000_000)), 2**62, None),
    ("impression record ts unknown", raw(impression(ts=2**53)), -1, None),
    (
        "impression in the year 3000",
        raw(impression(ts=32_503_680_000_000)),
        1_700_000_000_000,
        "ts_ahead_of_record",
    ),
    ("outcome ts ahead", raw(outcome(ts=5_000_000)), 1_000, "ts_ahead_of_record"),
    ("outcome ts at the bound", raw(outcome(ts=AHEAD)), 0, None),
    ("outcome record ts unknown", raw(outcome(ts=2**53)), -1, None),
    ("outcome ts bad before ahead", raw(outcome(ts=2**53 + 1)), 0, "bad_value"),
]


@pytest.mark.parametrize(
    ("name", "data", "code"), IMPRESSION_CASES, ids=[c[0] for c in IMPRESSION_CASES]
)
def test_malformed_impression_has_documented_code(name: str, data: bytes, code: str) -> None:
    with pytest.raises(DecodeError) as info:
        ev.decode_impression(data, LIM)
    assert info.value.code == code, info.value.reason
    assert info.value.raw == data
    assert info.value.code in ev.ERROR_CODES
    assert info.value.reason


@pytest.mark.parametrize(("name", "data", "code"), BINARY_CASES, ids=[c[0] for c in BINARY_CASES])
def test_malformed_binary_impression_has_documented_code(name: str, data: bytes, code: str) -> None:
    with pytest.raises(DecodeError) as info:
        ev.decode_impression(data, LIM)
    assert info.value.code == code, info.value.reason
    assert info.value.raw == data
    # The batch decoder agrees, and sends the message to the dead-letter path with its reason.
    batch, rejects = ev.decode_impressions([raw(impression2()), data, raw(impression())], LIM)
    assert batch.n == 2
    assert [(r.row, r.code, r.reason, r.raw) for r in rejects] == [
        (1, code, info.value.reason, data)
    ]


@pytest.mark.parametrize(("name", "data", "code"), OUTCOME_CASES, ids=[c[0] for c in OUTCOME_CASES])
def test_malformed_outcome_has_documented_code(name: str, data: bytes, code: str) -> None:
    with pytest.raises(DecodeError) as info:
        ev.decode_outcome(data, LIM)
    assert info.value.code == code, info.value.reason
    assert info.value.raw == data


@pytest.mark.parametrize(
    ("name", "data", "record_ts", "code"), RECORD_TS_CASES, ids=[c[0] for c in RECORD_TS_CASES]
)
def test_event_time_is_bounded_by_the_record_timestamp(
    name: str, data: bytes, record_ts: int, code: str | None
) -> None:
    """One by one and in a batch (column path and one-by-one path), with and without rows
    around it: the same verdict, code and reason."""
    is_impression = name.startswith("impression")
    one = ev.decode_impression if is_impression else ev.decode_outcome
    many = ev.decode_impressions if is_impression else ev.decode_outcomes
    good = GOOD_IMPRESSIONS if is_impression else GOOD_OUTCOMES
    reason = ""
    if code is None:
        one(data, LIM, record_ts)
    else:
        with pytest.raises(DecodeError) as info:
            one(data, LIM, record_ts)
        assert info.value.code == code, info.value.reason
        reason = info.value.reason
    if code in (None, "ts_ahead_of_record"):
        one(data, LIM)  # without a record timestamp: no bound
    raws = [*good[:2], data, *good[2:]]
    stamps = [0, -1, record_ts, *[2**40] * len(good[2:])]
    batch, rejects = many(raws, LIM, np.array(stamps, np.int64))
    assert batch.n == len(raws) - (code is not None)
    if code is not None:
        assert [(r.row, r.code, r.reason) for r in rejects] == [(2, code, reason)]
    broken = [*raws, b"{"]  # a message msgspec refuses: every message through the same checks
    _, rejects = many(broken, LIM, [*stamps, 0])
    assert [r.code for r in rejects] == ([code] if code else []) + ["invalid_json"]
    with pytest.raises(ValueError, match="record timestamps"):
        many(raws, LIM, stamps[:-1])


def test_every_documented_code_is_exercised() -> None:
    seen = {c for _, _, c in IMPRESSION_CASES + OUTCOME_CASES}
    seen |= {c for *_, c in RECORD_TS_CASES if c is not None}
    assert seen == set(ev.ERROR_CODES)
    assert all(f"``{c}``" in (ev.__doc__ or "") for c in ev.ERROR_CODES)


def test_batch_decoding_keeps_good_rows_and_reports_bad_ones_in_order() -> None:
    raws = [
        raw(impression(request_id="a")),
        b"{",
        raw(impression(request_id="b", shown=[1], propensities=[1.0])),
    ]
    batch, rejects = ev.decode_impressions(raws, LIM)
    assert list(batch.request_id) == ["a", "b"]
    assert batch.context.shape == (2, 2) and batch.context.dtype == np.float32
    assert batch.candidate_features.shape == (2, 3, 2)
    assert batch.shown.tolist() == [[2, 0], [1, -1]]
    assert batch.shown_mask.tolist() == [[True, True], [True, False]]
    assert batch.propensity.tolist() == [[0.5, 0.25], [1.0, 1.0]]
    assert [(r.row, r.code, r.raw) for r in rejects] == [(1, "invalid_json", b"{")]
    assert batch.request_key[0] == ev.key64(["a"])[0]


def test_outcome_batch_columns_and_censoring() -> None:
    batch, rejects = ev.decode_outcomes(
        [raw(outcome()), raw(outcome(reason_end="logout", saved=True))], LIM
    )
    assert not rejects
    assert batch.ms_played.tolist() == [45_000, 45_000]
    assert batch.reason_end.tolist() == [
        ev.REASONS_END.index("fwdbtn"),
        ev.REASONS_END.index("logout"),
    ]
    assert batch.censored.tolist() == [False, True]
    assert batch.saved.tolist() == [False, True]


def test_encode_round_trips() -> None:
    imp = ev.decode_impression(raw(impression()), LIM)
    assert ev.decode_impression(ev.encode(imp), LIM) == imp
    out = ev.decode_outcome(raw(outcome()), LIM)
    assert ev.decode_outcome(ev.encode(out), LIM) == out


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def mutated_impressions() -> st.SearchStrategy[bytes]:
    keys = list(impression())
    return st.builds(
        lambda k, v, dropit: raw(drop(impression(), k) if dropit else impression(**{k: v})),
        st.sampled_from(keys),
        json_values,
        st.booleans(),
    )


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300), mutated_impressions()))
def test_fuzz_impression_decoder_returns_valid_or_documented_error(data: bytes) -> None:
    try:
        e = ev.decode_impression(data, LIM)
    except DecodeError as err:
        assert err.code in ev.ERROR_CODES and err.raw == data
        return
    batch = ev.impressions_to_batch([e], LIM)
    assert np.isfinite(batch.context).all() and np.isfinite(batch.candidate_features).all()
    assert ((batch.propensity > 0) & (batch.propensity <= 1)).all()


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.builds(
            lambda k, v: raw(outcome(**{k: v})), st.sampled_from(list(outcome())), json_values
        ),
    )
)
def test_fuzz_outcome_decoder_returns_valid_or_documented_error(data: bytes) -> None:
    try:
        o = ev.decode_outcome(data, LIM)
    except DecodeError as err:
        assert err.code in ev.ERROR_CODES and err.raw == data
        return
    batch = ev.outcomes_to_batch([o])
    assert batch.ms_played[0] >= 0 and batch.duration_ms[0] > 0


def _key64_reference(values: list[str]) -> list[int]:
    """FNV-1a over each id's UTF-8 bytes, then the splitmix64 finaliser, one id at a time."""
    mask = 2**64 - 1
    out = []
    for v in values:
        h = 0xCBF29CE484222325
        for byte in v.encode():
            h = ((h ^ byte) * 0x100000001B3) & mask
        h ^= h >> 30
        h = (h * 0xBF58476D1CE4E5B9) & mask
        h ^= h >> 27
        h = (h * 0x94D049BB133111EB) & mask
        h ^= h >> 31
        out.append(h)
    return out


@pytest.mark.parametrize(
    "values",
    [
        ["t1", "t1", "t22"],
        [""],
        ["", "a", ""],
        ["", ""],
        ["a\x00"],
        ["a\x00b", "\x00"],
        ["é", "t1"],
        ["日本", ""],
        ["t456", "t1568", "t6", "track-000123"],
    ],
)
def test_key64_hashes_the_utf8_bytes_of_each_id(values: list[str]) -> None:
    assert ev.key64(values).tolist() == _key64_reference(values)
    assert key64_numpy(values).tolist() == _key64_reference(values)


def test_key64_compiled_and_numpy_agree_on_any_input_form() -> None:
    """The compiled twin (``streaming.kafka._native.key64``) where built, on every form of input."""
    ids = ["t1", "é", "", "a\x00b"]
    want = _key64_reference(ids)
    for form in (ids, tuple(ids), np.array(ids, dtype=np.str_)):
        got = ev.key64(form)
        assert got.dtype == np.uint64 and got.tolist() == want
        got[0] = 0  # a writable array of its own
    assert ev.key64([]).dtype == np.uint64 and ev.key64([]).size == 0
    for fn in (ev.key64, key64_numpy):
        with pytest.raises(UnicodeEncodeError):
            fn(["ok", "\ud800"])  # a lone surrogate has no UTF-8 form


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.text(max_size=12) | st.text(st.characters(max_codepoint=127), max_size=12),
        min_size=1,
        max_size=20,
    )
)
def test_key64_equals_the_reference_on_any_text(values: list[str]) -> None:
    assert ev.key64(values).tolist() == _key64_reference(values)
    assert key64_numpy(values).tolist() == _key64_reference(values)


def test_empty_batches_decode_to_empty_columns() -> None:
    imps, _ = ev.decode_impressions([], LIM)
    outs, _ = ev.decode_outcomes([], LIM)
    assert imps.n == 0 and outs.n == 0
    assert outs.request_key.dtype == np.uint64 and outs.reason_end.dtype == np.int8


# --- the two feature forms: base64 float32 (impression/2) and JSON numbers ------------------

finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def float32_impressions(draw: st.DrawFn) -> dict[str, Any]:
    """A valid JSON-form impression whose features are all float32-representable."""
    k = draw(st.integers(1, LIM.max_candidates))
    shown = draw(st.permutations(range(k)))[: draw(st.integers(1, k))]
    return impression(
        request_id=draw(st.text("abc", min_size=1, max_size=3)),
        context=draw(st.lists(finite_f32, min_size=2, max_size=2)),
        candidates=[f"t{i}" for i in range(k)],
        candidate_features=draw(
            st.lists(st.lists(finite_f32, min_size=2, max_size=2), min_size=k, max_size=k)
        ),
        shown=shown,
        propensities=[1.0 / (j + 1) for j in range(len(shown))],
    )


def in_form(obj: dict[str, Any], form: str) -> dict[str, Any]:
    """``obj`` with its context and/or candidate features as base64 float32 (schema 2)."""
    out = dict(obj)
    if form != "json":
        out["schema"] = "impression/2"
    if form in ("binary", "binary context"):
        out["context"] = b64(obj["context"])
    if form in ("binary", "binary features"):
        out["candidate_features"] = b64(obj["candidate_features"])
    return out


def assert_same_batch(a: ev.ImpressionBatch, b: ev.ImpressionBatch) -> None:
    for name in ev.ImpressionBatch._fields:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)


FORMS = ["json", "json under schema 2", "binary", "binary context", "binary features"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(float32_impressions(), st.sampled_from(FORMS)), min_size=1, max_size=6))
def test_json_and_binary_features_decode_to_the_same_batch(
    cases: list[tuple[dict[str, Any], str]],
) -> None:
    as_json = [raw(obj) for obj, _ in cases]
    mixed = [raw(in_form(obj, form)) for obj, form in cases]
    a, rejects_a = ev.decode_impressions(as_json, WIDE)
    b, rejects_b = ev.decode_impressions(mixed, WIDE)
    assert rejects_a == [] and rejects_b == []
    assert_same_batch(a, b)
    # One at a time, and through the public batch builder, the forms agree too.
    for j, m in zip(as_json, mixed, strict=True):
        assert_same_batch(
            ev.impressions_to_batch([ev.decode_impression(j, WIDE)], WIDE),
            ev.impressions_to_batch([ev.decode_impression(m, WIDE)], WIDE),
        )
    # ``with_features`` is what encore's producers use to write the binary form.
    rewritten = [
        ev.encode(ev.with_features(ev.decode_impression(j, WIDE), "float32")) for j in as_json
    ]
    assert all(r.startswith(b'{"schema":"impression/2"') for r in rewritten)
    assert_same_batch(a, ev.decode_impressions(rewritten, WIDE)[0])


def test_binary_features_are_little_endian_float32_row_major() -> None:
    e = ev.decode_impression(raw(impression2()), LIM)
    assert e.context == np.array([0.1, 0.2], "<f4").tobytes()
    assert isinstance(e.candidate_features, bytes) and len(e.candidate_features) == 3 * 2 * 4
    batch = ev.impressions_to_batch([e], LIM)
    assert batch.context.tolist() == np.array([[0.1, 0.2]], np.float32).tolist()
    assert batch.candidate_features[0, 2].tolist() == [0.5, 0.5]
    assert batch.candidate_features.flags.writeable and batch.context.flags.writeable
    assert ev.with_features(e, "json") is e
    assert ev.decode_impression(ev.encode(e), LIM) == e  # bytes travel as base64 again


def test_batch_rejects_non_finite_rows_in_order_and_pads_to_the_rest() -> None:
    nan_row = [[0.0, 0.0], [0.0, 0.0], [float("nan"), 0.0], [0.0, 0.0]]
    raws = [
        raw(
            impression2(
                request_id="a",
                candidates=["t1"],
                candidate_features=b64([[1.0, 2.0]]),
                shown=[0],
                propensities=[1.0],
            )
        ),
        raw(
            impression2(
                request_id="b",
                candidates=list("wxyz"),
                candidate_features=b64(nan_row),
                shown=[0],
                propensities=[1.0],
            )
        ),
        b"{",
        raw(impression(request_id="c", context=[0.5, 1e39])),
        raw(impression(request_id="d")),
    ]
    batch, rejects = ev.decode_impressions(raws, LIM)
    assert batch.request_id.tolist() == ["a", "d"]
    assert batch.candidate_features.shape == (2, 3, 2)  # padded to d's 3, not b's 4
    assert batch.candidate_mask.tolist() == [[True, False, False], [True, True, True]]
    assert batch.candidate_features[0].tolist() == [[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]
    assert [(r.row, r.code) for r in rejects] == [
        (1, "non_finite"),
        (2, "invalid_json"),
        (3, "non_finite"),
    ]
    assert "candidate 2 feature 0 is nan" in rejects[0].reason
    assert "context feature 1 is inf" in rejects[2].reason
    assert [r.raw for r in rejects] == [raws[1], raws[2], raws[3]]


def test_simulated_listeners_encode_the_same_batch_either_way_at_a_third_of_the_size() -> None:
    from streaming.sim import traffic
    from streaming.sim.simulator import SimConfig, Simulator

    sim = Simulator(SimConfig(seed=3, n_users=50, n_tracks=100))
    req = sim.requests(40)
    sl = sim.log_slates(req, 5)
    sizes: dict[str, float] = {}
    batches = []
    for form in ("json", "float32"):
        imps = traffic.impressions(req, sl.shown, sl.propensity, policy="p", feature_encoding=form)
        raws = [ev.encode(e) for e in imps]
        sizes[form] = float(np.mean([len(r) for r in raws]))
        batch, rejects = ev.decode_impressions(raws)
        assert rejects == []
        batches.append(batch)
    assert_same_batch(*batches)
    np.testing.assert_array_equal(batches[1].candidate_features, req.candidate_features)
    assert sizes["float32"] * 3 < sizes["json"], sizes


def cut_and_junk(obj: dict[str, Any], cut: int, junk: bytes) -> bytes:
    return raw(obj)[:cut] + junk


def with_field(key: str, value: str) -> bytes:
    return raw(impression2(**{key: value}))


binary_values = st.builds(
    cut_and_junk,
    float32_impressions().map(lambda o: in_form(o, "binary")),
    st.integers(0, 400),
    st.binary(max_size=8),
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        binary_values,
        st.builds(
            with_field,
            st.sampled_from(["context", "candidate_features"]),
            st.text(max_size=40)
            | st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
        ),
    )
)
def test_fuzz_binary_impressions_decode_or_fail_with_a_documented_code(data: bytes) -> None:
    try:
        e = ev.decode_impression(data, LIM)
    except DecodeError as err:
        assert err.code in ev.ERROR_CODES and err.raw == data
        batch, rejects = ev.decode_impressions([data], LIM)
        assert batch.n == 0 and [(r.code, r.reason) for r in rejects] == [(err.code, err.reason)]
        return
    batch = ev.impressions_to_batch([e], LIM)
    assert np.isfinite(batch.context).all() and np.isfinite(batch.candidate_features).all()
    assert_same_batch(batch, ev.decode_impressions([data], LIM)[0])


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(-3e38, 3e38, allow_nan=False, allow_infinity=False), min_size=8, max_size=8)
)
def test_writing_float32_rounds_any_double_as_the_decoder_rounds_json(values: list[float]) -> None:
    """What the rerank service logs: a client's float64 features, written as float32, decode to
    the batch their JSON numbers decode to (both round each double to the nearest float32)."""
    obj = impression(
        context=values[:2],
        candidates=["a", "b", "c"],
        candidate_features=[values[2:4], values[4:6], values[6:8]],
    )
    e = ev.decode_impression(raw(obj), WIDE)
    assert_same_batch(
        ev.decode_impressions([raw(obj)], WIDE)[0],
        ev.decode_impressions([ev.encode(ev.with_features(e, "float32"))], WIDE)[0],
    )


# ------------------------------------------------------------------ batch outcome decoding
def outcomes_reference(
    raws: list[bytes], limits: Limits = LIM
) -> tuple[ev.OutcomeBatch, list[tuple[int, str, str, bytes]]]:
    """What ``decode_outcomes`` must return: ``decode_outcome`` on each message on its own."""
    good, rejects = one_by_one(ev.decode_outcome, raws, limits)
    return ev.outcomes_to_batch(good), rejects


def one_by_one(
    decode: Callable[[bytes, Limits], T], raws: list[bytes], limits: Limits
) -> tuple[list[T], list[tuple[int, str, str, bytes]]]:
    """Each message through ``decode`` alone: the good events, and ``(row, code, reason, raw)``
    for each reject."""
    good: list[T] = []
    rejects: list[tuple[int, str, str, bytes]] = []
    for i, data in enumerate(raws):
        try:
            good.append(decode(data, limits))
        except DecodeError as err:
            rejects.append((i, err.code, err.reason, err.raw))
    return good, rejects


def assert_same_outcomes(raws: list[bytes], limits: Limits = LIM) -> ev.OutcomeBatch:
    batch, rejects = ev.decode_outcomes(raws, limits)
    want, want_rejects = outcomes_reference(raws, limits)
    assert [(r.row, r.code, r.reason, r.raw) for r in rejects] == want_rejects
    for name, a, b in zip(ev.OutcomeBatch._fields, batch, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.tobytes() == b.tobytes(), name
    return batch


GOOD_OUTCOMES = [
    raw(outcome(request_id=f"r{i}", user_id=f"user-{i}", track_id=f"t{i}", position=i % 5))
    for i in range(6)
]


@pytest.mark.parametrize(("name", "data", "code"), OUTCOME_CASES, ids=[c[0] for c in OUTCOME_CASES])
def test_batch_outcomes_reject_one_bad_message_among_good_ones(
    name: str, data: bytes, code: str
) -> None:
    raws = [*GOOD_OUTCOMES[:3], data, *GOOD_OUTCOMES[3:]]
    batch = assert_same_outcomes(raws)
    assert batch.n == 6
    _, rejects = ev.decode_outcomes(raws, LIM)
    assert [(r.row, r.code) for r in rejects] == [(3, code)]


SMUGGLING = [
    # pieces that only make valid JSON when joined with commas or brackets around them
    raw(outcome())[:-1] + b",",
    b'"x": 1}',
    raw(outcome()) + b"," + raw(outcome(request_id="r2")),
    b"[" + raw(outcome()) + b"]",
    raw(outcome()) + b"]",
    b"[" + raw(outcome()),
    raw(outcome())[:40],
    raw(outcome())[40:],
    b"",
    b",",
    b"]",
    b"  " + raw(outcome()) + b"\n",  # whitespace around one object is valid on its own
    raw(outcome(track_id="a],[b,c")),  # brackets and commas inside a string are just text
    raw(outcome(user_id='{"schema":"outcome/1"},')),
]


def test_batch_outcomes_cannot_be_fooled_by_commas_and_brackets() -> None:
    batch = assert_same_outcomes([*SMUGGLING, *GOOD_OUTCOMES])
    assert batch.n == 3 + len(GOOD_OUTCOMES)


def test_batch_outcomes_edge_values_match_one_by_one() -> None:
    big = 2**53
    raws = [
        raw(outcome(track_duration_ms=2**50, ms_played=10 * 2**50)),  # past the exact-ratio check
        raw(outcome(track_duration_ms=big, ms_played=10 * big)),
        raw(outcome(track_duration_ms=big + 1)),
        raw(outcome(track_duration_ms=3, ms_played=30)),
        raw(outcome(track_duration_ms=3, ms_played=31)),
        raw(outcome(ts=big)),
        raw(outcome(ts=big + 1)),
        raw(outcome(position=2**31 - 1)),
        raw(outcome(position=2**31)),
        raw(outcome(ms_played=2**64 - 1)),  # beyond int64: the whole batch one by one
        raw(outcome(saved=True, liked=True, added_to_playlist=True)),
        raw(outcome(request_id="")),
        raw(outcome(user_id="", schema="outcome/2")),
        raw(outcome(reason_end="logout", user_id="ü-long-name" * 3)),
        raw(outcome(surface="x" * 3000)),
        raw(outcome(request_id="x" * 3000)),  # valid but too large
        *GOOD_OUTCOMES,
    ]
    assert_same_outcomes(raws)
    assert_same_outcomes(raws[:9] + raws[10:])  # without the int64 overflow: the column path
    assert_same_outcomes(raws[:1])  # one good message past the exact-ratio check
    assert_same_outcomes([raw(outcome(request_id="x" * 3000))])


def test_batch_outcomes_of_nothing_or_only_bad_messages() -> None:
    assert assert_same_outcomes([]).n == 0
    assert assert_same_outcomes([b"{", raw(outcome(position=-1))]).n == 0


EDGE_INTEGERS = [
    v + d
    for v in (0, 3, 2**31, 2**49, 2**50, 2**53, 2**63, 2**64 - 2, 200_000, 2_000_000)
    for d in (-1, 0, 1)
]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from([*GOOD_OUTCOMES, *SMUGGLING, *(c[1] for c in OUTCOME_CASES)]),
            st.builds(
                lambda k, v: raw(outcome(**{k: v})), st.sampled_from(list(outcome())), json_values
            ),
            st.builds(  # integers at every boundary the checks (and int64) have
                lambda k, v: raw(outcome(**{k: v})),
                st.sampled_from(["position", "ts", "ms_played", "track_duration_ms"]),
                st.sampled_from(EDGE_INTEGERS),
            ),
            st.binary(max_size=60),
        ),
        max_size=12,
    )
)
def test_fuzz_batch_outcomes_equal_one_by_one(raws: list[bytes]) -> None:
    assert_same_outcomes(raws)


# --- batch impressions: cleared on the batch's columns, the rest one by one ------------------


def impressions_reference(
    raws: list[bytes], limits: Limits = LIM
) -> tuple[ev.ImpressionBatch, list[tuple[int, str, str, bytes]]]:
    """What ``decode_impressions`` must return: ``decode_impression`` on each message alone."""
    good, rejects = one_by_one(ev.decode_impression, raws, limits)
    return ev.impressions_to_batch(good, limits), rejects


def assert_same_impressions(raws: list[bytes], limits: Limits = LIM) -> ev.ImpressionBatch:
    batch, rejects = ev.decode_impressions(raws, limits)
    want, want_rejects = impressions_reference(raws, limits)
    assert [(r.row, r.code, r.reason, r.raw) for r in rejects] == want_rejects
    assert_same_batch(batch, want)
    return batch


GOOD_IMPRESSIONS = [
    raw(impression(request_id="a")),
    raw(in_form(impression(request_id="b", shown=[1], propensities=[1.0]), "binary")),
    raw(in_form(impression(request_id="c"), "binary features")),
    raw(
        impression(
            request_id="d",
            candidates=["x"],
            candidate_features=[[1.0, 2.0]],
            shown=[0],
            propensities=[0.5],
        )
    ),
]


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [*IMPRESSION_CASES, *BINARY_CASES],
    ids=[c[0] for c in [*IMPRESSION_CASES, *BINARY_CASES]],
)
def test_batch_impressions_reject_one_bad_message_among_good_ones(
    name: str, data: bytes, code: str
) -> None:
    raws = [*GOOD_IMPRESSIONS[:2], data, *GOOD_IMPRESSIONS[2:]]
    batch = assert_same_impressions(raws)
    assert batch.n == len(GOOD_IMPRESSIONS)
    _, rejects = ev.decode_impressions(raws, LIM)
    assert [(r.row, r.code) for r in rejects] == [(2, code)]


def test_batch_impressions_edge_values_match_one_by_one() -> None:
    big = 2**53
    raws = [
        raw(impression(ts=big)),
        raw(impression(ts=big + 1)),
        raw(impression(ts=-1)),
        raw(impression(shown=[2, 2], propensities=[0.5, 0.5])),  # repeated index
        raw(impression(shown=[0, 3], propensities=[0.5, 0.5])),  # index == k
        raw(impression(shown=[2**63], propensities=[0.5])),  # beyond int64: all one by one
        raw(impression(propensities=[1.0, 1e-300])),
        raw(impression(propensities=[0.5, 1.0000001])),
        raw(impression(candidate_features=[[1.0, 2.0], [3.0], [5.0, 6.0]])),  # a short row
        raw(impression(candidate_features=[[1.0, 2.0], [3.0, 4.0, 0.0], [5.0, 6.0]])),
        raw(
            impression(candidates=[f"t{i}" for i in range(5)], candidate_features=[[0.0, 0.0]] * 5)
        ),
        raw(in_form(impression(), "binary context") | {"schema": "impression/1"}),
        raw(impression(request_id="x" * 3000)),  # valid but too large
        *GOOD_IMPRESSIONS,
    ]
    assert_same_impressions(raws)
    assert_same_impressions(raws[:5] + raws[6:])  # without the int64 overflow: the column path
    assert assert_same_impressions([]).n == 0
    assert assert_same_impressions([b"{", raw(impression(ts=-1))]).n == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                [
                    *GOOD_IMPRESSIONS,
                    *(c[1] for c in IMPRESSION_CASES),
                    *(c[1] for c in BINARY_CASES),
                ]
            ),
            mutated_impressions(),
            st.builds(
                lambda obj, form: raw(in_form(obj, form)),
                float32_impressions(),
                st.sampled_from(FORMS),
            ),
            st.binary(max_size=60),
        ),
        max_size=10,
    )
)
def test_fuzz_batch_impressions_equal_one_by_one(raws: list[bytes]) -> None:
    assert_same_impressions(raws)


# --- nesting depth: measured on the bytes, so msgspec never goes deeper than MAX_DEPTH --------


def json_depth(value: Any) -> int:
    """How deep a JSON value nests (a scalar 0, ``[]`` 1, ``[[1]]`` 2)."""
    if isinstance(value, list):
        return 1 + max(map(json_depth, cast(list[Any], value)), default=0)
    if isinstance(value, dict):
        return 1 + max(map(json_depth, cast(dict[str, Any], value).values()), default=0)
    return 0


@pytest.mark.parametrize(
    ("data", "depth"),
    [
        (b"", 0),
        (b"1", 0),
        (b"[]", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'["[[[[", "]"]', 1),  # brackets in strings are text
        (b'["\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", "x"]', 1),  # an escaped quote
        (b'["\\\\", ' + b"[" * 48 + b"]" * 49, 49),  # a string holding one backslash
        (b"[" * 40 + b'"', 40),  # cut short
    ],
)
def test_nesting_counts_brackets_outside_strings(data: bytes, depth: int) -> None:
    assert decode_one._nesting(data) == depth  # pyright: ignore[reportPrivateUsage]


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(0, 60))
def test_nesting_of_valid_json_is_its_depth(value: Any, extra: int) -> None:
    wrapped: Any = value
    for _ in range(extra):
        wrapped = [wrapped] if extra % 2 else {'k\\"[': wrapped}
    data = json.dumps(wrapped).encode()
    assert decode_one._nesting(data) == json_depth(wrapped)  # pyright: ignore[reportPrivateUsage]


def test_limits_refuse_bounds_that_cannot_hold() -> None:
    for bad in (
        lambda: Limits(min_propensity=0.0),
        lambda: Limits(min_propensity=1e-39),  # subnormal in float32
        lambda: Limits(min_propensity=1.5),
        lambda: Limits(max_feature_norm=0.0),
        lambda: Limits(max_feature_norm=math.nan),
        lambda: Limits(max_event_ahead_ms=-1),
    ):
        with pytest.raises(ValueError, match="Limits"):
            bad()
    assert Limits(max_feature_norm=math.inf, min_propensity=1.0, max_event_ahead_ms=0)


def test_the_feature_norm_bound_is_exact_at_its_edge() -> None:
    """A norm of exactly ``max_feature_norm`` (6-8-10) decodes; one float32 step more does
    not, in the context or a candidate's features, alone and in a batch."""
    above = float(np.nextafter(np.float32(8.0), np.float32(9.0)))
    edge = [
        (raw(impression(context=[6.0, 8.0])), None),
        (raw(impression(context=[-6.0, above])), "large_features"),
        (raw(impression(candidate_features=[[1.0, 0.0], [8.0, -6.0], [0.5, 0.5]])), None),
        (
            raw(impression(candidate_features=[[1.0, 0.0], [above, 6.0], [0.0, 0.5]])),
            "large_features",
        ),
    ]
    lim = dataclasses.replace(LIM, max_feature_norm=10.0)
    for data, code in edge:
        if code is None:
            ev.decode_impression(data, lim)
        else:
            with pytest.raises(DecodeError, match=code):
                ev.decode_impression(data, lim)
    assert_same_impressions([d for d, _ in edge], lim)
