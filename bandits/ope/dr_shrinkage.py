"""Doubly robust with optimistic shrinkage (DRos) of the importance weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bandits.ope.base import AbstractSingleActionEstimator, doubly_robust, importance_weight
from bandits.ope.types import LoggedFeedback, RoundValues, TargetProbs


@dataclass(frozen=True)
class DROptimisticShrinkage(AbstractSingleActionEstimator):
    """DR with optimistic shrinkage (DRos).

    Args:
        shrinkage: ``lambda`` in the shrunk weight; ``inf`` gives DR, ``0`` gives DM.

    Notes:
        ``w'_i = lambda w_i / (w_i^2 + lambda)``, then
        ``V = 1/n sum_i [ sum_a target_prob[i, a] q_hat[i, a] + w'_i (r_i - q_hat[i, a_i]) ]``.
        Weights much above ``sqrt(lambda)`` are shrunk towards 0, trading a little bias for a
        large cut in variance.

    References:
        Su, Dimakopoulou, Krishnamurthy and Dudik, "Doubly robust off-policy evaluation with
        shrinkage", ICML 2020.
    """

    shrinkage: float = 10.0
    name: ClassVar[str] = "dr_os"

    def __post_init__(self) -> None:
        if not self.shrinkage >= 0:
            raise ValueError(f"DROptimisticShrinkage.shrinkage must be >= 0, got {self.shrinkage}")

    def round_values(self, log: LoggedFeedback, target: TargetProbs) -> RoundValues:
        w = importance_weight(log, target)
        if self.shrinkage != float("inf"):
            w = self.shrinkage * w / (w * w + self.shrinkage)
        return doubly_robust(log, target, w)
