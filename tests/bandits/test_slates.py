"""Slate samplers: exact propensities, Monte Carlo error, padding to buckets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bandits
from bandits import POLICIES, Candidates, pad, slates
from bandits.slates import bucket


def test_plackett_luce_propensities_are_the_exact_conditional_softmax(key: jax.Array) -> None:
    logits = jnp.array([0.5, -1.0, 2.0, 0.0, 1.0], jnp.float32)
    mask = jnp.array([True, True, True, False, True])
    ranked = slates.plackett_luce(logits, mask, key, 3)
    order = np.asarray(ranked.order)
    assert 3 not in order
    w = np.exp(np.asarray(logits, np.float64)) * np.asarray(mask)
    expect = []
    for o in order:
        expect.append(w[o] / w.sum())
        w[o] = 0.0
    np.testing.assert_allclose(ranked.propensity, expect, rtol=1e-5)


def test_igw_probabilities() -> None:
    scores = jnp.array([0.9, 0.5, 0.7, 0.0], jnp.float32)
    rem = jnp.array([True, True, True, False])
    p = np.asarray(slates.igw_probs(10.0)(scores, rem), np.float64)
    np.testing.assert_allclose(p[1], 1 / (3 + 10 * 0.4), rtol=1e-5)
    np.testing.assert_allclose(p[2], 1 / (3 + 10 * 0.2), rtol=1e-5)
    assert p[3] == 0.0 and abs(p.sum() - 1.0) < 1e-6 and p[0] >= 1 / 3


def test_epsilon_probabilities() -> None:
    scores = jnp.array([0.1, 0.5, 0.3], jnp.float32)
    p = np.asarray(slates.epsilon_probs(0.3)(scores, jnp.array([True, True, True])))
    np.testing.assert_allclose(p, [0.1, 0.8, 0.1], rtol=1e-5)


@pytest.mark.slow
def test_sequential_propensities_match_frequencies() -> None:
    scores = jnp.array([0.9, 0.5, 0.7, 0.1], jnp.float32)
    mask = jnp.ones((4,), jnp.bool_)
    draw = jax.jit(jax.vmap(lambda k: slates.sequential(slates.igw_probs(5.0), scores, mask, k, 2)))
    ranked = draw(jax.random.split(jax.random.key(3), 20_000))
    first = np.asarray(ranked.order[:, 0])
    for a in range(4):
        freq = (first == a).mean()
        np.testing.assert_allclose(
            freq,
            np.asarray(ranked.propensity[first == a, 0]).mean(),
            atol=4 * np.sqrt(freq * (1 - freq) / 20_000) + 1e-3,
        )


@pytest.mark.slow
def test_monte_carlo_propensity_is_within_its_stated_error() -> None:
    mean = jnp.array([0.2, 0.0, 0.1, -0.1], jnp.float32)

    def sample(k: jax.Array) -> jax.Array:
        return mean + 0.2 * jax.random.normal(k, (4,), jnp.float32)

    m = 256
    mask = jnp.ones((4,), jnp.bool_)
    ranked = jax.jit(jax.vmap(lambda k: slates.monte_carlo(sample, mask, k, 1, m)))(
        jax.random.split(jax.random.key(0), 400)
    )
    # The true top-choice probabilities, from many draws.
    draws = jax.vmap(sample)(jax.random.split(jax.random.key(1), 200_000))
    truth = np.bincount(np.asarray(draws.argmax(axis=1)), minlength=4) / 200_000
    order, prop = np.asarray(ranked.order[:, 0]), np.asarray(ranked.propensity[:, 0])
    err = prop - truth[order]
    assert np.abs(err).max() < 4 * 0.5 / np.sqrt(m)  # stated bound 0.5 / sqrt(m) per estimate
    assert abs(err.mean()) < 0.01  # and nearly unbiased


@pytest.mark.slow
def test_monte_carlo_counts_match_the_position_by_position_argmax(key: jax.Array) -> None:
    # The vectorised count equals the definition: for each position j, the draws whose best
    # candidate outside order[:j] is order[j].
    mean = jnp.array([0.3, 0.0, 0.2, -0.1, 0.25, 0.1], jnp.float32)
    mask = jnp.array([True, True, True, True, True, False])

    def sample(k: jax.Array) -> jax.Array:
        return mean + 0.3 * jax.random.normal(k, (6,), jnp.float32)

    m, s = 200, 4
    for i in range(5):
        k = jax.random.fold_in(key, i)
        ranked = slates.monte_carlo(sample, mask, k, s, m)
        draws = np.array(jax.vmap(sample)(jax.random.split(k, m + 1)[1:]))
        draws[:, ~np.asarray(mask)] = -np.inf
        order = np.asarray(ranked.order)
        expect = []
        for j in range(s):
            d = draws.copy()
            d[:, order[:j]] = -np.inf
            expect.append(((d.argmax(axis=1) == order[j]).sum() + 1) / (m + 1))
        np.testing.assert_allclose(ranked.propensity, expect, rtol=1e-6)


def test_inverse_cdf_never_picks_a_zero_weight() -> None:
    w = jnp.array([0.0, 0.2, 0.0, 0.3, 0.5, 0.0], jnp.float32)
    us = jnp.asarray(np.r_[np.linspace(0.0, 1.0, 1001), np.nextafter(1.0, 0.0)], jnp.float32)
    picks = np.asarray(jax.vmap(lambda u: slates.inverse_cdf(w, u))(us))
    assert set(picks.tolist()) == {1, 3, 4}
    np.testing.assert_allclose([(picks == a).mean() for a in (1, 3, 4)], [0.2, 0.3, 0.5], atol=2e-3)


@pytest.mark.slow
def test_sequential_slate_probability_is_the_product_of_propensities() -> None:
    # Joint frequencies of whole ordered slates of 3 match prod(propensity): each position's
    # propensity is exact given the positions above it.
    scores = jnp.array([0.9, 0.5, 0.7, 0.1, 0.8], jnp.float32)
    mask = jnp.array([True, True, True, False, True])
    n = 40_000
    for probs in (slates.igw_probs(4.0), slates.epsilon_probs(0.4)):
        draw = jax.jit(
            jax.vmap(lambda k, probs=probs: slates.sequential(probs, scores, mask, k, 3))
        )
        ranked = draw(jax.random.split(jax.random.key(5), n))
        order, prop = np.asarray(ranked.order), np.asarray(ranked.propensity, np.float64)
        assert not (order == 3).any()
        slate_p = prop.prod(axis=1)
        slates_seen, idx = np.unique(order, axis=0, return_inverse=True)
        for i in range(slates_seen.shape[0]):
            rows = idx.reshape(-1) == i
            freq = rows.mean()
            np.testing.assert_allclose(slate_p[rows], slate_p[rows][0], rtol=1e-5)
            assert abs(freq - slate_p[rows][0]) <= 4 * np.sqrt(freq * (1 - freq) / n) + 1e-3


def test_pad_fills_the_smallest_bucket() -> None:
    c, m = pad(np.ones((20, 3), np.float32), np.arange(20))
    assert c.features.shape == (32, 3) and c.ids.dtype == np.int32 and m.sum() == 20
    assert not c.features[20:].any()
    with pytest.raises(ValueError, match="empty candidate set"):
        pad(np.ones((0, 3), np.float32), np.arange(0))
    with pytest.raises(ValueError, match="exceed the largest bucket"):
        pad(np.ones((10, 3), np.float32), np.arange(10), buckets=(4, 8))


def test_bucket_is_the_next_power_of_two_or_the_smallest_given_bucket() -> None:
    assert [bucket(k) for k in (1, 8, 9, 16, 17, 5000, 9000)] == [8, 8, 16, 16, 32, 8192, 16384]
    assert [bucket(k, buckets=(6, 12)) for k in (1, 6, 7, 12)] == [6, 6, 12, 12]
    with pytest.raises(ValueError, match=r"13 rows exceed the largest bucket \(12\)"):
        bucket(13, buckets=(6, 12))
    with pytest.raises(ValueError, match="must be >= 1"):
        bucket(0)


def test_pad_pads_the_candidate_axis_of_a_batch() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(3, 9, 2))  # float64 in, float32 out
    ids = rng.integers(0, 100, size=(3, 9))
    c, m = bandits.pad(feats, ids)
    assert c.features.shape == (3, 16, 2) and c.features.dtype == np.float32
    assert c.ids.shape == (3, 16) and c.ids.dtype == np.int32 and m.shape == (3, 16)
    assert m[:, :9].all() and not m[:, 9:].any()
    np.testing.assert_array_equal(c.features[:, :9], feats.astype(np.float32))
    np.testing.assert_array_equal(c.ids[:, :9], ids)
    assert not c.features[:, 9:].any() and not c.ids[:, 9:].any()
    # Each request of the batch is padded exactly as it would be alone.
    one, one_mask = bandits.pad(feats[1], ids[1])
    np.testing.assert_array_equal(c.features[1], one.features)
    np.testing.assert_array_equal(m[1], one_mask)
    with pytest.raises(ValueError, match=r"ids must have shape \(3, 9\)"):
        bandits.pad(feats, ids[:, :8])
    with pytest.raises(ValueError, match=r"features must have shape \(k, d_track\) or"):
        bandits.pad(feats[0, 0], ids[0])


def test_one_compilation_per_bucket(key: jax.Array) -> None:
    policy = POLICIES["softmax"](n_ids=16)
    state = policy.init(2, 3)
    traces = []

    def rank(c: Candidates, m: jax.Array) -> jax.Array:
        traces.append(c.features.shape[0])  # runs only while tracing
        return policy.rank(state, jnp.ones((2,), jnp.float32), c, m, key=key, slate_size=3).order

    jitted = jax.jit(rank)
    rng = np.random.default_rng(0)
    for k in (5, 7, 8, 9, 12, 16, 20, 30):
        c, m = pad(rng.normal(size=(k, 3)).astype(np.float32), np.arange(k))
        order = np.asarray(jitted(c, m))
        assert (order < k).all()
    assert traces == [8, 16, 32]
