"""The reward-model protocol and the pieces every model shares.

A reward model is a :class:`RewardModel` of pure, jitted functions over an explicit
:class:`~rewards.types.ModelState` (parameters, optax optimiser state, step):

- ``init(key, n_features) -> ModelState``
- ``predict(state, inputs: Inputs) -> Predictions``
- ``update(state, outcomes: Outcomes) -> (ModelState, UpdateMetrics)``: one optimiser step on a
  mini-batch; the metrics' loss is measured *before* the step (progressive validation).
- ``spec``: a :class:`~rewards.types.ModelSpec` for checkpoints.

With ``average > 0`` (:func:`make_update`) the model serves the Polyak-Ruppert average of its
iterates: ``state.params`` is an exponential moving average of the optimiser's own
iterate, which lives in ``state.opt_state`` (:class:`AveragedState`). Online Adam at a constant
step size keeps jittering around the optimum; the average removes most of that noise at no cost
in adaptivity beyond a lag of about ``1 / (1 - average)`` updates.

``update`` is safe against bad input: invalid rows (:func:`rewards.labels.valid_rows`) are dropped
and counted, and a step whose loss or gradient is not finite is refused (the state comes back
unchanged, ``metrics.accepted`` is False), so one bad batch cannot poison the parameters.

``predict`` takes :class:`~rewards.types.Inputs` and ``update`` takes
:class:`~rewards.types.Outcomes`; anything else (a raw numpy or jax array) is a ``TypeError``
that says how to build them (:class:`Guarded`).

Shapes are static under ``jit``: pad batches to a few fixed sizes with :func:`pad` to avoid a
recompilation per batch size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from rewards.labels import valid_rows
from rewards.types import Inputs, ModelSpec, ModelState, Outcomes, Predictions, UpdateMetrics

Params = dict[str, Array]
X = TypeVar("X")
Y = TypeVar("Y")
RowLoss = Callable[[Params, Outcomes], Float[Array, " n"]]


class RewardModel(NamedTuple):
    """A reward model: pure functions plus the spec of what built them."""

    init: Callable[[PRNGKeyArray, int], ModelState]
    predict: Callable[[ModelState, Inputs], Predictions]
    update: Callable[[ModelState, Outcomes], tuple[ModelState, UpdateMetrics]]
    spec: ModelSpec


class AveragedState(NamedTuple):
    """``ModelState.opt_state`` of a model built with iterate averaging (``average > 0``).

    Args:
        inner: the optax optimiser's state.
        raw: the optimiser's own iterate (same tree as ``params``); gradients are taken here,
            while ``ModelState.params`` holds the average that ``predict`` uses.
    """

    inner: Any
    raw: Any


def _described(x: object) -> str:
    """``"an array of shape (5, 2)"``, ``"a tuple"``: what a caller handed in."""
    if isinstance(x, np.ndarray | jax.Array):
        return f"an array of shape {tuple(x.shape)}"
    return f"a {type(x).__module__}.{type(x).__qualname__}".replace("a builtins.", "a ")


def require_inputs(inputs: object) -> None:
    """Raise a ``TypeError`` that says how to build ``Inputs`` unless it is one.

    Raises:
        TypeError: ``inputs`` is a raw array, an ``Outcomes`` batch or anything else.
    """
    if isinstance(inputs, Inputs):
        return
    hint = " (an Outcomes batch gives its Inputs as outcomes.inputs)"
    raise TypeError(
        f"predict takes rewards.Inputs, got {_described(inputs)}; build it with "
        "rewards.Inputs(features=(n, d) float32, duration_ms=(n,) int, track_id=(n,) int or None, "
        f"history=(n, h, e) float32 or None){hint if isinstance(inputs, Outcomes) else ''}"
    )


def require_outcomes(outcomes: object) -> None:
    """Raise a ``TypeError`` that says how to build ``Outcomes`` unless it is one.

    Raises:
        TypeError: ``outcomes`` is a raw array or anything else.
    """
    if not isinstance(outcomes, Outcomes):
        raise TypeError(
            f"update takes rewards.Outcomes, got {_described(outcomes)}; build it with "
            "rewards.Outcomes(features, ms_played, duration_ms, reason_end, saved, position, "
            "censored, mask), one row per play, or rewards.outcomes_from_frame(frame), then "
            "pad it to a fixed size with rewards.pad(outcomes, size)"
        )


class Guarded(Generic[X, Y]):
    """A jitted ``fn(state, x)`` behind a check of ``x`` that runs on the host, before tracing.

    Every attribute of the jitted function (``lower``, ``_cache_size``, ...) stays reachable,
    and the check is one ``isinstance``, so the guard costs nothing next to the dispatch.

    Args:
        fn: the jitted function.
        require: raises a ``TypeError`` that says how to build the right ``x``.
    """

    def __init__(self, fn: Callable[[ModelState, X], Y], require: Callable[[object], None]):
        self._fn = fn
        self._require = require

    def __call__(self, state: ModelState, x: X) -> Y:
        self._require(x)
        return self._fn(state, x)

    def __getattr__(self, name: str) -> Any:
        if name in ("_fn", "_require"):
            raise AttributeError(name)
        return getattr(self._fn, name)


def jit_predict(
    predict: Callable[[ModelState, Inputs], Predictions],
) -> Guarded[Inputs, Predictions]:
    """``jax.jit(predict)`` that refuses anything but :class:`~rewards.types.Inputs`."""
    return Guarded(jax.jit(predict), require_inputs)


def clean(outcomes: Outcomes) -> tuple[Outcomes, Array]:
    """Replace invalid rows by harmless values and mask them out.

    Returns:
        ``(outcomes, valid)`` where every array is finite and in range, ``mask == valid``, and
        ``ms_played`` is clipped to ``[0, duration_ms]``.
    """
    o = outcomes
    valid = valid_rows(o)
    features = jnp.where(valid[:, None], jnp.asarray(o.features), 0.0).astype(jnp.float32)
    duration = jnp.where(valid, jnp.asarray(o.duration_ms), 1).astype(jnp.int32)
    ms = jnp.clip(jnp.asarray(o.ms_played), 0, None).astype(jnp.int32)
    ms = jnp.where(valid, jnp.minimum(ms, duration), 0)
    reason = jnp.where(valid, jnp.asarray(o.reason_end).astype(jnp.int32), 0)
    history = None
    if o.history is not None:
        h = jnp.asarray(o.history)
        history = jnp.where(valid[:, None, None], h, 0.0).astype(jnp.float32)
    track_id = None
    if o.track_id is not None:
        track_id = jnp.where(valid, jnp.asarray(o.track_id), 0).astype(jnp.int32)
    cleaned = Outcomes(
        features=features,
        ms_played=ms,
        duration_ms=duration,
        reason_end=reason,
        saved=jnp.asarray(o.saved) & valid,
        position=jnp.asarray(o.position).astype(jnp.int32),
        censored=jnp.asarray(o.censored) & valid,
        mask=valid,
        track_id=track_id,
        history=history,
    )
    return cleaned, valid


def make_update(
    row_loss: RowLoss, optimizer: optax.GradientTransformation, *, average: float = 0.0
) -> Callable[[ModelState, Outcomes], tuple[ModelState, UpdateMetrics]]:
    """Build the guarded, jitted ``update`` from a per-row loss (mean over valid rows).

    Args:
        row_loss: ``(params, cleaned outcomes) -> (n,)`` loss of each row.
        optimizer: the optax optimiser.
        average: decay of the iterate average in ``[0, 1)``; 0 serves the last iterate. With
            ``average > 0`` the state must come from :func:`initial_state` with the same
            ``average`` (its ``opt_state`` is an :class:`AveragedState`). The served parameters
            move toward each new iterate by ``1 - decay`` with ``decay = min(average, (1 + t) /
            (10 + t))`` after ``t`` accepted steps (the warm-up rule of TensorFlow's
            ``ExponentialMovingAverage(num_updates=t)``): early on the average follows the
            iterates closely, and it settles to an average of about the last
            ``1 / (1 - average)`` iterates. The metrics' loss is that of the optimiser's iterate.

    Raises:
        ValueError: if ``average`` is outside ``[0, 1)``.
    """
    check_average(average)

    def update(state: ModelState, outcomes: Outcomes) -> tuple[ModelState, UpdateMetrics]:
        o, valid = clean(outcomes)
        w = valid.astype(jnp.float32)
        n_used = jnp.sum(valid.astype(jnp.int32))
        n_dropped = jnp.sum(jnp.asarray(outcomes.mask).astype(jnp.int32)) - n_used
        if average > 0.0:
            train_params, inner = state.opt_state.raw, state.opt_state.inner
        else:
            train_params, inner = state.params, state.opt_state

        def loss_fn(params: Params) -> Array:
            return jnp.sum(w * row_loss(params, o)) / jnp.maximum(jnp.sum(w), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(train_params)
        # optax mixes Python floats with int32 counters; keep it working under strict promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, inner = optimizer.update(grads, inner, train_params)
            raw = optax.apply_updates(train_params, updates)
        if average > 0.0:
            t = state.step.astype(jnp.float32)
            rate = 1.0 - jnp.minimum(average, (1.0 + t) / (10.0 + t))

            def toward(served: Array, iterate: Array) -> Array:
                return served + rate * (iterate - served)

            params = jax.tree.map(toward, state.params, raw)
            opt_state: Any = AveragedState(inner, raw)
        else:
            params, opt_state = raw, inner
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite((params, opt_state))
        ok = finite & (n_used > 0)

        def keep_if_ok(new: Array, old: Array) -> Array:
            return jnp.where(ok, new, old)

        new_params, new_opt = jax.tree.map(
            keep_if_ok, (params, opt_state), (state.params, state.opt_state)
        )
        new_state = ModelState(new_params, new_opt, state.step + ok.astype(jnp.int32))
        return new_state, UpdateMetrics(loss, n_used, n_dropped, ok, grad_norm)

    return Guarded(jax.jit(update), require_outcomes)


def check_average(average: float) -> None:
    """Raise ``ValueError`` unless ``0 <= average < 1``."""
    if not 0.0 <= average < 1.0:
        raise ValueError(f"average must be in [0, 1), got {average}")


def _all_finite(tree: Any) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def make_optimizer(learning_rate: float, clip_norm: float) -> optax.GradientTransformation:
    """The default optimiser: global-norm clipping then Adam."""
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(learning_rate))


# ----------------------------------------------------------------------------- shared layers
def init_head(
    key: PRNGKeyArray, n_in: int, n_out: int, *, hidden: int, n_id_buckets: int
) -> Params:
    """Parameters of the shared wide-and-deep head (see :func:`head_logits`)."""
    k1, _ = jax.random.split(key)
    params: Params = {
        "w": jnp.zeros((n_in + hidden, n_out), jnp.float32),
        "b": jnp.zeros((n_out,), jnp.float32),
    }
    if hidden > 0:
        params["w_hidden"] = jax.random.normal(k1, (n_in, hidden), jnp.float32) / np.sqrt(n_in)
        params["b_hidden"] = jnp.zeros((hidden,), jnp.float32)
    if n_id_buckets > 0:
        params["id_table"] = jnp.zeros((n_id_buckets, n_out), jnp.float32)
    return params


def head_logits(
    params: Params, x: Float[Array, "n d"], track_id: Int[Array, " n"] | None
) -> Float[Array, "n m"]:
    """Logits ``[x, gelu(x W_h + b_h)] W + b + id_table[track_id % buckets]``.

    With ``hidden == 0`` this is a (multi-output) logistic regression on ``x``.
    """
    z = x
    if "w_hidden" in params:
        z = jnp.concatenate(
            [x, jax.nn.gelu(x @ params["w_hidden"] + params["b_hidden"][None, :])], -1
        )
    logits = z @ params["w"] + params["b"][None, :]
    if "id_table" in params:
        if track_id is None:
            raise ValueError("this model was built with n_id_buckets > 0 and needs track_id")
        table = params["id_table"]
        idx = jnp.mod(jnp.asarray(track_id).astype(jnp.int32), table.shape[0])
        logits = logits + table[idx]
    return logits


def initial_state(
    params: Params, optimizer: optax.GradientTransformation, *, average: float = 0.0
) -> ModelState:
    """A fresh state around ``params`` (with an :class:`AveragedState` when ``average > 0``)."""
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(params)
    if average > 0.0:
        opt_state = AveragedState(opt_state, jax.tree.map(jnp.copy, params))
    return ModelState(params, opt_state, jnp.zeros((), jnp.int32))


# ----------------------------------------------------------------------------- batching
def pad(outcomes: Outcomes, size: int) -> Outcomes:
    """Pad a numpy batch to ``size`` rows with ``mask=False`` (keeps jit shapes static).

    Raises:
        ValueError: if the batch already has more than ``size`` rows.
    """
    n = int(np.shape(outcomes.mask)[0])
    if n > size:
        raise ValueError(f"pad: batch has {n} rows, more than size={size}")

    def grow(a: Any) -> Any:
        if a is None:
            return None
        a = np.asarray(a)
        width = [(0, size - n)] + [(0, 0)] * (a.ndim - 1)
        return np.pad(a, width)

    return Outcomes._make(grow(a) for a in outcomes)


def take(outcomes: Outcomes, rows: Int[Any, " r"] | slice) -> Outcomes:
    """Rows ``rows`` of a numpy batch (None fields stay None)."""
    return Outcomes._make(None if a is None else np.asarray(a)[rows] for a in outcomes)
