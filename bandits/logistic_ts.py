"""Logistic Thompson sampling for binary rewards, with a Laplace posterior.

The model is ``P(r = 1) = sigmoid(theta^T phi(x, z) + bias_id + log kappa_p)`` over the same joint
features as ``bandits.linear`` (``log kappa_p`` is a fixed position offset). After each batch the
weights move to the mode of ``prior x likelihood`` by ``newton_steps`` Newton steps, and the
posterior becomes ``N(mode, H^-1)`` with ``H`` the Hessian at the mode (a full-covariance Laplace
approximation, re-factorised by Cholesky every update). Per-track biases get independent
one-dimensional Laplace posteriors (the diagonal approximation), fitted by backfitting.
Forgetting (``discount < 1``) shrinks the precisions towards the prior before each batch.

Ranking draws one posterior sample in the request's projected space (see ``bandits.thompson``)
and estimates propensities by Monte Carlo.

References:
    Chapelle, Li. An empirical evaluation of Thompson sampling. NeurIPS 2011.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_factor, cho_solve
from jaxtyping import Array, Float, Int

from bandits import linear, serving, slates
from bandits.policy import Policy, PolicySpec, make_policy
from bandits.serving import LinearServing
from bandits.thompson import posterior_sampler
from bandits.types import Candidates, Feedback, Ranked

__all__ = ["LogisticState", "logistic_ts"]

VERSION = 1


class LogisticState(NamedTuple):
    """Laplace posterior of a logistic model over joint features."""

    precision: Float[Array, "D D"]  # Hessian of the negative log posterior at the mode
    cov: Float[Array, "D D"]  # its inverse
    theta: Float[Array, "du1 dt1"]  # posterior mode
    id_mean: Float[Array, " n_ids"]  # per hashed id bias (logit units)
    id_prec: Float[Array, " n_ids"]  # its precision
    position_bias: Float[Array, " p"]  # examination weight per position (log is the offset)
    n: Int[Array, ""]  # rows learned from


def logistic_ts(
    *,
    scale: float = 1.0,
    mc_samples: int = 256,
    newton_steps: int = 3,
    ridge: float = 1.0,
    discount: float = 1.0,
    n_ids: int = 4096,
    id_ridge: float = 4.0,
    position_bias: tuple[float, ...] = (1.0,),
) -> Policy:
    """Logistic Thompson sampling (Laplace approximation).

    Args:
        scale: multiplies the posterior standard deviation when sampling (1 = exact posterior).
        mc_samples: posterior draws used to estimate each propensity.
        newton_steps: Newton steps towards the mode per update.
        ridge: prior precision of the weights (logit units).
        discount: forgetting factor per update; 1.0 keeps everything.
        n_ids: size of the hashed per-track bias table; 0 disables it.
        id_ridge: prior precision of each per-track bias (logit units).
        position_bias: examination weight of slate positions 0, 1, ... (the last repeats).
    """
    params = linear.LinearParams(ridge, discount, 1, n_ids, id_ridge, position_bias).spec_params()
    del params["refactor_every"]
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if mc_samples < 1 or newton_steps < 1:
        raise ValueError("mc_samples and newton_steps must be >= 1")
    spec = PolicySpec(
        "logistic_ts",
        VERSION,
        {
            "scale": float(scale),
            "mc_samples": int(mc_samples),
            "newton_steps": int(newton_steps),
            **params,
        },
    )

    def init(d_user: int, d_track: int) -> LogisticState:
        d = (d_user + 1) * (d_track + 1)
        eye = jnp.eye(d, dtype=jnp.float32)
        return LogisticState(
            precision=ridge * eye,
            cov=eye / ridge,
            theta=jnp.zeros((d_user + 1, d_track + 1), jnp.float32),
            id_mean=jnp.zeros((n_ids,), jnp.float32),
            id_prec=jnp.full((n_ids,), id_ridge, jnp.float32),
            position_bias=jnp.asarray(position_bias, jnp.float32),
            n=jnp.zeros((), jnp.int32),
        )

    def _ids(state: LogisticState, ids: Array) -> Array:
        return jnp.mod(ids, max(state.id_mean.shape[0], 1))

    def _bias(state: LogisticState | LinearServing, ids: Array) -> tuple[Array, Array]:
        if n_ids == 0:
            z = jnp.zeros(ids.shape, jnp.float32)
            return z, z
        h = jnp.mod(ids, n_ids)
        if isinstance(state, LinearServing):
            return state.id_mean[h], state.id_var[h]
        return state.id_mean[h], 1.0 / state.id_prec[h]

    def _project(
        state: LogisticState | LinearServing, context: Array, candidates: Candidates
    ) -> tuple[Array, Array, Array, Array]:
        if isinstance(state, LinearServing):
            return serving.project_packed(
                state.theta, state.cov_packed, context, candidates.features, state.cov_right
            )
        return linear.project(state.theta, state.cov, context, candidates.features)

    def prepare(state: LogisticState) -> LinearServing:
        """The serving form: the covariance packed as in ``bandits.linear.prepare``."""
        packed = serving.pack_cov(state.cov, state.theta)
        return LinearServing(state.theta, packed, state.id_mean, 1.0 / state.id_prec, state.n)

    def score(
        state: LogisticState | LinearServing, context: Array, candidates: Candidates, mask: Array
    ) -> Array:
        mean, _, _, _ = _project(state, context, candidates)
        return slates.masked(mean + _bias(state, candidates.ids)[0], mask)

    def rank(
        state: LogisticState | LinearServing,
        context: Array,
        candidates: Candidates,
        mask: Array,
        key: Array,
        slate_size: int,
    ) -> Ranked:
        mean, _, w, m = _project(state, context, candidates)
        bias, bias_var = _bias(state, candidates.ids)
        za = jnp.concatenate(
            [candidates.features, jnp.ones((mask.shape[0], 1), candidates.features.dtype)], 1
        )
        sample = posterior_sampler(mean + bias, w, m, za, bias_var, scale)
        return slates.monte_carlo(sample, mask, key, slate_size, mc_samples)

    def update(state: LogisticState, fb: Feedback) -> LogisticState:
        d = state.precision.shape[0]
        eye = jnp.eye(d, dtype=jnp.float32)
        prior_prec = discount * state.precision + (1.0 - discount) * ridge * eye
        id_prior = discount * state.id_prec + (1.0 - discount) * id_ridge
        phi = linear.joint(fb.context, fb.features)
        kappa = state.position_bias[jnp.clip(fb.position, 0, state.position_bias.shape[0] - 1)]
        mask = fb.mask.astype(jnp.float32)
        y = jnp.where(fb.mask, fb.reward, 0.0)
        bias, _ = _bias(state, fb.action)
        offset = jnp.log(kappa) + bias
        m0 = state.theta.reshape(-1)

        def newton(w: Array, _: None) -> tuple[Array, None]:
            p = jax.nn.sigmoid(phi @ w + offset)
            g = prior_prec @ (w - m0) + phi.T @ ((p - y) * mask)
            h = prior_prec + (phi * (p * (1 - p) * mask)[:, None]).T @ phi
            return w - cho_solve(cho_factor(h, lower=True), g), None

        w, _ = jax.lax.scan(newton, m0, None, length=newton_steps)
        f = phi @ w + jnp.log(kappa)
        p = jax.nn.sigmoid(f + bias)
        precision = prior_prec + (phi * (p * (1 - p) * mask)[:, None]).T @ phi
        precision = 0.5 * (precision + precision.T)
        cov = cho_solve(cho_factor(precision, lower=True), eye)
        id_mean, id_prec = state.id_mean, id_prior
        if n_ids:
            h = _ids(state, fb.action)
            b0 = state.id_mean
            b = b0
            for _ in range(newton_steps):
                pb = jax.nn.sigmoid(f + b[h])
                g = id_prior * (b - b0) + jnp.zeros_like(b).at[h].add((pb - y) * mask)
                hh = id_prior + jnp.zeros_like(b).at[h].add(pb * (1 - pb) * mask)
                b = b - g / hh
            pb = jax.nn.sigmoid(f + b[h])
            id_mean = b
            id_prec = id_prior + jnp.zeros_like(b).at[h].add(pb * (1 - pb) * mask)
        return LogisticState(
            precision=precision,
            cov=0.5 * (cov + cov.T),
            theta=w.reshape(state.theta.shape),
            id_mean=id_mean,
            id_prec=id_prec,
            position_bias=state.position_bias,
            n=state.n + fb.mask.sum().astype(jnp.int32),
        )

    return make_policy(
        spec,
        init=init,
        score=score,
        rank=rank,
        update=update,
        dims=lambda s: (s.theta.shape[0] - 1, s.theta.shape[1] - 1),
        prepare=prepare,
    )
