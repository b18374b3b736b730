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

Reading the packed covariance is what a request's cost grows with: ``P x Q`` floats, the square
of the joint dimension over four (18 MB at 64 user and 64 track features). Past
``EXACT_WIDTH_BYTES``, :func:`factor_packed` keeps a rank-``r`` factorisation of it instead
(``P x r + r x Q`` floats: 0.5 MB at that shape and rank 32), found by a randomised SVD (Halko,
Martinsson and Tropp, 2011) with a fixed key, so the same state always gives the same form. The
packed covariance of a ridge model is close to low rank: its prior part, ``I / ridge``, packs to
a rank-one matrix, and the data's part decays quickly. Only the width (the variance of a score)
is approximated; the means are exact. The benchmarks measure its effect on latency and regret
(``python -m benchmarks bandits``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

__all__ = [
    "EXACT_WIDTH_BYTES",
    "WIDTH_RANK",
    "LinearServing",
    "factor_packed",
    "nearest_covariance",
    "pack_cov",
    "project_packed",
    "width_rank",
]

EXACT_WIDTH_BYTES = 4 << 20
"""The largest packed covariance (bytes of float32) that :func:`width_rank` keeps whole."""
WIDTH_RANK = 32
"""The rank of the factorised covariance past ``EXACT_WIDTH_BYTES``."""


class LinearServing(NamedTuple):
    """What ``score``/``rank`` read, derived from a ``LinearState`` by ``linear.prepare``
    (``P = du1 (du1 + 1) / 2`` user index pairs, ``Q = dt1 (dt1 + 1) / 2`` track index pairs)."""

    theta: Float[Array, "du1 dt1"]  # as in the state
    # cov symmetrised over (i, j) and (a, b), upper triangles; or, with ``cov_right``, the left
    # factor ``(P, r)`` of its rank-r approximation ``cov_packed @ cov_right``
    cov_packed: Float[Array, "P Q"] | Float[Array, "P r"]
    id_mean: Float[Array, " n_ids"]  # id_resid / (id_ridge + id_count)
    id_var: Float[Array, " n_ids"]  # 1 / (id_ridge + id_count)
    n: Int[Array, ""]  # rows learned from, as in the state
    cov_right: Float[Array, "r Q"] | None = None  # the right factor (None: cov_packed is whole)


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


def nearest_covariance(m: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """The positive semi-definite matrix nearest ``m`` (symmetric; negative eigenvalues set to
    0): what a sampler needs of ``m`` from a factorised covariance, which need not be one."""
    vals, vecs = jnp.linalg.eigh(m)
    return (vecs * jnp.maximum(vals, 0.0)[None, :]) @ vecs.T


def width_rank(du1: int, dt1: int) -> int:
    """The rank :func:`bandits.linear.prepare` factorises the packed covariance to for these
    augmented dimensions: 0 (kept whole) up to ``EXACT_WIDTH_BYTES``, else ``WIDTH_RANK``."""
    p, q = du1 * (du1 + 1) // 2, dt1 * (dt1 + 1) // 2
    return 0 if 4 * p * q <= EXACT_WIDTH_BYTES or min(p, q) <= WIDTH_RANK else WIDTH_RANK


def factor_packed(
    cov_packed: Float[Array, "P Q"], rank: int, *, oversample: int = 16, power: int = 2
) -> tuple[Float[Array, "P r"], Float[Array, "r Q"]]:
    """A rank-``rank`` factorisation ``left @ right`` of ``cov_packed`` (randomised SVD).

    Sketches the range with ``rank + oversample`` Gaussian directions (fixed key), sharpens it
    with ``power`` rounds of subspace iteration, and keeps the top ``rank`` singular triplets of
    the projection: about ``2 (power + 1) (rank + oversample) P Q`` multiply-adds, no
    ``P x Q`` factorisation. Pure and jittable.
    """
    p, q = cov_packed.shape
    k = min(rank + oversample, p, q)
    omega = jax.random.normal(jax.random.key(0), (q, k), cov_packed.dtype)
    basis, _ = jnp.linalg.qr(cov_packed @ omega)
    for _ in range(power):
        basis, _ = jnp.linalg.qr(cov_packed.T @ basis)
        basis, _ = jnp.linalg.qr(cov_packed @ basis)
    u, s, vt = jnp.linalg.svd(basis.T @ cov_packed, full_matrices=False)
    r = min(rank, k)
    return (basis @ u[:, :r]) * s[None, :r], vt[:r]


def project_packed(
    theta: Float[Array, "du1 dt1"],
    cov_packed: Float[Array, "P Q"] | Float[Array, "P r"],
    context: Float[Array, " du"],
    features: Float[Array, "k dt"],
    cov_right: Float[Array, "r Q"] | None = None,
) -> tuple[Float[Array, " k"], Float[Array, " k"], Float[Array, " dt1"], Float[Array, "dt1 dt1"]]:
    """``bandits.linear.project`` from the packed covariance (same results to float rounding),
    or from its factors ``cov_packed @ cov_right`` (the width approximated, the mean exact)."""
    du1, dt1 = theta.shape
    iu, ju, weight, _ = _pairs(du1)
    _, _, _, back = _pairs(dt1)
    xa = jnp.concatenate([context, jnp.ones((1,), context.dtype)])
    za = jnp.concatenate([features, jnp.ones((features.shape[0], 1), features.dtype)], axis=1)
    w = xa @ theta
    user = (xa[iu] * xa[ju] * weight) @ cov_packed
    m = (user if cov_right is None else user @ cov_right)[back]
    var = jnp.maximum(jnp.einsum("ka,ab,kb->k", za, m, za), 0.0)
    return za @ w, var, w, m
