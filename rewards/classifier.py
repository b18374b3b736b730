"""Direct classifiers: the multi-head skip model and the binary completion model.

Each head is an independent logistic output (optionally over a shared hidden layer and a
per-track bias), trained with binary cross-entropy on the labels of
:func:`rewards.labels.skip_labels`, weighted by whether the label is known (censored plays
count only at horizons they had passed). They are the baselines for the survival model and
the fast alternatives to it; unlike it they do not guarantee P(skip_1) <= P(skip_2) <= P(skip_3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from rewards.labels import skip_labels
from rewards.model import (
    Params,
    RewardModel,
    head_logits,
    init_head,
    initial_state,
    jit_predict,
    make_optimizer,
    make_update,
)
from rewards.types import Inputs, ModelSpec, ModelState, Outcomes, Predictions

VERSION = 1
_COLUMN = {"skip_1": 0, "skip_2": 1, "skip_3": 2}


def direct_model(
    *,
    heads: tuple[str, ...] = ("skip_1", "skip_2", "skip_3"),
    hidden: int = 0,
    n_id_buckets: int = 0,
    learning_rate: float = 0.03,
    clip_norm: float = 10.0,
    name: str = "direct",
) -> RewardModel:
    """A multi-head direct classifier over ``heads`` (a subset of skip_1, skip_2, skip_3, complete).

    Args:
        heads: which labels get an output. ``complete`` and ``skip_3`` are complements, so give
            at most one of them; the other is derived.
        hidden: width of the optional hidden layer (0 = logistic regression).
        n_id_buckets: size of the per-track bias table (0 = none; then ``track_id`` is unused).
        learning_rate: Adam step size.
        clip_norm: global gradient-norm clip.
        name: the spec name.

    Returns:
        A :class:`~rewards.model.RewardModel`.

    >>> m = direct_model()
    >>> m.spec.heads
    ('skip_1', 'skip_2', 'skip_3', 'complete')
    """
    known = ("skip_1", "skip_2", "skip_3", "complete")
    bad = [h for h in heads if h not in known]
    if bad or not heads or len(set(heads)) != len(heads):
        raise ValueError(f"heads must be distinct names from {known}, got {heads}")
    if "skip_3" in heads and "complete" in heads:
        raise ValueError("heads: 'skip_3' and 'complete' are complements; give one of them")
    if hidden < 0 or n_id_buckets < 0:
        raise ValueError("hidden and n_id_buckets must be >= 0")
    optimizer = make_optimizer(learning_rate, clip_norm)
    # Column of skip_labels behind each head and the sign (complete = not skip_3).
    cols = jnp.array([_COLUMN.get(h, 2) for h in heads])
    flip = jnp.array([h == "complete" for h in heads])

    def init(key: PRNGKeyArray, n_features: int) -> ModelState:
        params = init_head(key, n_features, len(heads), hidden=hidden, n_id_buckets=n_id_buckets)
        return initial_state(params, optimizer)

    def row_loss(params: Params, o: Outcomes) -> Float[Array, " n"]:
        logits = head_logits(params, jnp.asarray(o.features), _ids(o.track_id))
        y, k = skip_labels(o.ms_played, o.duration_ms, o.reason_end, o.censored)
        y = jnp.where(flip[None, :], ~y[:, cols], y[:, cols]).astype(jnp.float32)
        nll = -(y * jax.nn.log_sigmoid(logits) + (1.0 - y) * jax.nn.log_sigmoid(-logits))
        return jnp.sum(nll * k[:, cols].astype(jnp.float32), axis=-1)

    def predict(state: ModelState, inputs: Inputs) -> Predictions:
        logits = head_logits(state.params, jnp.asarray(inputs.features), _ids(inputs.track_id))
        p = jax.nn.sigmoid(logits)
        n = p.shape[0]
        nan = jnp.full((n,), jnp.nan, jnp.float32)
        col = {h: p[:, i] for i, h in enumerate(heads)}
        if "complete" in col:
            col["skip_3"] = 1.0 - col["complete"]
        if "skip_3" in col:
            col["complete"] = 1.0 - col["skip_3"]
        skip = jnp.stack([col.get(h, nan) for h in ("skip_1", "skip_2", "skip_3")], axis=-1)
        return Predictions(skip=skip, complete=col.get("complete", nan))

    covered = set(heads) | (
        {"skip_3", "complete"} if {"skip_3", "complete"} & set(heads) else set()
    )
    all_heads = tuple(h for h in known if h in covered)
    spec = ModelSpec(
        name=name,
        version=VERSION,
        heads=all_heads,
        params={
            "heads": ",".join(heads),
            "hidden": hidden,
            "n_id_buckets": n_id_buckets,
            "learning_rate": learning_rate,
            "clip_norm": clip_norm,
        },
    )
    return RewardModel(
        init=init, predict=jit_predict(predict), update=make_update(row_loss, optimizer), spec=spec
    )


def skip_model(
    *, hidden: int = 0, n_id_buckets: int = 0, learning_rate: float = 0.03, clip_norm: float = 10.0
) -> RewardModel:
    """The multi-head skip classifier: skip_1, skip_2 and skip_3 (complete = 1 - skip_3)."""
    return direct_model(
        heads=("skip_1", "skip_2", "skip_3"),
        hidden=hidden,
        n_id_buckets=n_id_buckets,
        learning_rate=learning_rate,
        clip_norm=clip_norm,
        name="skip",
    )


def completion_model(
    *, hidden: int = 0, n_id_buckets: int = 0, learning_rate: float = 0.03, clip_norm: float = 10.0
) -> RewardModel:
    """The binary completion classifier: P(complete) only (skip_1 and skip_2 come out NaN)."""
    return direct_model(
        heads=("complete",),
        hidden=hidden,
        n_id_buckets=n_id_buckets,
        learning_rate=learning_rate,
        clip_norm=clip_norm,
        name="completion",
    )


def _ids(track_id: object) -> Array | None:
    return None if track_id is None else jnp.asarray(track_id)
