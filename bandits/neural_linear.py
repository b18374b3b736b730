"""Neural-linear: a small MLP embedding trained with optax, a Bayesian linear head on top.

The MLP maps ``[x, z, vec(x z^T)]`` to an embedding ``h`` (``embed_dim``) followed by a linear
output, and is trained by ``train_steps`` Adam steps per update on minibatches of a ring buffer of
the last ``buffer_size`` rows (squared error). The exploration comes from a Bayesian linear
regression on ``[h, 1]``, re-fitted on the whole buffer under the current embedding after each
update (so the head never mixes embeddings). Ranking is Thompson sampling on the head, with
Monte Carlo propensities as in ``bandits.thompson``.

The minibatches are drawn from ``jax.random.fold_in(key(seed), step)``, so ``update`` stays a
pure function of ``(state, feedback)``.

References:
    Riquelme, Tucker, Snoek. Deep Bayesian bandits showdown. ICLR 2018.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int

from bandits import slates
from bandits.policy import Policy, PolicySpec, make_policy
from bandits.types import Candidates, Feedback, Ranked

__all__ = ["NeuralLinearState", "neural_linear"]

VERSION = 1


class NeuralLinearState(NamedTuple):
    """MLP parameters and optimiser state, the replay ring buffer, and the linear head."""

    params: Any  # pytree: ((w1, b1), (w2, b2), (w_out, b_out))
    opt_state: Any  # optax Adam state for params
    buf_context: Float[Array, "m du"]
    buf_features: Float[Array, "m dt"]
    buf_reward: Float[Array, " m"]
    buf_weight: Float[Array, " m"]  # examination weight; 0 for empty slots
    head_cov: Float[Array, "h1 h1"]  # posterior covariance of the head (noise units)
    head_theta: Float[Array, " h1"]  # posterior mean of the head
    step: Int[Array, ""]  # updates so far
    n: Int[Array, ""]  # rows learned from


def _inputs(context: Array, features: Array) -> Array:
    outer = (context[:, :, None] * features[:, None, :]).reshape(context.shape[0], -1)
    return jnp.concatenate([context, features, outer], axis=1)


def _embed(params: Any, inputs: Array) -> Array:
    (w1, b1), (w2, b2), _ = params
    return jnp.tanh(jnp.tanh(inputs @ w1 + b1[None]) @ w2 + b2[None])


def neural_linear(
    *,
    hidden: int = 64,
    embed_dim: int = 16,
    learning_rate: float = 3e-3,
    train_steps: int = 2,
    batch_size: int = 128,
    buffer_size: int = 2048,
    ridge: float = 1.0,
    scale: float = 0.3,
    mc_samples: int = 128,
    position_bias: tuple[float, ...] = (1.0,),
    seed: int = 0,
) -> Policy:
    """Neural-linear Thompson sampling.

    Args:
        hidden: width of the hidden layer.
        embed_dim: embedding size (the head works on ``embed_dim + 1`` features).
        learning_rate: Adam step size.
        train_steps: Adam steps per update.
        batch_size: rows per Adam step, drawn from the buffer.
        buffer_size: rows kept for training and for re-fitting the head.
        ridge: prior precision of the head.
        scale: posterior scale of the head (reward noise standard deviation).
        mc_samples: posterior draws per propensity estimate.
        position_bias: examination weight of slate positions 0, 1, ... (the last repeats).
        seed: seeds the initial weights and the minibatch stream.
    """
    for name, v in (
        ("hidden", hidden),
        ("embed_dim", embed_dim),
        ("train_steps", train_steps),
        ("batch_size", batch_size),
        ("buffer_size", buffer_size),
        ("mc_samples", mc_samples),
    ):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if not learning_rate > 0 or not ridge > 0 or not scale > 0:
        raise ValueError("learning_rate, ridge and scale must be > 0")
    if not position_bias or not all(0 < k <= 1 for k in position_bias):
        raise ValueError(f"position_bias values must be in (0, 1], got {position_bias}")
    spec = PolicySpec(
        "neural_linear",
        VERSION,
        {
            "hidden": hidden,
            "embed_dim": embed_dim,
            "learning_rate": float(learning_rate),
            "train_steps": train_steps,
            "batch_size": batch_size,
            "buffer_size": buffer_size,
            "ridge": float(ridge),
            "scale": float(scale),
            "mc_samples": mc_samples,
            "position_bias": [float(k) for k in position_bias],
            "seed": seed,
        },
    )
    opt = optax.adam(learning_rate)
    kappa_table = jnp.asarray(position_bias, jnp.float32)

    def init(d_user: int, d_track: int) -> NeuralLinearState:
        d_in = d_user + d_track + d_user * d_track
        k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
        params = (
            (
                jax.random.normal(k1, (d_in, hidden), jnp.float32) / jnp.sqrt(d_in) * 4.0,
                jnp.zeros((hidden,), jnp.float32),
            ),
            (
                jax.random.normal(k2, (hidden, embed_dim), jnp.float32) / jnp.sqrt(hidden),
                jnp.zeros((embed_dim,), jnp.float32),
            ),
            (jax.random.normal(k3, (embed_dim,), jnp.float32) * 0.01, jnp.zeros((), jnp.float32)),
        )
        h1 = embed_dim + 1
        return NeuralLinearState(
            params=params,
            opt_state=opt.init(params),
            buf_context=jnp.zeros((buffer_size, d_user), jnp.float32),
            buf_features=jnp.zeros((buffer_size, d_track), jnp.float32),
            buf_reward=jnp.zeros((buffer_size,), jnp.float32),
            buf_weight=jnp.zeros((buffer_size,), jnp.float32),
            head_cov=jnp.eye(h1, dtype=jnp.float32) / ridge,
            head_theta=jnp.zeros((h1,), jnp.float32),
            step=jnp.zeros((), jnp.int32),
            n=jnp.zeros((), jnp.int32),
        )

    def _head_features(state: NeuralLinearState, context: Array, features: Array) -> Array:
        x = jnp.broadcast_to(context, (features.shape[0], context.shape[0]))
        h = _embed(state.params, _inputs(x, features))
        return jnp.concatenate([h, jnp.ones((h.shape[0], 1), h.dtype)], axis=1)

    def score(
        state: NeuralLinearState, context: Array, candidates: Candidates, mask: Array
    ) -> Array:
        h = _head_features(state, context, candidates.features)
        return slates.masked(h @ state.head_theta, mask)

    def rank(
        state: NeuralLinearState,
        context: Array,
        candidates: Candidates,
        mask: Array,
        key: Array,
        slate_size: int,
    ) -> Ranked:
        h = _head_features(state, context, candidates.features)
        h1 = state.head_theta.shape[0]
        chol = jnp.linalg.cholesky(state.head_cov + 1e-6 * jnp.eye(h1, dtype=jnp.float32))

        def sample(k: Array) -> Array:
            theta = state.head_theta + scale * chol @ jax.random.normal(k, (h1,), jnp.float32)
            return h @ theta

        return slates.monte_carlo(sample, mask, key, slate_size, mc_samples)

    def loss(params: Any, x: Array, z: Array, r: Array, w: Array) -> Array:
        h = _embed(params, _inputs(x, z))
        w_out, b_out = params[2]
        pred = w * (h @ w_out + b_out)
        return jnp.sum(w * (pred - r) ** 2) / jnp.maximum(jnp.sum(w), 1.0)

    def update(state: NeuralLinearState, fb: Feedback) -> NeuralLinearState:
        m = buffer_size
        kappa = kappa_table[jnp.clip(fb.position, 0, kappa_table.shape[0] - 1)]
        weight = kappa * fb.mask.astype(jnp.float32)
        # Real rows go to consecutive ring slots; padding rows are dropped.
        offs = jnp.cumsum(fb.mask.astype(jnp.int32)) - 1
        slot = jnp.where(fb.mask, jnp.mod(state.n + offs, m), m)  # m = out of range: dropped
        bc = state.buf_context.at[slot].set(fb.context, mode="drop")
        bf = state.buf_features.at[slot].set(fb.features, mode="drop")
        br = state.buf_reward.at[slot].set(jnp.where(fb.mask, fb.reward, 0.0), mode="drop")
        bw = state.buf_weight.at[slot].set(weight, mode="drop")
        filled = bw > 0

        def train(carry: tuple[Any, Any], i: Array) -> tuple[tuple[Any, Any], None]:
            params, opt_state = carry
            k = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), state.step), i)
            p = filled.astype(jnp.float32)
            idx = jax.random.choice(k, m, (batch_size,), p=p / jnp.maximum(p.sum(), 1.0))
            g = jax.grad(loss)(params, bc[idx], bf[idx], br[idx], bw[idx])
            # optax's bias correction mixes a Python float with an int32 step count, which
            # strict dtype promotion (as in the tests) refuses; standard promotion is exact here.
            with jax.numpy_dtype_promotion("standard"):
                upd, opt_state = opt.update(g, opt_state, params)
            return (optax.apply_updates(params, upd), opt_state), None

        (params, opt_state), _ = jax.lax.scan(
            train, (state.params, state.opt_state), jnp.arange(train_steps)
        )
        h = _embed(params, _inputs(bc, bf))
        h = jnp.concatenate([h, jnp.ones((m, 1), h.dtype)], axis=1) * bw[:, None]
        h1 = h.shape[1]
        precision = ridge * jnp.eye(h1, dtype=jnp.float32) + h.T @ h
        c = jax.scipy.linalg.cho_factor(precision, lower=True)
        cov = jax.scipy.linalg.cho_solve(c, jnp.eye(h1, dtype=jnp.float32))
        theta = jax.scipy.linalg.cho_solve(c, h.T @ br)
        return NeuralLinearState(
            params=params,
            opt_state=opt_state,
            buf_context=bc,
            buf_features=bf,
            buf_reward=br,
            buf_weight=bw,
            head_cov=0.5 * (cov + cov.T),
            head_theta=theta,
            step=state.step + 1,
            n=state.n + fb.mask.sum().astype(jnp.int32),
        )

    return make_policy(
        spec,
        init=init,
        score=score,
        rank=rank,
        update=update,
        dims=lambda s: (s.buf_context.shape[1], s.buf_features.shape[1]),
    )
