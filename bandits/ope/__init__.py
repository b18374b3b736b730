"""Off-policy estimators: each computes per-round values; the base supplies estimate() and intervals.

Example:
    >>> import jax, numpy as np
    >>> from bandits.ope import InverseProbabilityWeighting, LoggedFeedback, TargetProbs
    >>> log = LoggedFeedback(action=np.array([0, 1, 1, 0]), reward=np.array([1.0, 0.0, 1.0, 0.0]),
    ...                      propensity=np.full(4, 0.5))
    >>> target = TargetProbs(np.tile([0.2, 0.8], (4, 1)))
    >>> est = InverseProbabilityWeighting().estimate(log, target, key=jax.random.key(0))
    >>> round(est.value, 3), est.n
    (0.5, 4)
"""

from bandits.ope.base import (
    AbstractEstimator,
    AbstractSingleActionEstimator,
    AbstractSlateEstimator,
    doubly_robust,
    estimate_all,
    importance_weight,
)
from bandits.ope.clipped_ips import ClippedIPS
from bandits.ope.dm import DirectMethod
from bandits.ope.dr import DoublyRobust
from bandits.ope.dr_shrinkage import DROptimisticShrinkage
from bandits.ope.intervals import (
    Moments,
    confidence_sequence,
    moments_init,
    moments_merge,
    moments_of,
)
from bandits.ope.ips import InverseProbabilityWeighting
from bandits.ope.online import OnlineEvaluation, online_init, online_intervals, online_update
from bandits.ope.registry import ESTIMATORS, NEEDS_Q_HAT, SLATE_ESTIMATORS
from bandits.ope.replay import Replay
from bandits.ope.reward_model import cross_fit_q_hat, cross_fit_slate_q_hat, with_q_hat
from bandits.ope.slate_cascade_dr import SlateCascadeDR
from bandits.ope.slate_iips import SlateIndependentIPS
from bandits.ope.slate_pi import SlatePseudoInverse
from bandits.ope.slate_rips import SlateRewardInteractionIPS, SlateRewardInteractionSNIPS
from bandits.ope.slate_sips import SlateStandardIPS
from bandits.ope.sndr import SelfNormalizedDR
from bandits.ope.snips import SelfNormalizedIPS
from bandits.ope.switch_dr import SwitchDR
from bandits.ope.types import (
    Diagnostics,
    Estimate,
    InvalidLogError,
    LoggedFeedback,
    LoggedSlates,
    RoundValues,
    SlateTargetProbs,
    TargetProbs,
)

__all__ = [
    "ESTIMATORS",
    "NEEDS_Q_HAT",
    "SLATE_ESTIMATORS",
    "AbstractEstimator",
    "AbstractSingleActionEstimator",
    "AbstractSlateEstimator",
    "ClippedIPS",
    "DROptimisticShrinkage",
    "Diagnostics",
    "DirectMethod",
    "DoublyRobust",
    "Estimate",
    "InvalidLogError",
    "InverseProbabilityWeighting",
    "LoggedFeedback",
    "LoggedSlates",
    "Moments",
    "OnlineEvaluation",
    "Replay",
    "RoundValues",
    "SelfNormalizedDR",
    "SelfNormalizedIPS",
    "SlateCascadeDR",
    "SlateIndependentIPS",
    "SlatePseudoInverse",
    "SlateRewardInteractionIPS",
    "SlateRewardInteractionSNIPS",
    "SlateStandardIPS",
    "SlateTargetProbs",
    "SwitchDR",
    "TargetProbs",
    "confidence_sequence",
    "cross_fit_q_hat",
    "cross_fit_slate_q_hat",
    "doubly_robust",
    "estimate_all",
    "importance_weight",
    "moments_init",
    "moments_merge",
    "moments_of",
    "online_init",
    "online_intervals",
    "online_update",
    "with_q_hat",
]
