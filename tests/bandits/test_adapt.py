"""Adaptation of the linear policies: a challenger with forgetting, raced on every batch, whose
statistics replace the model's when it predicts clearly better."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bandits import POLICIES, Policy, linear, load, save
from bandits.linucb import linucb
from bandits.policy import PolicySpec
from bandits.state import StateFormatError
from bandits.types import Feedback

pytestmark = pytest.mark.slow  # thousands of rows through several compiled shapes

DU, DT, N_IDS = 3, 2, 16


def _world(key: jax.Array, n: int, weights: np.ndarray, noise: float = 0.3) -> Feedback:
    """``n`` rows whose reward is ``[x, 1]^T W [z, 1]`` plus Gaussian noise."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    x = jax.random.normal(k1, (n, DU), jnp.float32)
    z = jax.random.normal(k2, (n, DT), jnp.float32)
    xa = jnp.concatenate([x, jnp.ones((n, 1))], 1)
    za = jnp.concatenate([z, jnp.ones((n, 1))], 1)
    mean = jnp.einsum("na,ab,nb->n", xa, jnp.asarray(weights, jnp.float32), za)
    return Feedback(
        context=x,
        features=z,
        action=jax.random.randint(k3, (n,), 0, N_IDS, jnp.int32),
        position=jnp.zeros((n,), jnp.int32),
        reward=mean + noise * jax.random.normal(k4, (n,), jnp.float32),
        propensity=jnp.ones((n,), jnp.float32),
        mask=jnp.ones((n,), jnp.bool_),
    )


def _run(policy: Policy, key: jax.Array, weights: list[np.ndarray], batches: int) -> list[Any]:
    """Learn ``batches`` batches of 50 rows from each world in turn; the state after each world."""
    state = policy.init(DU, DT)
    out = []
    for w_i, weights_i in enumerate(weights):
        for i in range(batches):
            state = policy.update(
                state, _world(jax.random.fold_in(key, 1000 * w_i + i), 50, weights_i)
            )
        out.append(state)
    return out


def _weights(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(DU + 1, DT + 1)).astype(np.float32)


def test_a_stationary_stream_never_switches_and_learns_what_the_plain_model_learns(
    key: jax.Array,
) -> None:
    w = _weights(0)
    (adaptive,) = _run(linucb(n_ids=N_IDS), key, [w], 120)
    (plain,) = _run(linucb(n_ids=N_IDS, adapt_window=0), key, [w], 120)
    assert int(adaptive.switches) == 0
    assert float(adaptive.race[0]) > 0  # the race ran
    for name in ("precision", "b", "theta", "id_count", "id_resid"):
        np.testing.assert_array_equal(getattr(adaptive, name), getattr(plain, name), err_msg=name)
    assert plain.fast_precision.shape == (0, 0) and plain.fast_id_count.shape == (0,)


def test_after_a_change_the_challenger_takes_over_and_the_model_follows_the_new_world(
    key: jax.Array,
) -> None:
    old, new = _weights(1), _weights(2)
    _, adaptive = _run(linucb(n_ids=N_IDS), key, [old, new], 120)
    _, plain = _run(linucb(n_ids=N_IDS, adapt_window=0), key, [old, new], 120)
    assert int(adaptive.switches) >= 1
    err = {
        name: float(np.abs(np.asarray(s.theta) - new).max())
        for name, s in (("adaptive", adaptive), ("plain", plain))
    }
    assert err["adaptive"] < 0.1 < err["plain"], err
    # A switch hands the challenger's statistics over, so the model still answers the usual way.
    np.testing.assert_allclose(
        np.asarray(adaptive.cov) @ np.asarray(adaptive.precision), np.eye(12), atol=1e-3
    )


def test_every_linear_policy_adapts_by_default_and_zero_turns_it_off() -> None:
    for name in ("linucb", "lin_ts", "squarecb", "epsilon_greedy", "softmax"):
        on, off = POLICIES[name](), POLICIES[name](adapt_window=0)
        assert on.spec.params["adapt_window"] == linear.ADAPT_WINDOW > 0
        assert linear.adapting(on.init(DU, DT)) and not linear.adapting(off.init(DU, DT))
    with pytest.raises(ValueError, match="adapt_window"):
        linucb(adapt_window=0.5)


def test_delta_and_merge_carry_the_challenger_and_the_race(key: jax.Array) -> None:
    policy = linucb(n_ids=N_IDS)
    (state,) = _run(policy, key, [_weights(3)], 4)
    a = _world(jax.random.fold_in(key, 7), 30, _weights(3))
    b = _world(jax.random.fold_in(key, 8), 20, _weights(3))
    both = jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y]), a, b)
    d_a, d_b = (linear.delta(state, fb, id_ridge=10.0) for fb in (a, b))
    merged = linear.merge(state, linear.add_deltas(d_a, d_b))
    whole = linear.delta(state, both, id_ridge=10.0)
    for name in whole._fields:  # deltas of parts add up to the delta of the whole
        np.testing.assert_allclose(
            getattr(linear.add_deltas(d_a, d_b), name),
            getattr(whole, name),
            rtol=1e-4,
            atol=1e-4,
            err_msg=name,
        )
    np.testing.assert_allclose(
        merged.fast_precision, state.fast_precision + whole.precision, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(merged.race, state.race)  # the race stays the worker's own
    np.testing.assert_allclose(
        merged.fast_theta.reshape(-1),
        np.linalg.solve(np.asarray(merged.fast_precision, np.float64), merged.fast_b),
        rtol=1e-3,
        atol=1e-3,
    )


def test_a_delta_without_challenger_terms_merges_into_an_adaptive_state(key: jax.Array) -> None:
    (state,) = _run(linucb(n_ids=N_IDS), key, [_weights(4)], 2)
    d = linear.delta(state, _world(key, 10, _weights(4)), id_ridge=10.0)
    older = linear.delta_from(
        {
            f: np.asarray(v)
            for f, v in d._asdict().items()
            if f in ("precision", "b", "id_count", "id_resid", "n")
        }
    )
    merged = linear.merge(state, older)
    np.testing.assert_array_equal(merged.fast_id_count, state.fast_id_count)
    np.testing.assert_allclose(merged.fast_b, state.fast_b + d.b)


class _BeforeAdaptation(NamedTuple):
    """The linear state as saved before adaptation: its first nine arrays, by the same names."""

    precision: jax.Array
    cov: jax.Array
    b: jax.Array
    theta: jax.Array
    id_count: jax.Array
    id_resid: jax.Array
    position_bias: jax.Array
    n: jax.Array
    since_refactor: jax.Array


def test_a_state_saved_before_adaptation_loads_with_a_fresh_challenger(key: jax.Array) -> None:
    policy = linucb(n_ids=N_IDS)
    before = dict(policy.spec.params)
    del before["adapt_window"]
    old = policy._replace(spec=PolicySpec("linucb", policy.spec.version, before))
    (learned,) = _run(linucb(n_ids=N_IDS, adapt_window=0), key, [_weights(5)], 3)
    data = save(old, _BeforeAdaptation(*learned[:9]))
    state = load(policy, data, like=policy.init(DU, DT))
    for name in _BeforeAdaptation._fields:
        np.testing.assert_array_equal(getattr(state, name), getattr(learned, name), err_msg=name)
    prior = policy.init(DU, DT)
    for name in ("fast_precision", "fast_b", "fast_id_count", "race", "switches"):
        np.testing.assert_array_equal(getattr(state, name), getattr(prior, name), err_msg=name)
    # A hyperparameter that differs is refused as before, and so is a policy that never adapts.
    with pytest.raises(StateFormatError, match="ridge"):
        load(linucb(n_ids=N_IDS, ridge=2.0), data, like=policy.init(DU, DT))
    with pytest.raises(StateFormatError, match="adapt_window"):
        current = save(policy, state)
        load(old, current, like=_BeforeAdaptation(*learned[:9]))
    # Only the arrays that came with adaptation may be missing: not, say, the model's own.
    eight = save(
        old, _WithoutCov(*(v for f, v in learned._asdict().items() if f in _WithoutCov._fields))
    )
    with pytest.raises(StateFormatError, match="added since"):
        load(policy, eight, like=policy.init(DU, DT))


class _WithoutCov(NamedTuple):
    precision: jax.Array
    b: jax.Array
    theta: jax.Array
    id_count: jax.Array
    id_resid: jax.Array
    position_bias: jax.Array
    n: jax.Array
    since_refactor: jax.Array


def test_a_pending_delta_from_before_adaptation_adds_to_the_next_ones(key: jax.Array) -> None:
    (state,) = _run(linucb(n_ids=N_IDS), key, [_weights(6)], 2)
    d = linear.delta(state, _world(key, 10, _weights(6)), id_ridge=10.0)
    old = {f: np.asarray(v) for f, v in d._asdict().items() if not f.startswith("fast_")}
    pending = linear.delta_from(old, like=linear.empty_delta(state))
    assert pending.fast_id_count.shape == (N_IDS,)
    total = linear.add_deltas(pending, d)
    np.testing.assert_allclose(total.fast_id_count, d.fast_id_count)
