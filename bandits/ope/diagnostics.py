"""Weight diagnostics attached to every estimate, and the rule that raises the trust warning."""

from __future__ import annotations

import math

import numpy as np

from bandits.ope.types import Diagnostics, FloatN

MIN_ESS = 30.0
MIN_ESS_SHARE = 0.01
MAX_WEIGHT_SHARE = 0.05
MEAN_WEIGHT_TOL = 0.05


def weight_diagnostics(weight: FloatN, target_prob_logged: FloatN) -> Diagnostics:
    """Summarise the importance weights ``w = target_prob / propensity`` of the logged actions.

    The warning is raised when any of these holds, and ``reason`` says which:

    - the effective sample size is below ``MIN_ESS`` rows or ``MIN_ESS_SHARE`` of the log;
    - the mean weight is further than ``MEAN_WEIGHT_TOL`` (and three standard errors) from 1,
      its expectation when propensities are right and the target stays where the logging
      policy explores;
    - a single round carries more than ``MAX_WEIGHT_SHARE`` of the total weight.

    Args:
        weight: ``(n,)`` importance weights of the logged actions.
        target_prob_logged: ``(n,)`` target probability of each logged action.

    Returns:
        The diagnostics; ``unsupported_share`` is the share of rounds with target probability 0.
    """
    n = weight.shape[0]
    return diagnostics_from_sums(
        n=float(n),
        weight_sum=float(weight.sum(dtype=np.float64)),
        weight_sq_sum=float(np.dot(weight, weight)),
        max_weight=float(weight.max()),
        unsupported=float(np.count_nonzero(target_prob_logged == 0.0)),
    )


def diagnostics_from_sums(
    *, n: float, weight_sum: float, weight_sq_sum: float, max_weight: float, unsupported: float
) -> Diagnostics:
    """The same diagnostics from running sums (for streams fed batch by batch)."""
    total, sq, max_w = weight_sum, weight_sq_sum, max_weight
    ess = total * total / sq if sq > 0 else 0.0
    mean_w = total / n
    sd_w = math.sqrt(max(sq / n - mean_w * mean_w, 0.0))
    reasons: list[str] = []
    if ess < max(MIN_ESS, MIN_ESS_SHARE * n):
        reasons.append(f"effective sample size {ess:.1f} of {n:.0f} rounds is too small")
    if abs(mean_w - 1.0) > max(MEAN_WEIGHT_TOL, 3.0 * sd_w / math.sqrt(n)):
        reasons.append(
            f"mean importance weight {mean_w:.3f} is far from 1 (wrong propensities, or the "
            "target puts mass where the logging policy never acts)"
        )
    if total > 0 and max_w / total > MAX_WEIGHT_SHARE:
        reasons.append(f"one round carries {max_w / total:.0%} of the total importance weight")
    return Diagnostics(
        ess=ess,
        max_weight=max_w,
        mean_weight=mean_w,
        unsupported_share=unsupported / n,
        warning=bool(reasons),
        reason="; ".join(reasons),
    )
