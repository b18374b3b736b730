"""Labels: pure functions from raw outcome arrays to what the models learn.

Everything here works on arrays of any leading shape: with jax arrays (or inside ``jit``) it
runs ``jax.numpy``; with numpy inputs it runs numpy and returns numpy, so host-side callers
(reports, the daemon's decoding) never trigger a compilation per batch shape. The definitions follow the simulator and the public skip-prediction data:

Listening bins (upper edges, per track, from :func:`bin_edges_ms`):
``[0, 5 s)``, ``[5 s, 30 s)``, ``[30 s, 50 %)``, ``[50 %, 90 %)``, ``[90 %, 100 %)``; a play that
reaches the end of the track (``ms_played >= duration_ms`` or ``reason_end == trackdone``) is
*complete* (bin 5). On tracks shorter than 30 s some bins are empty (zero width).

Skips: a play *ended* in bin ``j`` when it stopped there and was not censored. Censored plays
(logout, session end) are not skips: they only say the listener got at least that far.

Bad rows (:func:`valid_rows`): non-finite features or history, ``duration_ms <= 0``,
``ms_played < 0``, ``ms_played > MAX_OVERPLAY * duration_ms``, ``reason_end`` outside
``[0, len(REASONS))`` or a negative ``track_id``. ``update`` drops such rows (and reports how many);
:func:`rewards.validate.check_outcomes` raises on them for callers that want strictness.
``ms_played`` between ``duration_ms`` and ``MAX_OVERPLAY * duration_ms`` (seeks, replays) is
clipped to ``duration_ms`` and counts as complete.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from rewards.types import REASONS, TRACKDONE, Outcomes

SKIP_1_MS = 5_000
"""Upper edge of the "played very briefly" horizon (skip_1)."""
SKIP_2_MS = 30_000
"""Upper edge of the "played briefly" horizon (skip_2); also the 30 s stream threshold."""
BIN_FRACTIONS = (0.5, 0.9)
"""Fractions of the duration that close bins 2 and 3."""
N_BINS = 5
"""Bins in which a play can end before completing; bin index 5 means complete."""
COMPLETE = N_BINS
MAX_OVERPLAY = 1.5
"""``ms_played`` above this multiple of ``duration_ms`` is an invalid row, not a completion."""
HORIZON_LAST_BIN = (0, 1, N_BINS - 1)
"""For skip_1, skip_2, skip_3: the last bin that counts as a skip at that horizon."""


def array_module(*arrays: Any) -> ModuleType:
    """``jax.numpy`` if any input is a jax array (or tracer), else ``numpy``."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def bin_edges_ms(duration_ms: Int[ArrayLike, "*b"]) -> Float[Array, "*b 5"]:
    """Upper edge of every listening bin in ms; the last edge is the duration.

    Args:
        duration_ms: track durations in ms, any shape.

    Returns:
        float32 edges, shape ``duration_ms.shape + (5,)``, non-decreasing along the last axis.

    >>> bin_edges_ms(jnp.array([200_000])).tolist()
    [[5000.0, 30000.0, 100000.0, 180000.0, 200000.0]]
    """
    xp = array_module(duration_ms)
    d = xp.asarray(duration_ms).astype(xp.float32)
    e0 = xp.minimum(xp.float32(SKIP_1_MS), d)
    e1 = xp.minimum(xp.float32(SKIP_2_MS), d)
    e2 = xp.maximum(d * xp.float32(BIN_FRACTIONS[0]), e1)
    e3 = xp.maximum(d * xp.float32(BIN_FRACTIONS[1]), e2)
    return xp.stack([e0, e1, e2, e3, d], axis=-1)


def bin_widths_ms(duration_ms: Int[ArrayLike, "*b"]) -> Float[Array, "*b 5"]:
    """Width of every listening bin in ms (zero for bins a short track cannot have)."""
    xp = array_module(duration_ms)
    edges = bin_edges_ms(duration_ms)
    lower = xp.concatenate([xp.zeros_like(edges[..., :1]), edges[..., :-1]], axis=-1)
    return edges - lower


def completion_label(
    ms_played: Int[ArrayLike, "*b"],
    duration_ms: Int[ArrayLike, "*b"],
    reason_end: Int[ArrayLike, "*b"],
) -> Bool[Array, "*b"]:
    """True where the track was played to its end.

    >>> completion_label(jnp.array([200_000, 10_000]), jnp.array([200_000, 200_000]),
    ...                  jnp.array([0, 1])).tolist()
    [True, False]
    """
    xp = array_module(ms_played, duration_ms, reason_end)
    ms = xp.asarray(ms_played)
    return (xp.asarray(reason_end) == TRACKDONE) | (ms >= xp.asarray(duration_ms))


def listen_bin(
    ms_played: Int[ArrayLike, "*b"],
    duration_ms: Int[ArrayLike, "*b"],
    reason_end: Int[ArrayLike, "*b"],
) -> Int[Array, "*b"]:
    """Index of the bin in which the play stopped: 0..4, or 5 (:data:`COMPLETE`).

    >>> listen_bin(jnp.array([1_000, 12_000, 90_000, 150_000, 190_000, 200_000]),
    ...            jnp.full(6, 200_000), jnp.array([1, 1, 1, 1, 1, 0])).tolist()
    [0, 1, 2, 3, 4, 5]
    """
    xp = array_module(ms_played, duration_ms, reason_end)
    ms = xp.asarray(ms_played).astype(xp.float32)
    edges = bin_edges_ms(xp.asarray(duration_ms))
    passed = xp.sum((ms[..., None] >= edges).astype(xp.int32), axis=-1)
    done = completion_label(xp.asarray(ms_played), xp.asarray(duration_ms), xp.asarray(reason_end))
    return xp.where(done, xp.int32(COMPLETE), passed.astype(xp.int32))


def skip_labels(
    ms_played: Int[ArrayLike, "*b"],
    duration_ms: Int[ArrayLike, "*b"],
    reason_end: Int[ArrayLike, "*b"],
    censored: Bool[ArrayLike, "*b"],
) -> tuple[Bool[Array, "*b 3"], Bool[Array, "*b 3"]]:
    """skip_1, skip_2, skip_3 labels and whether each is known.

    A censored play is a skip at no horizon; its label is *known* (False) only at horizons it
    had already passed when it was cut off, and unknown (weight 0) at the others.

    Returns:
        ``(labels, known)``, both bool with a trailing axis of 3 (skip_1, skip_2, skip_3).

    >>> y, k = skip_labels(jnp.array([2_000, 40_000]), jnp.array([200_000, 200_000]),
    ...                    jnp.array([1, 4]), jnp.array([False, True]))
    >>> y.tolist(), k.tolist()
    ([[True, True, True], [False, False, False]], [[True, True, True], [True, True, False]])
    """
    xp = array_module(ms_played, duration_ms, reason_end, censored)
    b = listen_bin(*(xp.asarray(a) for a in (ms_played, duration_ms, reason_end)))[..., None]
    cens = xp.asarray(censored)[..., None]
    last = xp.asarray(HORIZON_LAST_BIN, dtype=xp.int32).reshape((1,) * (b.ndim - 1) + (3,))
    within = b <= last
    return within & ~cens, ~cens | ~within


def stream30_label(ms_played: Int[ArrayLike, "*b"]) -> Bool[Array, "*b"]:
    """True where at least 30 s were played (the crude reward encore improves on)."""
    return array_module(ms_played).asarray(ms_played) >= SKIP_2_MS


def listen_fraction(
    ms_played: Int[ArrayLike, "*b"], duration_ms: Int[ArrayLike, "*b"]
) -> Float[Array, "*b"]:
    """Fraction of the track played, clipped to ``[0, 1]`` (0 where the duration is not positive)."""
    xp = array_module(ms_played, duration_ms)
    ms = xp.asarray(ms_played).astype(xp.float32)
    d = xp.asarray(duration_ms).astype(xp.float32)
    return xp.where(d > 0, xp.clip(ms / xp.maximum(d, xp.float32(1.0)), 0.0, 1.0), xp.float32(0.0))


def hazard_targets(
    ms_played: Int[ArrayLike, " n"],
    duration_ms: Int[ArrayLike, " n"],
    reason_end: Int[ArrayLike, " n"],
    censored: Bool[ArrayLike, " n"],
) -> tuple[Bool[Array, "n 5"], Bool[Array, "n 5"]]:
    """Discrete-time survival targets: which bins each play was at risk in, and where it ended.

    A play that stopped in bin ``j`` was at risk in bins ``0..j``; the event is 1 in bin ``j``
    unless the play was censored, in which case bin ``j`` is dropped (it survived ``0..j-1``).
    Empty (zero-width) bins are never at risk. A complete play survived all five bins.

    Returns:
        ``(at_risk, event)``, bool ``(n, 5)``; ``event`` implies ``at_risk``.
    """
    xp = array_module(ms_played, duration_ms, reason_end, censored)
    ms_played, duration_ms, reason_end = (
        xp.asarray(a) for a in (ms_played, duration_ms, reason_end)
    )
    b = listen_bin(ms_played, duration_ms, reason_end)[:, None]
    cens = xp.asarray(censored)[:, None]
    j = xp.arange(N_BINS, dtype=xp.int32)[None, :]
    nonempty = bin_widths_ms(duration_ms) > 0
    at_risk = ((j < b) | ((j == b) & ~cens)) & nonempty
    event = (j == b) & ~cens & nonempty
    return at_risk, event


def valid_rows(outcomes: Outcomes) -> Bool[Array, " n"]:
    """Rows that are real (``mask``) and well-formed; see the module docstring for the rules."""
    o = outcomes
    ms = jnp.asarray(o.ms_played)
    d = jnp.asarray(o.duration_ms)
    reason = jnp.asarray(o.reason_end).astype(jnp.int32)
    ok = jnp.asarray(o.mask) & jnp.all(jnp.isfinite(jnp.asarray(o.features)), axis=-1)
    ok = ok & (d > 0) & (ms >= 0)
    ok = ok & (ms.astype(jnp.float32) <= MAX_OVERPLAY * d.astype(jnp.float32))
    ok = ok & (reason >= 0) & (reason < len(REASONS))
    if o.history is not None:
        ok = ok & jnp.all(jnp.isfinite(jnp.asarray(o.history)), axis=(-2, -1))
    if o.track_id is not None:
        ok = ok & (jnp.asarray(o.track_id) >= 0)
    return ok
