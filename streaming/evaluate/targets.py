"""Target policies built from a registry policy fitted offline, or a daemon's checkpoint or snapshot.

Each builder also says which evaluated rows the target learned from, as far as its provenance
tells (``Overlap``): an estimate on rows the target was fitted on is optimistic. What each kind
of target carries:

- ``--policy``: fitted here on the first ``--train-fraction`` of the rows and evaluated on the
  rest, so the two parts share no row; a log with a ``request_id`` column is checked for
  request ids that appear in both parts (a log with duplicated rows). Without that column,
  duplicated rows cannot be told apart and are not checked.
- ``--policy-checkpoint``: the checkpoint's join watermarks say up to which event time its
  impressions had closed, and a closed impression is one the policy learned from; rows of a
  log with a ``ts_ms`` column at or before that time are counted.
- ``--policy-snapshot``: a snapshot records no training range, only when it was published (the
  Kafka record's timestamp); rows whose ``ts_ms`` is before that time may have been learned,
  if event time follows the wall clock.
- ``--target-prob-columns`` and ``--target-action-column``: per-row columns carry no record
  of what produced them, so nothing is checked (the report says so).

Why one long module: the four kinds of target answer the same two questions (the target's
probabilities per row, and which rows it learned from) and are read side by side.
"""

from __future__ import annotations

import argparse
import datetime
import json
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
import pandas as pd

from bandits.ope import (
    LoggedFeedback,
)
from streaming.evaluate.frames import UsageError, topic_from_start


@dataclass(frozen=True)
class Overlap:
    """Evaluated rows the target policy learned from, or may have: an estimate on them is
    optimistic, since the target has already seen their rewards.

    Attributes:
        rows: evaluated rows the target learned (or may have learned) from.
        total: evaluated rows checked.
        how: how those rows were found, as the end of a sentence.
        remedy: what to evaluate instead.
        certain: False when the evidence only bounds what the target could have learned.

    Example:
        >>> print(Overlap(3, 10, "repeat a request_id of the rows it was fitted on",
        ...               "keep one row per request_id").message())
        the target was fitted on rows it evaluates: 3 of 10 evaluated rows (30%) repeat a
        request_id of the rows it was fitted on; keep one row per request_id
    """

    rows: int
    total: int
    how: str
    remedy: str
    certain: bool = True

    def message(self) -> str:
        """The one-line warning."""
        verb = "was fitted" if self.certain else "may have been fitted"
        return (
            f"the target {verb} on rows it evaluates: {self.rows:,} of {self.total:,} evaluated "
            f"rows ({self.rows / max(self.total, 1):.0%}) {self.how}; {self.remedy}"
        )

    def plus(self, later: Overlap) -> Overlap:
        """Both counts together (batches of a stream), described as ``later`` describes them."""
        return Overlap(
            self.rows + later.rows, self.total + later.total, later.how, later.remedy, later.certain
        )


@dataclass
class Target:
    """A target policy's action probabilities on the evaluated rows, and what to say of it.

    Attributes:
        prob: ``(n, k)`` probability of each action in each evaluated row.
        name: a short name for titles (no file paths), e.g. ``"linucb, checkpoint 7"``.
        desc: one line for the report (may name files).
        notes: more lines for the report.
        overlap: the evaluated rows it learned from, when its provenance tells; None when it
            carries none or the log lacks the column to compare with (a note says so).
    """

    prob: np.ndarray
    name: str
    desc: str
    notes: list[str] = field(default_factory=list)
    overlap: Overlap | None = None


def _event_times(frame: pd.DataFrame) -> np.ndarray | None:
    """The frame's ``ts_ms`` column (event time, ms) as int64, or None without a numeric one."""
    if "ts_ms" not in frame.columns:
        return None
    ts = frame["ts_ms"].to_numpy()
    if not np.issubdtype(ts.dtype, np.integer):
        return None
    return ts.astype(np.int64)


def _utc(ms: int) -> str:
    """``ts_ms`` as a UTC time (``1970-01-01T00:00:01Z``), or ``"?"`` beyond the calendar."""
    try:
        stamp = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    except (OverflowError, ValueError, OSError):
        return "?"
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")


def split_overlap(request_id: np.ndarray | None, n_train: int) -> Overlap | None:
    """Rows after ``n_train`` whose request id is also among the first ``n_train`` rows.

    Args:
        request_id: ``(n,)`` the log's ``request_id`` column, or None when it has none.
        n_train: rows the policy is fitted on (the first ones); the rest are evaluated.

    Returns:
        None without request ids (rows are then distinct by position: nothing to check).

    Example:
        >>> ov = split_overlap(np.array(["a", "b", "c", "a", "d"]), 3)
        >>> ov.rows, ov.total
        (1, 2)
    """
    if request_id is None:
        return None
    train, test = request_id[:n_train], request_id[n_train:]
    seen = np.isin(test, train)
    return Overlap(
        int(seen.sum()),
        int(test.size),
        f"repeat a request_id of the first {n_train:,} rows, which --policy was fitted on",
        "keep one row per request_id in the log",
    )


def learned_until_ms(arrays: dict[str, np.ndarray], header: dict[str, Any]) -> int | None:
    """Event time (ms) up to which a daemon checkpoint's policy had learned every impression.

    An impression closes, and the policy learns it, once its partition's join watermark passes
    ``ts_ms + window_ms``; this is the largest watermark of the checkpoint's partitions less the
    reward window (``join.window_ms`` of the config in its header, 0 when the header has none,
    which counts a window more of rows). Impressions evicted early from a full join buffer are
    learned before that and are not counted. A worker's checkpoint holds the watermarks of its
    own partitions only: what other workers taught it through shared statistics is bounded by
    their own watermarks, which this does not see.

    Returns:
        The time, ``MAX_TIME_MS`` when the join was flushed (every impression read was learned),
        or None when the checkpoint holds no join watermark.
    """
    from streaming.join import MAX_TIME_MS, NO_TIME_MS

    marks = [
        int(v)
        for name, v in arrays.items()
        if name.startswith("join/") and name.endswith("/watermark_ms")
    ]
    marks = [m for m in marks if m > NO_TIME_MS]
    if not marks:
        return None
    if max(marks) >= MAX_TIME_MS:
        return MAX_TIME_MS
    window = ((header.get("config") or {}).get("join") or {}).get("window_ms") or 0
    return max(marks) - int(window)


def checkpoint_overlap(ts_ms: np.ndarray, until_ms: int, source: str) -> Overlap:
    """Rows with ``ts_ms`` at or before ``until_ms`` (``learned_until_ms``) of ``source``."""
    from streaming.join import MAX_TIME_MS

    if until_ms >= MAX_TIME_MS:
        how = (
            f"are within what {source} learned: it flushed its join, so it learned every "
            "impression it read"
        )
        remedy = "evaluate rows logged after it"
    else:
        how = (
            f"have ts_ms <= {until_ms} ({_utc(until_ms)}), up to which {source} had closed and "
            "learned every impression (its newest join watermark less the reward window)"
        )
        remedy = f"evaluate rows with ts_ms > {until_ms}"
    return Overlap(int(np.count_nonzero(ts_ms <= until_ms)), int(ts_ms.size), how, remedy)


def snapshot_overlap(ts_ms: np.ndarray, published_ms: int, source: str) -> Overlap:
    """Rows with ``ts_ms`` before ``published_ms``, when ``source`` was published.

    A snapshot records no training range: this bound holds when event time follows the wall
    clock (the daemon cannot have learned an impression before it happened).
    """
    return Overlap(
        int(np.count_nonzero(ts_ms < published_ms)),
        int(ts_ms.size),
        f"have ts_ms before {source} was published at {published_ms} ({_utc(published_ms)}), "
        "and a snapshot does not record which events it learned from",
        f"evaluate rows with ts_ms >= {published_ms}",
        certain=False,
    )


def fit_policy_target(
    log: LoggedFeedback,
    n_actions: int,
    cand_mask: np.ndarray | None,
    args: argparse.Namespace,
    key: jax.Array,
    request_id: np.ndarray | None = None,
) -> tuple[LoggedFeedback, Target]:
    """Fit a registry policy on the first part of the log; Monte Carlo its action probabilities.

    ``request_id`` (the log's column, if it has one) finds rows of the evaluated part that repeat
    a request of the fitted part (``split_overlap``).
    """
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
    overlap = split_overlap(request_id, n_train)
    if overlap is None:
        notes.append(
            "overlap with the fitted rows: none by position; the log has no request_id column "
            "to find duplicated rows by"
        )
    name = f"{policy.spec.name} fitted on {n_train:,} rows"
    return log_test, Target(prob, name, desc, notes, overlap)


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


def newest_snapshot(args: argparse.Namespace) -> tuple[bytes, int]:
    """The newest snapshot of policy ``--policy-snapshot`` on the compacted snapshots topic, and
    when it was published (its record's timestamp, ms since the epoch)."""
    consumer, tps = topic_from_start(
        args.bootstrap_servers, args.snapshots_topic, "--snapshots-topic"
    )
    try:
        ends: dict[Any, int] = {tp: int(o or 0) for tp, o in consumer.end_offsets(tps).items()}
        newest: bytes | None = None
        published_ms = 0
        name = args.policy_snapshot.encode()
        while any(int(consumer.position(tp) or 0) < ends[tp] for tp in tps):
            for recs in consumer.poll(timeout_ms=500).values():
                for r in recs:
                    if r.key == name and r.value:
                        newest, published_ms = r.value, int(r.timestamp)
    finally:
        consumer.close(autocommit=False)
    if newest is None:
        raise UsageError(
            f"no snapshot of policy {args.policy_snapshot!r} on {args.snapshots_topic!r}"
        )
    return newest, published_ms


def checkpoint_policy_target(
    frame: pd.DataFrame,
    log: LoggedFeedback,
    n_actions: int,
    cand_mask: np.ndarray | None,
    args: argparse.Namespace,
    key: jax.Array,
) -> Target:
    """The policy a daemon learned (its newest good checkpoint) as the target, on every row.

    Its overlap with the evaluated rows is found by event time (``learned_until_ms``,
    ``snapshot_overlap``) when the log has a ``ts_ms`` column.
    """
    from bandits import load
    from bandits.registry import POLICIES
    from streaming.worker import checkpoint

    ts = _event_times(frame)
    unchecked = "the log has no ts_ms column"
    if args.policy_snapshot:
        from bandits.state import read_header

        blob, published_ms = newest_snapshot(args)
        spec = read_header(blob).get("spec") or {}
        source = f"snapshot {args.policy_snapshot!r} on {args.snapshots_topic}"
        if spec.get("name") not in POLICIES:
            raise UsageError(f"{source} holds unknown policy {spec.get('name')!r}")
        name = f"{spec['name']}, newest snapshot"
        overlap = None if ts is None else snapshot_overlap(ts, published_ms, "the snapshot")
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
        name = f"{spec['name']}, checkpoint {header.get('sequence')}"
        until = learned_until_ms(arrays, header)
        overlap = (
            None
            if ts is None or until is None
            else checkpoint_overlap(ts, until, f"checkpoint {header.get('sequence')}")
        )
        if ts is not None and until is None:
            unchecked = "the checkpoint holds no join watermark"
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
    if overlap is None:
        notes.append(f"overlap with the rows the target learned from: not checked ({unchecked})")
    return Target(prob, name, desc, notes, overlap)
