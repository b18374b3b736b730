"""Reward-interaction IPS for sequential slates (McInerney et al., KDD 2020)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from bandits.ope._common import ones, zeros
from bandits.ope.base import AbstractSlateEstimator, slate_position_weights
from bandits.ope.types import LoggedSlates, RoundValues, SlateTargetProbs


@dataclass(frozen=True)
class SlateRewardInteractionIPS(AbstractSlateEstimator):
    """Reward-interaction IPS (RIPS).

    Notes:
        ``V = 1/n sum_i sum_l (prod_{j <= l} w_ij) r_il``: the reward at position ``l`` is
        weighted by the ratio of the *prefix* up to ``l``, so it is unbiased when a listener's
        reaction at ``l`` depends on what was played before it (the cascade / sequential
        assumption of music sessions), with far less variance than whole-slate IPS. This is the
        unnormalised form (as obp implements it); the paper also self-normalises per position.

    References:
        McInerney, Brost, Chandar, Mehrotra and Carterette, "Counterfactual evaluation of slate
        recommendations with sequential reward interactions", KDD 2020.
    """

    name: ClassVar[str] = "rips"

    def round_values(self, log: LoggedSlates, target: SlateTargetProbs) -> RoundValues:
        w = np.cumprod(slate_position_weights(log, target), axis=1)
        return RoundValues(zeros(log.n), (w * log.reward).sum(axis=1), ones(log.n))


def _normalised_prefix_weights(position_weights: np.ndarray) -> np.ndarray:
    """Prefix weights renormalised to mean 1 at every position, each built on the previous one."""
    out = np.empty_like(position_weights)
    prev = np.ones(position_weights.shape[0])
    for pos in range(position_weights.shape[1]):
        w = prev * position_weights[:, pos]
        mean = w.mean()
        out[:, pos] = w / mean if mean > 0 else w
        prev = out[:, pos]
    return out


@dataclass(frozen=True)
class SlateRewardInteractionSNIPS(AbstractSlateEstimator):
    """Reward-interaction IPS with the paper's recursive self-normalisation (RIPS as published).

    Notes:
        ``W~_i1 = w_i1 / mean(w_1)`` and ``W~_il = W~_i(l-1) w_il / mean(W~_(l-1) w_l)``, then
        ``V = 1/n sum_i sum_l W~_il r_il``. Consistent and usually less variable than the
        unnormalised form; slightly biased at small ``n``. Its interval treats the per-position
        normalisers as fixed (they are estimated), which the diagnostics say.

    References:
        McInerney et al., KDD 2020 (see ``SlateRewardInteractionIPS``); Spotify's reference
        implementation normalises the prefix weights this way.
    """

    name: ClassVar[str] = "rips_sn"
    caveat: ClassVar[str] = (
        "rips_sn: the interval treats the per-position normalisers as fixed, so it is a little "
        "narrow at small n"
    )

    def round_values(self, log: LoggedSlates, target: SlateTargetProbs) -> RoundValues:
        w = _normalised_prefix_weights(slate_position_weights(log, target))
        return RoundValues(zeros(log.n), (w * log.reward).sum(axis=1), ones(log.n))
