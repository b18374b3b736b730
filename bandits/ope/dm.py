"""The direct method: average the reward model's prediction under the target policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bandits.ope._common import ones, zeros
from bandits.ope.base import AbstractSingleActionEstimator, expected_q, require_q_hat
from bandits.ope.types import LoggedFeedback, RoundValues, TargetProbs


@dataclass(frozen=True)
class DirectMethod(AbstractSingleActionEstimator):
    """Direct method (DM): trusts the reward model ``q_hat`` entirely.

    Notes:
        ``V = 1/n sum_i sum_a target_prob[i, a] * q_hat[i, a]``. Low variance; biased exactly
        as much as ``q_hat`` is wrong. Its interval covers the *model's* value, not the truth.

    References:
        Beygelzimer and Langford, "The offset tree for learning with partial labels", KDD 2009.

    Example:
        >>> import numpy as np
        >>> from bandits.ope.types import LoggedFeedback, TargetProbs
        >>> log = LoggedFeedback(np.array([0, 1]), np.array([1.0, 0.0]), np.array([0.5, 0.5]),
        ...                      q_hat=np.array([[0.8, 0.2], [0.6, 0.4]]))
        >>> round(DirectMethod().estimate(log, TargetProbs(np.array([[1.0, 0.0]] * 2)),
        ...                               interval="normal").value, 3)
        0.7
    """

    name: ClassVar[str] = "dm"
    caveat: ClassVar[str] = (
        "direct method: the interval reflects only the spread of contexts, not the reward "
        "model's error"
    )

    def round_values(self, log: LoggedFeedback, target: TargetProbs) -> RoundValues:
        q = expected_q(require_q_hat(log), target.target_prob)
        return RoundValues(direct=q, weighted=zeros(log.n), normaliser=ones(log.n))
