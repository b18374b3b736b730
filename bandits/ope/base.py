"""The estimator base class: subclasses compute per-round values; ``estimate`` is shared and final.

A new estimator is one small frozen dataclass that implements ``round_values``. Validation,
diagnostics and intervals come from here, so every estimator is checked by the same contract
tests (``tests/bandits/ope/test_estimator_contract.py``).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import ClassVar, Generic, Literal, TypeVar, final

import jax
import jax.numpy as jnp
import numpy as np

from bandits.ope import intervals
from bandits.ope._common import ones
from bandits.ope.diagnostics import weight_diagnostics
from bandits.ope.types import (
    Diagnostics,
    Estimate,
    FloatN,
    LoggedFeedback,
    LoggedSlates,
    RoundValues,
    SlateTargetProbs,
    TargetProbs,
)

Interval = Literal["bootstrap", "normal", "bernstein", "cs"]
INTERVALS: tuple[Interval, ...] = ("bootstrap", "normal", "bernstein", "cs")

LogT = TypeVar("LogT", LoggedFeedback, LoggedSlates)
TargetT = TypeVar("TargetT", TargetProbs, SlateTargetProbs)

_CHUNK = 1 << 20


def logged_target_prob(log: LoggedFeedback, target: TargetProbs) -> FloatN:
    """``(n,)`` target probability of each logged action, gathered without an ``(n, k)`` copy."""
    t = target.target_prob
    return np.take_along_axis(t, log.action[:, None], axis=1)[:, 0].astype(np.float64)


def importance_weight(log: LoggedFeedback, target: TargetProbs) -> FloatN:
    """``(n,)`` ``w_i = target_prob[i, a_i] / propensity_i``, the weight of each logged round."""
    return logged_target_prob(log, target) / log.propensity


def doubly_robust(
    log: LoggedFeedback, target: TargetProbs, weight: FloatN, *, self_normalised: bool = False
) -> RoundValues:
    """Per-round values of the doubly robust family: ``baseline + weight x residual``.

    ``baseline_i = sum_a target_prob[i, a] q_hat[i, a]`` and ``residual_i = r_i - q_hat[i, a_i]``;
    each estimator of the family only chooses ``weight``.

    Args:
        log: the checked log, with ``q_hat``.
        target: the checked target probabilities.
        weight: ``(n,)`` the weight of each residual (``importance_weight`` for plain DR).
        self_normalised: divide the weighted residuals by ``sum(weight)`` instead of ``n``.

    Raises:
        TypeError: the log has no ``q_hat``.

    Example:
        >>> log = LoggedFeedback(np.array([0, 1]), np.array([1.0, 0.0]), np.array([0.5, 0.5]),
        ...                      q_hat=np.array([[0.75, 0.25], [0.5, 0.0]]))
        >>> target = TargetProbs(np.array([[1.0, 0.0], [1.0, 0.0]]))
        >>> rv = doubly_robust(log, target, importance_weight(log, target))
        >>> rv.direct.tolist(), rv.weighted.tolist()
        ([0.75, 0.5], [0.5, 0.0])
    """
    baseline = expected_q(require_q_hat(log), target.target_prob)
    residual = log.reward - logged_q(log)
    normaliser = weight if self_normalised else ones(log.n)
    return RoundValues(direct=baseline, weighted=weight * residual, normaliser=normaliser)


def expected_q(q_hat: np.ndarray, target_prob: np.ndarray) -> FloatN:
    """``(n,)`` ``sum_a target_prob[i, a] * q_hat[i, a]``, chunked so no ``(n, k)`` temporary is made."""
    n = q_hat.shape[0]
    out = np.empty(n, dtype=np.float64)
    for lo in range(0, n, _CHUNK):
        sl = slice(lo, lo + _CHUNK)
        out[sl] = np.einsum("ik,ik->i", q_hat[sl], target_prob[sl], dtype=np.float64)
    return out


def logged_q(log: LoggedFeedback) -> FloatN:
    """``(n,)`` reward-model estimate of each logged action."""
    q = require_q_hat(log)
    return np.take_along_axis(q, log.action[:, None], axis=1)[:, 0].astype(np.float64)


def require_q_hat(log: LoggedFeedback) -> np.ndarray:
    """The log's ``q_hat``, or a TypeError saying how to provide it."""
    if log.q_hat is None:
        raise TypeError(
            "this estimator needs reward-model estimates: LoggedFeedback.q_hat is None; "
            "pass q_hat=(n, k) array or use bandits.ope.reward_model.with_q_hat(log, ...)"
        )
    return log.q_hat


def slate_position_weights(log: LoggedSlates, target: SlateTargetProbs) -> np.ndarray:
    """``(n, s)`` per-position conditional ratios ``target_prob / propensity`` of the logged items."""
    t = np.take_along_axis(target.target_prob, log.slate[:, :, None], axis=2)[:, :, 0]
    return t.astype(np.float64) / log.propensity


def _rng_from_key(key: jax.Array) -> np.random.Generator:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, dtype=np.uint32).ravel().tolist())


class AbstractEstimator(abc.ABC, Generic[LogT, TargetT]):
    """Base of every off-policy estimator.

    Subclasses set ``name`` (the short result key) and implement ``round_values``; they may
    override ``importance_weights`` when their weights differ from the plain ones.
    """

    name: ClassVar[str]
    caveat: ClassVar[str] = ""
    """Set by estimators whose interval is known not to cover the truth; always warned about."""

    @abc.abstractmethod
    def round_values(self, log: LogT, target: TargetT) -> RoundValues:
        """Per-round values; the estimate is ``mean(direct) + sum(weighted) / sum(normaliser)``."""

    def caveats(self, log: LogT, target: TargetT) -> str:
        """Why this estimator's interval should not be trusted on this log ("" if no reason)."""
        del log, target
        return self.caveat

    @abc.abstractmethod
    def importance_weights(self, log: LogT, target: TargetT) -> tuple[FloatN, FloatN]:
        """``(weight, target_prob_logged)``, both ``(n,)``, for the diagnostics."""

    @final
    def estimate(
        self,
        log: LogT,
        target: TargetT,
        *,
        interval: Interval = "bootstrap",
        alpha: float = 0.05,
        key: jax.Array | None = None,
        n_bootstrap: int = 500,
        t_star: float | int | None = None,
    ) -> Estimate:
        """Validate the inputs, estimate the target policy's value and its interval.

        Args:
            log: the logged rounds (checked here).
            target: the target policy's probabilities for the same rounds (checked here).
            interval: ``"bootstrap"`` (Poisson bootstrap, needs ``key``), ``"normal"`` (delta
                method), ``"bernstein"`` (empirical Bernstein) or ``"cs"`` (anytime-valid
                confidence sequence, tightest at ``t_star`` rounds, default ``n``).
            alpha: one minus the nominal coverage.
            key: a JAX PRNG key; required by the bootstrap.
            n_bootstrap: bootstrap replicates.
            t_star: the number of rounds at which the confidence sequence is tuned to be tightest.

        Returns:
            ``Estimate(value, lower, upper, n, diagnostics)``.

        Raises:
            InvalidLogError: the log or the target is malformed.
            TypeError: the bootstrap was asked for without a key, or a needed input is missing.
            ValueError: an unknown interval or an alpha outside (0, 1).
        """
        _check_options(interval, alpha, key)
        log.check()
        target.check(log)  # type: ignore[arg-type]
        return self._estimate_checked(
            log,
            target,
            interval=interval,
            alpha=alpha,
            key=key,
            n_bootstrap=n_bootstrap,
            t_star=t_star,
        )

    @final
    def _estimate_checked(
        self,
        log: LogT,
        target: TargetT,
        *,
        interval: Interval,
        alpha: float,
        key: jax.Array | None,
        n_bootstrap: int,
        t_star: float | int | None,
        diagnostics: Diagnostics | None = None,
    ) -> Estimate:
        rv = self.round_values(log, target)
        m = intervals.moments_of(rv)
        value = intervals.point_value(m)
        if interval == "normal":
            lower, upper = intervals.normal_interval(m, alpha)
        elif interval == "bernstein":
            lower, upper = intervals.bernstein_interval(rv, m, alpha)
        elif interval == "cs":
            lower, upper = intervals.confidence_sequence(m, alpha, t_star=t_star or float(m.n))
        else:
            assert key is not None
            lower, upper = intervals.bootstrap_interval(
                rv, alpha, _rng_from_key(key), n_bootstrap=n_bootstrap
            )
        if diagnostics is None:
            diagnostics = weight_diagnostics(*self.importance_weights(log, target))
        caveat = self.caveats(log, target)
        if caveat:
            reason = "; ".join(r for r in (diagnostics.reason, caveat) if r)
            diagnostics = diagnostics._replace(warning=True, reason=reason)
        return Estimate(value=value, lower=lower, upper=upper, n=log.n, diagnostics=diagnostics)


def _check_options(interval: str, alpha: float, key: jax.Array | None) -> None:
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if interval == "bootstrap" and key is None:
        raise TypeError("interval='bootstrap' needs key=jax.random.key(...)")


def estimate_all(
    estimators: Mapping[str, AbstractEstimator[LogT, TargetT]],
    log: LogT,
    target: TargetT,
    *,
    interval: Interval = "bootstrap",
    alpha: float = 0.05,
    key: jax.Array | None = None,
    n_bootstrap: int = 500,
    t_star: float | int | None = None,
) -> dict[str, Estimate]:
    """Run several estimators on one log, validating it and computing diagnostics once.

    Same arguments and errors as ``AbstractEstimator.estimate``; each estimator gets its own
    key (folded from ``key`` by position), so results match calling them one by one with those
    keys.

    Returns:
        ``{name: Estimate}`` in the order given.
    """
    _check_options(interval, alpha, key)
    log.check()
    target.check(log)  # type: ignore[arg-type]
    out: dict[str, Estimate] = {}
    diagnostics: Diagnostics | None = None
    for i, (name, est) in enumerate(estimators.items()):
        if diagnostics is None:
            diagnostics = weight_diagnostics(*est.importance_weights(log, target))
        out[name] = est._estimate_checked(  # pyright: ignore[reportPrivateUsage]
            log,
            target,
            interval=interval,
            alpha=alpha,
            key=None if key is None else jax.random.fold_in(key, i),
            n_bootstrap=n_bootstrap,
            t_star=t_star,
            diagnostics=diagnostics,
        )
    return out


class AbstractSingleActionEstimator(AbstractEstimator[LoggedFeedback, TargetProbs]):
    """Estimators of single-action logs; diagnostics use ``target_prob / propensity``."""

    @final
    def importance_weights(self, log: LoggedFeedback, target: TargetProbs) -> tuple[FloatN, FloatN]:
        t = logged_target_prob(log, target)
        return t / log.propensity, t


class AbstractSlateEstimator(AbstractEstimator[LoggedSlates, SlateTargetProbs]):
    """Estimators of slate logs; diagnostics use the whole-slate weight (product over positions)."""

    @final
    def importance_weights(
        self, log: LoggedSlates, target: SlateTargetProbs
    ) -> tuple[FloatN, FloatN]:
        w = slate_position_weights(log, target)
        t = np.take_along_axis(target.target_prob, log.slate[:, :, None], axis=2)[:, :, 0]
        return w.prod(axis=1), t.prod(axis=1).astype(np.float64)
