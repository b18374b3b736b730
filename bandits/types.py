"""The inputs and outputs of every policy: plain NamedTuples of arrays.

``bandits`` owns these types; ``streaming`` adapts its decoded events into them. Dimension names
are used the same way everywhere: ``n`` rounds, ``k`` candidates, ``s`` slate length,
``d_user`` context features, ``d_track`` candidate features.
"""

from __future__ import annotations

from typing import NamedTuple

from jaxtyping import Array, Bool, Float, Int

__all__ = ["Candidates", "Estimate", "Feedback", "Ranked"]


class Candidates(NamedTuple):
    """The items one request offers, padded to a bucket size ``k`` (see ``bandits.slates.pad``).

    Attributes:
        features: ``(k, d_track)`` float32 item features.
        ids: ``(k,)`` int32 item (track) ids, for id-aware policies. Id-aware policies hash them
            into a table (``id % n_ids``); padded rows may hold any id.
    """

    features: Float[Array, "k d_track"]
    ids: Int[Array, " k"]


class Feedback(NamedTuple):
    """A batch of ``n`` logged rounds: what was shown, where, and what it earned.

    One row per shown item that has an outcome (a slate of ``s`` shown items with outcomes gives
    ``s`` rows, each with its own ``position``). Padding rows have ``mask == False`` and are
    ignored (their values must still be finite).

    Attributes:
        context: ``(n, d_user)`` float32 user context at request time.
        features: ``(n, d_track)`` float32 features of the item that was shown.
        action: ``(n,)`` int32 id (track id) of the item that was shown.
        position: ``(n,)`` int32 slate position it was shown at (0 = top).
        reward: ``(n,)`` float32 reward (the composite reward; binary rewards as 0.0 / 1.0).
        propensity: ``(n,)`` float32 probability, under the policy that logged the row, of the
            choice that put this item at this position (``Ranked.propensity`` of that choice).
            Must be in ``(0, 1]``.
        mask: ``(n,)`` bool, True for real rows, False for padding.
    """

    context: Float[Array, "n d_user"]
    features: Float[Array, "n d_track"]
    action: Int[Array, " n"]
    position: Int[Array, " n"]
    reward: Float[Array, " n"]
    propensity: Float[Array, " n"]
    mask: Bool[Array, " n"]


class Ranked(NamedTuple):
    """An ordered slate chosen by ``rank`` and the probability of each choice it made.

    Attributes:
        order: ``(s,)`` int32 indices into the request's candidates, top first.
        propensity: ``(s,)`` float32; ``propensity[j]`` is the probability that the policy put
            ``order[j]`` at position ``j`` *given* ``order[:j]`` (so ``propensity[0]`` is the
            marginal probability of the top choice and ``prod(propensity)`` the probability of
            the whole ordered slate). Exact except for Thompson sampling, where it is a Monte
            Carlo estimate (see ``bandits.slates.monte_carlo``). Always in ``(0, 1]``.
    """

    order: Int[Array, " s"]
    propensity: Float[Array, " s"]


class Estimate(NamedTuple):
    """An off-policy estimate with its interval (used by ``bandits.ope``)."""

    value: Float[Array, ""]
    lower: Float[Array, ""]
    upper: Float[Array, ""]
    n: Int[Array, ""]
