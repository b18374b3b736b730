"""The listening-time model: a discrete-time survival (hazard) model over listening bins.

A play walks through the bins ``[0, 5 s)``, ``[5 s, 30 s)``, ``[30 s, 50 %)``, ``[50 %, 90 %)``,
``[90 %, 100 %)`` (:func:`rewards.labels.bin_edges_ms`). The model predicts the hazard ``h_j``:
P(the listener stops in bin ``j`` | they reached it). From one set of hazards

- ``P(skip before the end of bin j) = 1 - prod_{i<=j} (1 - h_i)``, so skip_1, skip_2, skip_3 are
  non-decreasing by construction, and
- ``P(complete) = prod_j (1 - h_j) = 1 - P(skip_3) <= 1 - P(skip_2)``: skip and completion
  predictions are always consistent.

Censoring (logout, session end) is handled by the likelihood: a play cut off in bin ``j``
contributes survival through bins ``0..j-1`` and nothing for bin ``j``
(:func:`rewards.labels.hazard_targets`). Bins a short track does not have get hazard 0.

Two structures:

- ``proportional=True`` (default): ``logit h_j = c_j + s_j * eta(x)`` with one learned index
  ``eta`` shared by all bins (bin intercepts ``c`` and slopes ``s``), like a proportional-odds
  model: few parameters, learns fast online.
- ``proportional=False``: every bin has its own linear (or wide-and-deep) logit.

References:
    Singer & Willett (1993), "It's about time: using discrete-time survival analysis to study
    duration and the timing of events", Journal of Educational Statistics 18(2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from rewards.labels import N_BINS, bin_widths_ms, hazard_targets
from rewards.model import (
    Params,
    RewardModel,
    check_average,
    head_logits,
    init_head,
    initial_state,
    jit_predict,
    make_optimizer,
    make_update,
)
from rewards.types import HEADS, Inputs, ModelSpec, ModelState, Outcomes, Predictions

VERSION = 1


def init_hazard_params(
    key: PRNGKeyArray, n_in: int, *, proportional: bool, hidden: int, n_id_buckets: int
) -> Params:
    """Parameters of the hazard head over ``n_in`` inputs."""
    n_out = 1 if proportional else N_BINS
    params = init_head(key, n_in, n_out, hidden=hidden, n_id_buckets=n_id_buckets)
    if proportional:
        params["bin_intercept"] = jnp.full((N_BINS,), -1.5, jnp.float32)
        params["bin_slope"] = jnp.ones((N_BINS,), jnp.float32)
    return params


def hazard_logits(
    params: Params, x: Float[Array, "n d"], track_id: Int[Array, " n"] | None
) -> Float[Array, "n 5"]:
    """Per-bin hazard logits (proportional or free, depending on the parameters present)."""
    z = head_logits(params, x, track_id)
    if "bin_intercept" in params:
        return params["bin_intercept"][None, :] + params["bin_slope"][None, :] * z
    return z


def survival_row_loss(logits: Float[Array, "n 5"], o: Outcomes) -> Float[Array, " n"]:
    """Negative log-likelihood of each play under the hazards, censoring included."""
    at_risk, event = hazard_targets(o.ms_played, o.duration_ms, o.reason_end, o.censored)
    y = event.astype(jnp.float32)
    nll = -(y * jax.nn.log_sigmoid(logits) + (1.0 - y) * jax.nn.log_sigmoid(-logits))
    return jnp.sum(nll * at_risk.astype(jnp.float32), axis=-1)


def hazards(logits: Float[Array, "n 5"], duration_ms: Int[ArrayLike, " n"]) -> Float[Array, "n 5"]:
    """Hazards from logits; 0 in bins the track does not have."""
    nonempty = bin_widths_ms(duration_ms) > 0
    return jnp.where(nonempty, jax.nn.sigmoid(logits), 0.0)


def survival_predictions(hazard: Float[Array, "n 5"]) -> Predictions:
    """Skip horizons and completion from per-bin hazards (consistent by construction)."""
    log_survive = jnp.cumsum(jnp.log1p(-jnp.clip(hazard, 0.0, 1.0 - 1e-7)), axis=-1)
    survive = jnp.exp(log_survive)  # P(reached the end of bin j)
    skip = 1.0 - survive[:, jnp.array([0, 1, N_BINS - 1])]
    return Predictions(skip=skip, complete=survive[:, N_BINS - 1])


def bin_probabilities(hazard: Float[Array, "n 5"]) -> Float[Array, "n 6"]:
    """P(the play ends in bin 0..4) and P(complete) (column 5); rows sum to 1."""
    survive = jnp.cumprod(1.0 - hazard, axis=-1)
    before = jnp.concatenate([jnp.ones_like(survive[:, :1]), survive[:, :-1]], axis=-1)
    return jnp.concatenate([before * hazard, survive[:, -1:]], axis=-1)


def survival_model(
    *,
    proportional: bool = True,
    hidden: int = 0,
    n_id_buckets: int = 0,
    learning_rate: float = 0.03,
    clip_norm: float = 10.0,
    average: float = 0.0,
) -> RewardModel:
    """The discrete-time survival model of listening time.

    Args:
        proportional: one shared index with per-bin intercepts and slopes (True) or a free logit
            per bin (False).
        hidden: width of the optional hidden layer (0 = linear index).
        n_id_buckets: size of the per-track effect table (0 = none).
        learning_rate: Adam step size.
        clip_norm: global gradient-norm clip.
        average: decay of the served iterate average (Polyak-Ruppert, bias-corrected EMA; 0 =
            serve the last iterate). 0.99 averages about the last 100 updates; see
            :func:`rewards.model.make_update`.

    >>> import numpy as np
    >>> m = survival_model()
    >>> s = m.init(jax.random.key(0), 3)
    >>> p = m.predict(s, Inputs(np.zeros((2, 3), np.float32), np.array([200_000, 20_000])))
    >>> bool(jnp.all(p.complete <= 1.0 - p.skip[:, 1]))
    True
    """
    if hidden < 0 or n_id_buckets < 0:
        raise ValueError("hidden and n_id_buckets must be >= 0")
    check_average(average)
    optimizer = make_optimizer(learning_rate, clip_norm)

    def init(key: PRNGKeyArray, n_features: int) -> ModelState:
        params = init_hazard_params(
            key, n_features, proportional=proportional, hidden=hidden, n_id_buckets=n_id_buckets
        )
        return initial_state(params, optimizer, average=average)

    def row_loss(params: Params, o: Outcomes) -> Float[Array, " n"]:
        logits = hazard_logits(params, jnp.asarray(o.features), _ids(o.track_id))
        return survival_row_loss(logits, o)

    def predict(state: ModelState, inputs: Inputs) -> Predictions:
        logits = hazard_logits(state.params, jnp.asarray(inputs.features), _ids(inputs.track_id))
        return survival_predictions(hazards(logits, inputs.duration_ms))

    spec = ModelSpec(
        name="survival",
        version=VERSION,
        heads=HEADS,
        params={
            "proportional": proportional,
            "hidden": hidden,
            "n_id_buckets": n_id_buckets,
            "learning_rate": learning_rate,
            "clip_norm": clip_norm,
            "average": average,
        },
    )
    return RewardModel(
        init=init,
        predict=jit_predict(predict),
        update=make_update(row_loss, optimizer, average=average),
        spec=spec,
    )


def _ids(track_id: object) -> Array | None:
    return None if track_id is None else jnp.asarray(track_id)
