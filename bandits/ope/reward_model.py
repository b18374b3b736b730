"""Cross-fitted reward models for DM and the doubly robust family, fitted on the log itself.

Cross-fitting: rows are split into ``folds`` random folds; each fold's ``q_hat`` comes from a
model fitted on the other folds, so a row's own reward never shapes its own baseline (which
would bias DR). The sufficient statistics of every fold are accumulated in one chunked pass and
each fold's model solves with "total minus its own fold", so the fit costs one pass over the log.

Two ridge models, both linear in their parameters (linear-probability for 0/1 rewards,
predictions clipped to the observed reward range):

- with ``action_features`` (candidates differ from round to round, e.g. tracks): a bilinear
  model ``q(x, a) = [x, 1]' W [z_a, 1]``;
- without: one linear model per action index, ``q(x, a) = [x, 1]' theta_a`` (only an intercept
  per action when the log has no context).

For slates, ``cross_fit_slate_q_hat`` fits a cross-fitted table of mean reward per (position,
item), shrunk towards the position mean.
"""

from __future__ import annotations

import jax
import numpy as np

from bandits.ope.base import _rng_from_key  # pyright: ignore[reportPrivateUsage]
from bandits.ope.types import FloatNK, FloatNSK, LoggedFeedback, LoggedSlates

_CHUNK = 1 << 18


def _with_bias(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x.astype(np.float64), np.ones((x.shape[0], 1))], axis=1)


def _context(log: LoggedFeedback, lo: int, hi: int) -> np.ndarray:
    if log.context is None:
        return np.ones((hi - lo, 1))
    return _with_bias(log.context[lo:hi])


def cross_fit_q_hat(
    log: LoggedFeedback,
    *,
    n_actions: int,
    key: jax.Array,
    folds: int = 2,
    ridge: float = 1.0,
) -> FloatNK:
    """Cross-fitted ``(n, k)`` float32 reward estimates for every action of every round.

    Args:
        log: the log; uses ``context`` and ``action_features`` when present.
        n_actions: ``k``, the number of actions per round.
        key: JAX PRNG key for the fold assignment.
        folds: number of cross-fitting folds (>= 2).
        ridge: L2 penalty of the ridge fits.

    Returns:
        ``q_hat`` with ``q_hat[i, a]`` from a model that did not see row ``i``.
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    n, k = log.n, n_actions
    rng = _rng_from_key(key)
    fold = np.empty(n, dtype=np.int8)
    for lo in range(0, n, _CHUNK):
        fold[lo : lo + _CHUNK] = rng.integers(0, folds, min(_CHUNK, n - lo))
    r_mean = float(log.reward.mean(dtype=np.float64))
    bilinear = log.action_features is not None
    dx = 1 if log.context is None else log.context.shape[1] + 1
    if bilinear:
        assert log.action_features is not None
        dz = log.action_features.shape[2] + 1
        p = dx * dz
        xtx, xty = np.zeros((folds, p, p)), np.zeros((folds, p))
    else:
        dz = 0
        p = dx
        xtx, xty = np.zeros((folds, k, p, p)), np.zeros((folds, k, p))
    for lo in range(0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        x = _context(log, lo, hi)
        a = log.action[lo:hi]
        r = log.reward[lo:hi].astype(np.float64) - r_mean
        f = fold[lo:hi]
        if bilinear:
            assert log.action_features is not None
            z = _with_bias(log.action_features[np.arange(lo, hi), a])
            phi = (x[:, :, None] * z[:, None, :]).reshape(hi - lo, p)
            for j in range(folds):
                m = f == j
                xtx[j] += phi[m].T @ phi[m]
                xty[j] += phi[m].T @ r[m]
        else:
            # One sort by (fold, action) instead of a mask per group: groups become slices.
            group = f.astype(np.int64) * k + a
            order = np.argsort(group, kind="stable")
            xs, rs = x[order], r[order]
            bounds = np.concatenate([[0], np.cumsum(np.bincount(group, minlength=folds * k))])
            for g in range(folds * k):
                lo_g, hi_g = bounds[g], bounds[g + 1]
                if hi_g > lo_g:
                    xm = xs[lo_g:hi_g]
                    xtx[g // k, g % k] += xm.T @ xm
                    xty[g // k, g % k] += xm.T @ rs[lo_g:hi_g]
    r_lo, r_hi = float(log.reward.min()), float(log.reward.max())
    eye = ridge * np.eye(p)
    params = [
        np.linalg.solve(xtx.sum(0) - xtx[j] + eye, (xty.sum(0) - xty[j])[..., None])[..., 0]
        for j in range(folds)
    ]
    q_hat = np.empty((n, k), dtype=np.float32)
    for lo in range(0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        x = _context(log, lo, hi)
        f = fold[lo:hi]
        out = np.empty((hi - lo, k))
        for j in range(folds):
            if bilinear:
                assert log.action_features is not None
                xw = x @ params[j].reshape(dx, dz)  # (m, dz)
                z = log.action_features[lo:hi]
                pred = np.einsum("me,mke->mk", xw[:, :-1].astype(z.dtype), z) + xw[:, -1:]
            else:
                pred = x @ params[j].T  # (m, k)
            np.copyto(out, pred, where=(f == j)[:, None])
        q_hat[lo:hi] = np.clip(out + r_mean, r_lo, r_hi)
    return q_hat


def with_q_hat(
    log: LoggedFeedback, *, n_actions: int, key: jax.Array, folds: int = 2, ridge: float = 1.0
) -> LoggedFeedback:
    """The log with ``q_hat`` filled by ``cross_fit_q_hat``.

    Example:
        >>> import jax, numpy as np
        >>> log = LoggedFeedback(np.array([0, 1, 0, 1]), np.array([1.0, 0.0, 1.0, 0.0]),
        ...                      np.full(4, 0.5))
        >>> with_q_hat(log, n_actions=2, key=jax.random.key(0)).q_hat.shape
        (4, 2)
    """
    q = cross_fit_q_hat(log, n_actions=n_actions, key=key, folds=folds, ridge=ridge)
    return log._replace(q_hat=q)


def cross_fit_slate_q_hat(
    log: LoggedSlates, *, n_actions: int, key: jax.Array, folds: int = 2, prior_rows: float = 5.0
) -> FloatNSK:
    """Cross-fitted ``(n, s, k)`` float32 table of mean reward per (position, item).

    Each cell is the mean reward of that item at that position in the other folds, shrunk
    towards the position's mean with the weight of ``prior_rows`` pseudo-rows. It ignores the
    items above a position; cascade-DR stays unbiased with it, only less efficient.
    """
    n, s = log.slate.shape
    k = n_actions
    fold = _rng_from_key(key).integers(0, folds, n)
    sums = np.zeros((folds, s, k))
    counts = np.zeros((folds, s, k))
    for j in range(folds):
        m = fold == j
        for pos in range(s):
            sums[j, pos] = np.bincount(log.slate[m, pos], weights=log.reward[m, pos], minlength=k)
            counts[j, pos] = np.bincount(log.slate[m, pos], minlength=k)
    q_hat = np.empty((n, s, k), dtype=np.float32)
    for j in range(folds):
        rs, cs = sums.sum(0) - sums[j], counts.sum(0) - counts[j]
        pos_mean = rs.sum(1, keepdims=True) / np.maximum(cs.sum(1, keepdims=True), 1.0)
        table = (rs + prior_rows * pos_mean) / (cs + prior_rows)
        q_hat[fold == j] = table
    return q_hat
