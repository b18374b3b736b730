"""The estimator contract: every registered estimator, on logs whose true value is known exactly.

Tolerances are stated where they are asserted. Every case is seeded, so nothing here is flaky:
a failure means the estimator (or its interval) changed, not that the dice rolled badly.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import bandits
from bandits.ope import (
    ESTIMATORS,
    NEEDS_Q_HAT,
    SLATE_ESTIMATORS,
    Diagnostics,
    DirectMethod,
    DoublyRobust,
    DROptimisticShrinkage,
    Estimate,
    InvalidLogError,
    InverseProbabilityWeighting,
    LoggedFeedback,
    LoggedSlates,
    SelfNormalizedDR,
    SelfNormalizedIPS,
    SlateTargetProbs,
    SwitchDR,
    TargetProbs,
    cross_fit_slate_q_hat,
    doubly_robust,
    estimate_all,
    importance_weight,
    with_q_hat,
)

from ._logs import K_SLATE, K, single_action_log, slate_log

# Which estimators are consistent in which logging regime (replay assumes uniform logging).
CONSISTENT = {
    "uniform": sorted(ESTIMATORS),
    "softmax": sorted(set(ESTIMATORS) - {"replay"}),
}
# Biased by design (model error, clipping, shrinkage): held to the absolute tolerance only.
BIASED = {"dm", "clipped_ips", "switch_dr", "dr_os"}
SCENARIOS = [
    (logging, target, name)
    for logging in ("uniform", "softmax")
    for target in ("close", "far")
    for name in CONSISTENT[logging]
]


def _fitted(n: int, seed: int, logging: str, target: str):
    case = single_action_log(n, seed, logging=logging, target=target)
    log = with_q_hat(case.log, n_actions=K, key=jax.random.key(seed))
    return case._replace(log=log)


@pytest.mark.parametrize(("logging", "target", "name"), SCENARIOS)
def test_error_within_four_standard_errors(logging: str, target: str, name: str) -> None:
    """On 20,000 rounds: within 0.03 of the truth, and unbiased ones within 4 s.e."""
    case = _fitted(20_000, 1, logging, target)
    est = ESTIMATORS[name]().estimate(case.log, case.target, interval="normal")
    assert abs(est.value - case.truth) <= 0.03
    if ESTIMATORS[name].caveat:  # DM: its interval ignores the model's error, and says so
        assert est.diagnostics.warning and "direct method" in est.diagnostics.reason
    if name not in BIASED:
        se = (est.upper - est.lower) / (2 * 1.96)
        assert abs(est.value - case.truth) <= max(4 * se, 0.005), (est, case.truth)
    assert est.lower <= est.value <= est.upper
    assert est.n == 20_000


@pytest.mark.parametrize(
    "estimator", [InverseProbabilityWeighting(), SelfNormalizedIPS(), DoublyRobust()]
)
@pytest.mark.parametrize("target", ["close", "far"])
def test_normal_interval_coverage(estimator, target: str) -> None:
    """Over 100 seeded logs of 1,000 rounds the 95 % interval covers the truth 88-100 % of the time."""
    hits = 0
    for seed in range(100):
        case = _fitted(1_000, 100 + seed, "softmax", target)
        est = estimator.estimate(case.log, case.target, interval="normal")
        hits += est.lower <= case.truth <= est.upper
    assert 88 <= hits <= 100


def test_bootstrap_coverage_ips() -> None:
    """The Poisson bootstrap covers the truth in 85-100 % of 60 seeded logs."""
    hits = 0
    for seed in range(60):
        case = single_action_log(400, 500 + seed, logging="softmax", target="close")
        est = InverseProbabilityWeighting().estimate(
            case.log, case.target, key=jax.random.key(seed), n_bootstrap=300
        )
        hits += est.lower <= case.truth <= est.upper
    assert 51 <= hits <= 60


def test_interval_kinds_agree_on_value_and_order_by_width() -> None:
    case = _fitted(5_000, 3, "softmax", "close")
    kinds = {
        kind: DoublyRobust().estimate(case.log, case.target, interval=kind, key=jax.random.key(0))
        for kind in ("bootstrap", "normal", "bernstein", "cs")
    }
    values = {round(e.value, 12) for e in kinds.values()}
    assert len(values) == 1
    width = {k: e.upper - e.lower for k, e in kinds.items()}
    # Bootstrap and normal agree within 15 %; the anytime and Bernstein intervals are wider.
    assert abs(width["bootstrap"] / width["normal"] - 1) < 0.15
    assert width["normal"] < width["cs"] < width["bernstein"]


def test_bucketed_bootstrap_matches_normal_on_large_log() -> None:
    """Above 4,096 rows the bootstrap resamples random buckets; it must still match the delta method."""
    case = single_action_log(50_000, 4, logging="softmax", target="far")
    boot = SelfNormalizedIPS().estimate(case.log, case.target, key=jax.random.key(1))
    normal = SelfNormalizedIPS().estimate(case.log, case.target, interval="normal")
    assert abs((boot.upper - boot.lower) / (normal.upper - normal.lower) - 1) < 0.15
    assert abs((boot.upper + boot.lower) / 2 - normal.value) < 0.25 * (normal.upper - normal.lower)


@pytest.mark.slow
def test_same_key_same_interval_and_estimate_all_matches_one_by_one() -> None:
    case = _fitted(2_000, 5, "softmax", "close")
    ests = {name: ESTIMATORS[name]() for name in ESTIMATORS}
    key = jax.random.key(7)
    together = estimate_all(ests, case.log, case.target, key=key)
    for i, (name, est) in enumerate(ests.items()):
        alone = est.estimate(case.log, case.target, key=jax.random.fold_in(key, i))
        assert together[name] == alone
    again = estimate_all(ests, case.log, case.target, key=key)
    assert again == together


def test_every_estimator_returns_the_one_estimate_type() -> None:
    assert bandits.Estimate is Estimate and bandits.Diagnostics is Diagnostics
    case = _fitted(500, 3, "softmax", "close")
    for name in sorted(ESTIMATORS):
        est = ESTIMATORS[name]().estimate(case.log, case.target, interval="normal")
        assert type(est) is bandits.Estimate and type(est.diagnostics) is bandits.Diagnostics
        assert est.n == 500 and est.lower <= est.value <= est.upper


def test_doubly_robust_family_is_baseline_plus_weight_times_residual() -> None:
    case = _fitted(1_000, 4, "softmax", "far")
    log, target = case.log, case.target
    assert log.q_hat is not None
    rows = np.arange(log.n)
    w = target.target_prob[rows, log.action] / log.propensity
    baseline = (target.target_prob * log.q_hat).sum(axis=1)
    residual = log.reward - log.q_hat[rows, log.action]
    rv = doubly_robust(log, target, importance_weight(log, target))
    np.testing.assert_allclose(rv.direct, baseline, rtol=1e-12)
    np.testing.assert_allclose(rv.weighted, w * residual, rtol=1e-12)
    assert (rv.normaliser == 1.0).all()
    sn = doubly_robust(log, target, w, self_normalised=True)
    np.testing.assert_array_equal(sn.normaliser, w)
    # Each estimator of the family only chooses the weight of the residual.
    dr = DoublyRobust().round_values(log, target)
    for same_as_dr in (SwitchDR(max_weight=np.inf), DROptimisticShrinkage(shrinkage=np.inf)):
        for a, b in zip(same_as_dr.round_values(log, target), dr, strict=True):
            np.testing.assert_array_equal(a, b)
    dm = DirectMethod().estimate(log, target, interval="normal").value
    assert SwitchDR(max_weight=0.0).estimate(log, target, interval="normal").value == dm
    for a, b in zip(SelfNormalizedDR().round_values(log, target), sn, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match=r"LoggedFeedback\.q_hat is None"):
        doubly_robust(log._replace(q_hat=None), target, w)


def test_estimators_that_need_a_reward_model_say_so() -> None:
    case = single_action_log(100, 0, logging="softmax", target="close")
    for name in sorted(NEEDS_Q_HAT):
        with pytest.raises(TypeError, match=r"LoggedFeedback\.q_hat is None"):
            ESTIMATORS[name]().estimate(case.log, case.target, interval="normal")
    for name in sorted(set(ESTIMATORS) - NEEDS_Q_HAT):
        ESTIMATORS[name]().estimate(case.log, case.target, interval="normal")


def test_bootstrap_needs_a_key() -> None:
    case = single_action_log(100, 0, logging="softmax", target="close")
    with pytest.raises(
        TypeError, match=r"^interval='bootstrap' needs key=jax\.random\.key\(\.\.\.\)$"
    ):
        InverseProbabilityWeighting().estimate(case.log, case.target)


def test_diagnostics() -> None:
    case = single_action_log(10_000, 6, logging="uniform", target="close")
    # A target equal to the logging policy has all weights 1: ESS = n, nothing to warn about.
    same = case.target._replace(target_prob=np.full_like(case.target.target_prob, 1.0 / K))
    d = InverseProbabilityWeighting().estimate(case.log, same, interval="normal").diagnostics
    assert d.ess == pytest.approx(10_000)
    assert (d.max_weight, d.mean_weight, d.unsupported_share) == pytest.approx((1.0, 1.0, 0.0))
    assert not d.warning and d.reason == ""
    # A deterministic target never plays 3/4 of the logged actions.
    greedy = np.zeros_like(case.target.target_prob)
    greedy[:, 0] = 1.0
    d = (
        InverseProbabilityWeighting()
        .estimate(case.log, case.target._replace(target_prob=greedy), interval="normal")
        .diagnostics
    )
    assert d.unsupported_share == pytest.approx(0.75, abs=0.02)
    assert d.max_weight == pytest.approx(4.0)
    # Propensities logged at half their true value: mean weight near 2, and the warning says why.
    bad = case.log._replace(propensity=case.log.propensity / 2)
    d = InverseProbabilityWeighting().estimate(bad, case.target, interval="normal").diagnostics
    assert d.warning
    assert d.reason.startswith("mean importance weight 2.0")
    # A single huge weight dominates.
    tiny = case.log.propensity.copy()
    tiny[0] = 1e-6
    d = (
        InverseProbabilityWeighting()
        .estimate(case.log._replace(propensity=tiny), case.target, interval="normal")
        .diagnostics
    )
    assert d.warning and "of the total importance weight" in d.reason


# ----------------------------------------------------------------------------------- slates

SLATE_CONSISTENT = {
    # reward at a position depends on the items above it: the cascade estimators are unbiased
    True: ["sips", "rips", "rips_sn", "cascade_dr"],
    # independent positions: every slate estimator is unbiased
    False: ["sips", "iips", "rips", "rips_sn", "pi", "cascade_dr"],
}


@pytest.mark.parametrize(
    ("interacting", "name"), [(i, n) for i in (True, False) for n in SLATE_CONSISTENT[i]]
)
def test_slate_estimators_unbiased_where_their_assumption_holds(
    interacting: bool, name: str
) -> None:
    log, target, truth = slate_log(20_000, 11, interacting=interacting)
    log = log._replace(q_hat=cross_fit_slate_q_hat(log, n_actions=K_SLATE, key=jax.random.key(0)))
    est = SLATE_ESTIMATORS[name]().estimate(log, target, interval="normal")
    se = (est.upper - est.lower) / (2 * 1.96)
    assert abs(est.value - truth) <= max(4 * se, 0.005), (est, truth)


def test_independence_estimators_are_biased_under_interaction() -> None:
    """IIPS and PI ignore the interaction; with 50,000 slates their bias is well outside noise."""
    log, target, truth = slate_log(50_000, 12, interacting=True)
    for name in ("iips", "pi"):
        est = SLATE_ESTIMATORS[name]().estimate(log, target, interval="normal")
        assert not est.lower <= truth <= est.upper, (name, est, truth)


def test_cascade_dr_needs_q_hat_and_beats_rips_variance() -> None:
    log, target, _ = slate_log(5_000, 13, interacting=True)
    with pytest.raises(TypeError, match=r"LoggedSlates\.q_hat is None"):
        SLATE_ESTIMATORS["cascade_dr"]().estimate(log, target, interval="normal")
    log = log._replace(q_hat=cross_fit_slate_q_hat(log, n_actions=K_SLATE, key=jax.random.key(0)))
    rips = SLATE_ESTIMATORS["rips"]().estimate(log, target, interval="normal")
    cdr = SLATE_ESTIMATORS["cascade_dr"]().estimate(log, target, interval="normal")
    assert cdr.upper - cdr.lower < rips.upper - rips.lower


# ----------------------------------------------------------------------------- invalid input

A = np.array([0, 1, 2, 1])
R = np.array([1.0, 0.0, 1.0, 0.0])
P = np.array([0.5, 0.25, 0.25, 0.5])
T = np.full((4, 3), 1.0 / 3)


def _log(**changes: object) -> LoggedFeedback:
    return LoggedFeedback(action=A, reward=R, propensity=P)._replace(**changes)


INVALID = [
    # (what is wrong, log, target, exception, exact message)
    (
        "propensity 0",
        _log(propensity=np.array([0.5, 0.0, 0.25, 0.5])),
        T,
        InvalidLogError,
        "LoggedFeedback.propensity must be in (0, 1] at rows [1] (1 of 4)",
    ),
    (
        "propensity above 1",
        _log(propensity=np.array([0.5, 1.5, 0.25, 2.0])),
        T,
        InvalidLogError,
        "LoggedFeedback.propensity must be in (0, 1] at rows [1, 3] (2 of 4)",
    ),
    (
        "NaN propensity",
        _log(propensity=np.array([np.nan, 0.5, 0.25, 0.5])),
        T,
        InvalidLogError,
        "LoggedFeedback.propensity has NaN or infinite values at rows [0] (1 of 4)",
    ),
    (
        "NaN reward",
        _log(reward=np.array([1.0, np.nan, 0.0, np.nan])),
        T,
        InvalidLogError,
        "LoggedFeedback.reward has NaN or infinite values at rows [1, 3] (2 of 4)",
    ),
    (
        "missing reward",
        _log(reward=None),
        T,
        InvalidLogError,
        "LoggedFeedback.reward is missing (None)",
    ),
    (
        "reward a list",
        _log(reward=[1.0, 0.0, 1.0, 0.0]),
        T,
        InvalidLogError,
        "LoggedFeedback.reward must be a numpy array, got list",
    ),
    (
        "short reward",
        _log(reward=R[:3]),
        T,
        InvalidLogError,
        "LoggedFeedback.reward has shape (3,), expected (4,)",
    ),
    (
        "float actions",
        _log(action=A.astype(float)),
        T,
        InvalidLogError,
        "LoggedFeedback.action must have an integer dtype, got float64",
    ),
    (
        "negative action",
        _log(action=np.array([0, -1, 2, 1])),
        T,
        InvalidLogError,
        "LoggedFeedback.action is negative at rows [1] (1 of 4)",
    ),
    (
        "empty log",
        LoggedFeedback(A[:0], R[:0], P[:0]),
        T[:0],
        InvalidLogError,
        "LoggedFeedback is empty (0 rows)",
    ),
    (
        "action outside the target's action space",
        _log(),
        np.full((4, 2), 0.5),
        InvalidLogError,
        "LoggedFeedback.action is >= k=2, the target's number of actions at rows [2] (1 of 4)",
    ),
    (
        "q_hat with another action space",
        _log(q_hat=np.zeros((4, 4))),
        T,
        InvalidLogError,
        "LoggedFeedback.q_hat has k=4 actions but TargetProbs.target_prob has k=3",
    ),
    (
        "q_hat smaller than the logged actions",
        _log(q_hat=np.zeros((4, 2))),
        T,
        InvalidLogError,
        "LoggedFeedback.action is >= k=2 (the number of actions) at rows [2] (1 of 4)",
    ),
    (
        "target rows not summing to 1",
        _log(),
        np.array([[0.5, 0.5, 0.5]] + [[1 / 3] * 3] * 3),
        InvalidLogError,
        "TargetProbs.target_prob rows do not sum to 1 at rows [0] (1 of 4)",
    ),
    (
        "negative target probability",
        _log(),
        np.array([[1.5, -0.5, 0.0]] + [[1 / 3] * 3] * 3),
        InvalidLogError,
        "TargetProbs.target_prob has negative probabilities at rows [0] (1 of 4)",
    ),
    (
        "target for other rows",
        _log(),
        T[:3],
        InvalidLogError,
        "TargetProbs.target_prob has shape (3, 3), expected (4, k) to match the log's 4 rows",
    ),
    (
        "NaN context",
        _log(context=np.array([[0.0], [np.nan], [1.0], [np.inf]])),
        T,
        InvalidLogError,
        "LoggedFeedback.context has NaN or infinite values at rows [1, 3] (2 of 4)",
    ),
]


@pytest.mark.parametrize(
    ("log", "target", "error", "message"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_input_message(log, target, error, message: str) -> None:
    with pytest.raises(error) as info:
        InverseProbabilityWeighting().estimate(log, TargetProbs(target), interval="normal")
    assert str(info.value) == message


def test_many_bad_rows_are_previewed() -> None:
    n = 25
    log = LoggedFeedback(np.zeros(n, np.int64), np.full(n, np.nan), np.full(n, 0.5))
    with pytest.raises(InvalidLogError) as info:
        log.check()
    assert str(info.value) == (
        "LoggedFeedback.reward has NaN or infinite values at rows "
        "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...] (25 of 25)"
    )


def test_missing_column_from_columns() -> None:
    columns = {"action": A, "click": R}
    with pytest.raises(InvalidLogError) as info:
        LoggedFeedback.from_columns(columns, {"reward": "click", "propensity": "pscore"})
    assert str(info.value) == (
        "missing column 'pscore' for LoggedFeedback.propensity; "
        "available columns: ['action', 'click']"
    )
    with pytest.raises(InvalidLogError) as info:
        LoggedFeedback.from_columns(columns, {"rewrad": "click"})
    assert str(info.value) == (
        "column map names unknown field(s) ['rewrad']; fields are action, reward, propensity"
    )
    log = LoggedFeedback.from_columns(
        {**columns, "pscore": P}, {"reward": "click", "propensity": "pscore"}
    )
    assert log.check().n == 4


def test_invalid_slates() -> None:
    slate = np.array([[0, 1], [1, 2]])
    good = LoggedSlates(slate, np.zeros((2, 2)), np.full((2, 2), 0.5))
    target = SlateTargetProbs(np.full((2, 2, 3), 1 / 3))
    with pytest.raises(InvalidLogError) as info:
        SLATE_ESTIMATORS["rips"]().estimate(
            good._replace(propensity=np.array([[0.5, 0.5], [0.0, 0.5]])), target, interval="normal"
        )
    assert str(info.value) == "LoggedSlates.propensity must be in (0, 1] at rows [1] (1 of 2)"
    with pytest.raises(InvalidLogError) as info:
        SLATE_ESTIMATORS["rips"]().estimate(
            good, SlateTargetProbs(np.full((2, 2, 2), 0.5)), interval="normal"
        )
    assert str(info.value) == (
        "LoggedSlates.slate is >= k=2, the target's number of actions at rows [1] (1 of 2)"
    )


@pytest.mark.parametrize(
    ("interval", "alpha", "message"),
    [
        (
            "wald",
            0.05,
            "interval must be one of ('bootstrap', 'normal', 'bernstein', 'cs'), got 'wald'",
        ),
        ("normal", 1.5, "alpha must be in (0, 1), got 1.5"),
    ],
)
def test_invalid_options(interval: str, alpha: float, message: str) -> None:
    # Under the jaxtyping + beartype test hook the Literal annotation rejects "wald" first
    # (a TypeError naming the parameter); without it, estimate() raises the ValueError.
    with pytest.raises((ValueError, TypeError)) as info:
        InverseProbabilityWeighting().estimate(
            _log(),
            TargetProbs(T),
            interval=interval,
            alpha=alpha,  # type: ignore[arg-type]
        )
    if isinstance(info.value, ValueError):
        assert str(info.value) == message
    else:
        assert "interval" in str(info.value)


def test_replay_warns_when_logging_is_not_uniform() -> None:
    uniform = single_action_log(2_000, 8, logging="uniform", target="close")
    est = ESTIMATORS["replay"]().estimate(uniform.log, uniform.target, interval="normal")
    assert not est.diagnostics.warning
    skewed = single_action_log(2_000, 8, logging="softmax", target="close")
    est = ESTIMATORS["replay"]().estimate(skewed.log, skewed.target, interval="normal")
    assert est.diagnostics.warning
    assert est.diagnostics.reason == (
        "replay: propensities vary, so logging was not uniform and replay is biased"
    )


def test_no_support_gives_nan_and_a_warning_not_a_crash() -> None:
    """A target that never plays a logged action: ratio estimators are undefined (NaN), IPS is 0."""
    log = LoggedFeedback(np.array([0, 1]), np.array([1.0, 0.0]), np.array([0.5, 0.5]))
    target = TargetProbs(np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))
    res = estimate_all(
        {"snips": SelfNormalizedIPS(), "ips": InverseProbabilityWeighting()},
        log,
        target,
        interval="normal",
    )
    assert np.isnan(res["snips"].value) and np.isnan(res["snips"].lower)
    assert res["ips"].value == 0.0
    d = res["ips"].diagnostics
    assert d.warning and d.ess == 0.0 and d.unsupported_share == 1.0
    assert d.reason.startswith("effective sample size 0.0 of 2 rounds is too small")
