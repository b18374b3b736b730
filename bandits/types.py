"""The inputs and outputs of every policy, and the result of every off-policy estimator.

``bandits`` owns these types; ``streaming`` adapts its decoded events into them. Dimension names
are used the same way everywhere: ``n`` rounds, ``k`` candidates, ``s`` slate length,
``d_user`` context features, ``d_track`` candidate features.
"""

from __future__ import annotations

from typing import NamedTuple

from jaxtyping import Array, Bool, Float, Int

__all__ = ["Candidates", "Diagnostics", "Estimate", "Feedback", "Ranked"]


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


class Diagnostics(NamedTuple):
    """How far an off-policy estimate can be trusted, from the importance weights of the log.

    Attributes:
        ess: effective sample size ``(sum w)^2 / sum w^2``.
        max_weight: largest importance weight.
        mean_weight: mean importance weight (near 1 when propensities and target agree).
        unsupported_share: share of logged rounds whose action the target would never take.
        warning: True when the estimate should not be trusted.
        reason: why (empty when ``warning`` is False).
    """

    ess: float
    max_weight: float
    mean_weight: float
    unsupported_share: float
    warning: bool
    reason: str


class Estimate(NamedTuple):
    """An off-policy estimate of a policy's value, with its interval (what ``bandits.ope``
    estimators return).

    Attributes:
        value: the point estimate.
        lower: lower end of the interval.
        upper: upper end of the interval.
        n: rounds it used.
        diagnostics: weight diagnostics and the trust warning.

    Example:
        >>> e = Estimate(0.5, 0.4, 0.6, 100, Diagnostics(90.0, 3.0, 1.0, 0.0, False, ""))
        >>> e.lower <= e.value <= e.upper, e.diagnostics.warning
        (True, False)
    """

    value: float
    lower: float
    upper: float
    n: int
    diagnostics: Diagnostics
