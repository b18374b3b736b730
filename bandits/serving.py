"""The serving form of the shared linear model's state: the covariance, packed.

A request's scores need ``m = K^T cov K``, the covariance of ``w = theta^T [x, 1]``
(``bandits.linear.project``), which reads all ``D^2`` entries of ``cov`` (4.9 MB at 16 user and
64 track features). Only the part of ``cov`` symmetric in the two user indices and in the two
track indices contributes to ``m``, so :func:`pack_cov` keeps that part, upper triangles only:
``(du1 (du1 + 1) / 2) x (dt1 (dt1 + 1) / 2)`` floats, about a quarter of the bytes, every entry an
average of ``cov`` entries (nothing factorised or inverted: as accurate as ``cov``).
:func:`project_packed` computes ``m`` from it as one vector-matrix product.
``bandits.linear.prepare`` builds a :class:`LinearServing` from a state; it is derived once per
loaded state and never saved.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

__all__ = ["LinearServing", "pack_cov", "project_packed"]


class LinearServing(NamedTuple):
    """What ``score``/``rank`` read, derived from a ``LinearState`` by ``linear.prepare``
    (``P = du1 (du1 + 1) / 2`` user index pairs, ``Q = dt1 (dt1 + 1) / 2`` track index pairs)."""

    theta: Float[Array, "du1 dt1"]  # as in the state
    cov_packed: Float[Array, "P Q"]  # cov symmetrised over (i, j) and (a, b), upper triangles
    id_mean: Float[Array, " n_ids"]  # id_resid / (id_ridge + id_count)
    id_var: Float[Array, " n_ids"]  # 1 / (id_ridge + id_count)
    n: Int[Array, ""]  # rows learned from, as in the state


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Upper-triangle index pairs of an ``n x n`` matrix, the weight of each pair in a
    symmetric quadratic form (1 on the diagonal, 2 off it) and the ``(n, n)`` map back."""
    i, j = np.triu_indices(n)
    back = np.zeros((n, n), np.int32)
    back[i, j] = np.arange(i.shape[0])
    back[j, i] = np.arange(i.shape[0])
    return i, j, np.where(i == j, 1.0, 2.0).astype(np.float32), back


def pack_cov(cov: Float[Array, "D D"], theta: Float[Array, "du1 dt1"]) -> Float[Array, "P Q"]:
    """``cov`` (over ``vec`` of a matrix shaped like ``theta``), symmetrised over the user and
    the track index pairs and packed to their upper triangles (see the module docstring)."""
    du1, dt1 = theta.shape
    iu, ju, _, _ = _pairs(du1)
    ia, ib, _, _ = _pairs(dt1)
    t = cov.reshape(du1, dt1, du1, dt1)
    t = t + t.transpose(2, 1, 0, 3)  # + T[j, a, i, b]
    t = 0.25 * (t + t.transpose(0, 3, 2, 1))  # + the same with a and b swapped
    return t.transpose(0, 2, 1, 3)[iu, ju][:, ia, ib]


def project_packed(
    theta: Float[Array, "du1 dt1"],
    cov_packed: Float[Array, "P Q"],
    context: Float[Array, " du"],
    features: Float[Array, "k dt"],
) -> tuple[Float[Array, " k"], Float[Array, " k"], Float[Array, " dt1"], Float[Array, "dt1 dt1"]]:
    """``bandits.linear.project`` from the packed covariance (same results to float rounding)."""
    du1, dt1 = theta.shape
    iu, ju, weight, _ = _pairs(du1)
    _, _, _, back = _pairs(dt1)
    xa = jnp.concatenate([context, jnp.ones((1,), context.dtype)])
    za = jnp.concatenate([features, jnp.ones((features.shape[0], 1), features.dtype)], axis=1)
    w = xa @ theta
    m = ((xa[iu] * xa[ju] * weight) @ cov_packed)[back]
    var = jnp.maximum(jnp.einsum("ka,ab,kb->k", za, m, za), 0.0)
    return za @ w, var, w, m
