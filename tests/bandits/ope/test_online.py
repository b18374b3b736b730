"""Live evaluation state and the anytime-valid confidence sequence."""

from __future__ import annotations

import numpy as np
import pytest

from bandits.ope import (
    DoublyRobust,
    InverseProbabilityWeighting,
    LoggedFeedback,
    SelfNormalizedIPS,
    TargetProbs,
    estimate_all,
    intervals,
    moments_merge,
    moments_of,
    online_init,
    online_intervals,
    online_update,
)
from bandits.ope.online import merge

from ._logs import single_action_log


def _batches(log: LoggedFeedback, target: TargetProbs, size: int):
    for lo in range(0, log.n, size):
        sl = slice(lo, lo + size)
        yield (
            LoggedFeedback(
                log.action[sl],
                log.reward[sl],
                log.propensity[sl],
                q_hat=None if log.q_hat is None else log.q_hat[sl],
            ),
            TargetProbs(target.target_prob[sl]),
        )


def test_streamed_batches_equal_one_pass() -> None:
    case = single_action_log(3_000, 0, logging="softmax", target="close")
    log = case.log._replace(context=None, q_hat=np.full((3_000, 4), 0.5))
    ests = (InverseProbabilityWeighting(), SelfNormalizedIPS(), DoublyRobust())
    state = online_init(len(ests))
    for b_log, b_target in _batches(log, case.target, 250):
        state = online_update(state, ests, b_log, b_target)
    streamed = online_intervals(state, ests, alpha=0.05, t_star=3_000)
    whole = estimate_all({e.name: e for e in ests}, log, case.target, interval="cs", t_star=3_000)
    for est, got in zip(ests, streamed, strict=True):
        want = whole[est.name]
        assert got.value == pytest.approx(want.value, rel=1e-12)
        assert (got.lower, got.upper) == pytest.approx((want.lower, want.upper), rel=1e-9)
        assert got.n == 3_000
        assert got.diagnostics.ess == pytest.approx(want.diagnostics.ess, rel=1e-9)


def test_worker_states_merge() -> None:
    case = single_action_log(2_000, 1, logging="softmax", target="far")
    ests = (InverseProbabilityWeighting(), SelfNormalizedIPS())
    batches = list(_batches(case.log._replace(context=None), case.target, 500))
    one = online_init(2)
    for b in batches:
        one = online_update(one, ests, *b)
    a, b = online_init(2), online_init(2)
    for i, batch in enumerate(batches):
        if i % 2:
            a = online_update(a, ests, *batch)
        else:
            b = online_update(b, ests, *batch)
    merged = merge(a, b)
    np.testing.assert_allclose(merged.mean, one.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.comoment, one.comoment, rtol=1e-9)
    np.testing.assert_allclose(merged.weights, one.weights, rtol=1e-12)


def test_moments_merge_is_exact() -> None:
    rng = np.random.default_rng(0)
    cols = [rng.normal(size=1_000) for _ in range(3)]
    rv = intervals.RoundValues(*cols)
    whole = moments_of(rv)
    parts = moments_merge(
        moments_of(intervals.RoundValues(*(c[:123] for c in cols))),
        moments_of(intervals.RoundValues(*(c[123:] for c in cols))),
    )
    np.testing.assert_allclose(parts.comoment, whole.comoment, rtol=1e-10)
    np.testing.assert_allclose(np.cov(np.stack(cols)) * 999, whole.comoment, rtol=1e-10)


def test_confidence_sequence_survives_peeking_where_normal_does_not() -> None:
    """Watching 100 streams after every batch of 100 rounds (30 looks each):

    the confidence sequence ever misses the truth in at most 8 % of streams (nominal 5 %),
    while peeking at the fixed-n normal interval misses far more often.
    """
    ests = (InverseProbabilityWeighting(),)
    cs_miss = normal_miss = 0
    for seed in range(100):
        case = single_action_log(3_000, 10_000 + seed, logging="softmax", target="close")
        state = online_init(1)
        cs_bad = normal_bad = False
        for b in _batches(case.log._replace(context=None), case.target, 100):
            state = online_update(state, ests, *b)
            est = online_intervals(state, ests, alpha=0.05, t_star=3_000)[0]
            cs_bad |= not est.lower <= case.truth <= est.upper
            m = intervals.Moments(np.asarray(state.n[0]), state.mean[0], state.comoment[0])
            lo, hi = intervals.normal_interval(m, 0.05)
            normal_bad |= not lo <= case.truth <= hi
        cs_miss += cs_bad
        normal_miss += normal_bad
    assert cs_miss <= 8
    assert normal_miss >= 2 * max(cs_miss, 5)
