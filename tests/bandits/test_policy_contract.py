"""One battery for every policy in the registry (river's check_estimator, optax's alias table).

Every registered policy must: pass jit; vmap over requests; give propensities in (0, 1] that
match empirical sampling frequencies; give the same slate for the same key; survive a save/load
round-trip bit for bit; never choose a masked candidate; beat uniform on the simulator; rank
from its prepared (serving) state exactly as from the state.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bandits
from bandits import POLICIES, Candidates, Feedback, Policy, load, save
from streaming.sim.simulator import SimConfig, Simulator

pytestmark = pytest.mark.slow  # every policy jitted, vmapped and sampled: minutes of compilation

# Small hyperparameters per policy, so the battery stays fast. Every registered policy must
# appear here: a new policy without a row fails test_every_policy_is_in_the_battery.
CASES: dict[str, dict[str, Any]] = {
    "linucb": {"n_ids": 128, "alpha": 0.5},
    "lin_ts": {"n_ids": 128, "mc_samples": 64, "scale": 0.2},
    "logistic_ts": {"n_ids": 128, "mc_samples": 64, "scale": 0.5},
    "squarecb": {"n_ids": 128},
    "epsilon_greedy": {"n_ids": 128, "epsilon": 0.1},
    "softmax": {"n_ids": 128, "temperature": 0.05},
    "neural_linear": {
        "hidden": 16,
        "embed_dim": 8,
        "buffer_size": 512,
        "batch_size": 64,
        "mc_samples": 64,
        "train_steps": 4,
    },
    "disjoint_linucb": {"n_arms": 60, "alpha": 0.5},
    "uniform": {},
}
DU, DT, K, S = 4, 4, 8, 2
SIM = SimConfig(n_users=100, n_tracks=60, d_user=DU, d_track=DT, n_candidates=K, seed=3)


def test_every_policy_is_in_the_battery() -> None:
    assert set(CASES) == set(POLICIES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_policy_is_a_public_factory(name: str) -> None:
    factory = getattr(bandits, name)
    assert POLICIES[name] is factory and name in bandits.__all__
    policy = factory(**CASES[name])
    assert isinstance(policy, Policy) and policy.spec.name == name


@pytest.mark.parametrize("name", sorted(CASES))
def test_raw_arrays_are_refused_with_a_type_error(name: str) -> None:
    policy = _policy(name)
    state = policy.init(DU, DT)
    x, c, m = _request()
    raw = np.asarray(c.features)
    build = r"build one with bandits\.Candidates\(.*or pad raw arrays with bandits\.pad"
    with pytest.raises(
        TypeError,
        match=rf"^candidates must be bandits\.types\.Candidates, got an array of shape \(8, 4\); {build}",
    ):
        policy.rank(state, x, raw, m, key=jax.random.key(0), slate_size=S)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=rf"got an array of shape \(8, 4\); {build}"):
        policy.score(state, x, jnp.asarray(raw), m)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError,
        match=r"^feedback must be bandits\.types\.Feedback, got an array of shape \(8, 4\); build one with bandits\.Feedback\(context=",
    ):
        policy.update(state, raw)  # type: ignore[arg-type]


@functools.cache
def _policy(name: str) -> Policy:
    # Cached: the policy's jitted functions are then compiled once for the whole battery.
    return POLICIES[name](**CASES[name])


@functools.cache
def _batched(name: str) -> tuple[Any, Any, Any]:
    """Jitted ``rank`` over requests, ``rank`` over keys (both slate S) and ``update``."""
    policy = _policy(name)
    over_requests = jax.jit(
        jax.vmap(
            lambda s, x, c, m, k: policy.rank(s, x, c, m, key=k, slate_size=S),
            in_axes=(None, 0, 0, 0, 0),
        )
    )
    over_keys = jax.jit(
        jax.vmap(
            lambda s, x, c, m, k: policy.rank(s, x, c, m, key=k, slate_size=S),
            in_axes=(None, None, None, None, 0),
        )
    )
    return over_requests, over_keys, jax.jit(policy.update)


def _cands(req: Any, i: int) -> Candidates:
    return Candidates(
        jnp.asarray(req.candidate_features[i]), jnp.asarray(req.candidates[i], jnp.int32)
    )


def _feedback(req: Any, chosen: np.ndarray, reward: np.ndarray, prop: np.ndarray) -> Feedback:
    n = chosen.shape[0]
    rows = np.arange(n)
    return Feedback(
        context=jnp.asarray(req.context),
        features=jnp.asarray(req.candidate_features[rows, chosen]),
        action=jnp.asarray(req.candidates[rows, chosen], jnp.int32),
        position=jnp.zeros((n,), jnp.int32),
        reward=jnp.asarray(reward, jnp.float32),
        propensity=jnp.asarray(prop, jnp.float32),
        mask=jnp.ones((n,), jnp.bool_),
    )


def _run(name: str, rounds: int, batch: int, seed: int) -> tuple[Any, float]:
    """Play ``rounds`` simulator rounds, learning every ``batch``; mean true reward of choices."""
    sim = Simulator(SIM)
    rng = np.random.default_rng(seed)
    state = _policy(name).init(DU, DT)
    rank, _, update = _batched(name)
    key = jax.random.key(seed)
    total = 0.0
    for _ in range(rounds // batch):
        req = sim.requests(batch)
        key, sub = jax.random.split(key)
        c = Candidates(jnp.asarray(req.candidate_features), jnp.asarray(req.candidates, jnp.int32))
        ranked = rank(
            state,
            jnp.asarray(req.context),
            c,
            jnp.ones((batch, K), jnp.bool_),
            jax.random.split(sub, batch),
        )
        chosen = np.asarray(ranked.order[:, 0])
        p = sim.expected_reward(req)[np.arange(batch), chosen]
        total += float(p.sum())
        reward = (rng.random(batch) < p).astype(np.float32)
        state = update(state, _feedback(req, chosen, reward, np.asarray(ranked.propensity[:, 0])))
    return state, total / (rounds // batch * batch)


_trained: dict[str, Any] = {}


def _state(name: str) -> Any:
    """A policy state trained on a few hundred simulator rounds (cached per policy)."""
    if name not in _trained:
        _trained[name] = _run(name, 400, 100, seed=1)[0]
    return _trained[name]


def _request(i: int = 0) -> tuple[jax.Array, Candidates, jax.Array]:
    req = Simulator(SIM).requests(i + 1)
    return jnp.asarray(req.context[i]), _cands(req, i), jnp.ones((K,), jnp.bool_)


@pytest.mark.parametrize("name", sorted(CASES))
def test_functions_pass_jit(name: str, key: jax.Array) -> None:
    policy = _policy(name)
    state = jax.jit(policy.init, static_argnums=(0, 1))(DU, DT)
    eager = policy.init(DU, DT)
    assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(eager)
    x, c, m = _request()
    ranked = jax.jit(policy.rank, static_argnames="slate_size")(
        state, x, c, m, key=key, slate_size=S
    )
    assert ranked.order.shape == (S,) and ranked.propensity.shape == (S,)
    assert ranked.order.dtype == jnp.int32 and ranked.propensity.dtype == jnp.float32
    scores = jax.jit(policy.score)(state, x, c, m)
    assert scores.shape == (K,)
    fb = Feedback(
        x[None],
        c.features[:1],
        c.ids[:1],
        jnp.zeros((1,), jnp.int32),
        jnp.ones((1,), jnp.float32),
        jnp.ones((1,), jnp.float32),
        jnp.ones((1,), jnp.bool_),
    )
    new = _batched(name)[2](state, fb)
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(state)


@pytest.mark.parametrize("name", sorted(CASES))
def test_vmap_over_requests_matches_one_at_a_time(name: str, key: jax.Array) -> None:
    policy = _policy(name)
    state = _state(name)
    req = Simulator(SIM).requests(5)
    c = Candidates(jnp.asarray(req.candidate_features), jnp.asarray(req.candidates, jnp.int32))
    masks = jnp.ones((5, K), jnp.bool_)
    keys = jax.random.split(key, 5)
    batched = _batched(name)[0](state, jnp.asarray(req.context), c, masks, keys)
    assert batched.order.shape == (5, S)
    for i in range(5):
        one = policy.rank(
            state, jnp.asarray(req.context[i]), _cands(req, i), masks[i], key=keys[i], slate_size=S
        )
        np.testing.assert_array_equal(batched.order[i], one.order)
        np.testing.assert_allclose(batched.propensity[i], one.propensity, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_propensities_match_empirical_frequencies(name: str) -> None:
    state = _state(name)
    x, c, m = _request(2)
    n = 4000
    ranked = _batched(name)[1](state, x, c, m, jax.random.split(jax.random.key(11), n))
    order, prop = np.asarray(ranked.order), np.asarray(ranked.propensity)
    assert np.all(prop > 0) and np.all(prop <= 1)
    # Monte Carlo propensities (Thompson sampling) carry their own error of about
    # sqrt(p (1 - p) / mc_samples); exact ones only the sampling error of the check.
    mc = CASES[name].get("mc_samples")
    for j, prefix in ((0, None), (1, int(np.bincount(order[:, 0]).argmax()))):
        rows = np.ones(n, bool) if prefix is None else order[:, 0] == prefix
        sub_o, sub_p = order[rows, j], prop[rows, j]
        n_sub = int(rows.sum())
        for a in np.unique(sub_o):
            freq = float((sub_o == a).mean())
            reported = float(sub_p[sub_o == a].mean())
            tol = 4 * np.sqrt(freq * (1 - freq) / n_sub) + 0.01
            if mc:
                tol += 3 * np.sqrt(freq * (1 - freq) / mc) + 1.0 / mc
            assert abs(freq - reported) <= tol, (name, j, a, freq, reported)


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_key_gives_the_same_slate(name: str, key: jax.Array) -> None:
    policy = _policy(name)
    state = _state(name)
    x, c, m = _request(1)
    a = policy.rank(state, x, c, m, key=key, slate_size=S)
    b = policy.rank(state, x, c, m, key=key, slate_size=S)
    np.testing.assert_array_equal(a.order, b.order)
    np.testing.assert_array_equal(a.propensity, b.propensity)


@pytest.mark.parametrize("name", sorted(CASES))
def test_save_load_round_trip_is_bit_for_bit(name: str, key: jax.Array) -> None:
    policy = _policy(name)
    state = _state(name)
    blob = save(policy, state)
    assert isinstance(blob, bytes)
    back = load(policy, blob, like=policy.init(DU, DT))
    assert type(back) is type(state)
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(back), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    x, c, m = _request(3)
    r1 = policy.rank(state, x, c, m, key=key, slate_size=S)
    r2 = policy.rank(back, x, c, m, key=key, slate_size=S)
    np.testing.assert_array_equal(r1.order, r2.order)


@pytest.mark.parametrize("name", sorted(CASES))
def test_prepared_state_ranks_like_the_state(name: str, key: jax.Array) -> None:
    policy = _policy(name)
    state = _state(name)
    serving = policy.prepare(state)
    # Derived, never saved: the state's leaves are untouched and still what save() writes.
    assert save(policy, state) == save(policy, _state(name))
    rank = jax.jit(policy.rank, static_argnames="slate_size")
    for i in range(4):
        x, c, m = _request(i)
        k = jax.random.fold_in(key, i)
        a = rank(state, x, c, m, key=k, slate_size=S)
        b = rank(serving, x, c, m, key=k, slate_size=S)
        np.testing.assert_array_equal(np.asarray(a.order), np.asarray(b.order))
        np.testing.assert_allclose(np.asarray(b.propensity), np.asarray(a.propensity), rtol=1e-6)
        np.testing.assert_allclose(
            np.asarray(policy.score(serving, x, c, m)),
            np.asarray(policy.score(state, x, c, m)),
            rtol=1e-5,
            atol=1e-6,
        )


@pytest.mark.parametrize("name", sorted(CASES))
def test_masked_candidates_are_never_chosen(name: str) -> None:
    policy = _policy(name)
    state = _state(name)
    x, c, _ = _request(4)
    # Mask out the candidates the policy likes best, so masking has to do the work.
    scores = np.asarray(policy.score(state, x, c, jnp.ones((K,), jnp.bool_)))
    mask = np.ones(K, bool)
    mask[np.argsort(-scores, kind="stable")[: K // 2]] = False
    ranked = _batched(name)[1](
        state, x, c, jnp.asarray(mask), jax.random.split(jax.random.key(5), 500)
    )
    assert mask[np.asarray(ranked.order)].all()
    assert np.isneginf(np.asarray(policy.score(state, x, c, jnp.asarray(mask)))[~mask]).all()


_uniform_reward: list[float] = []


@pytest.mark.parametrize("name", sorted(set(CASES) - {"uniform"}))
def test_beats_uniform_on_the_simulator(name: str) -> None:
    if not _uniform_reward:
        _uniform_reward.append(_run("uniform", 3000, 100, seed=2)[1])
    _, reward = _run(name, 3000, 100, seed=2)
    assert reward > _uniform_reward[0] + 0.03, (name, reward, _uniform_reward[0])
