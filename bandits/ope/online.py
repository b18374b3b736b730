"""Live evaluation: fold batches of logged rounds into mergeable state, read intervals any time.

The state holds, per estimator, the ``Moments`` of its per-round values, plus running sums of
the importance weights for the diagnostics. ``online_update`` is pure (state in, state out), so
the streaming shell can feed it batches from Kafka, checkpoint it with ``np.savez`` and merge
workers' states. The interval to watch is the anytime-valid confidence sequence: stopping as
soon as it excludes a threshold keeps its coverage (a normal interval would not).

Example:
    >>> import numpy as np
    >>> from bandits.ope.ips import InverseProbabilityWeighting
    >>> from bandits.ope.types import LoggedFeedback, TargetProbs
    >>> ests = (InverseProbabilityWeighting(),)
    >>> state = online_init(len(ests))
    >>> for _ in range(3):
    ...     log = LoggedFeedback(np.array([0, 1]), np.array([1.0, 0.0]), np.array([0.5, 0.5]))
    ...     state = online_update(state, ests, log, TargetProbs(np.full((2, 2), 0.5)))
    >>> online_intervals(state, ests, alpha=0.05, t_star=100)[0].value
    0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from bandits.ope import intervals
from bandits.ope.base import AbstractSingleActionEstimator
from bandits.ope.diagnostics import diagnostics_from_sums
from bandits.ope.types import (
    Estimate,
    Float5,
    FloatE,
    FloatE3,
    FloatE33,
    LoggedFeedback,
    TargetProbs,
)


class OnlineEvaluation(NamedTuple):
    """Running state of ``e`` estimators over a stream.

    Attributes:
        n: ``(e,)`` rows folded in, per estimator.
        mean: ``(e, 3)`` column means of each estimator's ``RoundValues``.
        comoment: ``(e, 3, 3)`` co-moments of each estimator's ``RoundValues``.
        weights: ``(5,)`` rows, sum of weights, sum of squared weights, max weight, and rows
            the target would never play.
    """

    n: FloatE
    mean: FloatE3
    comoment: FloatE33
    weights: Float5


def online_init(n_estimators: int) -> OnlineEvaluation:
    """The empty state for ``n_estimators`` estimators."""
    e = n_estimators
    return OnlineEvaluation(np.zeros(e), np.zeros((e, 3)), np.zeros((e, 3, 3)), np.zeros(5))


def online_update(
    state: OnlineEvaluation,
    estimators: Sequence[AbstractSingleActionEstimator],
    log: LoggedFeedback,
    target: TargetProbs,
) -> OnlineEvaluation:
    """Fold one batch (validated here) into the state; returns the new state.

    Raises:
        InvalidLogError: the batch is malformed (the caller may dead-letter it and go on).
    """
    log.check()
    target.check(log)
    n, mean, comoment = state.n.copy(), state.mean.copy(), state.comoment.copy()
    for j, est in enumerate(estimators):
        merged = intervals.moments_merge(
            intervals.Moments(n[j], mean[j], comoment[j]),
            intervals.moments_of(est.round_values(log, target)),
        )
        n[j], mean[j], comoment[j] = merged
    w, t = estimators[0].importance_weights(log, target) if estimators else (np.ones(1), np.ones(1))
    old = state.weights
    weights = np.array(
        [
            old[0] + log.n,
            old[1] + float(w.sum()),
            old[2] + float(np.dot(w, w)),
            max(float(old[3]), float(w.max())),
            old[4] + float(np.count_nonzero(t == 0.0)),
        ]
    )
    return OnlineEvaluation(n, mean, comoment, weights)


def merge(a: OnlineEvaluation, b: OnlineEvaluation) -> OnlineEvaluation:
    """Combine the states of two workers that saw disjoint rows."""
    parts = [
        intervals.moments_merge(
            intervals.Moments(a.n[j], a.mean[j], a.comoment[j]),
            intervals.Moments(b.n[j], b.mean[j], b.comoment[j]),
        )
        for j in range(a.n.shape[0])
    ]
    weights = a.weights + b.weights
    weights[3] = max(a.weights[3], b.weights[3])
    return OnlineEvaluation(
        np.array([float(p.n) for p in parts]),
        np.stack([p.mean for p in parts]),
        np.stack([p.comoment for p in parts]),
        weights,
    )


def online_intervals(
    state: OnlineEvaluation,
    estimators: Sequence[AbstractSingleActionEstimator],
    *,
    alpha: float,
    t_star: float | int,
) -> list[Estimate]:
    """Each estimator's current value inside its anytime-valid confidence sequence.

    Args:
        state: the running state.
        estimators: the same estimators, in the same order, as given to ``online_update``.
        alpha: one minus the coverage that holds at every time simultaneously.
        t_star: rows at which the sequence is tuned to be tightest (the planned run length).
    """
    rows = float(state.weights[0])
    diag = diagnostics_from_sums(
        n=max(rows, 1.0),
        weight_sum=float(state.weights[1]),
        weight_sq_sum=float(state.weights[2]),
        max_weight=float(state.weights[3]),
        unsupported=float(state.weights[4]),
    )
    out: list[Estimate] = []
    for j in range(len(estimators)):
        m = intervals.Moments(np.asarray(state.n[j]), state.mean[j], state.comoment[j])
        if float(m.n) < 2:
            out.append(Estimate(float("nan"), -float("inf"), float("inf"), int(m.n), diag))
            continue
        lower, upper = intervals.confidence_sequence(m, alpha, t_star=t_star)
        out.append(Estimate(intervals.point_value(m), lower, upper, int(m.n), diag))
    return out
