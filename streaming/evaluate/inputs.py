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
from streaming.evaluate.targets import checkpoint_policy_target, fit_policy_target


@dataclass
class Inputs:
    """What the estimators run on, plus what the report should say about it."""

    log: LoggedFeedback
    target: TargetProbs
    n_actions: int
    target_desc: str
    notes: list[str] = field(default_factory=list)


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
    notes: list[str] = []
    if args.target_prob_columns:
        prob = matrix(frame, args.target_prob_columns, "--target-prob-columns")
        n_actions = args.n_actions or prob.shape[1]
        desc = f"per-row probabilities from {args.target_prob_columns!r} ({prob.shape[1]} actions)"
    elif args.target_action_column:
        col = select_columns(frame, args.target_action_column, "--target-action-column")[0]
        chosen = frame[col].to_numpy()
        n_actions = args.n_actions or int(max(chosen.max(), log.action.max())) + 1
        if chosen.min() < 0 or chosen.max() >= n_actions:
            raise UsageError(f"--target-action-column {col!r} has values outside [0, {n_actions})")
        prob = np.zeros((log.n, n_actions))
        prob[np.arange(log.n), chosen.astype(np.int64)] = 1.0
        desc = f"deterministic: the action in column {col!r}"
    elif args.policy_checkpoint or args.policy_snapshot:
        n_actions = log.action_features.shape[1] if log.action_features is not None else 0
        prob, desc, notes = checkpoint_policy_target(frame, log, n_actions, cand_mask, args, key)
    else:
        if log.action_features is not None:
            n_actions = log.action_features.shape[1]
        else:
            n_actions = args.n_actions or int(log.action.max()) + 1
        log, prob, desc, notes = fit_policy_target(log, n_actions, cand_mask, args, key)
    return Inputs(log, TargetProbs(prob), n_actions, desc, notes)
