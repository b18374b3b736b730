"""From a frame of logged records to the estimators' inputs: the log and the target."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import jax
import numpy as np
import pandas as pd

from bandits.ope import (
    LoggedFeedback,
    TargetProbs,
)
from streaming.evaluate.frames import (
    UsageError,
    candidate_features,
    column_values,
    matrix,
    parse_column_map,
    select_columns,
)
from streaming.evaluate.targets import (
    Overlap,
    Target,
    checkpoint_policy_target,
    fit_policy_target,
)

_NO_PROVENANCE = (
    "overlap with the rows the target was fitted on: not checked (per-row target columns "
    "carry no record of what they were fitted on)"
)


@dataclass
class Inputs:
    """What the estimators run on, plus what the report should say about it.

    Attributes:
        log: the evaluated rows.
        target: the target policy's probabilities on them.
        n_actions: ``k``.
        target_desc: one line for the report (may name files).
        target_name: a short name for titles, without file paths.
        notes: more lines for the report.
        overlap: evaluated rows the target learned from (see ``streaming.evaluate.targets``),
            None when that cannot be told.
    """

    log: LoggedFeedback
    target: TargetProbs
    n_actions: int
    target_desc: str
    target_name: str = "target"
    notes: list[str] = field(default_factory=list)
    overlap: Overlap | None = None


def logging_policy_inputs(log: LoggedFeedback) -> tuple[LoggedFeedback, TargetProbs]:
    """The logging policy as a target on its own log, for its on-policy value as a reference.

    Each logged action gets its logged propensity and the rest of the mass goes to an action
    never logged, so every importance weight is exactly 1 and any estimator of the IPS family
    returns the mean logged reward, with an interval of the same kind as the other estimates'.

    Example:
        >>> import jax
        >>> from bandits.ope import InverseProbabilityWeighting
        >>> log = LoggedFeedback(np.array([0, 1, 1]), np.array([1.0, 0.0, 1.0]),
        ...                      np.array([0.5, 0.25, 0.25]))
        >>> bare, target = logging_policy_inputs(log)
        >>> e = InverseProbabilityWeighting().estimate(bare, target, interval="normal")
        >>> round(e.value, 4), e.diagnostics.ess
        (0.6667, 3.0)
    """
    bare = LoggedFeedback(log.action, log.reward, log.propensity)
    k = int(log.action.max()) + 2
    prob = np.zeros((log.n, k))
    prob[np.arange(log.n), log.action] = log.propensity
    prob[:, -1] = 1.0 - log.propensity
    return bare, TargetProbs(prob)


def build_inputs(frame: pd.DataFrame, args: argparse.Namespace, key: jax.Array) -> Inputs:
    """Map the frame's columns to a ``LoggedFeedback`` and build the target's ``TargetProbs``."""
    column_map = parse_column_map(args.column_map)
    fields = ("action", "reward", "propensity")
    unknown = sorted(set(column_map) - set(fields))
    if unknown:
        raise UsageError(
            f"column map names unknown field(s) {unknown}; fields are action, reward, propensity"
        )
    columns = {f: column_values(frame, column_map.get(f, f), f"LoggedFeedback.{f}") for f in fields}
    log = LoggedFeedback.from_columns(columns)
    action = log.action
    if not np.issubdtype(action.dtype, np.integer):
        raise UsageError(
            f"the action column must hold integer action indices 0..k-1, got dtype {action.dtype}"
        )
    log = log._replace(
        action=action.astype(np.int64),
        reward=log.reward.astype(np.float64),
        propensity=log.propensity.astype(np.float64),
    )
    if args.context_columns:
        log = log._replace(
            context=matrix(frame, args.context_columns, "--context-columns").astype(np.float32)
        )
    cand_mask: np.ndarray | None = None
    if args.candidate_features_column:
        feats, cand_mask = candidate_features(frame, args.candidate_features_column)
        log = log._replace(action_features=feats)
        beyond = log.action >= feats.shape[1]
        beyond[~beyond] = ~cand_mask[np.flatnonzero(~beyond), log.action[~beyond]]
        if beyond.any():
            bad = np.flatnonzero(beyond)
            raise UsageError(
                f"logged action beyond the row's candidates at rows {bad[:10].tolist()} "
                f"({bad.size} of {log.n})"
            )
    given = [
        bool(args.target_prob_columns),
        bool(args.target_action_column),
        bool(args.policy),
        bool(args.policy_checkpoint) or bool(args.policy_snapshot),
    ]
    if sum(given) != 1 or (args.policy_checkpoint and args.policy_snapshot):
        raise UsageError(
            "give exactly one target: --target-prob-columns, --target-action-column, --policy, "
            "--policy-checkpoint or --policy-snapshot"
        )
    target: Target
    if args.target_prob_columns:
        prob = matrix(frame, args.target_prob_columns, "--target-prob-columns")
        n_actions = args.n_actions or prob.shape[1]
        desc = f"per-row probabilities from {args.target_prob_columns!r} ({prob.shape[1]} actions)"
        target = Target(prob, f"target {args.target_prob_columns}"[:40], desc, [_NO_PROVENANCE])
    elif args.target_action_column:
        col = select_columns(frame, args.target_action_column, "--target-action-column")[0]
        chosen = frame[col].to_numpy()
        n_actions = args.n_actions or int(max(chosen.max(), log.action.max())) + 1
        if chosen.min() < 0 or chosen.max() >= n_actions:
            raise UsageError(f"--target-action-column {col!r} has values outside [0, {n_actions})")
        prob = np.zeros((log.n, n_actions))
        prob[np.arange(log.n), chosen.astype(np.int64)] = 1.0
        desc = f"deterministic: the action in column {col!r}"
        target = Target(prob, f"deterministic target {col}"[:40], desc, [_NO_PROVENANCE])
    elif args.policy_checkpoint or args.policy_snapshot:
        n_actions = log.action_features.shape[1] if log.action_features is not None else 0
        target = checkpoint_policy_target(frame, log, n_actions, cand_mask, args, key)
    else:
        if log.action_features is not None:
            n_actions = log.action_features.shape[1]
        else:
            n_actions = args.n_actions or int(log.action.max()) + 1
        request_id = frame["request_id"].to_numpy() if "request_id" in frame.columns else None
        log, target = fit_policy_target(log, n_actions, cand_mask, args, key, request_id)
    return Inputs(
        log,
        TargetProbs(target.prob),
        n_actions,
        target.desc,
        target.name,
        target.notes,
        target.overlap,
    )
