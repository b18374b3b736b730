"""The shared-parameter linear model behind LinUCB, linear TS, SquareCB, epsilon-greedy, softmax.

One ridge regression over joint user x track features ``phi(x, z) = vec([x, 1] [z, 1]^T)``
(``D = (d_user + 1)(d_track + 1)``: the outer product, both main effects and an intercept), so a
track never seen before is scored from its features, plus an optional per-track bias looked up
by hashed id (``id % n_ids``), fitted by backfitting on the residuals of the just-updated linear
model, with its own ridge: the track id carries information (quality, popularity) that features may not.

Numerics: the state keeps the precision ``A`` (exact, additive) and its inverse ``cov``. Without
forgetting, ``cov`` follows batched Woodbury updates and is symmetrised every update and
re-computed from a Cholesky factor of ``A`` every ``refactor_every`` rows (and on every update
whose batch has at least ``D`` rows, where that is cheaper than Woodbury), so it cannot drift
into a non-symmetric or indefinite matrix. With forgetting (``discount < 1``:
``A <- discount A + X^T X + (1 - discount) ridge I``, which keeps the prior at ``ridge I``)
``cov`` is re-computed from the Cholesky factor after every update.

Adaptation (``adapt_window``, on by default): tastes change, and a model that never forgets
follows them slowly, while a fixed forgetting factor costs a stationary stream its memory. So
the state also keeps a *challenger*: the same ridge regression (per-track biases included) fed
the same rows with per-row forgetting, ``A_f <- keep A_f + X^T X + (1 - keep) ridge I`` with
``keep = exp(-rows / (adapt_window D))``. Before either learns from a batch, both predict it and
the race adds each row's squared-error gap (model minus challenger) to forgetting-weighted sums.
When the challenger is ahead by ``SWITCH_Z`` standard errors (over at least ``MIN_RACE`` of a
window of rows), its statistics replace the model's and the race starts again. On a stationary
stream the challenger, holding fewer rows, predicts worse and does not take over (the model
stays the plain one, bit for bit); after a change it wins once its window holds enough of the
new rows (about a quarter of a window, ``adapt_window D`` rows, at the least); under steady
drift it takes over again and again. Its cost is one ``D x D`` Cholesky solve per update and
per merge. The challenger and the race are in the saved state, and the challenger's statistics
in every delta: workers that share one policy add each other's rows to both models (each
forgets with its own rows only, so a group of ``W`` workers remembers about ``W`` windows),
while each races on its own rows and decides its own switches. ``switches`` counts them.

Position bias: a row observed at slate position ``p`` is modelled as
``E[r] = kappa_p * (theta^T phi + bias_id)`` with examination weights ``kappa``
(``position_bias``, 1 at the top), so the regression uses ``kappa_p phi`` as its feature and
lower positions teach the model without dragging scores down.

Scoring 2,000 candidates costs ``O(D (d_track + 1)^2 + k (d_track + 1)^2)``: the posterior
covariance is projected onto the request's user once, never per candidate.

Serving: that projection reads all of ``cov`` (``D^2`` floats, 4.9 MB at 16 user and 64 track
features) on every request. :func:`prepare` derives a :class:`LinearServing` state once per
snapshot: ``cov`` symmetrised over both the user and the track index pairs and packed to
``(du1 (du1+1) / 2, dt1 (dt1+1) / 2)`` (about a quarter of the memory; every entry an exact
average of ``cov`` entries, so no factorisation and no loss of accuracy), and the per-track bias
and variance tables already divided out. Every ``score``/``rank`` takes either form; the choices
and propensities agree to float rounding. The serving form is derived, never saved.

References:
    Li, Chu, Langford, Schapire. A contextual-bandit approach to personalized news article
    recommendation. WWW 2010.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_factor, cho_solve
from jaxtyping import Array, Float, Int

from bandits import serving, slates
from bandits.policy import Policy, PolicySpec, make_policy
from bandits.serving import LinearServing
from bandits.types import Candidates, Feedback, Ranked

__all__ = [
    "ADAPT_WINDOW",
    "LinearDelta",
    "LinearParams",
    "LinearServing",
    "LinearState",
    "adapting",
    "add_deltas",
    "delta",
    "delta_from",
    "empty_delta",
    "gram",
    "init",
    "joint",
    "make",
    "make_explorer",
    "mean_score",
    "merge",
    "predict",
    "prepare",
    "shared_slots",
    "update",
]


class LinearState(NamedTuple):
    """Ridge-regression statistics over joint features (``D = (d_user+1)(d_track+1)``)."""

    precision: Float[Array, "D D"]  # A = ridge I + sum kappa^2 phi phi^T (discounted)
    cov: Float[Array, "D D"]  # A^-1, Woodbury-updated, periodically re-factorised
    b: Float[Array, " D"]  # sum kappa r phi (discounted)
    theta: Float[Array, "du1 dt1"]  # A^-1 b as a (d_user+1, d_track+1) matrix
    id_count: Float[Array, " n_ids"]  # sum kappa^2 per hashed id (discounted)
    id_resid: Float[Array, " n_ids"]  # sum kappa (r - kappa theta^T phi) per hashed id
    position_bias: Float[Array, " p"]  # examination weight per slate position
    n: Int[Array, ""]  # rows learned from (masked rows excluded)
    since_refactor: Int[Array, ""]  # rows since the last Cholesky re-factorisation
    # Adaptation (``adapt_window > 0``; zero-size arrays when it is off): a challenger fitted to
    # the same rows with per-row forgetting, raced against the model above on every batch.
    fast_precision: Float[Array, "Df Df"]  # forgetting-weighted A of the challenger
    fast_b: Float[Array, " Df"]
    fast_theta: Float[Array, "du1f dt1f"]
    fast_id_count: Float[Array, " n_ids_f"]
    fast_id_resid: Float[Array, " n_ids_f"]
    race: Float[Array, " 3"]  # forgetting-weighted [rows, sum d, sum d^2], d = the loss gap
    switches: Int[Array, ""]  # times the challenger's statistics replaced the model's


AnyLinear = LinearState | LinearServing
"""The raw state or its serving form: ``score`` and ``rank`` accept either."""


class LinearDelta(NamedTuple):
    """Additive statistics of a feedback batch, for workers that share one policy."""

    precision: Float[Array, "D D"]
    b: Float[Array, " D"]
    id_count: Float[Array, " n_ids"]
    id_resid: Float[Array, " n_ids"]
    n: Int[Array, ""]
    fast_id_count: Float[Array, " n_ids_f"]  # the challenger's per-id statistics
    fast_id_resid: Float[Array, " n_ids_f"]


def init(
    d_user: int,
    d_track: int,
    *,
    ridge: float,
    n_ids: int,
    position_bias: tuple[float, ...],
    adapt: bool = False,
) -> LinearState:
    """The prior: ``A = ridge I``, no data (the challenger too, with ``adapt``)."""
    d = (d_user + 1) * (d_track + 1)
    eye = jnp.eye(d, dtype=jnp.float32)
    f = 1 if adapt else 0  # the challenger's arrays are empty without adaptation
    return LinearState(
        precision=ridge * eye,
        cov=eye / ridge,
        b=jnp.zeros((d,), jnp.float32),
        theta=jnp.zeros((d_user + 1, d_track + 1), jnp.float32),
        id_count=jnp.zeros((n_ids,), jnp.float32),
        id_resid=jnp.zeros((n_ids,), jnp.float32),
        position_bias=jnp.asarray(position_bias, jnp.float32),
        n=jnp.zeros((), jnp.int32),
        since_refactor=jnp.zeros((), jnp.int32),
        fast_precision=ridge * eye[: d * f, : d * f],
        fast_b=jnp.zeros((d * f,), jnp.float32),
        fast_theta=jnp.zeros(((d_user + 1) * f, (d_track + 1) * f), jnp.float32),
        fast_id_count=jnp.zeros((n_ids * f,), jnp.float32),
        fast_id_resid=jnp.zeros((n_ids * f,), jnp.float32),
        race=jnp.zeros((3,), jnp.float32),
        switches=jnp.zeros((), jnp.int32),
    )


def adapting(state: LinearState) -> bool:
    """Whether ``state`` carries a challenger (static: read from the shapes)."""
    return state.fast_b.shape[0] > 0


def empty_delta(state: LinearState) -> LinearDelta:
    """A delta of no rows, shaped like ``state``'s statistics."""
    return LinearDelta(
        precision=jnp.zeros_like(state.precision),
        b=jnp.zeros_like(state.b),
        id_count=jnp.zeros_like(state.id_count),
        id_resid=jnp.zeros_like(state.id_resid),
        n=jnp.zeros((), jnp.int32),
        fast_id_count=jnp.zeros_like(state.fast_id_count),
        fast_id_resid=jnp.zeros_like(state.fast_id_resid),
    )


def dims(state: AnyLinear) -> tuple[int, int]:
    """``(d_user, d_track)`` from the state's shapes."""
    return state.theta.shape[0] - 1, state.theta.shape[1] - 1


def _aug(x: Array) -> Array:
    return jnp.concatenate([x, jnp.ones((*x.shape[:-1], 1), x.dtype)], axis=-1)


def joint(context: Float[Array, "n du"], features: Float[Array, "n dt"]) -> Float[Array, "n D"]:
    """``vec([x, 1] [z, 1]^T)`` per row."""
    xa, za = _aug(context), _aug(features)
    return (xa[:, :, None] * za[:, None, :]).reshape(xa.shape[0], -1)


def _kappa(state: LinearState, position: Array) -> Array:
    p = state.position_bias.shape[0]
    return state.position_bias[jnp.clip(position, 0, p - 1)]


def _hash(state: LinearState, ids: Array) -> Array:
    return jnp.mod(ids, max(state.id_count.shape[0], 1))


def shared_slots(ids: np.ndarray, n_ids: int) -> int:
    """How many of the distinct ``ids`` share their per-track slot (``id % n_ids``) with
    another: tracks whose bias is partly another track's (0 without a per-track table).

    With ``m`` distinct tracks in ``n_ids`` slots about ``1 - exp(-m / n_ids)`` of them share
    one: sizing the table to 20 times the catalogue keeps that near 5 %. Linear in the ids when
    they come sorted and unique (a worker's ``WorkerState.tracks``) and ``n_ids`` is at most a
    few times their number.

    >>> shared_slots(np.array([1, 5, 9, 2, 2]), 4)  # 1, 5 and 9 share slot 1
    3
    """
    if n_ids <= 0:
        return 0
    u = np.asarray(ids, np.int64)
    if u.size > 1 and not bool(np.all(u[1:] > u[:-1])):
        u = np.unique(u)
    if u.size == 0:
        return 0
    slots = u % n_ids
    if n_ids <= 4 * u.size + 4096:
        counts = np.bincount(slots, minlength=n_ids)
    else:
        _, counts = np.unique(slots, return_counts=True)
    return int(counts[counts > 1].sum())


def id_bias(state: AnyLinear, ids: Int[Array, " k"], id_ridge: float) -> tuple[Array, Array]:
    """Per-candidate bias and its variance (both zero when ids are disabled)."""
    if isinstance(state, LinearServing):
        n_ids = state.id_mean.shape[0]
        if n_ids == 0:
            z = jnp.zeros(ids.shape, jnp.float32)
            return z, z
        h = jnp.mod(ids, n_ids)
        return state.id_mean[h], state.id_var[h]
    if state.id_count.shape[0] == 0:
        z = jnp.zeros(ids.shape, jnp.float32)
        return z, z
    h = _hash(state, ids)
    denom = id_ridge + state.id_count[h]
    return state.id_resid[h] / denom, 1.0 / denom


def predict(
    state: AnyLinear, context: Float[Array, " du"], candidates: Candidates, id_ridge: float
) -> tuple[Float[Array, " k"], Float[Array, " k"], Float[Array, " dt1"], Float[Array, "dt1 dt1"]]:
    """Posterior mean and variance (in units of the noise variance) of each candidate's score.

    ``state`` is the raw state or its serving form (:func:`prepare`); both give the same
    result to float rounding.

    Returns:
        ``(mean, var, w, m)``: ``mean = Z w + bias``; ``var = diag(Z m Z^T) + var_bias``, with
        ``Z = [features, 1]``, ``w = theta^T [x, 1]`` and ``m`` the covariance of ``w``.
    """
    if isinstance(state, LinearServing):
        mean, var, w, m = serving.project_packed(
            state.theta, state.cov_packed, context, candidates.features, state.cov_right
        )
    else:
        mean, var, w, m = project(state.theta, state.cov, context, candidates.features)
    bias, bias_var = id_bias(state, candidates.ids, id_ridge)
    return mean + bias, var + bias_var, w, m


def prepare(state: LinearState, *, id_ridge: float, width_rank: int | None = None) -> LinearServing:
    """The serving form of ``state``: what ``score``/``rank`` read, a quarter of the memory.

    With ``T[i, a, j, b] = cov[i dt1 + a, j dt1 + b]``, the covariance of ``w = theta^T [x, 1]``
    is ``m[a, b] = sum_ij x_i x_j T[i, a, j, b]`` (symmetrised). Only the part of ``T``
    symmetric in ``(i, j)`` and in ``(a, b)`` contributes, so ``prepare`` keeps that part,
    ``U = (T + T[j, a, i, b] + T[i, b, j, a] + T[j, b, i, a]) / 4``, for ``i <= j`` and
    ``a <= b`` only, and a request computes ``m`` as one vector-matrix product with it. Entries
    are averages of ``cov`` entries: nothing is factorised or inverted, so it is as accurate as
    ``cov`` itself. Pure and jittable; the result is derived state, never saved.

    Past ``serving.EXACT_WIDTH_BYTES`` of packed covariance (64 user x 64 track features, say)
    it keeps a rank-``serving.WIDTH_RANK`` factorisation of it instead
    (``serving.factor_packed``): a request then reads a few hundred kilobytes, not tens of
    megabytes, and its widths are approximate (its means stay exact).

    Args:
        state: a linear policy's state.
        id_ridge: the policy's per-track prior precision.
        width_rank: 0 keeps the packed covariance whole, ``r > 0`` factorises it to rank ``r``;
            None (the default) chooses by size (``serving.width_rank``).

    Example:
        >>> s = init(2, 3, ridge=1.0, n_ids=8, position_bias=(1.0,))
        >>> prepare(s, id_ridge=10.0).cov_packed.shape
        (6, 10)
    """
    packed = serving.pack_cov(state.cov, state.theta)
    denom = id_ridge + state.id_count
    rank = serving.width_rank(*state.theta.shape) if width_rank is None else width_rank
    right = None
    if rank > 0:
        packed, right = serving.factor_packed(packed, rank)
    return LinearServing(state.theta, packed, state.id_resid / denom, 1.0 / denom, state.n, right)


def project(
    theta: Float[Array, "du1 dt1"],
    cov: Float[Array, "D D"],
    context: Float[Array, " du"],
    features: Float[Array, "k dt"],
) -> tuple[Float[Array, " k"], Float[Array, " k"], Float[Array, " dt1"], Float[Array, "dt1 dt1"]]:
    """Mean and variance of ``theta^T phi(x, z)`` for one user and ``k`` items, projecting the
    ``D x D`` covariance onto the user once: ``w = theta^T [x, 1]``, ``m = K^T cov K``."""
    du1, dt1 = theta.shape
    xa = _aug(context)
    za = _aug(features)
    w = xa @ theta
    # Two matrix-vector products over cov's memory layout (row-major (i a), (j b)): the first
    # streams the D x D matrix once, contiguously; an einsum over both user axes at once made
    # XLA transpose the whole matrix on every request.
    left = (xa @ cov.reshape(du1, dt1 * du1 * dt1)).reshape(dt1, du1, dt1)
    m = jnp.einsum("ajb,j->ab", left, xa)
    m = 0.5 * (m + m.T)
    var = jnp.maximum(jnp.einsum("ka,ab,kb->k", za, m, za), 0.0)
    return za @ w, var, w, m


def _refactor(precision: Array, b: Array) -> tuple[Array, Array]:
    c = cho_factor(precision, lower=True)
    cov = cho_solve(c, jnp.eye(precision.shape[0], dtype=precision.dtype))
    return 0.5 * (cov + cov.T), cho_solve(c, b)


def _woodbury(cov: Array, x: Array) -> Array:
    """``(A + X^T X)^-1`` from ``cov = A^-1`` (batched Sherman-Morrison-Woodbury), symmetrised."""
    cx = cov @ x.T  # (D, n)
    inner = jnp.eye(x.shape[0], dtype=cov.dtype) + x @ cx
    sol = cho_solve(cho_factor(inner, lower=True), cx.T)  # (n, D)
    new = cov - cx @ sol
    return 0.5 * (new + new.T)


def _pairs(d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``d (d + 1) / 2`` index pairs ``i <= j`` of a symmetric ``d x d`` matrix, and the
    ``(d, d)`` map from ``(i, j)`` to its pair (``(j, i)`` maps to the same one)."""
    i, j = np.triu_indices(d)
    where = np.zeros((d, d), np.int32)
    where[i, j] = where[j, i] = np.arange(i.size, dtype=np.int32)
    return i, j, where


def gram(
    context: Float[Array, "n du"], features: Float[Array, "n dt"], weight: Float[Array, " n"]
) -> Float[Array, "D D"]:
    """``sum_r weight_r phi_r phi_r^T`` for ``phi_r = joint(context, features)_r``, without
    forming ``phi``.

    ``phi phi^T`` is the Kronecker product of ``[x, 1] [x, 1]^T`` and ``[z, 1] [z, 1]^T``, both
    symmetric: their upper halves (``du1 (du1 + 1) / 2`` and ``dt1 (dt1 + 1) / 2`` products per
    row) give the sum as one ``(du1 (du1 + 1) / 2, dt1 (dt1 + 1) / 2)`` matrix product, which is
    then spread to ``D x D``. At 16 user and 16 track features that is 153 x 153 per row instead
    of 289 x 289 (3.6x fewer multiply-adds); the sums are the same, in another order.
    """
    xa, za = _aug(context), _aug(features)
    du1, dt1 = xa.shape[1], za.shape[1]
    ui, uj, u_at = _pairs(du1)
    ti, tj, t_at = _pairs(dt1)
    xx = xa[:, ui] * xa[:, uj] * weight[:, None]  # (n, du1 (du1 + 1) / 2)
    zz = za[:, ti] * za[:, tj]  # (n, dt1 (dt1 + 1) / 2)
    half = xx.T @ zz
    # A[(a, b), (c, d)] = sum_r w x_a x_c z_b z_d = half[pair(a, c), pair(b, d)]
    full = half[u_at[:, None, :, None], t_at[None, :, None, :]]  # (du1, dt1, du1, dt1)
    return full.reshape(du1 * dt1, du1 * dt1)


def _weighted_sum(
    context: Float[Array, "n du"], features: Float[Array, "n dt"], weight: Float[Array, " n"]
) -> Float[Array, " D"]:
    """``sum_r weight_r phi_r`` as ``vec(sum_r weight_r [x, 1] [z, 1]^T)``."""
    return ((_aug(context) * weight[:, None]).T @ _aug(features)).reshape(-1)


def _stats(state: LinearState, fb: Feedback) -> LinearDelta:
    """The linear part of the delta (id statistics and race left empty)."""
    kappa = _kappa(state, fb.position) * fb.mask.astype(jnp.float32)
    r = jnp.where(fb.mask, fb.reward, 0.0)
    empty = empty_delta(state)
    return empty._replace(
        precision=gram(fb.context, fb.features, kappa * kappa),
        b=_weighted_sum(fb.context, fb.features, kappa * r),
        n=fb.mask.sum().astype(jnp.int32),
    )


def _id_stats(
    state: LinearState, fb: Feedback, theta: Array, count: Array, resid: Array
) -> tuple[Array, Array]:
    """Add per-id ``sum kappa^2`` and ``sum kappa (r - kappa theta^T phi)`` (backfitting) to
    ``count`` and ``resid`` (scattered in place: the table can be large)."""
    if not state.id_count.shape[0]:
        return count, resid
    kappa = _kappa(state, fb.position) * fb.mask.astype(jnp.float32)
    pred = jnp.sum((_aug(fb.context) @ theta.reshape(state.theta.shape)) * _aug(fb.features), 1)
    r = jnp.where(fb.mask, fb.reward, 0.0)
    h = _hash(state, fb.action)
    return count.at[h].add(kappa * kappa), resid.at[h].add(kappa * (r - kappa * pred))


def _fitted(
    state: LinearState, fb: Feedback, theta: Array, count: Array, resid: Array, id_ridge: float
) -> Array:
    """Each row's expected reward under weights ``theta`` and per-id tables ``count, resid``."""
    xa, za = _aug(fb.context), _aug(fb.features)
    pred = jnp.sum((xa @ theta.reshape(state.theta.shape)) * za, 1)
    if state.id_count.shape[0]:
        h = _hash(state, fb.action)
        pred = pred + resid[h] / (id_ridge + count[h])
    return _kappa(state, fb.position) * pred


def _race_terms(state: LinearState, fb: Feedback, id_ridge: float | None) -> Array:
    """``[rows, sum d, sum d^2]`` of the batch, ``d`` being each row's squared error under the
    model minus its squared error under the challenger, both predicted before either learns
    from the row (prequential: a positive mean says the challenger predicts better)."""
    if not adapting(state) or id_ridge is None:
        return jnp.zeros((3,), jnp.float32)
    mask = fb.mask.astype(jnp.float32)
    r = jnp.where(fb.mask, fb.reward, 0.0)
    own = r - _fitted(state, fb, state.theta, state.id_count, state.id_resid, id_ridge)
    fast = r - _fitted(
        state, fb, state.fast_theta, state.fast_id_count, state.fast_id_resid, id_ridge
    )
    d = (own * own - fast * fast) * mask
    return jnp.stack([mask.sum(), d.sum(), (d * d).sum()])


def delta(state: LinearState, feedback: Feedback, *, id_ridge: float | None = None) -> LinearDelta:
    """The additive statistics ``feedback`` contributes (ridge and forgetting excluded).

    The linear statistics are exact sums. The per-id residuals are taken against
    ``state.theta`` (the worker's current weights), so merged per-id biases approximate what a
    single worker would learn, closer the more often workers merge; with adaptation, so are the
    challenger's (against the worker's challenger). ``id_ridge`` is the policy's, needed with
    adaptation only.
    """
    d = _stats(state, feedback)
    count, resid = _id_stats(state, feedback, state.theta, d.id_count, d.id_resid)
    if adapting(state):
        if id_ridge is None:
            raise ValueError("the delta of a state with a challenger needs id_ridge")
        f_count, f_resid = _id_stats(
            state, feedback, state.fast_theta, d.fast_id_count, d.fast_id_resid
        )
        d = d._replace(fast_id_count=f_count, fast_id_resid=f_resid)
    return d._replace(id_count=count, id_resid=resid)


def delta_from(fields: Mapping[str, Any], like: LinearDelta | None = None) -> LinearDelta:
    """A delta from its fields by name, as a worker wrote it (other names are ignored).

    One written before deltas carried the challenger's terms lacks them: they are zeros shaped
    like ``like``'s (a worker's own pending delta, added to its next ones), or empty without it
    (a delta from another worker: ``merge`` then adds nothing to the challenger's per-id tables).
    """
    older = {
        "fast_id_count": np.zeros((0,), np.float32),
        "fast_id_resid": np.zeros((0,), np.float32),
    }
    if like is not None:
        older = {f: jnp.zeros_like(getattr(like, f)) for f in older}
    return LinearDelta(
        **{f: jnp.asarray(fields[f] if f in fields else older[f]) for f in LinearDelta._fields}
    )


def add_deltas(a: LinearDelta, b: LinearDelta) -> LinearDelta:
    """Sum two deltas (associative and commutative)."""
    return LinearDelta(*(x + y for x, y in zip(a, b, strict=True)))


def merge(state: LinearState, d: LinearDelta) -> LinearState:
    """Fold another worker's delta into ``state`` and re-factorise (forgetting not applied; the
    challenger takes the same rows; the race stays the worker's own: another worker's gaps are
    between its own model and challenger, which may have switched at other times)."""
    precision = state.precision + d.precision
    b = state.b + d.b
    cov, theta = _refactor(precision, b)
    merged = state._replace(
        precision=precision,
        cov=cov,
        b=b,
        theta=theta.reshape(state.theta.shape),
        id_count=state.id_count + d.id_count,
        id_resid=state.id_resid + d.id_resid,
        n=state.n + d.n,
        since_refactor=jnp.zeros((), jnp.int32),
    )
    if not adapting(state):
        return merged
    fast_precision = state.fast_precision + d.precision
    fast_b = state.fast_b + d.b
    merged = merged._replace(
        fast_precision=fast_precision,
        fast_b=fast_b,
        fast_theta=_solve(fast_precision, fast_b).reshape(state.theta.shape),
    )
    if d.fast_id_count.shape != state.fast_id_count.shape:  # from a worker without a challenger
        return merged
    return merged._replace(
        fast_id_count=state.fast_id_count + d.fast_id_count,
        fast_id_resid=state.fast_id_resid + d.fast_id_resid,
    )


def _solve(precision: Array, b: Array) -> Array:
    return cho_solve(cho_factor(precision, lower=True), b)


SWITCH_Z = 4.0
"""How many standard errors the challenger's mean loss advantage must reach before its
statistics replace the model's."""
MIN_RACE = 0.25
"""The race's forgetting-weighted rows needed before a switch, as a share of the window."""


def _forget(
    precision: Array, b: Array, d: LinearDelta, keep: Array | float, ridge: float
) -> tuple[Array, Array]:
    """``keep A + X^T X + (1 - keep) ridge I`` and ``keep b + X^T r``: forgetting that keeps the
    prior at ``ridge I``."""
    eye = jnp.eye(b.shape[0], dtype=jnp.float32)
    return keep * precision + d.precision + (1.0 - keep) * ridge * eye, keep * b + d.b


def _learn(
    state: LinearState,
    fb: Feedback,
    d: LinearDelta,
    *,
    ridge: float,
    discount: float,
    refactor_every: int,
) -> LinearState:
    """The model's own update (``d``: the batch's linear statistics)."""
    n = state.n + d.n
    if discount < 1.0:
        precision, b = _forget(state.precision, state.b, d, discount, ridge)
        cov, theta = _refactor(precision, b)
        count, resid = _id_stats(
            state, fb, theta, discount * state.id_count, discount * state.id_resid
        )
        return state._replace(
            precision=precision,
            cov=cov,
            b=b,
            theta=theta.reshape(state.theta.shape),
            id_count=count,
            id_resid=resid,
            n=n,
            since_refactor=jnp.zeros((), jnp.int32),
        )
    precision = state.precision + d.precision
    b = state.b + d.b
    since = state.since_refactor + d.n

    def refactored() -> tuple[Array, Array, Array]:
        cov, theta = _refactor(precision, b)
        return cov, theta, jnp.zeros((), jnp.int32)

    def woodbury() -> tuple[Array, Array, Array]:
        kappa = _kappa(state, fb.position) * fb.mask.astype(jnp.float32)
        cov = _woodbury(state.cov, joint(fb.context, fb.features) * kappa[:, None])
        return cov, cov @ b, since

    if fb.mask.shape[0] >= b.shape[0]:  # a batch of at least D rows: Cholesky is the cheaper path
        cov, theta, since = refactored()
    else:
        cov, theta, since = jax.lax.cond(since >= refactor_every, refactored, woodbury)
    count, resid = _id_stats(state, fb, theta, state.id_count, state.id_resid)
    return state._replace(
        precision=precision,
        cov=cov,
        b=b,
        theta=theta.reshape(state.theta.shape),
        id_count=count,
        id_resid=resid,
        n=n,
        since_refactor=since,
    )


def _adapt(
    before: LinearState,
    after: LinearState,
    fb: Feedback,
    d: LinearDelta,
    *,
    ridge: float,
    id_ridge: float,
    window: float,
) -> LinearState:
    """Race the challenger on the batch (``before`` predicts it), teach it the batch with per-row
    forgetting (``exp(-rows / window)``), and let its statistics replace the model's
    (``after``) when it predicts better by ``SWITCH_Z`` standard errors."""
    race = _race_terms(before, fb, id_ridge)
    keep = jnp.exp(-d.n.astype(jnp.float32) / window)
    fast_precision, fast_b = _forget(before.fast_precision, before.fast_b, d, keep, ridge)
    fast_theta = _solve(fast_precision, fast_b)
    count, resid = _id_stats(
        before, fb, fast_theta, keep * before.fast_id_count, keep * before.fast_id_resid
    )
    race = keep * before.race + race
    rows, total, squares = race[0], race[1], race[2]
    mean = total / jnp.maximum(rows, 1.0)
    var = jnp.maximum(squares / jnp.maximum(rows, 1.0) - mean * mean, 1e-12)
    ahead = (rows >= MIN_RACE * window) & (mean > SWITCH_Z * jnp.sqrt(var / rows))
    raced = after._replace(
        fast_precision=fast_precision,
        fast_b=fast_b,
        fast_theta=fast_theta.reshape(before.theta.shape),
        fast_id_count=count,
        fast_id_resid=resid,
        race=race,
    )

    def switch(s: LinearState) -> LinearState:
        cov, theta = _refactor(s.fast_precision, s.fast_b)
        return s._replace(
            precision=s.fast_precision,
            cov=cov,
            b=s.fast_b,
            theta=theta.reshape(s.theta.shape),
            id_count=s.fast_id_count,
            id_resid=s.fast_id_resid,
            since_refactor=jnp.zeros((), jnp.int32),
            race=jnp.zeros((3,), jnp.float32),
            switches=s.switches + 1,
        )

    def stay(s: LinearState) -> LinearState:
        return s

    return jax.lax.cond(ahead, switch, stay, raced)


def update(
    state: LinearState,
    fb: Feedback,
    *,
    ridge: float,
    discount: float,
    refactor_every: int,
    id_ridge: float | None = None,
    adapt_window: float = 0.0,
) -> LinearState:
    """Learn from a feedback batch (pure; jit it, or use the policy's ``update``).

    With a challenger in ``state`` (``init(..., adapt=True)``), ``adapt_window`` is its memory
    in multiples of the joint dimension ``D`` (rows), and ``id_ridge`` scores the race.
    """
    if isinstance(state, LinearServing):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError("update takes the policy state, not its serving form (prepare(state))")
    d = _stats(state, fb)
    after = _learn(state, fb, d, ridge=ridge, discount=discount, refactor_every=refactor_every)
    if not adapting(state):
        return after
    if adapt_window <= 0 or id_ridge is None:
        raise ValueError("a state with a challenger needs adapt_window > 0 and id_ridge")
    window = float(adapt_window) * state.b.shape[0]
    return _adapt(state, after, fb, d, ridge=ridge, id_ridge=id_ridge, window=window)


ADAPT_WINDOW = 16.0
"""The challenger's memory by default, in multiples of the joint dimension ``D`` (rows)."""


class LinearParams(NamedTuple):
    """The shared linear model's hyperparameters, as every linear policy factory takes them
    (``bandits.linucb`` documents each one). ``adapt_window`` None: a policy that does not
    adapt at all (not recorded in its spec)."""

    ridge: float
    discount: float
    refactor_every: int
    n_ids: int
    id_ridge: float
    position_bias: tuple[float, ...]
    adapt_window: float | None = None

    def check(self) -> None:
        """Raise ``ValueError`` naming the first field out of range."""
        if not self.ridge > 0:
            raise ValueError(f"ridge must be > 0, got {self.ridge}")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {self.discount}")
        if self.refactor_every < 1:
            raise ValueError(f"refactor_every must be >= 1, got {self.refactor_every}")
        if self.n_ids < 0:
            raise ValueError(f"n_ids must be >= 0, got {self.n_ids}")
        if not self.id_ridge > 0:
            raise ValueError(f"id_ridge must be > 0, got {self.id_ridge}")
        if not self.position_bias or not all(0.0 < k <= 1.0 for k in self.position_bias):
            raise ValueError(
                f"position_bias must be non-empty with values in (0, 1], got {self.position_bias}"
            )
        if self.adapt_window is not None and not (
            self.adapt_window == 0 or 1 <= self.adapt_window < float("inf")
        ):
            raise ValueError(
                "adapt_window must be 0 (off) or finite and >= 1 (multiples of D), got "
                f"{self.adapt_window}"
            )

    @property
    def adapts(self) -> bool:
        return bool(self.adapt_window)

    def spec_params(self) -> dict[str, object]:
        """The hyperparameters as a spec ``params`` fragment (checked first)."""
        self.check()
        out: dict[str, object] = {
            "ridge": float(self.ridge),
            "discount": float(self.discount),
            "refactor_every": int(self.refactor_every),
            "n_ids": int(self.n_ids),
            "id_ridge": float(self.id_ridge),
            "position_bias": [float(k) for k in self.position_bias],
        }
        if self.adapt_window is not None:
            out["adapt_window"] = float(self.adapt_window)
        return out


ADDED = ("adapt_window",)
"""Hyperparameters the linear policies gained after states of their version were saved: such a
state loads, the arrays it lacks (``ADDED_LEAVES``) taken from the template, the prior
(``bandits.state.load``)."""
ADDED_LEAVES = (
    ".fast_precision",
    ".fast_b",
    ".fast_theta",
    ".fast_id_count",
    ".fast_id_resid",
    ".race",
    ".switches",
)


ScoreCore = Callable[[AnyLinear, Array, Candidates, Array], Array]
RankCore = Callable[[AnyLinear, Array, Candidates, Array, Array, int], Ranked]
ExploreCore = Callable[[AnyLinear, Array, Array, Array, int], Ranked]
"""``explore(state, scores, mask, key, slate_size) -> Ranked``: a slate from masked scores."""


def mean_score(params: LinearParams) -> ScoreCore:
    """The score core that ranks by the ridge estimate (posterior mean, per-track bias added)."""

    def score(state: AnyLinear, context: Array, candidates: Candidates, mask: Array) -> Array:
        mean, _, _, _ = predict(state, context, candidates, params.id_ridge)
        return slates.masked(mean, mask)

    return score


def make(
    name: str,
    version: int,
    extra: dict[str, object],
    params: LinearParams,
    *,
    score: ScoreCore,
    rank: RankCore,
) -> Policy:
    """Build a ``Policy`` on the shared linear model from its ``score`` and ``rank`` cores.

    Args:
        name: registry name, recorded in the spec.
        version: state format version.
        extra: the algorithm's own hyperparameters (already checked), listed first in the spec.
        params: the shared linear hyperparameters (checked here).
        score: ``score(state, context, candidates, mask) -> (k,)`` with masked entries -inf.
        rank: ``rank(state, context, candidates, mask, key, slate_size) -> Ranked``.
    """
    return make_policy(
        PolicySpec(name, version, {**extra, **params.spec_params()}),
        init=partial(
            init,
            ridge=params.ridge,
            n_ids=params.n_ids,
            position_bias=params.position_bias,
            adapt=params.adapts,
        ),
        score=score,
        rank=rank,
        update=partial(
            update,
            ridge=params.ridge,
            discount=params.discount,
            refactor_every=params.refactor_every,
            id_ridge=params.id_ridge,
            adapt_window=params.adapt_window or 0.0,
        ),
        added=ADDED,
        added_leaves=ADDED_LEAVES,
        dims=dims,
        prepare=partial(prepare, id_ridge=params.id_ridge),
    )


def make_explorer(
    name: str, version: int, extra: dict[str, object], params: LinearParams, explore: ExploreCore
) -> Policy:
    """A ``Policy`` that scores by the ridge estimate and samples its slate with ``explore``
    (SquareCB, epsilon-greedy, softmax: they differ only in how they explore)."""
    score = mean_score(params)

    def rank(
        state: AnyLinear,
        context: Array,
        candidates: Candidates,
        mask: Array,
        key: Array,
        slate_size: int,
    ) -> Ranked:
        return explore(state, score(state, context, candidates, mask), mask, key, slate_size)

    return make(name, version, extra, params, score=score, rank=rank)
