"""Linear Thompson sampling over joint user x track features.

Each request draws one posterior sample and ranks by it. Sampling is done in the request's
projected space: the scores depend on the weights only through ``w = theta^T [x, 1]``, whose
posterior is ``N(w, v^2 m)`` with ``m`` only ``(d_track+1)^2`` (``bandits.linear.predict``), so
a draw costs a tiny Cholesky instead of a ``D x D`` one. Per-track biases are drawn
independently from their own posteriors.

Propensities are Monte Carlo estimates (``bandits.slates.monte_carlo``) from ``mc_samples``
further draws, with standard error about ``sqrt(p (1 - p) / mc_samples)``.

References:
    Agrawal, Goyal. Thompson sampling for contextual bandits with linear payoffs. ICML 2013.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array

from bandits import linear, serving, slates
from bandits.policy import Policy
from bandits.serving import LinearServing
from bandits.types import Candidates, Ranked

__all__ = ["lin_ts", "posterior_sampler"]

VERSION = 1


def posterior_sampler(
    mean: Array, w: Array, m: Array, za: Array, bias_var: Array, scale: float
) -> jax.tree_util.Partial:
    """A function ``key -> (k,)`` scores under one draw of the posterior."""
    du = m.shape[0]
    chol = jnp.linalg.cholesky(m + 1e-6 * jnp.eye(du, dtype=m.dtype) * (jnp.trace(m) / du + 1e-12))
    bias_sd = jnp.sqrt(bias_var)

    def sample(key: Array) -> Array:
        k1, k2 = jax.random.split(key)
        eps = jax.random.normal(k1, (du,), jnp.float32)
        eb = jax.random.normal(k2, mean.shape, jnp.float32)
        return mean + scale * (za @ (chol @ eps) + bias_sd * eb)

    return jax.tree_util.Partial(sample)


def lin_ts(
    *,
    scale: float = 0.2,
    mc_samples: int = 256,
    ridge: float = 1.0,
    discount: float = 1.0,
    adapt_window: float = linear.ADAPT_WINDOW,
    refactor_every: int = 1000,
    n_ids: int = 4096,
    id_ridge: float = 10.0,
    position_bias: tuple[float, ...] = (1.0,),
) -> Policy:
    """Linear Thompson sampling.

    Args:
        scale: posterior scale ``v`` (the reward noise standard deviation).
        mc_samples: posterior draws used to estimate each propensity.
        ridge, discount, adapt_window, refactor_every, n_ids, id_ridge, position_bias: see
            ``bandits.linucb``.
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if mc_samples < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")

    params = linear.LinearParams(
        ridge, discount, refactor_every, n_ids, id_ridge, position_bias, adapt_window
    )

    def rank(
        state: linear.AnyLinear,
        context: Array,
        candidates: Candidates,
        mask: Array,
        key: Array,
        slate_size: int,
    ) -> Ranked:
        mean, _, w, m = linear.predict(state, context, candidates, id_ridge)
        if isinstance(state, LinearServing) and state.cov_right is not None:
            m = serving.nearest_covariance(m)  # m from a factorised covariance
        za = jnp.concatenate(
            [candidates.features, jnp.ones((mask.shape[0], 1), candidates.features.dtype)], 1
        )
        _, bias_var = linear.id_bias(state, candidates.ids, id_ridge)
        sample = posterior_sampler(mean, w, m, za, bias_var, scale)
        return slates.monte_carlo(sample, mask, key, slate_size, mc_samples)

    return linear.make(
        "lin_ts",
        VERSION,
        {"scale": float(scale), "mc_samples": int(mc_samples)},
        params,
        score=linear.mean_score(params),
        rank=rank,
    )
