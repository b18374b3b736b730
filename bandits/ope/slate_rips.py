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
