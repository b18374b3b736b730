"""The event contract: valid events decode to columns; every malformed case has its documented code."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming import events as ev
from streaming.events import DecodeError, Limits

LIM = Limits(d_user=2, d_track=2, max_candidates=4, max_message_bytes=2048)


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


IMPRESSION_CASES: list[tuple[str, bytes, str]] = [
    ("too large", raw(impression(surface="x" * 3000)), "too_large"),
    ("invalid utf-8", b'{"schema": "impression/1", "request_id": "\xff\xfe"}', "invalid_utf8"),
    ("not json", b"{not json", "invalid_json"),
    ("trailing data", raw(impression()) + b" {}", "invalid_json"),
    ("a json array", b"[1, 2]", "unknown_schema"),
    ("no schema", raw(drop(impression(), "schema")), "unknown_schema"),
    ("future schema", raw(impression(schema="impression/2")), "unknown_schema"),
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
    ("propensity zero", raw(impression(propensities=[0.0, 0.5])), "bad_propensity"),
    ("propensity above one", raw(impression(propensities=[1.5, 0.5])), "bad_propensity"),
    ("negative propensity", raw(impression(propensities=[-0.1, 0.5])), "bad_propensity"),
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
    ("unknown reason", raw(outcome(reason_end="teleported")), "unknown_reason_end"),
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


@pytest.mark.parametrize(("name", "data", "code"), OUTCOME_CASES, ids=[c[0] for c in OUTCOME_CASES])
def test_malformed_outcome_has_documented_code(name: str, data: bytes, code: str) -> None:
    with pytest.raises(DecodeError) as info:
        ev.decode_outcome(data, LIM)
    assert info.value.code == code, info.value.reason
    assert info.value.raw == data


def test_every_documented_code_is_exercised() -> None:
    seen = {c for _, _, c in IMPRESSION_CASES + OUTCOME_CASES}
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
    [["t1", "t1", "t22"], [""], ["a\x00"], ["a\x00b", "\x00"], ["é", "t1"], ["日本", ""]],
)
def test_key64_hashes_the_utf8_bytes_of_each_id(values: list[str]) -> None:
    assert ev.key64(values).tolist() == _key64_reference(values)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=12), min_size=1, max_size=20))
def test_key64_equals_the_reference_on_any_text(values: list[str]) -> None:
    assert ev.key64(values).tolist() == _key64_reference(values)


def test_empty_batches_decode_to_empty_columns() -> None:
    imps, _ = ev.decode_impressions([], LIM)
    outs, _ = ev.decode_outcomes([], LIM)
    assert imps.n == 0 and outs.n == 0
    assert outs.request_key.dtype == np.uint64 and outs.reason_end.dtype == np.int8
