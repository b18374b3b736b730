"""Small helpers shared by the estimator modules (constant columns without allocation)."""

from __future__ import annotations

import numpy as np

from bandits.ope.types import FloatN


def zeros(n: int) -> FloatN:
    """A read-only ``(n,)`` column of zeros that takes no memory (a zero-stride view)."""
    return np.broadcast_to(np.float64(0.0), (n,))


def ones(n: int) -> FloatN:
    """A read-only ``(n,)`` column of ones that takes no memory (a zero-stride view)."""
    return np.broadcast_to(np.float64(1.0), (n,))
