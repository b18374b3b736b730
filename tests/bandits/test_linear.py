"""The shared linear model: exact statistics, numerics over many updates, merge, position bias."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bandits import linear
from bandits.linucb import linucb
from bandits.types import Candidates, Feedback

pytestmark = pytest.mark.slow  # long update sequences and many compiled shapes


def _batch(key: jax.Array, n: int, du: int, dt: int, *, ids: int = 50) -> Feedback:
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return Feedback(
        context=jax.random.normal(k1, (n, du), jnp.float32),
        features=jax.random.normal(k2, (n, dt), jnp.float32),
        action=jax.random.randint(k3, (n,), 0, ids, jnp.int32),
        position=jnp.zeros((n,), jnp.int32),
        reward=jax.random.uniform(k4, (n,), jnp.float32),
        propensity=jnp.ones((n,), jnp.float32),
        mask=jnp.ones((n,), jnp.bool_),
    )


_jit_update = jax.jit(linear.update, static_argnames=("ridge", "discount", "refactor_every"))


def _update(state: linear.LinearState, fb: Feedback, **kw: object) -> linear.LinearState:
    params = {"ridge": 1.0, "discount": 1.0, "refactor_every": 1000, **kw}
    return _jit_update(state, fb, **params)  # type: ignore[arg-type]


def _init(du: int = 3, dt: int = 2, n_ids: int = 0) -> linear.LinearState:
    return linear.init(du, dt, ridge=1.0, n_ids=n_ids, position_bias=(1.0, 0.5))


def test_joint_features_are_the_outer_product_with_intercepts() -> None:
    x = jnp.array([[2.0, 3.0]])
    z = jnp.array([[5.0]])
    np.testing.assert_allclose(linear.joint(x, z), [[10.0, 2.0, 15.0, 3.0, 5.0, 1.0]])


@pytest.mark.parametrize(("du", "dt"), [(3, 2), (1, 4), (16, 16)])
def test_gram_equals_the_weighted_outer_products_of_joint_features(
    key: jax.Array, du: int, dt: int
) -> None:
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (37, du), jnp.float32)
    z = jax.random.normal(k2, (37, dt), jnp.float32)
    w = jax.random.uniform(k3, (37,), jnp.float32).at[:5].set(0.0)  # zero weight: a masked row
    phi = np.asarray(linear.joint(x, z), np.float64)
    want = (phi * np.asarray(w, np.float64)[:, None]).T @ phi
    got = jax.jit(linear.gram)(x, z, w)
    assert got.shape == want.shape == ((du + 1) * (dt + 1),) * 2
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(got, got.T)  # spread from one half: exactly symmetric


@pytest.mark.parametrize(
    ("rows", "batches", "n_ids"),
    [(4, 5, 0), (40, 3, 7)],  # 4 < D = 12: the Woodbury path; 40 >= D: the Cholesky path
)
def test_update_matches_the_closed_form_ridge_solution(
    key: jax.Array, rows: int, batches: int, n_ids: int
) -> None:
    state = _init(n_ids=n_ids)
    fbs = [_batch(k, rows, 3, 2, ids=max(n_ids, 1)) for k in jax.random.split(key, batches)]
    for fb in fbs:
        state = _update(state, fb)
    phi = np.concatenate([np.asarray(linear.joint(f.context, f.features), np.float64) for f in fbs])
    r = np.concatenate([np.asarray(f.reward, np.float64) for f in fbs])
    a = np.eye(phi.shape[1]) + phi.T @ phi
    np.testing.assert_allclose(state.precision, a, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(state.b, phi.T @ r, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(state.cov, np.linalg.inv(a), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(state.theta).reshape(-1), np.linalg.solve(a, phi.T @ r), rtol=1e-3, atol=1e-4
    )
    assert int(state.n) == rows * batches


def test_masked_rows_are_ignored(key: jax.Array) -> None:
    fb = _batch(key, 6, 3, 2)
    half = fb._replace(mask=jnp.array([True, True, True, False, False, False]))
    first = jax.tree_util.tree_map(lambda a: a[:3], fb)
    a, b = _update(_init(), half), _update(_init(), first)
    np.testing.assert_allclose(a.precision, b.precision, rtol=1e-6)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-5, atol=1e-6)
    assert int(a.n) == 3


def _drift_run(n_updates: int, rows: int, refactor_every: int) -> linear.LinearState:
    def step(s: linear.LinearState, k: jax.Array) -> tuple[linear.LinearState, None]:
        fb = _batch(k, rows, 2, 2)
        fb = fb._replace(context=fb.context * 3.0)  # large features stress the conditioning
        return linear.update(s, fb, ridge=1.0, discount=1.0, refactor_every=refactor_every), None

    run = jax.jit(lambda s, ks: jax.lax.scan(step, s, ks)[0])
    return run(
        linear.init(2, 2, ridge=1.0, n_ids=0, position_bias=(1.0,)),
        jax.random.split(jax.random.key(7), n_updates),
    )


def _assert_healthy(state: linear.LinearState) -> None:
    cov = np.asarray(state.cov, np.float64)
    a = np.asarray(state.precision, np.float64)
    assert np.array_equal(cov, cov.T), "inverse must stay exactly symmetric"
    assert np.linalg.eigvalsh(cov).min() > 0, "inverse must stay positive definite"
    assert np.linalg.eigvalsh(a).min() > 0
    # cov stays the inverse of the exact precision (relative to the identity).
    assert np.abs(cov @ a - np.eye(a.shape[0])).max() < 1e-3


def test_rank_one_woodbury_stays_symmetric_pd_over_200k_updates() -> None:
    # 200,000 rank-one Sherman-Morrison updates with a re-factorisation every 10,000.
    state = _drift_run(200_000, 1, 10_000)
    assert int(state.n) == 200_000
    _assert_healthy(state)


def test_ten_million_rows_in_batches_stay_symmetric_pd() -> None:
    # 10,000,000 rows as 100,000 batched updates of 100 rows (batches >= D re-factorise).
    # The 10M *rank-one* Woodbury run is too slow for a unit test: it lives in
    # benchmarks/bandits.py.
    state = _drift_run(100_000, 100, 1000)
    assert int(state.n) == 10_000_000
    _assert_healthy(state)


def test_forgetting_keeps_the_prior_and_tracks_a_changed_reward(key: jax.Array) -> None:
    du, dt = 2, 2
    d = (du + 1) * (dt + 1)
    keep = linear.init(du, dt, ridge=1.0, n_ids=0, position_bias=(1.0,))
    forget = keep
    for i, k in enumerate(jax.random.split(key, 60)):
        fb = _batch(k, 50, du, dt)
        # The reward flips sign half way: forgetting should follow the new reward.
        fb = fb._replace(reward=(1.0 if i < 30 else -1.0) * fb.context[:, 0] * fb.features[:, 0])
        keep = _update(keep, fb)
        forget = _update(forget, fb, discount=0.9)
    w_idx = 0 * (dt + 1) + 0  # coefficient of x_0 * z_0
    assert float(np.asarray(forget.theta).reshape(-1)[w_idx]) < -0.9
    assert float(np.asarray(keep.theta).reshape(-1)[w_idx]) > -0.3
    assert np.linalg.eigvalsh(np.asarray(forget.precision, np.float64)).min() > 0.99
    assert forget.precision.shape == (d, d)


def test_delta_and_merge_equal_one_update_on_all_rows(key: jax.Array) -> None:
    state = _init(n_ids=8)
    a, b = _batch(key, 5, 3, 2, ids=8), _batch(jax.random.fold_in(key, 1), 7, 3, 2, ids=8)
    both = jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y]), a, b)
    together = _update(state, both)
    merged = linear.merge(state, linear.add_deltas(linear.delta(state, a), linear.delta(state, b)))
    # Per-id residuals are taken against each worker's weights (documented approximation).
    for name in ("precision", "b", "theta", "cov", "id_count"):
        np.testing.assert_allclose(
            getattr(merged, name), getattr(together, name), rtol=1e-4, atol=1e-5, err_msg=name
        )
    assert int(merged.n) == 12


def test_lower_positions_teach_without_dragging_scores_down(key: jax.Array) -> None:
    # True model: E[r] = kappa_p * (z . [1, -1]). Rows from position 1 are examined half the time.
    policy = linucb(n_ids=0, position_bias=(1.0, 0.5), alpha=0.0)
    state = policy.init(1, 2)
    k1, k2 = jax.random.split(key)
    n = 4000
    z = jax.random.normal(k1, (n, 2), jnp.float32)
    position = jnp.ones((n,), jnp.int32)
    reward = 0.5 * (z[:, 0] - z[:, 1]) + 0.01 * jax.random.normal(k2, (n,), jnp.float32)
    fb = Feedback(
        jnp.zeros((n, 1), jnp.float32),
        z,
        jnp.zeros((n,), jnp.int32),
        position,
        reward,
        jnp.ones((n,), jnp.float32),
        jnp.ones((n,), jnp.bool_),
    )
    state = policy.update(state, fb)
    cands = Candidates(jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.zeros((2,), jnp.int32))
    scores = policy.score(state, jnp.zeros((1,), jnp.float32), cands, jnp.ones((2,), jnp.bool_))
    # Scores are on the top-position scale: +1 and -1, not the observed +-0.5.
    np.testing.assert_allclose(scores, [1.0, -1.0], atol=0.02)


def test_track_id_bias_is_learned_from_residuals(key: jax.Array) -> None:
    policy = linucb(n_ids=4, id_ridge=1.0, alpha=0.0)
    state = policy.init(1, 1)
    n = 2000
    ids = jax.random.randint(key, (n,), 0, 4, jnp.int32)
    quality = jnp.array([0.0, 0.3, -0.3, 0.1], jnp.float32)
    fb = Feedback(
        jnp.zeros((n, 1), jnp.float32),
        jnp.zeros((n, 1), jnp.float32),
        ids,
        jnp.zeros((n,), jnp.int32),
        quality[ids],
        jnp.ones((n,), jnp.float32),
        jnp.ones((n,), jnp.bool_),
    )
    state = policy.update(state, fb)
    cands = Candidates(jnp.zeros((4, 1), jnp.float32), jnp.arange(4, dtype=jnp.int32))
    scores = policy.score(state, jnp.zeros((1,), jnp.float32), cands, jnp.ones((4,), jnp.bool_))
    assert np.argsort(np.asarray(scores)).tolist() == [2, 0, 3, 1]
    np.testing.assert_allclose(scores, quality, atol=0.02)


@pytest.mark.parametrize("field", ["ridge", "discount", "refactor_every", "n_ids", "id_ridge"])
def test_bad_hyperparameters_are_refused(field: str) -> None:
    bad = {"ridge": 0.0, "discount": 1.5, "refactor_every": 0, "n_ids": -1, "id_ridge": -1.0}
    with pytest.raises(ValueError, match=field):
        linucb(**{field: bad[field]})  # type: ignore[arg-type]


def _m_direct(state: linear.LinearState, x: np.ndarray) -> np.ndarray:
    """``m = K^T cov K`` in float64 from the raw covariance, ``K = kron([x, 1], I)``."""
    dt1 = state.theta.shape[1]
    xa = np.append(np.asarray(x, np.float64), 1.0)
    kron = np.kron(xa[:, None], np.eye(dt1))  # (D, dt1)
    return kron.T @ np.asarray(state.cov, np.float64) @ kron


@pytest.mark.parametrize("discount", [1.0, 0.9])
def test_prepared_state_gives_the_same_mean_and_variance(key: jax.Array, discount: float) -> None:
    du, dt, k = 5, 7, 30
    state = _init(du, dt, n_ids=16)
    for i in range(3):  # Woodbury steps (discount 1) or Cholesky refactorisations (< 1)
        state = _update(state, _batch(jax.random.fold_in(key, i), 20, du, dt), discount=discount)
    serving = jax.jit(linear.prepare, static_argnames="id_ridge")(state, id_ridge=10.0)
    assert isinstance(serving, linear.LinearServing)
    p, q = (du + 1) * (du + 2) // 2, (dt + 1) * (dt + 2) // 2
    assert serving.cov_packed.shape == (p, q)
    kx, kz, ki = jax.random.split(jax.random.fold_in(key, 99), 3)
    x = jax.random.normal(kx, (du,), jnp.float32)
    cands = Candidates(
        jax.random.normal(kz, (k, dt), jnp.float32), jax.random.randint(ki, (k,), 0, 40)
    )
    raw = linear.predict(state, x, cands, 10.0)
    fast = linear.predict(serving, x, cands, 10.0)
    for a, b in zip(raw, fast, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-5, atol=1e-7)
    m = np.asarray(fast[3])
    np.testing.assert_array_equal(m, m.T)  # symmetric by construction
    np.testing.assert_allclose(m, _m_direct(state, np.asarray(x)), rtol=1e-5, atol=1e-7)


def test_a_factorised_covariance_gives_exact_means_and_close_widths(key: jax.Array) -> None:
    """``width_rank``: the packed covariance as a rank-r product; means stay exact, widths
    (standard deviations) close, closer the larger the rank, and exact at full rank."""
    du, dt, k = 6, 9, 200
    state = _init(du, dt, n_ids=16)
    for i in range(4):
        state = _update(state, _batch(jax.random.fold_in(key, i), 300, du, dt))
    whole = linear.prepare(state, id_ridge=10.0, width_rank=0)
    kx, kz, ki = jax.random.split(jax.random.fold_in(key, 7), 3)
    cands = Candidates(
        jax.random.normal(kz, (k, dt), jnp.float32), jax.random.randint(ki, (k,), 0, 40)
    )
    errors = []
    for rank in (2, 16, 28):  # 28: every user index pair, so nothing is left out
        fac = linear.prepare(state, id_ridge=10.0, width_rank=rank)
        assert fac.cov_packed.shape == (whole.cov_packed.shape[0], rank)
        assert fac.cov_right is not None and fac.cov_right.shape == (
            rank,
            whole.cov_packed.shape[1],
        )
        worst = 0.0
        for i in range(10):
            x = jax.random.normal(jax.random.fold_in(kx, i), (du,), jnp.float32)
            exact, approx = (
                linear.predict(whole, x, cands, 10.0),
                linear.predict(fac, x, cands, 10.0),
            )
            np.testing.assert_array_equal(np.asarray(approx[0]), np.asarray(exact[0]))
            sd, sd_approx = np.sqrt(np.asarray(exact[1])), np.sqrt(np.asarray(approx[1]))
            worst = max(worst, float(np.max(np.abs(sd_approx - sd) / sd)))
        errors.append(worst)
    assert errors[0] > errors[1] > errors[2] and errors[1] < 0.05 and errors[2] < 1e-3, errors
    # the same state always gives the same form (a fixed sketch)
    again = linear.prepare(state, id_ridge=10.0, width_rank=28)
    np.testing.assert_array_equal(np.asarray(again.cov_packed), np.asarray(fac.cov_packed))


def test_the_width_is_factorised_only_past_the_exact_size() -> None:
    from bandits import serving

    assert serving.width_rank(17, 17) == 0  # 16 x 16 features: 153 x 153 floats, whole
    assert serving.width_rank(17, 65) == 0  # 16 x 64: 1.3 MB, whole
    assert serving.width_rank(65, 65) == serving.WIDTH_RANK  # 64 x 64: 18 MB, factorised
    assert 4 * 2145 * 2145 > serving.EXACT_WIDTH_BYTES >= 4 * 153 * 2145


def test_thompson_sampling_from_a_factorised_covariance_draws_finite_scores(
    key: jax.Array,
) -> None:
    from bandits import POLICIES

    du, dt, k = 6, 9, 50
    policy = POLICIES["lin_ts"](n_ids=16)
    state = policy.update(policy.init(du, dt), _batch(key, 400, du, dt, ids=16))
    fac = linear.prepare(state, id_ridge=10.0, width_rank=1)  # crude: m may be indefinite
    c = Candidates(jax.random.normal(key, (k, dt), jnp.float32), jnp.arange(k, dtype=jnp.int32))
    r = policy.rank(fac, np.ones(du, np.float32), c, np.ones(k, bool), key=key, slate_size=5)
    assert np.isfinite(np.asarray(r.propensity)).all() and len(set(np.asarray(r.order))) == 5


def test_prepared_state_without_ids_and_update_refuses_it(key: jax.Array) -> None:
    state = _update(_init(3, 2), _batch(key, 10, 3, 2))
    serving = linear.prepare(state, id_ridge=10.0)
    assert serving.id_mean.shape == (0,) and serving.id_var.shape == (0,)
    cands = Candidates(jnp.ones((4, 2), jnp.float32), jnp.arange(4, dtype=jnp.int32))
    bias, var = linear.id_bias(serving, cands.ids, 10.0)
    np.testing.assert_array_equal(np.asarray(bias), np.zeros(4, np.float32))
    np.testing.assert_array_equal(np.asarray(var), np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="not its serving form"):
        linear.update(serving, _batch(key, 4, 3, 2), ridge=1.0, discount=1.0, refactor_every=10)  # type: ignore[arg-type]


def test_linucb_choices_from_the_prepared_state_match_the_state(key: jax.Array) -> None:
    du, dt, k = 4, 6, 64
    policy = linucb(alpha=2.0, n_ids=32)
    state = policy.update(policy.init(du, dt), _batch(key, 200, du, dt, ids=32))
    serving = policy.prepare(state)
    rank = jax.jit(policy.rank, static_argnames="slate_size")
    for i in range(20):
        kx, kz, ki = jax.random.split(jax.random.fold_in(key, i), 3)
        x = jax.random.normal(kx, (du,), jnp.float32)
        c = Candidates(
            jax.random.normal(kz, (k, dt), jnp.float32), jax.random.randint(ki, (k,), 0, 32)
        )
        mask = jnp.arange(k) < 40 + i
        a = rank(state, x, c, mask, key=kx, slate_size=10)
        b = rank(serving, x, c, mask, key=kx, slate_size=10)
        np.testing.assert_array_equal(np.asarray(a.order), np.asarray(b.order))
        np.testing.assert_array_equal(np.asarray(a.propensity), np.asarray(b.propensity))
        np.testing.assert_allclose(
            np.asarray(policy.score(serving, x, c, mask)),
            np.asarray(policy.score(state, x, c, mask)),
            rtol=1e-5,
        )
