"""Disjoint LinUCB: one ridge regression per arm, for small fixed action sets.

For a shelf of playlists or a handful of surfaces, where each arm is its own item and the user
context is what varies. Candidates' ``ids`` are the arm indices, in ``[0, n_arms)``; their
``features`` are ignored (checked for shape only). Each arm keeps ``A_a = ridge I + sum x x^T``
over ``x = [context, 1]`` weighted by the position's examination weight, and the inverse is
re-computed from a batched Cholesky factor after every update (arms are small).

References:
    Li, Chu, Langford, Schapire. A contextual-bandit approach to personalized news article
    recommendation. WWW 2010 (Algorithm 1).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from bandits import checks, slates
from bandits.policy import Policy, PolicySpec, make_policy
from bandits.types import Candidates, Feedback, Ranked

__all__ = ["DisjointState", "disjoint_linucb"]

VERSION = 1


class DisjointState(NamedTuple):
    """Per-arm ridge statistics over ``x = [context, 1]`` (``du1 = d_user + 1``)."""

    precision: Float[Array, "a du1 du1"]  # per-arm A (discounted)
    cov: Float[Array, "a du1 du1"]  # per-arm A^-1
    b: Float[Array, "a du1"]  # per-arm sum kappa r x
    theta: Float[Array, "a du1"]  # per-arm A^-1 b
    track_dims: Float[Array, "dt 0"]  # empty; its shape records d_track for input checks
    position_bias: Float[Array, " p"]
    n: Int[Array, ""]


def disjoint_linucb(
    *,
    n_arms: int = 16,
    alpha: float = 1.0,
    ridge: float = 1.0,
    discount: float = 1.0,
    position_bias: tuple[float, ...] = (1.0,),
) -> Policy:
    """Per-arm LinUCB.

    Args:
        n_arms: number of arms; candidate and feedback ids must be in ``[0, n_arms)``.
        alpha: width of the confidence bonus.
        ridge: prior precision per arm.
        discount: forgetting factor per update; 1.0 keeps everything.
        position_bias: examination weight of slate positions 0, 1, ... (the last repeats).
    """
    if n_arms < 1:
        raise ValueError(f"n_arms must be >= 1, got {n_arms}")
    if alpha < 0 or not ridge > 0 or not 0 < discount <= 1:
        raise ValueError(
            f"need alpha >= 0, ridge > 0, discount in (0, 1]; got {alpha}, {ridge}, {discount}"
        )
    if not position_bias or not all(0 < k <= 1 for k in position_bias):
        raise ValueError(f"position_bias values must be in (0, 1], got {position_bias}")
    spec = PolicySpec(
        "disjoint_linucb",
        VERSION,
        {
            "n_arms": int(n_arms),
            "alpha": float(alpha),
            "ridge": float(ridge),
            "discount": float(discount),
            "position_bias": [float(k) for k in position_bias],
        },
    )

    def init(d_user: int, d_track: int) -> DisjointState:
        eye = jnp.broadcast_to(
            jnp.eye(d_user + 1, dtype=jnp.float32), (n_arms, d_user + 1, d_user + 1)
        )
        return DisjointState(
            precision=ridge * eye,
            cov=eye / ridge,
            b=jnp.zeros((n_arms, d_user + 1), jnp.float32),
            theta=jnp.zeros((n_arms, d_user + 1), jnp.float32),
            track_dims=jnp.zeros((d_track, 0), jnp.float32),
            position_bias=jnp.asarray(position_bias, jnp.float32),
            n=jnp.zeros((), jnp.int32),
        )

    def score(state: DisjointState, context: Array, candidates: Candidates, mask: Array) -> Array:
        xa = jnp.concatenate([context, jnp.ones((1,), context.dtype)])
        arm = jnp.clip(candidates.ids, 0, n_arms - 1)
        mean = state.theta[arm] @ xa
        var = jnp.einsum("i,kij,j->k", xa, state.cov[arm], xa)
        return slates.masked(mean + alpha * jnp.sqrt(jnp.maximum(var, 0.0)), mask)

    def rank(
        state: DisjointState,
        context: Array,
        candidates: Candidates,
        mask: Array,
        key: Array,
        slate_size: int,
    ) -> Ranked:
        del key
        return slates.greedy(score(state, context, candidates, mask), mask, slate_size)

    def update(state: DisjointState, fb: Feedback) -> DisjointState:
        du1 = state.b.shape[1]
        eye = jnp.eye(du1, dtype=jnp.float32)
        kappa = state.position_bias[jnp.clip(fb.position, 0, state.position_bias.shape[0] - 1)]
        w = kappa * fb.mask.astype(jnp.float32)
        x = jnp.concatenate([fb.context, jnp.ones((fb.context.shape[0], 1), fb.context.dtype)], 1)
        x = x * w[:, None]
        arm = jnp.clip(fb.action, 0, n_arms - 1)
        r = jnp.where(fb.mask, fb.reward, 0.0)
        precision = discount * state.precision + ((1 - discount) * ridge * eye)[None]
        precision = precision.at[arm].add(x[:, :, None] * x[:, None, :])
        b = (discount * state.b).at[arm].add(x * r[:, None])
        chol = jnp.linalg.cholesky(precision)

        def inverse(c: Array) -> Array:
            return jax.scipy.linalg.cho_solve((c, True), eye)

        cov = jax.vmap(inverse)(chol)
        cov = 0.5 * (cov + jnp.swapaxes(cov, 1, 2))
        theta = jnp.einsum("aij,aj->ai", cov, b)
        return state._replace(
            precision=precision,
            cov=cov,
            b=b,
            theta=theta,
            n=state.n + fb.mask.sum().astype(jnp.int32),
        )

    base = make_policy(
        spec,
        init=init,
        score=score,
        rank=rank,
        update=update,
        dims=lambda s: (s.b.shape[1] - 1, s.track_dims.shape[0]),
    )

    def _check_ids(name: str, ids: Any, mask: Any) -> None:
        if checks.is_concrete(ids, mask):
            bad = np.asarray(mask) & ((np.asarray(ids) < 0) | (np.asarray(ids) >= n_arms))
            if bad.any():
                raise ValueError(
                    f"{name} must be arm indices in [0, {n_arms}); rows "
                    f"{np.flatnonzero(bad)[:5].tolist()} are not"
                )

    def score_fn(state: Any, context: Any, candidates: Any, mask: Any) -> Any:
        checks.require_candidates(candidates)
        _check_ids("candidates.ids", candidates.ids, mask)
        return base.score(state, context, candidates, mask)

    def rank_fn(
        state: Any, context: Any, candidates: Any, mask: Any, *, key: Array, slate_size: int = 1
    ) -> Ranked:
        checks.require_candidates(candidates)
        _check_ids("candidates.ids", candidates.ids, mask)
        return base.rank(state, context, candidates, mask, key=key, slate_size=slate_size)

    def update_fn(state: Any, feedback: Feedback) -> Any:
        checks.require_feedback(feedback)
        _check_ids("Feedback.action", feedback.action, feedback.mask)
        return base.update(state, feedback)

    return base._replace(score=score_fn, rank=rank_fn, update=update_fn)
