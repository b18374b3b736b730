"""Intervals from per-round values: normal, bootstrap, empirical Bernstein, confidence sequence.

Every estimator reduces to ``theta = mean(direct) + sum(weighted) / sum(normaliser)`` (see
``RoundValues``). The normal interval, the empirical-Bernstein bound and the confidence sequence
use the influence function of that ratio (the delta method); the bootstrap resamples rows with
Poisson(1) weights, on random buckets of rows when the log is large, so it never copies data.

The sufficient statistics are a ``Moments`` state (count, means and co-moments of the three
columns) that merges exactly (Chan et al.), so the same numbers come out of one pass over a
10-million-row log and out of a live stream fed batch by batch.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

from bandits.ope.types import Float0, Float3, Float33, RoundValues

_CHUNK = 1 << 20


class Moments(NamedTuple):
    """Mergeable sufficient statistics of the columns ``(direct, weighted, normaliser)``.

    Attributes:
        n: ``()`` float64, rows seen.
        mean: ``(3,)`` float64, column means.
        comoment: ``(3, 3)`` float64, sum of outer products of deviations from the mean.
    """

    n: Float0
    mean: Float3
    comoment: Float33


def moments_init() -> Moments:
    """The empty state."""
    return Moments(np.zeros(()), np.zeros(3), np.zeros((3, 3)))


def moments_merge(a: Moments, b: Moments) -> Moments:
    """Combine two states exactly (order does not matter up to rounding).

    Example:
        >>> import numpy as np
        >>> from bandits.ope.types import RoundValues
        >>> rv = RoundValues(np.zeros(4), np.arange(4.0), np.ones(4))
        >>> whole = moments_of(rv)
        >>> half = moments_merge(moments_of(RoundValues(*(c[:2] for c in rv))),
        ...                      moments_of(RoundValues(*(c[2:] for c in rv))))
        >>> bool(np.allclose(whole.comoment, half.comoment))
        True
    """
    n = a.n + b.n
    if float(n) == 0.0:
        return a
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.n / n)
    comoment = a.comoment + b.comoment + np.outer(delta, delta) * (a.n * b.n / n)
    return Moments(np.asarray(n), mean, comoment)


def moments_of(rv: RoundValues) -> Moments:
    """Moments of a batch, computed in chunks so no ``(n, 3)`` copy is made."""
    total = moments_init()
    n = rv.direct.shape[0]
    for lo in range(0, n, _CHUNK):
        cols = np.stack([np.asarray(c[lo : lo + _CHUNK], dtype=np.float64) for c in rv])
        m = cols.shape[1]
        mean = cols.mean(axis=1)
        dev = cols - mean[:, None]
        total = moments_merge(total, Moments(np.asarray(float(m)), mean, dev @ dev.T))
    return total


def point_value(m: Moments) -> float:
    """``mean(direct) + mean(weighted) / mean(normaliser)``."""
    if float(m.mean[2]) == 0.0:  # no weight at all (the target never plays a logged action)
        return math.nan
    return float(m.mean[0] + m.mean[1] / m.mean[2])


def influence_sd(m: Moments) -> float:
    """Standard deviation of one round's influence on the estimate (delta method)."""
    nn = float(m.n)
    if nn < 2:
        return math.inf
    _, v, u = m.mean
    if float(u) == 0.0:
        return math.nan
    grad = np.array([1.0, 1.0 / u, -v / (u * u)])
    cov = m.comoment / (nn - 1.0)
    return float(math.sqrt(max(float(grad @ cov @ grad), 0.0)))


def normal_interval(m: Moments, alpha: float) -> tuple[float, float]:
    """Two-sided Wald interval ``theta +- z * sd / sqrt(n)``."""
    z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
    theta, half = point_value(m), z * influence_sd(m) / math.sqrt(float(m.n))
    return theta - half, theta + half


def bernstein_interval(rv: RoundValues, m: Moments, alpha: float) -> tuple[float, float]:
    """Empirical-Bernstein interval on the linearised per-round values.

    The range ``b`` is the observed range of the influence values, so this is a data-dependent
    (not a distribution-free) bound; it is wider than the normal interval and, unlike it, does
    not lean on a central limit theorem at small ``n``.

    References:
        Maurer and Pontil, "Empirical Bernstein bounds and sample variance penalization", COLT 2009.
    """
    n = float(m.n)
    _, v, u = m.mean
    if float(u) == 0.0:
        return math.nan, math.nan
    lo_inf, hi_inf = math.inf, -math.inf
    for i in range(0, rv.direct.shape[0], _CHUNK):
        sl = slice(i, i + _CHUNK)
        psi = rv.direct[sl] + (rv.weighted[sl] - (v / u) * rv.normaliser[sl]) / u
        lo_inf, hi_inf = min(lo_inf, float(psi.min())), max(hi_inf, float(psi.max()))
    b = hi_inf - lo_inf
    var = influence_sd(m) ** 2
    log_term = math.log(4.0 / alpha)  # delta = alpha / 2 per side, bound uses ln(2 / delta)
    half = math.sqrt(2.0 * var * log_term / n) + 7.0 * b * log_term / (3.0 * max(n - 1.0, 1.0))
    theta = point_value(m)
    return theta - half, theta + half


def bootstrap_interval(
    rv: RoundValues,
    alpha: float,
    rng: np.random.Generator,
    *,
    n_bootstrap: int = 500,
    n_buckets: int = 4096,
) -> tuple[float, float]:
    """Percentile interval of the Poisson bootstrap of the ratio estimator.

    Rows are first summed into ``n_buckets`` random buckets (each row's bucket is drawn, not the
    rows copied); each replicate reweights the buckets by independent Poisson(1) counts. With
    ``n <= n_buckets`` every row is its own bucket, which is the ordinary Poisson bootstrap.

    References:
        Chamandy et al., "Estimating uncertainty for massive data streams", Google, 2012.
    """
    n = rv.direct.shape[0]
    g = min(n, n_buckets)
    sums = np.zeros((4, g))  # count, direct, weighted, normaliser per bucket
    for lo in range(0, n, _CHUNK):
        sl = slice(lo, min(lo + _CHUNK, n))
        bucket = np.arange(sl.start, sl.stop) if g == n else rng.integers(0, g, sl.stop - sl.start)
        sums[0] += np.bincount(bucket, minlength=g)
        for j, col in enumerate(rv, start=1):
            sums[j] += np.bincount(bucket, weights=col[sl], minlength=g)
    counts = rng.poisson(1.0, size=(n_bootstrap, g)).astype(np.float64)
    tot = counts @ sums.T  # (n_bootstrap, 4)
    ok = (tot[:, 0] > 0) & (tot[:, 3] != 0)
    tot = tot[ok]
    if tot.shape[0] == 0:
        return math.nan, math.nan
    reps = tot[:, 1] / tot[:, 0] + tot[:, 2] / tot[:, 3]
    lower, upper = np.quantile(reps, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lower), float(upper)


def cs_rho(alpha: float, t_star: float | int) -> float:
    """The tuning ``rho`` that makes the confidence sequence tightest at ``t_star`` rows."""
    la = -2.0 * math.log(alpha)
    return math.sqrt((la + math.log(la + 1.0)) / t_star)


def confidence_sequence(m: Moments, alpha: float, *, t_star: float | int) -> tuple[float, float]:
    """Anytime-valid (asymptotic) confidence sequence at the current state.

    Notes:
        ``theta_t +- sd_t * sqrt(2 (t rho^2 + 1) / (t^2 rho^2) * log(sqrt(t rho^2 + 1) / alpha))``
        covers the value at *every* ``t`` simultaneously with probability about ``1 - alpha``,
        so a live evaluation may be watched continuously and stopped whenever it is conclusive.
        ``sd_t`` is the influence standard deviation; ``rho = cs_rho(alpha, t_star)``.

    References:
        Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas, "Time-uniform central limit theory and
        asymptotic confidence sequences", Annals of Statistics, 2024 (Theorem 2.2).
    """
    t = float(m.n)
    rho2 = cs_rho(alpha, t_star) ** 2
    scale = 2.0 * (t * rho2 + 1.0) / (t * t * rho2) * math.log(math.sqrt(t * rho2 + 1.0) / alpha)
    half = influence_sd(m) * math.sqrt(scale)
    theta = point_value(m)
    return theta - half, theta + half
