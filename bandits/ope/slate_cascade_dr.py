"""Cascade doubly robust for ranked lists (Kiyohara et al., WSDM 2022)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from bandits.ope._common import ones, zeros
from bandits.ope.base import AbstractSlateEstimator, slate_position_weights
from bandits.ope.types import LoggedSlates, RoundValues, SlateTargetProbs


@dataclass(frozen=True)
class SlateCascadeDR(AbstractSlateEstimator):
    """Cascade-DR.

    Notes:
        With prefix weights ``W_il = prod_{j <= l} w_ij`` (``W_i0 = 1``),
        ``V = 1/n sum_i sum_l [ W_il (r_il - q_hat[i, l, a_il])
        + W_i(l-1) sum_a target_prob[i, l, a] q_hat[i, l, a] ]``.
        Unbiased under the cascade assumption (as RIPS) whatever ``q_hat``; a good ``q_hat``
        removes most of RIPS's variance.

    References:
        Kiyohara, Saito, Matsuhiro, Narita, Shimizu and Yamamoto, "Doubly robust off-policy
        evaluation for ranking policies under the cascade behavior model", WSDM 2022.
    """

    name: ClassVar[str] = "cascade_dr"

    def round_values(self, log: LoggedSlates, target: SlateTargetProbs) -> RoundValues:
        if log.q_hat is None:
            raise TypeError(
                "cascade-DR needs reward-model estimates: LoggedSlates.q_hat is None; pass "
                "q_hat=(n, s, k) or use bandits.ope.reward_model.cross_fit_slate_q_hat"
            )
        w = np.cumprod(slate_position_weights(log, target), axis=1)
        w_prev = np.concatenate([np.ones((log.n, 1)), w[:, :-1]], axis=1)
        q_logged = np.take_along_axis(log.q_hat, log.slate[:, :, None], axis=2)[:, :, 0]
        q_target = np.einsum("nsk,nsk->ns", target.target_prob, log.q_hat, dtype=np.float64)
        values = (w * (log.reward - q_logged) + w_prev * q_target).sum(axis=1)
        return RoundValues(zeros(log.n), values, ones(log.n))
