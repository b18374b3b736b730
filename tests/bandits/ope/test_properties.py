"""Invariants of every single-action estimator, checked on random small logs (hypothesis)."""

from __future__ import annotations

import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bandits.ope import ESTIMATORS, LoggedFeedback, TargetProbs, estimate_all

K = 3


@st.composite
def logs(draw: st.DrawFn) -> tuple[LoggedFeedback, TargetProbs]:
    n = draw(st.integers(2, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    mu = rng.dirichlet(np.ones(K), size=n) * 0.97 + 0.01
    action = np.array([rng.choice(K, p=row / row.sum()) for row in mu])
    propensity = (mu / mu.sum(axis=1, keepdims=True))[np.arange(n), action]
    target = rng.dirichlet(np.ones(K) * draw(st.sampled_from([0.2, 1.0, 5.0])), size=n)
    reward = rng.integers(0, 2, n).astype(np.float64) * draw(st.sampled_from([1.0, 3.5]))
    q_hat = rng.random((n, K))
    return LoggedFeedback(action, reward, propensity, q_hat=q_hat), TargetProbs(target)


ALL = {name: ESTIMATORS[name]() for name in ESTIMATORS}


@settings(max_examples=40, deadline=None)
@given(logs(), st.integers(0, 2**31 - 1))
def test_row_order_does_not_matter(case, seed: int) -> None:
    log, target = case
    perm = np.random.default_rng(seed).permutation(log.n)
    shuffled = LoggedFeedback(*(None if c is None else c[perm] for c in log))
    a = estimate_all(ALL, log, target, interval="normal")
    b = estimate_all(ALL, shuffled, TargetProbs(target.target_prob[perm]), interval="normal")
    for name in ALL:
        np.testing.assert_allclose(a[name].value, b[name].value, rtol=1e-9, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(logs())
def test_self_normalised_estimates_stay_in_the_reward_range(case) -> None:
    log, target = case
    res = estimate_all(ALL, log, target, interval="normal")
    lo, hi = log.reward.min(), log.reward.max()
    for name in ("snips", "replay"):
        if np.isfinite(res[name].value):
            assert lo - 1e-9 <= res[name].value <= hi + 1e-9


@settings(max_examples=40, deadline=None)
@given(logs())
def test_on_policy_ips_is_the_mean_reward(case) -> None:
    """With the logging policy as target at the logged actions, every weight is 1."""
    log, _ = case
    target = np.full((log.n, K), 0.0)
    target[np.arange(log.n), log.action] = log.propensity
    rest = (1.0 - log.propensity) / (K - 1)
    for a in range(K):
        target[:, a] = np.where(log.action == a, log.propensity, rest)
    res = estimate_all(ALL, log, TargetProbs(target), interval="normal")
    for name in ("ips", "snips", "clipped_ips"):
        np.testing.assert_allclose(res[name].value, log.reward.mean(), rtol=1e-9)
    assert abs(res["ips"].diagnostics.ess - log.n) < 1e-6


@settings(max_examples=20, deadline=None)
@given(logs(), st.integers(0, 1000))
def test_intervals_contain_the_value(case, seed: int) -> None:
    log, target = case
    for kind in ("bootstrap", "normal", "bernstein", "cs"):
        res = estimate_all(
            ALL, log, target, interval=kind, key=jax.random.key(seed), n_bootstrap=50
        )
        for name, est in res.items():
            if np.isfinite(est.value) and kind != "bootstrap":
                assert est.lower <= est.value <= est.upper, (name, kind, est)
