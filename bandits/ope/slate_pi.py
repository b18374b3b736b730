"""The pseudo-inverse estimator for slates with additive rewards (Swaminathan et al., 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bandits.ope._common import ones, zeros
from bandits.ope.base import AbstractSlateEstimator
from bandits.ope.slate_iips import marginal_position_weights
from bandits.ope.types import LoggedSlates, RoundValues, SlateTargetProbs


@dataclass(frozen=True)
class SlatePseudoInverse(AbstractSlateEstimator):
    """Pseudo-inverse (PI) estimator.

    Notes:
        For a logging policy that fills positions independently (a product distribution, which
        is what ``marginal_propensity=None`` declares), the pseudo-inverse of the slate design
        matrix gives ``V = 1/n sum_i (sum_l q_il - s + 1) R_i`` with ``q_il`` the marginal
        ratio at position ``l`` and ``R_i = sum_l r_il`` the slate reward. Unbiased when the
        slate reward is additive over (position, item) effects, however the items interact
        with the reward *observations*; only the slate total is used.

    References:
        Swaminathan, Krishnamurthy, Agarwal, Dudik, Langford, Jose and Zitouni, "Off-policy
        evaluation for slate recommendation", NeurIPS 2017 (the product-logging form).
    """

    name: ClassVar[str] = "pi"

    def round_values(self, log: LoggedSlates, target: SlateTargetProbs) -> RoundValues:
        q = marginal_position_weights(log, target)
        s = q.shape[1]
        weight = q.sum(axis=1) - s + 1.0
        return RoundValues(zeros(log.n), weight * log.reward.sum(axis=1), ones(log.n))
