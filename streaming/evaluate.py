"""``encore evaluate``: off-policy evaluation of a target policy on logged records.

The math lives in ``bandits.ope``; this module reads files, maps columns, builds the target
policy's probabilities, shows progress and writes the report. Usage::

    encore evaluate LOG.parquet --column-map action=item_id,reward=click,propensity=pscore \\
        --target-prob-columns 'target_prob_*' --estimators ips,snips,dr --out report/

The target policy is one of

- ``--target-prob-columns``: per-row probabilities of each action (``k`` columns, a glob or a
  comma list, in action order);
- ``--target-action-column``: the action a deterministic target would take in each row;
- ``--policy NAME [--policy-param key=value ...]``: a ``bandits.registry`` policy fitted offline
  on the first ``--train-fraction`` of the log (contexts from ``--context-columns``, each action
  a fixed candidate with one-hot features); the rest of the log is evaluated, with the policy's
  action probabilities estimated by Monte Carlo over ``--policy-samples`` draws of ``rank``.

Live mode (``--topic``) is fed by the shell through ``live_consume``: it takes an iterable of
``(LoggedFeedback, TargetProbs)`` batches and keeps an anytime-valid confidence sequence per
estimator, so an evaluation can be watched on the stream and stopped whenever it is conclusive.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd

from bandits.ope import (
    ESTIMATORS,
    NEEDS_Q_HAT,
    AbstractSingleActionEstimator,
    Estimate,
    InvalidLogError,
    LoggedFeedback,
    OnlineEvaluation,
    TargetProbs,
    estimate_all,
    online_init,
    online_intervals,
    online_update,
    with_q_hat,
)

__all__ = ["LiveResult", "build_parser", "live_consume", "main"]


class UsageError(ValueError):
    """A command-line or input-mapping mistake; printed without a traceback."""


# ----------------------------------------------------------------------------- inputs


def parse_column_map(text: str | None) -> dict[str, str]:
    """``"action=item_id,reward=click"`` -> ``{"action": "item_id", "reward": "click"}``."""
    if not text:
        return {}
    out: dict[str, str] = {}
    for part in text.split(","):
        name, sep, column = part.partition("=")
        if not sep or not name.strip() or not column.strip():
            raise UsageError(f"--column-map entry {part!r} is not field=column")
        out[name.strip()] = column.strip()
    return out


def select_columns(frame: pd.DataFrame, spec: str, what: str) -> list[str]:
    """Columns named by a comma list or a glob (``'target_prob_*'``), in natural order."""
    names: list[str] = []
    for part in spec.split(","):
        part = part.strip()
        if any(c in part for c in "*?["):
            hits = [str(c) for c in frame.columns if fnmatch.fnmatch(str(c), part)]
            hits.sort(key=lambda c: (len(c), c))  # tp_2 before tp_10
            names += hits
        elif part:
            names.append(part)
    missing = [c for c in names if c not in frame.columns]
    if missing or not names:
        raise UsageError(
            f"{what} {spec!r}: missing column(s) {missing or '(no match)'}; "
            f"available: {sorted(map(str, frame.columns))}"
        )
    return names


def read_log(path: Path) -> pd.DataFrame:
    """A Parquet or CSV file, or a folder of the daemon's joined-records log, as a frame."""
    if not path.exists():
        raise UsageError(f"log file {str(path)!r} does not exist")
    if path.is_dir():
        from streaming.parquet_log import read_log as read_joined

        return read_joined(path)
    if path.suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if path.suffix in (".csv", ".gz", ".txt"):
        return pd.read_csv(path)
    raise UsageError(f"log file {str(path)!r}: expected .parquet, .csv or a log folder")


_ELEMENT = re.compile(r"^(?P<name>.+)\[(?P<index>\d+)\]$")


def column_values(frame: pd.DataFrame, ref: str, what: str = "") -> np.ndarray:
    """A column by name, or one element of a list column with ``name[j]`` (``shown[0]``).

    Raises:
        UsageError: no such column, or rows whose list is shorter than ``j + 1``.
    """
    m = _ELEMENT.match(ref)
    name, index = (m["name"], int(m["index"])) if m else (ref, None)
    if name not in frame.columns:
        raise UsageError(
            f"missing column {name!r}{' for ' + what if what else ''}; "
            f"available columns: {sorted(map(str, frame.columns))}"
        )
    values = frame[name].to_numpy()
    if index is None:
        return values
    lengths = np.fromiter((len(v) for v in values), np.int64, len(values))
    short = np.flatnonzero(lengths <= index)
    if short.size:
        raise UsageError(
            f"column {name!r} has no element [{index}] at rows {short[:10].tolist()} "
            f"({short.size} of {len(values)})"
        )
    return np.array([v[index] for v in values])


def matrix(frame: pd.DataFrame, spec: str, what: str) -> np.ndarray:
    """``(n, m)`` float array from several scalar columns or one list column."""
    cols = select_columns(frame, spec, what)
    first = frame[cols[0]].to_numpy()
    if len(cols) == 1 and first.dtype == object:
        lengths = {len(v) for v in first}
        if len(lengths) != 1:
            raise UsageError(
                f"{what} {spec!r}: list column rows differ in length {sorted(lengths)}"
            )
        return np.stack([np.asarray(v, dtype=np.float64) for v in first])
    return frame[cols].to_numpy(dtype=np.float64)


def candidate_features(frame: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-row candidate features, padded to the largest ``k``: ``(n, k, d)`` float32 and the
    ``(n, k)`` mask of real candidates (padding has zero features and target probability 0)."""
    rows = column_values(frame, column)
    dims = {len(c) for r in rows for c in r}
    if len(dims) != 1:
        raise UsageError(
            f"--candidate-features-column {column!r}: feature lengths differ {sorted(dims)}"
        )
    k = max(len(r) for r in rows)
    out = np.zeros((len(rows), k, dims.pop()), np.float32)
    mask = np.zeros((len(rows), k), bool)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = np.stack([np.asarray(c, np.float32) for c in r])
            mask[i, : len(r)] = True
    return out, mask


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
        prob, desc, notes = _checkpoint_policy_target(frame, log, n_actions, cand_mask, args, key)
    else:
        if log.action_features is not None:
            n_actions = log.action_features.shape[1]
        else:
            n_actions = args.n_actions or int(log.action.max()) + 1
        log, prob, desc, notes = _fit_policy_target(log, n_actions, cand_mask, args, key)
    return Inputs(log, TargetProbs(prob), n_actions, desc, notes)


def _fit_policy_target(
    log: LoggedFeedback,
    n_actions: int,
    cand_mask: np.ndarray | None,
    args: argparse.Namespace,
    key: jax.Array,
) -> tuple[LoggedFeedback, np.ndarray, str, list[str]]:
    """Fit a registry policy on the first part of the log; Monte Carlo its action probabilities."""
    try:
        from bandits.registry import POLICIES
        from bandits.types import Feedback
    except ImportError as exc:  # pragma: no cover - depends on the policies package
        raise UsageError(f"--policy needs bandits.registry: {exc}") from exc
    if args.policy not in POLICIES:
        raise UsageError(f"unknown --policy {args.policy!r}; known: {sorted(POLICIES)}")
    params: dict[str, Any] = {}
    for item in args.policy_param or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--policy-param {item!r} is not key=value")
        params[name] = json.loads(value) if value[:1] in "[{0123456789-.tfn" else value
    policy = POLICIES[args.policy](**params)
    n_train = int(log.n * args.train_fraction)
    if not 0 < n_train < log.n:
        raise UsageError(f"--train-fraction {args.train_fraction} leaves no train or no test rows")
    context = (
        np.ones((log.n, 1), np.float32) if log.context is None else log.context.astype(np.float32)
    )
    k = n_actions
    if log.action_features is None:  # a fixed action set: each action its own one-hot item
        feats = np.broadcast_to(np.eye(k, dtype=np.float32), (log.n, k, k))
    else:
        feats = log.action_features.astype(np.float32)
    ids = np.arange(k, dtype=np.int32)
    state = policy.init(context.shape[1], feats.shape[2])
    batch = 4096
    update = jax.jit(policy.update)
    jnp = jax.numpy

    def padded(a: np.ndarray, pad: int, fill: float | bool = 0.0) -> jax.Array:
        if pad:
            a = np.concatenate([a, np.full((pad, *a.shape[1:]), fill, a.dtype)])
        return jnp.asarray(a)

    for lo in range(0, n_train, batch):
        hi = min(lo + batch, n_train)
        pad = batch - (hi - lo)
        sl = slice(lo, hi)
        fb = Feedback(
            context=padded(context[sl], pad),
            features=padded(feats[np.arange(lo, hi), log.action[sl]], pad),
            action=padded(log.action[sl].astype(np.int32), pad),
            position=jnp.zeros(batch, jnp.int32),
            reward=padded(log.reward[sl].astype(np.float32), pad),
            propensity=padded(log.propensity[sl].astype(np.float32), pad, 1.0),
            mask=padded(np.ones(hi - lo, bool), pad, False),
        )
        state = update(state, fb)
    masks = np.ones((log.n, k), bool) if cand_mask is None else cand_mask
    samples = args.policy_samples
    test = slice(n_train, log.n)
    n_test = log.n - n_train
    row_ids = np.broadcast_to(ids, (log.n, k))
    prob = mc_probs(
        policy,
        state,
        context[test],
        feats[test],
        masks[test],
        row_ids[test],
        samples=samples,
        key=key,
    )
    log_test = LoggedFeedback(
        action=log.action[test],
        reward=log.reward[test],
        propensity=log.propensity[test],
        context=None if log.context is None else log.context[test],
        action_features=None if log.action_features is None else log.action_features[test],
    )
    desc = f"{args.policy} {params or ''} fitted on the first {n_train:,} rows".replace("  ", " ")
    notes = [
        f"target: {policy.spec.name} v{policy.spec.version} {dict(policy.spec.params)}; "
        f"evaluated on the last {n_test:,} rows; action probabilities by Monte Carlo over "
        f"{samples} draws of rank (exact for deterministic policies)"
    ]
    return log_test, prob, desc, notes


def mc_probs(
    policy: Any,
    state: Any,
    context: np.ndarray,
    feats: np.ndarray,
    masks: np.ndarray,
    ids: np.ndarray,
    *,
    samples: int,
    key: jax.Array,
) -> np.ndarray:
    """``(n, k)`` probability that ``policy`` puts each candidate first, by Monte Carlo over
    ``samples`` draws of ``rank`` per row (exact for deterministic policies)."""
    from bandits.types import Candidates

    n, k = masks.shape

    def probs(
        ctx: jax.Array, features: jax.Array, mask: jax.Array, row_ids: jax.Array, keys: jax.Array
    ) -> jax.Array:
        cand = Candidates(features=features, ids=row_ids)

        def one(kk: jax.Array) -> jax.Array:
            return policy.rank(state, ctx, cand, mask, key=kk, slate_size=1).order[0]

        chosen = jax.vmap(one)(keys)
        return jax.numpy.zeros(k).at[chosen].add(1.0 / samples)

    probs_batch = jax.jit(jax.vmap(probs))
    out = np.empty((n, k))
    for lo in range(0, n, 2048):
        hi = min(lo + 2048, n)
        keys = jax.random.split(jax.random.fold_in(key, lo), (hi - lo) * samples)
        keys = keys.reshape(hi - lo, samples)
        out[lo:hi] = np.asarray(
            probs_batch(
                jax.numpy.asarray(context[lo:hi], jax.numpy.float32),
                jax.numpy.asarray(feats[lo:hi], jax.numpy.float32),
                jax.numpy.asarray(masks[lo:hi]),
                jax.numpy.asarray(ids[lo:hi], jax.numpy.int32),
                keys,
            )
        )
    return out


def newest_snapshot(args: argparse.Namespace) -> bytes:
    """The newest snapshot of policy ``--policy-snapshot`` on the compacted snapshots topic."""
    from streaming.config import Config
    from streaming.kafka_io import TopicPartition, bootstrap_servers, make_consumer

    config = Config.load(
        env={},
        overrides=(
            [f"kafka.bootstrap_servers={args.bootstrap_servers}"] if args.bootstrap_servers else []
        ),
    )
    servers = bootstrap_servers(config.kafka)
    consumer = make_consumer(config.kafka, servers, group_id=None)
    try:
        parts = consumer.partitions_for_topic(args.snapshots_topic)
        if not parts:
            raise UsageError(
                f"--snapshots-topic {args.snapshots_topic!r} does not exist on {servers}"
            )
        tps = [TopicPartition(args.snapshots_topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends: dict[Any, int] = {tp: int(o or 0) for tp, o in consumer.end_offsets(tps).items()}
        newest: bytes | None = None
        name = args.policy_snapshot.encode()
        while any(int(consumer.position(tp) or 0) < ends[tp] for tp in tps):
            for recs in consumer.poll(timeout_ms=500).values():
                for r in recs:
                    if r.key == name and r.value:
                        newest = r.value
    finally:
        consumer.close(autocommit=False)
    if newest is None:
        raise UsageError(
            f"no snapshot of policy {args.policy_snapshot!r} on {args.snapshots_topic!r}"
        )
    return newest


def _checkpoint_policy_target(
    frame: pd.DataFrame,
    log: LoggedFeedback,
    n_actions: int,
    cand_mask: np.ndarray | None,
    args: argparse.Namespace,
    key: jax.Array,
) -> tuple[np.ndarray, str, list[str]]:
    """The policy a daemon learned (its newest good checkpoint) as the target, on every row."""
    from bandits import load
    from bandits.registry import POLICIES
    from streaming import checkpoint

    if args.policy_snapshot:
        from bandits.state import read_header

        blob = newest_snapshot(args)
        spec = read_header(blob).get("spec") or {}
        source = f"snapshot {args.policy_snapshot!r} on {args.snapshots_topic}"
        if spec.get("name") not in POLICIES:
            raise UsageError(f"{source} holds unknown policy {spec.get('name')!r}")
    else:
        found = checkpoint.load_latest(args.policy_checkpoint)
        if found is None:
            raise UsageError(f"--policy-checkpoint {args.policy_checkpoint}: no checkpoint there")
        arrays, header = found
        spec = header.get("policy_spec") or {}
        if spec.get("name") not in POLICIES or "policy_blob" not in arrays:
            raise UsageError(
                f"--policy-checkpoint {args.policy_checkpoint}: not a daemon checkpoint"
            )
        blob = arrays["policy_blob"].tobytes()
        source = f"checkpoint {header.get('sequence')} in {args.policy_checkpoint}"
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.get("params", {}).items()}
    policy = POLICIES[spec["name"]](**params)
    if log.context is None or log.action_features is None:
        raise UsageError(
            "--policy-checkpoint needs --context-columns and --candidate-features-column"
        )
    context = log.context.astype(np.float32)
    feats = log.action_features.astype(np.float32)
    like = policy.init(context.shape[1], feats.shape[2])
    state = load(policy, blob, like=like)
    k = n_actions
    if "candidate_key" in frame.columns:  # the daemon's log: ids hashed as the daemon hashes them
        keys = np.zeros((log.n, k), np.uint64)
        for i, row in enumerate(frame["candidate_key"]):
            row = np.asarray(row, np.uint64)[:k]
            keys[i, : row.size] = row
        ids = (keys % np.uint64(2**31 - 1)).astype(np.int32)
    else:
        ids = np.broadcast_to(np.arange(k, dtype=np.int32), (log.n, k))
    masks = np.ones((log.n, k), bool) if cand_mask is None else cand_mask
    prob = mc_probs(policy, state, context, feats, masks, ids, samples=args.policy_samples, key=key)
    desc = f"{spec['name']} learned by the daemon ({source})"
    notes = [
        f"target: {spec['name']} v{spec.get('version')} {spec.get('params')} from "
        f"{source}; action probabilities by Monte Carlo over {args.policy_samples} draws of rank"
    ]
    return prob, desc, notes


# ----------------------------------------------------------------------------- output


def estimator_set(spec: str) -> dict[str, AbstractSingleActionEstimator]:
    names = list(ESTIMATORS) if spec == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise UsageError(f"unknown estimator(s) {unknown}; known: {sorted(ESTIMATORS)} or 'all'")
    return {n: ESTIMATORS[n]() for n in names}


def results_table(results: Mapping[str, Estimate], alpha: float, interval: str) -> Any:
    from rich.table import Table

    table = Table(title=f"off-policy estimates ({1 - alpha:.0%} {interval} interval)")
    for col, justify in (
        ("estimator", "left"),
        ("value", "right"),
        ("lower", "right"),
        ("upper", "right"),
        ("ESS", "right"),
        ("max w", "right"),
        ("warning", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, e in results.items():
        d = e.diagnostics
        table.add_row(
            name,
            f"{e.value:.4f}",
            f"{e.lower:.4f}",
            f"{e.upper:.4f}",
            f"{d.ess:,.0f}",
            f"{d.max_weight:.3g}",
            d.reason if d.warning else "",
        )
    return table


def markdown_report(
    results: Mapping[str, Estimate],
    *,
    inputs: Inputs,
    source: str,
    alpha: float,
    interval: str,
    elapsed_s: float,
) -> str:
    d = next(iter(results.values())).diagnostics
    lines = [
        "# encore evaluate",
        "",
        f"- log: `{source}` ({inputs.log.n:,} rounds, {inputs.n_actions} actions)",
        f"- target: {inputs.target_desc}",
        f"- interval: {1 - alpha:.0%} {interval}",
        f"- importance weights: ESS {d.ess:,.0f}, max {d.max_weight:.3g}, mean "
        f"{d.mean_weight:.3f}, target never plays {d.unsupported_share:.1%} of logged actions",
        f"- elapsed: {elapsed_s:.1f} s",
        *[f"- {note}" for note in inputs.notes],
        "",
        "| estimator | value | lower | upper | warning |",
        "|---|---:|---:|---:|---|",
    ]
    for name, e in results.items():
        warn = e.diagnostics.reason if e.diagnostics.warning else ""
        lines.append(f"| {name} | {e.value:.4f} | {e.lower:.4f} | {e.upper:.4f} | {warn} |")
    lines += ["", "![estimates](estimates.png)", ""]
    return "\n".join(lines)


def plot_estimates(results: Mapping[str, Estimate], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    values = np.array([results[n].value for n in names])
    err = np.array(
        [[results[n].value - results[n].lower, results[n].upper - results[n].value] for n in names]
    ).T
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.5))
    y = np.arange(len(names))
    colors = ["tab:red" if results[n].diagnostics.warning else "tab:blue" for n in names]
    for i, color in enumerate(colors):
        ax.errorbar(values[i], y[i], xerr=err[:, i : i + 1], fmt="none", ecolor=color, capsize=3)
    ax.scatter(values, y, c=colors, zorder=3)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("estimated policy value (red: warning)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- live mode


@dataclass
class LiveResult:
    """What ``live_consume`` leaves behind: the state and every rejected batch with its reason."""

    state: OnlineEvaluation
    rejects: list[str]
    batches: int


def live_consume(
    batches: Iterable[tuple[LoggedFeedback, TargetProbs]],
    estimators: Sequence[AbstractSingleActionEstimator],
    *,
    alpha: float = 0.05,
    t_star: float | int = 100_000,
    on_update: Callable[[list[Estimate]], None] | None = None,
    state: OnlineEvaluation | None = None,
) -> LiveResult:
    """Fold a stream of array batches into the anytime-valid evaluation.

    Args:
        batches: ``(log, target)`` pairs as the shell decodes them (for example from Kafka);
            estimators needing ``q_hat`` need it in each batch.
        estimators: the estimators to run, in a fixed order.
        alpha: the confidence sequence covers the value at every time with prob. ``1 - alpha``.
        t_star: rows at which the sequence is tuned to be tightest.
        on_update: called with the current estimates after every accepted batch (a live table).
        state: a state to resume from (a checkpoint), else a fresh one.

    Returns:
        The final state, the reasons of rejected batches (malformed ones are skipped, not fatal),
        and the number of batches seen.
    """
    current = state if state is not None else online_init(len(estimators))
    rejects: list[str] = []
    seen = 0
    for log, target in batches:
        seen += 1
        try:
            current = online_update(current, estimators, log, target)
        except (InvalidLogError, TypeError) as exc:
            rejects.append(f"batch {seen}: {exc}")
            continue
        if on_update is not None:
            on_update(online_intervals(current, estimators, alpha=alpha, t_star=t_star))
    return LiveResult(current, rejects, seen)


def topic_frames(args: argparse.Namespace) -> Iterable[pd.DataFrame]:
    """Frames of ``--batch-rows`` joined records from ``--topic`` (JSON rows of the log's columns)."""
    import msgspec

    from streaming.config import Config
    from streaming.kafka_io import TopicPartition, bootstrap_servers, make_consumer

    config = Config.load(
        env={},
        overrides=(
            [f"kafka.bootstrap_servers={args.bootstrap_servers}"] if args.bootstrap_servers else []
        ),
    )
    servers = bootstrap_servers(config.kafka)
    consumer = make_consumer(config.kafka, servers, group_id=None)
    parts = consumer.partitions_for_topic(args.topic)
    if not parts:
        consumer.close(autocommit=False)
        raise UsageError(f"--topic {args.topic!r} does not exist on {servers}")
    tps = [TopicPartition(args.topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    rows: list[dict[str, Any]] = []
    total = 0
    last = time.monotonic()
    try:
        while args.max_rows is None or total < args.max_rows:
            polled = consumer.poll(timeout_ms=200, max_records=args.batch_rows)
            for recs in polled.values():
                rows.extend(msgspec.json.decode(r.value) for r in recs if r.value)
            if polled:
                last = time.monotonic()
            idle = (
                args.idle_exit_ms is not None
                and (time.monotonic() - last) * 1000 >= args.idle_exit_ms
            )
            while len(rows) >= args.batch_rows or (rows and idle):
                chunk, rows = rows[: args.batch_rows], rows[args.batch_rows :]
                total += len(chunk)
                yield pd.DataFrame(chunk)
            if idle:
                return
    finally:
        consumer.close(autocommit=False)


def run_live(args: argparse.Namespace, console: Any) -> int:
    """``encore evaluate --topic``: fold joined records into the confidence sequence as they come."""
    if args.policy:
        raise UsageError(
            "--topic needs a fixed target (--policy-checkpoint, --target-prob-columns "
            "or --target-action-column); --policy fits on a split of a finished log"
        )
    estimators = estimator_set(args.estimators)
    names = list(estimators)
    key = jax.random.key(args.seed)
    rows = 0

    def batches() -> Iterable[tuple[LoggedFeedback, TargetProbs]]:
        nonlocal rows
        for i, frame in enumerate(topic_frames(args)):
            inputs = build_inputs(frame, args, jax.random.fold_in(key, i))
            log = inputs.log
            if NEEDS_Q_HAT & set(estimators) and log.q_hat is None:
                log = with_q_hat(
                    log,
                    n_actions=inputs.n_actions,
                    key=jax.random.fold_in(key, 10_000 + i),
                    folds=args.folds,
                )
            rows += log.n
            yield log, inputs.target

    def show(estimates: list[Estimate]) -> None:
        parts = [
            f"{n} {e.value:.4f} [{e.lower:.4f}, {e.upper:.4f}]"
            for n, e in zip(names, estimates, strict=True)
        ]
        console.print(f"{rows:>9,} rows  " + "  ".join(parts))

    result = live_consume(batches(), list(estimators.values()), alpha=args.alpha, on_update=show)
    for reason in result.rejects:
        console.print(f"skipped {reason}")
    if result.batches == 0:
        raise UsageError(f"no joined records arrived on {args.topic!r}")
    final = online_intervals(
        result.state, list(estimators.values()), alpha=args.alpha, t_star=100_000
    )
    console.print(results_table(dict(zip(names, final, strict=True)), args.alpha, "cs"))
    return 0


# ----------------------------------------------------------------------------- command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="encore evaluate",
        description="Off-policy evaluation of a target policy on logged records.",
    )
    p.add_argument(
        "log",
        type=Path,
        nargs="?",
        default=None,
        help="Parquet or CSV of logged, joined rounds (or a daemon's log folder)",
    )
    p.add_argument(
        "--topic",
        default=None,
        help="evaluate live from this topic of joined records (the daemon publishes "
        "them with log.publish_joined): the anytime-valid confidence sequence "
        "is updated as events arrive",
    )
    p.add_argument(
        "--bootstrap-servers",
        default=None,
        help="Kafka for --topic (default: the local broker of `encore broker start`)",
    )
    p.add_argument("--batch-rows", type=int, default=2000, help="rows per live update")
    p.add_argument("--max-rows", type=int, default=None, help="stop --topic after this many rows")
    p.add_argument(
        "--idle-exit-ms",
        type=int,
        default=None,
        help="stop --topic once nothing arrived for this long",
    )
    p.add_argument(
        "--column-map",
        default=None,
        help="field=column pairs for action, reward, propensity (default: same names)",
    )
    p.add_argument("--n-actions", type=int, default=None, help="k (default: inferred)")
    p.add_argument(
        "--target-prob-columns", default=None, help="k target-probability columns (glob or list)"
    )
    p.add_argument("--target-action-column", default=None, help="action of a deterministic target")
    p.add_argument("--policy", default=None, help="bandits.registry policy to fit offline")
    p.add_argument(
        "--policy-checkpoint",
        type=Path,
        default=None,
        help="a daemon's checkpoint folder: evaluate the policy it learned",
    )
    p.add_argument(
        "--policy-snapshot",
        default=None,
        metavar="POLICY",
        help="evaluate the newest snapshot of this policy (e.g. linucb) published on "
        "--snapshots-topic",
    )
    p.add_argument("--snapshots-topic", default="encore.policy-snapshots")
    p.add_argument("--policy-param", action="append", help="key=value hyperparameter (repeat)")
    p.add_argument(
        "--train-fraction", type=float, default=0.5, help="share of rows to fit --policy on"
    )
    p.add_argument("--policy-samples", type=int, default=64, help="Monte Carlo draws per row")
    p.add_argument(
        "--context-columns",
        default=None,
        help="context feature columns (glob, list or one list column)",
    )
    p.add_argument(
        "--candidate-features-column",
        default=None,
        help="per-row candidate features (list of lists), e.g. candidate_features of the daemon log",
    )
    p.add_argument(
        "--estimators", default="all", help=f"comma list of {', '.join(ESTIMATORS)} or 'all'"
    )
    p.add_argument(
        "--interval", default="bootstrap", choices=["bootstrap", "normal", "bernstein", "cs"]
    )
    p.add_argument("--alpha", type=float, default=0.05, help="one minus the coverage")
    p.add_argument("--n-bootstrap", type=int, default=500)
    p.add_argument("--folds", type=int, default=2, help="cross-fitting folds of the reward model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="folder for report.md and estimates.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``encore evaluate``; returns the exit status (2 for input errors)."""
    from rich.console import Console
    from rich.progress import Progress

    args = build_parser().parse_args(argv)
    console = Console()
    err = Console(stderr=True)
    if args.topic is not None:
        try:
            return run_live(args, console)
        except (InvalidLogError, UsageError) as exc:
            print(f"encore evaluate: {exc}", file=sys.stderr)
            return 2
    if args.log is None:
        print("encore evaluate: give a LOG file or folder, or --topic", file=sys.stderr)
        return 2
    started = time.perf_counter()
    key = jax.random.key(args.seed)
    try:
        estimators = estimator_set(args.estimators)
        with Progress(console=err, disable=args.no_progress, transient=True) as progress:
            task = progress.add_task("reading log", total=len(estimators) + 3)
            frame = read_log(args.log)
            progress.update(task, advance=1, description="building target")
            inputs = build_inputs(frame, args, jax.random.fold_in(key, 1))
            del frame
            inputs.log.check()
            inputs.target.check(inputs.log)
            log = inputs.log
            progress.update(task, advance=1, description="fitting reward model")
            if NEEDS_Q_HAT & set(estimators) and log.q_hat is None:
                log = with_q_hat(
                    log,
                    n_actions=inputs.n_actions,
                    key=jax.random.fold_in(key, 2),
                    folds=args.folds,
                )
            progress.update(task, advance=1)
            results: dict[str, Estimate] = {}
            for i, (name, est) in enumerate(estimators.items()):
                progress.update(task, description=f"estimating {name}")
                results.update(
                    estimate_all(
                        {name: est},
                        log,
                        inputs.target,
                        interval=args.interval,
                        alpha=args.alpha,
                        key=jax.random.fold_in(key, 100 + i),
                        n_bootstrap=args.n_bootstrap,
                    )
                )
                progress.update(task, advance=1)
    except (InvalidLogError, UsageError) as exc:
        print(f"encore evaluate: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    console.print(results_table(results, args.alpha, args.interval))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        report = markdown_report(
            results,
            inputs=inputs,
            source=str(args.log),
            alpha=args.alpha,
            interval=args.interval,
            elapsed_s=elapsed,
        )
        (args.out / "report.md").write_text(report)
        plot_estimates(results, args.out / "estimates.png", title=inputs.target_desc[:80])
        console.print(f"wrote {args.out / 'report.md'} and {args.out / 'estimates.png'}")
    if any(math.isnan(e.value) for e in results.values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
