"""Model features from user, track and position: one documented layout for every caller.

The daemon, the offline ``fit`` and the benchmarks all build features with
:func:`interaction_features`, so a model trained offline can be served online.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, Int
from numpy.typing import NDArray

N_POSITIONS = 10
"""Slate positions with their own indicator; positions beyond share the last one."""


def n_interaction_features(d_user: int, d_track: int, n_positions: int = N_POSITIONS) -> int:
    """Width of :func:`interaction_features` for the given input widths."""
    return d_user + d_track + d_user * d_track + n_positions


def interaction_features(
    user: Float[NDArray[np.floating], "n du"],
    track: Float[NDArray[np.floating], "n dt"],
    position: Int[NDArray[np.integer], " n"],
    *,
    n_positions: int = N_POSITIONS,
    out: Float[NDArray[np.float32], "n f"] | None = None,
) -> Float[NDArray[np.float32], "n f"]:
    """``[user, track, sqrt(du) * user (x) track, one_hot(position)]`` as float32.

    The outer product lets a linear model represent any bilinear user-track affinity
    ``u' M t``; the ``sqrt(du)`` keeps its entries on the scale of the others.

    Args:
        user: ``(n, du)`` user / context features.
        track: ``(n, dt)`` track features.
        position: ``(n,)`` slate positions (>= 0; clipped to ``n_positions - 1``).
        n_positions: width of the position one-hot.
        out: a C-contiguous ``(n, du + dt + du * dt + n_positions)`` float32 buffer to write the
            features into (and return), e.g. rows of a larger batch; a new one when None.

    Returns:
        ``(n, du + dt + du * dt + n_positions)`` float32 (``out`` when given).

    Raises:
        ValueError: if the row counts differ, a position is negative or ``out`` does not fit.

    >>> interaction_features(np.ones((2, 2)), np.ones((2, 3)), np.array([0, 12])).shape
    (2, 21)
    """
    u = np.asarray(user, dtype=np.float32)
    t = np.asarray(track, dtype=np.float32)
    pos = np.asarray(position)
    if not (u.shape[0] == t.shape[0] == pos.shape[0]):
        raise ValueError(
            f"interaction_features: row counts differ (user {u.shape[0]}, track {t.shape[0]}, "
            f"position {pos.shape[0]})"
        )
    if pos.size and pos.min() < 0:
        raise ValueError(
            f"interaction_features: negative position in rows {np.flatnonzero(pos < 0)[:10]}"
        )
    n, du, dt = u.shape[0], u.shape[1], t.shape[1]
    outer_at, onehot_at = du + dt, du + dt + du * dt
    width = onehot_at + n_positions
    if out is None:
        out = np.empty((n, width), np.float32)
    elif out.shape != (n, width) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(
            f"interaction_features: out is {out.dtype} {out.shape}, expected a C-contiguous "
            f"float32 ({n}, {width})"
        )
    # Written in place, column block by column block: the same float32 operations (product,
    # then the sqrt(du) scale) as building the blocks apart and concatenating them. The products
    # go to a contiguous temporary first, then scaled into the strided block: one strided pass
    # instead of a write and a read-modify-write (the same two roundings).
    out[:, :du] = u
    out[:, du:outer_at] = t
    outer = out[:, outer_at:onehot_at].reshape(n, du, dt)  # a view: the last axis split
    np.multiply(np.multiply(u[:, :, None], t[:, None, :]), np.float32(np.sqrt(du)), out=outer)
    out[:, onehot_at:] = 0.0
    out[np.arange(n), onehot_at + np.minimum(pos, n_positions - 1)] = 1.0
    return out
