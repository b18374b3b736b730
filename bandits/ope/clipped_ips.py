"""IPS with importance weights clipped from above: less variance, some downward bias."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from bandits.ope._common import ones, zeros
from bandits.ope.base import AbstractSingleActionEstimator, importance_weight
from bandits.ope.types import LoggedFeedback, RoundValues, TargetProbs


@dataclass(frozen=True)
class ClippedIPS(AbstractSingleActionEstimator):
    """Clipped (truncated) IPS.

    Args:
        max_weight: weights above it are set to it (``inf`` gives plain IPS).

    Notes:
        ``V = 1/n sum_i min(w_i, max_weight) r_i``. Biased towards the logged actions when
        rewards are non-negative; the bias is small while few weights reach the cap.

    References:
        Ionides, "Truncated importance sampling", J. Comput. Graph. Stat. 2008;
        Bottou et al., "Counterfactual reasoning and learning systems", JMLR 2013.
    """

    max_weight: float = 10.0
    name: ClassVar[str] = "clipped_ips"

    def __post_init__(self) -> None:
        if not (self.max_weight > 0 or math.isinf(self.max_weight)):
            raise ValueError(f"ClippedIPS.max_weight must be positive, got {self.max_weight}")

    def round_values(self, log: LoggedFeedback, target: TargetProbs) -> RoundValues:
        w = np.minimum(importance_weight(log, target), self.max_weight)
        return RoundValues(direct=zeros(log.n), weighted=w * log.reward, normaliser=ones(log.n))
