"""Sample an ordered slate of length ``s`` with the probability of every choice made.

All samplers take ``(k,)`` scores and a ``(k,)`` validity mask and return ``Ranked``. The
propensity of position ``j`` is ``P(order[j] at j | order[:j])``; the product over ``j`` is the
probability of the ordered slate. It is exact for greedy, Plackett-Luce and the sequential
samplers (epsilon mixtures, inverse gap weighting) and a Monte Carlo estimate for Thompson
sampling (:func:`monte_carlo`).

:func:`pad` pads candidate sets (one request's, or a batch's) to a bucket size (:func:`bucket`),
so a jitted ``rank`` compiles once per bucket instead of once per candidate count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jaxtyping import Array, Bool, Float, Int

from bandits.types import Candidates, Ranked

__all__ = [
    "MIN_BUCKET",
    "bucket",
    "epsilon_probs",
    "greedy",
    "igw_probs",
    "inverse_cdf",
    "monte_carlo",
    "pad",
    "plackett_luce",
    "sequential",
]

MIN_BUCKET = 8
"""The smallest default bucket of :func:`bucket` (and so of :func:`pad`)."""

ProbsFn = Callable[[Float[Array, " k"], Bool[Array, " k"]], Float[Array, " k"]]


def masked(scores: Float[Array, " k"], mask: Bool[Array, " k"]) -> Float[Array, " k"]:
    """Scores with invalid candidates set to ``-inf``."""
    return jnp.where(mask, scores, -jnp.inf)


def greedy(scores: Float[Array, " k"], mask: Bool[Array, " k"], slate_size: int) -> Ranked:
    """The top ``slate_size`` valid candidates in score order; every propensity is 1."""
    _, order = jax.lax.top_k(masked(scores, mask), slate_size)
    return Ranked(order.astype(jnp.int32), jnp.ones((slate_size,), jnp.float32))


def plackett_luce(
    logits: Float[Array, " k"], mask: Bool[Array, " k"], key: Array, slate_size: int
) -> Ranked:
    """Sample without replacement with probability proportional to ``exp(logits)``.

    Gumbel-top-s sampling is exactly Plackett-Luce; the conditional propensities follow from
    the logits of the candidates still available at each position.
    """
    z = masked(logits.astype(jnp.float32), mask)
    g = jax.random.gumbel(key, z.shape, jnp.float32)
    _, order = jax.lax.top_k(jnp.where(mask, z + g, -jnp.inf), slate_size)
    # Position j draws from the candidates not placed above it: one (s, k) masked logsumexp.
    rem = mask[None, :] & (_placed_at(order, mask.shape[0])[None, :] >= _positions(slate_size))
    lse = jax.nn.logsumexp(jnp.where(rem, z[None, :], -jnp.inf), axis=1)
    prop = jnp.exp(z[order] - lse)
    return Ranked(order.astype(jnp.int32), jnp.clip(prop, jnp.finfo(jnp.float32).tiny, 1.0))


def _positions(slate_size: int) -> Int[Array, "s 1"]:
    return jnp.arange(slate_size, dtype=jnp.int32)[:, None]


def _placed_at(order: Int[Array, " s"], k: int) -> Int[Array, " k"]:
    """The slate position of every candidate (``s`` for those not in the slate)."""
    s = order.shape[0]
    return jnp.full((k,), s, jnp.int32).at[order].set(jnp.arange(s, dtype=jnp.int32))


def inverse_cdf(weights: Float[Array, " k"], u: Float[Array, ""]) -> Int[Array, ""]:
    """The index ``a`` with ``cumsum(weights)[a - 1] <= u * total < cumsum(weights)[a]``.

    Exactly a draw from ``weights / weights.sum()`` for ``u ~ U[0, 1)`` (up to float32
    rounding of the cumulative sum); never an index of zero weight.
    """
    c = jnp.cumsum(weights)
    total = c[-1]
    x = jnp.minimum(u * total, jnp.nextafter(total, jnp.zeros_like(total)))
    return jnp.minimum(jnp.sum(c <= x), weights.shape[0] - 1).astype(jnp.int32)


def sequential(
    probs: ProbsFn,
    scores: Float[Array, " k"],
    mask: Bool[Array, " k"],
    key: Array,
    slate_size: int,
) -> Ranked:
    """Fill positions one at a time from ``probs(scores, remaining)``, a distribution over the
    remaining candidates; each propensity is that distribution's mass on the choice.

    One uniform per position picks the choice by inverse CDF (:func:`inverse_cdf`), so a
    request draws ``s`` random numbers, not ``s x k``.
    """
    u = jax.random.uniform(key, (slate_size,), jnp.float32)

    def step(rem: Array, uj: Array) -> tuple[Array, tuple[Array, Array]]:
        p = jnp.where(rem, probs(scores, rem), 0.0)
        a = inverse_cdf(p, uj)
        return rem.at[a].set(False), (a, p[a])

    _, (order, prop) = jax.lax.scan(step, mask, u)
    return Ranked(order, jnp.clip(prop, jnp.finfo(jnp.float32).tiny, 1.0).astype(jnp.float32))


def epsilon_probs(epsilon: float | Array) -> ProbsFn:
    """Epsilon-greedy: ``1 - epsilon`` on the best remaining candidate, the rest uniform."""

    def probs(scores: Array, rem: Array) -> Array:
        n = jnp.maximum(rem.sum(), 1).astype(jnp.float32)
        best = jnp.argmax(masked(scores, rem))
        uniform = rem.astype(jnp.float32) * (epsilon / n)
        return uniform + (1.0 - epsilon) * jax.nn.one_hot(best, scores.shape[0])

    return probs


def igw_probs(gamma: float | Array) -> ProbsFn:
    """Inverse gap weighting (Abe & Long 1999; Foster & Rakhlin 2020, SquareCB).

    ``p_a = 1 / (n + gamma * (best - score_a))`` for every remaining non-best candidate and the
    rest of the mass on the best one (so it gets at least ``1 / n``).
    """

    def probs(scores: Array, rem: Array) -> Array:
        n = jnp.maximum(rem.sum(), 1).astype(jnp.float32)
        s = masked(scores, rem)
        best = jnp.argmax(s)
        gap = jnp.where(rem, s[best] - s, 0.0)
        p = jnp.where(rem, 1.0 / (n + gamma * gap), 0.0)
        p = p.at[best].set(0.0)
        return p.at[best].set(1.0 - p.sum())

    return probs


def monte_carlo(
    sample_scores: Callable[[Array], Float[Array, " k"]],
    mask: Bool[Array, " k"],
    key: Array,
    slate_size: int,
    n_samples: int,
) -> Ranked:
    """Rank by one posterior draw and estimate each choice's propensity by Monte Carlo.

    ``sample_scores(key)`` draws one score vector (for Thompson sampling: scores under one
    posterior sample). The slate is the top ``s`` of the first draw. For position ``j`` the
    propensity is ``(c_j + 1) / (m + 1)``, where ``c_j`` counts the ``m = n_samples`` further
    draws whose best candidate outside ``order[:j]`` is ``order[j]``; counting the draw that
    was actually used makes it strictly positive and consistent. Its standard error is about
    ``sqrt(p (1 - p) / m)``, at most ``0.5 / sqrt(m)`` (0.031 for ``m = 256``).
    """
    keys = jax.random.split(key, n_samples + 1)
    first = masked(sample_scores(keys[0]), mask)
    _, order = jax.lax.top_k(first, slate_size)
    draws = jax.vmap(sample_scores)(keys[1:])  # (m, k)
    # A draw's best candidate outside order[:j] is order[j] exactly when order[j] beats every
    # valid candidate outside the slate and every slate candidate below position j.
    outside = mask & (_placed_at(order, mask.shape[0]) == slate_size)
    rest = jnp.max(jnp.where(outside[None, :], draws, -jnp.inf), axis=1)  # (m,)
    on_slate = draws[:, order]  # (m, s)
    below = jax.lax.cummax(on_slate[:, ::-1], axis=1)[:, ::-1]  # max over positions >= j
    below = jnp.concatenate([below[:, 1:], jnp.full_like(below[:, :1], -jnp.inf)], axis=1)
    wins = (on_slate > jnp.maximum(below, rest[:, None])).sum(0)
    prop = (wins + 1).astype(jnp.float32) / (n_samples + 1)
    return Ranked(order.astype(jnp.int32), prop)


def bucket(size: int, buckets: Sequence[int] | None = None) -> int:
    """The padded length for ``size`` rows: the smallest of ``buckets`` that holds them.

    Args:
        size: rows to hold (candidates of a request, or requests of a batch), ``>= 1``.
        buckets: increasing bucket sizes; None: the powers of two from :data:`MIN_BUCKET` up.

    Raises:
        ValueError: ``size < 1``, or ``size`` above the largest of ``buckets``.

    Example:
        >>> bucket(5), bucket(9), bucket(1000), bucket(5, buckets=(6, 12))
        (8, 16, 1024, 6)
    """
    if size < 1:
        raise ValueError(f"bucket size must be >= 1, got {size}")
    if buckets is None:
        return max(MIN_BUCKET, 1 << (size - 1).bit_length())
    found = next((b for b in buckets if b >= size), None)
    if found is None:
        raise ValueError(f"{size} rows exceed the largest bucket ({max(buckets)})")
    return found


def pad(
    features: npt.ArrayLike, ids: npt.ArrayLike, *, buckets: Sequence[int] | None = None
) -> tuple[Candidates, np.ndarray]:
    """Pad candidate sets to a bucket size with zero rows and a False mask.

    Pass one request's ``k`` candidates, or a batch of ``n`` requests with ``k`` candidates
    each; the candidate axis is padded to ``kb = bucket(k, buckets)``, so a jitted ``rank``
    compiles once per bucket, not once per candidate count. Leading (request) axes are kept.

    Args:
        features: ``(k, d_track)`` or ``(n, k, d_track)`` candidate features (stored float32).
        ids: ``(k,)`` or ``(n, k)`` integer candidate ids (stored int32).
        buckets: increasing bucket sizes; None: powers of two from :data:`MIN_BUCKET` up
            (see :func:`bucket`).

    Returns:
        ``(Candidates(features, ids), mask)``: features ``(..., kb, d_track)`` float32, ids
        ``(..., kb)`` int32 and mask ``(..., kb)`` bool with ``mask[..., :k]`` True.

    Raises:
        ValueError: no candidate, features not 2-D or 3-D, ids not matching features, or ``k``
            above the largest of ``buckets``.

    Example:
        >>> import bandits
        >>> c, m = bandits.pad(np.ones((3, 2), np.float32), np.arange(3))
        >>> c.features.shape, int(m.sum())
        ((8, 2), 3)
        >>> c, m = bandits.pad(np.ones((4, 9, 2), np.float32), np.zeros((4, 9), np.int32))
        >>> c.ids.shape, m.shape, bool(m[:, :9].all())
        ((4, 16), (4, 16), True)
    """
    features = np.asarray(features)
    ids = np.asarray(ids)
    if features.ndim not in (2, 3):
        raise ValueError(
            f"features must have shape (k, d_track) or (n, k, d_track), got {features.shape}"
        )
    *lead, k, d_track = features.shape
    if k == 0:
        raise ValueError("empty candidate set: features has 0 rows")
    if ids.shape != (*lead, k):
        raise ValueError(f"ids must have shape {(*lead, k)}, got {ids.shape}")
    size = bucket(k, buckets)
    f = np.zeros((*lead, size, d_track), np.float32)
    f[..., :k, :] = features
    i = np.zeros((*lead, size), np.int32)
    i[..., :k] = ids
    m = np.zeros((*lead, size), np.bool_)
    m[..., :k] = True
    return Candidates(cast(Any, f), cast(Any, i)), m
