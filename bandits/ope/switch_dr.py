"""Switch-DR: doubly robust where weights are moderate, the direct method where they are large."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from bandits.ope.base import AbstractSingleActionEstimator, doubly_robust, importance_weight
from bandits.ope.types import LoggedFeedback, RoundValues, TargetProbs


@dataclass(frozen=True)
class SwitchDR(AbstractSingleActionEstimator):
    """Switch doubly robust estimator.

    Args:
        max_weight: rounds whose weight exceeds it fall back to the direct method
            (``inf`` gives DR, ``0`` gives DM).

    Notes:
        ``V = 1/n sum_i [ sum_a target_prob[i, a] q_hat[i, a]
        + w_i 1{w_i <= max_weight} (r_i - q_hat[i, a_i]) ]`` (the form obp implements).

    References:
        Wang, Agarwal and Dudik, "Optimal and adaptive off-policy evaluation in contextual
        bandits", ICML 2017.
    """

    max_weight: float = 10.0
    name: ClassVar[str] = "switch_dr"

    def __post_init__(self) -> None:
        if not self.max_weight >= 0:
            raise ValueError(f"SwitchDR.max_weight must be >= 0, got {self.max_weight}")

    def round_values(self, log: LoggedFeedback, target: TargetProbs) -> RoundValues:
        w = importance_weight(log, target)
        return doubly_robust(log, target, np.where(w <= self.max_weight, w, 0.0))
