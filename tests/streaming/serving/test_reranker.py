"""The re-ranker: one request and batches rank exactly as the policy does, from the prepared state."""

from __future__ import annotations

import http.client
import io
import socket
from email.message import Message

import jax
import jax.numpy as jnp
import msgspec
import numpy as np
import pytest

from bandits import POLICIES, Candidates, Feedback, Policy
from bandits.slates import bucket
from streaming.serving.http import (
    ConnectionSlots,
    _post_refusal,  # pyright: ignore[reportPrivateUsage]
)
from streaming.serving.reranker import Reranker
from streaming.serving.service import (
    RankError,
    RankRequest,
    _check_id_lengths,  # pyright: ignore[reportPrivateUsage]
)

DU, DT = 3, 4


def _trained(name: str, **params: object) -> tuple[Policy, object]:
    policy = POLICIES[name](**params)
    rng = np.random.default_rng(0)
    n = 64
    fb = Feedback(
        rng.normal(size=(n, DU)).astype(np.float32),
        rng.normal(size=(n, DT)).astype(np.float32),
        rng.integers(0, 100, n).astype(np.int32),
        np.zeros(n, np.int32),
        rng.random(n).astype(np.float32),
        np.ones(n, np.float32),
        np.ones(n, bool),
    )
    return policy, policy.update(policy.init(DU, DT), fb)


def _request(k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=DU).astype(np.float32),
        rng.normal(size=(k, DT)).astype(np.float32),
        rng.integers(0, 100, k).astype(np.int32),
    )


def _direct(
    policy: Policy,
    state: object,
    x: np.ndarray,
    f: np.ndarray,
    ids: np.ndarray,
    s: int,
    key: jax.Array,
) -> tuple[np.ndarray, np.ndarray]:
    """``policy.rank`` on the raw state, candidates padded to the bucket as the re-ranker does."""
    k, kb = f.shape[0], bucket(f.shape[0])
    fp = np.zeros((kb, DT), np.float32)
    fp[:k] = f
    ip = np.zeros(kb, np.int32)
    ip[:k] = ids
    r = policy.rank(
        state,
        jnp.asarray(x),
        Candidates(jnp.asarray(fp), jnp.asarray(ip)),
        jnp.arange(kb) < k,
        key=key,
        slate_size=s,
    )
    return np.asarray(r.order), np.asarray(r.propensity)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("linucb", {"n_ids": 32}),
        ("squarecb", {"n_ids": 32}),
        ("lin_ts", {"n_ids": 32, "mc_samples": 32}),
        ("uniform", {}),
    ],
)
def test_one_request_ranks_as_the_policy_does_on_the_raw_state(
    name: str, params: dict[str, object], key: jax.Array
) -> None:
    policy, state = _trained(name, **params)
    reranker = Reranker(policy, state)
    for i, k in enumerate((5, 8, 13)):
        x, f, ids = _request(k, i)
        order, prop = reranker.rank(x, f, ids, slate_size=3, key=key, index=i)
        assert order.dtype == np.int64 and prop.dtype == np.float64 and order.shape == (3,)
        assert np.all(order < k)  # padding is never shown
        want_o, want_p = _direct(policy, state, x, f, ids, 3, jax.random.fold_in(key, i))
        np.testing.assert_array_equal(order, want_o)
        np.testing.assert_allclose(prop, want_p, rtol=1e-6)


def test_a_batch_ranks_as_one_request_at_a_time_with_split_keys(key: jax.Array) -> None:
    policy, state = _trained("squarecb", n_ids=32)
    reranker = Reranker(policy, state)
    rng = np.random.default_rng(3)
    n, k = 3, 6
    x = rng.normal(size=(n, DU)).astype(np.float32)
    f = rng.normal(size=(n, k, DT)).astype(np.float32)
    ids = rng.integers(0, 100, (n, k)).astype(np.int32)
    order, prop = reranker.rank_many(x, f, ids, slate_size=2, key=key)
    assert order.shape == prop.shape == (n, 2)
    keys = jax.random.split(key, bucket(n))
    for i in range(n):
        want_o, want_p = _direct(policy, state, x[i], f[i], ids[i], 2, keys[i])
        np.testing.assert_array_equal(order[i], want_o)
        np.testing.assert_allclose(prop[i], want_p, rtol=1e-6)


def test_state_swaps_rederive_the_serving_state_and_share_compilations(key: jax.Array) -> None:
    policy, state = _trained("linucb", n_ids=32)
    fresh = policy.init(DU, DT)
    reranker = Reranker(policy, fresh)
    x, f, ids = _request(6, 0)
    reranker.rank(x, f, ids, slate_size=2, key=key)
    other = reranker.with_state(state)
    assert reranker.state is fresh and other.state is state  # the original is unchanged
    assert type(other.serving_state).__name__ == "LinearServing"
    np.testing.assert_array_equal(
        np.asarray(other.serving_state.cov_packed), np.asarray(policy.prepare(state).cov_packed)
    )
    order, _ = other.rank(x, f, ids, slate_size=2, key=key)
    np.testing.assert_array_equal(
        order, _direct(policy, state, x, f, ids, 2, jax.random.fold_in(key, 0))[0]
    )
    # 5 and 7 candidates share the bucket of 8: no new compilation for either.
    other.rank(*_request(5, 1), slate_size=2, key=key)
    other.rank(*_request(7, 2), slate_size=2, key=key)
    assert reranker._rank_one._cache_size() == 1  # pyright: ignore[reportPrivateUsage, reportFunctionMemberAccess]
    reranker.state = state  # the setter (used by the demo) re-derives the serving state too
    np.testing.assert_array_equal(
        np.asarray(reranker.serving_state.cov_packed), np.asarray(other.serving_state.cov_packed)
    )


# ------------------------------------------------------------ the HTTP service's pure helpers
def _headers(**fields: str) -> Message:
    raw = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return http.client.parse_headers(io.BytesIO(raw.encode("latin-1")))


@pytest.mark.parametrize(
    ("path", "headers", "want"),
    [
        ("/rank", {"Content_Type": "application/json", "Content_Length": "12"}, 12),
        ("/rank", {"Content_Type": "application/json; charset=UTF-8", "Content_Length": "0"}, 0),
        ("/nope", {"Content_Type": "application/json", "Content_Length": "2"}, 404),
        ("/rank", {"Content_Type": "application/json"}, 411),
        ("/rank", {"Transfer_Encoding": "chunked", "Content_Length": "2"}, 411),
        ("/rank", {"Content_Type": "application/json", "Content_Length": "+5"}, 400),
        ("/rank", {"Content_Type": "application/json", "Content_Length": "\u00b2"}, 400),
        ("/rank", {"Content_Type": "application/json", "Content_Length": "101"}, 413),
        ("/rank", {"Content_Type": "application/json", "Content_Length": "9" * 5000}, 413),
        ("/rank", {"Content_Length": "2"}, 415),
        ("/rank", {"Content_Type": "text/plain", "Content_Length": "2"}, 415),
        (
            "/rank",
            {"Content_Type": "application/json; charset=latin-1", "Content_Length": "2"},
            415,
        ),
    ],
)
def test_post_refusals_before_the_body_is_read(
    path: str, headers: dict[str, str], want: int
) -> None:
    """``want``: the body's length when the request may be read (at most 100 here), else the
    refusal's status."""
    got = _post_refusal(path, _headers(**headers), max_body_bytes=100)
    assert (got if isinstance(got, int) else got[0]) == want


def test_post_refusal_of_two_lengths() -> None:
    raw = b"Content-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"
    got = _post_refusal("/rank", http.client.parse_headers(io.BytesIO(raw)), 100)
    assert not isinstance(got, int) and got[:2] == (400, "invalid_length")


def test_connections_are_capped_replaced_when_stalled_and_expired() -> None:
    pairs = [socket.socketpair() for _ in range(4)]
    try:
        conns = ConnectionSlots(limit=2, read_timeout_s=10.0, evict_waiting_s=1.0)
        a, b, c, d = (p[0] for p in pairs)
        assert conns.admit(a, now=0.0) and conns.admit(b, now=0.5)
        assert not conns.admit(c, now=0.9)  # full, and none has waited over 1 s
        assert conns.start_work(b) is None  # b has its request: never replaced or expired
        assert conns.admit(c, now=1.5)  # a waited 1.5 s: c takes its place
        assert conns.dropped(a) == "evicted" and conns.start_work(a) == "evicted"
        assert pairs[0][0].recv(1) == b""  # a's blocked read ends at once
        assert not conns.admit(d, now=2.0)  # b works, c is fresh
        assert conns.waiting(b, now=3.0)  # b waits for its next request
        conns.expire(now=12.0)  # c waited 10.5 s, b 9 s
        assert conns.dropped(c) == "timed_out" and conns.dropped(b) is None
        assert not conns.waiting(c, now=12.0)
        for s in (a, c):
            conns.release(s)
        assert conns.counts() == {
            "connections_open": 1,
            "connections_refused": 2,
            "connections_evicted": 1,
            "connections_timed_out": 1,
        }
    finally:
        for x, y in pairs:
            x.close()
            y.close()


def test_ids_longer_than_the_limit_are_refused() -> None:
    ok = RankRequest("u" * 4, "s" * 4, [], ["a" * 4, "b" * 4], [], request_id="r" * 4)
    _check_id_lengths(ok, 4)
    with pytest.raises(RankError, match="candidate 1 has 5 characters"):
        _check_id_lengths(msgspec.structs.replace(ok, candidates=["a", "b" * 5]), 4)
    with pytest.raises(RankError, match="request_id has 5 characters"):
        _check_id_lengths(msgspec.structs.replace(ok, request_id="r" * 5), 4)
