"""The joined-records type: closed impressions with their rewards, as the core emits them.

The core's ``step`` builds ``JoinedRecords`` from the impressions whose windows closed; the
worker's Parquet log (``streaming.worker.parquet_log``) and the joined-records topic write them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from streaming.events import ImpressionBatch

__all__ = [
    "COLUMNS",
    "JoinedRecords",
    "from_impressions",
]

COLUMNS: tuple[str, ...] = (
    "request_id",
    "user_id",
    "ts_ms",
    "surface",
    "policy",
    "policy_version",
    "context",
    "candidate_key",
    "candidate_features",
    "shown",
    "propensity",
    "reward",
    "n_outcomes",
    "defaulted",
    "reward_name",
    "reward_version",
)
"""The columns of the log, in file order (``candidate_features`` is absent when omitted)."""


class JoinedRecords(NamedTuple):
    """``n`` closed impressions as numpy columns (one row each), ready for ``ParquetLog.append``.

    Candidate lists are padded to the batch's ``k`` (``candidate_mask`` says which are real) and
    slates to ``s`` (``shown`` is -1 where padded); only the real entries are written, as
    variable-length lists.

    Attributes:
        request_id: ``(n,)`` str.
        user_id: ``(n,)`` str.
        ts_ms: ``(n,)`` int64 impression event time, ms.
        surface: ``(n,)`` str.
        policy: ``(n,)`` str, the logging policy's name.
        policy_version: ``(n,)`` str.
        context: ``(n, d_user)`` float32.
        candidate_key: ``(n, k)`` uint64 candidate track keys (``streaming.events.key64``).
        candidate_mask: ``(n, k)`` bool, True for real candidates.
        candidate_features: ``(n, k, d_track)`` float32, or None to omit them from the log.
        shown: ``(n, s)`` int32 indices into the candidates in shown order, -1 where padded.
        propensity: ``(n, s)`` float32 logging probability of each shown choice.
        reward: ``(n, s)`` float32 aggregated reward per shown position.
        n_outcomes: ``(n, s)`` int32 outcomes joined per position.
        defaulted: ``(n, s)`` bool, True where the default reward was used.
        reward_name: ``(n,)`` str, the composite reward's name.
        reward_version: ``(n,)`` int32, the composite reward's version.
    """

    request_id: npt.NDArray[np.str_]
    user_id: npt.NDArray[np.str_]
    ts_ms: npt.NDArray[np.int64]
    surface: npt.NDArray[np.str_]
    policy: npt.NDArray[np.str_]
    policy_version: npt.NDArray[np.str_]
    context: npt.NDArray[np.float32]
    candidate_key: npt.NDArray[np.uint64]
    candidate_mask: npt.NDArray[np.bool_]
    candidate_features: npt.NDArray[np.float32] | None
    shown: npt.NDArray[np.int32]
    propensity: npt.NDArray[np.float32]
    reward: npt.NDArray[np.float32]
    n_outcomes: npt.NDArray[np.int32]
    defaulted: npt.NDArray[np.bool_]
    reward_name: npt.NDArray[np.str_]
    reward_version: npt.NDArray[np.int32]

    @property
    def n_rows(self) -> int:
        """The number of records (``len()`` stays the tuple's field count, so ``_replace`` works)."""
        return int(self.ts_ms.shape[0])


def from_impressions(
    impressions: ImpressionBatch,
    *,
    reward: npt.NDArray[np.float32],
    n_outcomes: npt.NDArray[np.int32],
    defaulted: npt.NDArray[np.bool_],
    reward_name: str,
    reward_version: int,
    features: bool = True,
) -> JoinedRecords:
    """Joined records from the decoded impressions of ``n`` closed windows and their join results.

    Args:
        impressions: the ``n`` impressions, one row per closed window (``ImpressionBatch`` rows,
            e.g. the daemon's side table taken at the closed payloads), shown ``(n, s_i)``.
        reward: ``(n, s_r)`` float32 aggregated reward per position (``join.Closed.reward``).
        n_outcomes: ``(n, s_r)`` int32 outcomes joined per position.
        defaulted: ``(n, s_r)`` bool, True where the default reward was used.
        reward_name: the composite reward's name, on every row.
        reward_version: its version, on every row.
        features: False to leave the candidate features out of the log.

    Returns:
        The records; slates are cut to ``min(s_i, s_r)`` positions (outcomes beyond the join's
        slate size are not joined, so those positions have no reward).
    """
    n = impressions.n
    s = min(impressions.shown.shape[1], reward.shape[1])
    for name, col in (("reward", reward), ("n_outcomes", n_outcomes), ("defaulted", defaulted)):
        if col.ndim != 2 or col.shape[0] != n or col.shape[1] < s:
            raise ValueError(f"{name} has shape {col.shape}, expected ({n}, >= {s})")
    return JoinedRecords(
        request_id=impressions.request_id,
        user_id=impressions.user_id,
        ts_ms=impressions.ts_ms,
        surface=impressions.surface,
        policy=impressions.policy,
        policy_version=impressions.policy_version,
        context=impressions.context,
        candidate_key=impressions.candidate_key,
        candidate_mask=impressions.candidate_mask,
        candidate_features=impressions.candidate_features if features else None,
        shown=np.where(impressions.shown_mask[:, :s], impressions.shown[:, :s], -1).astype(
            np.int32
        ),
        propensity=impressions.propensity[:, :s].astype(np.float32),
        reward=reward[:, :s].astype(np.float32),
        n_outcomes=n_outcomes[:, :s].astype(np.int32),
        defaulted=defaulted[:, :s].astype(bool),
        reward_name=np.full(n, reward_name),
        reward_version=np.full(n, reward_version, np.int32),
    )
