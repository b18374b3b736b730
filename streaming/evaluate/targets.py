"""Target policies built from a registry policy fitted offline, or a daemon's checkpoint or snapshot."""

from __future__ import annotations

import argparse
import json
from typing import Any

import jax
import numpy as np
import pandas as pd

from bandits.ope import (
    LoggedFeedback,
)
from streaming.evaluate.frames import UsageError, topic_from_start


def fit_policy_target(
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
    consumer, tps = topic_from_start(
        args.bootstrap_servers, args.snapshots_topic, "--snapshots-topic"
    )
    try:
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


def checkpoint_policy_target(
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
    from streaming.worker import checkpoint

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
