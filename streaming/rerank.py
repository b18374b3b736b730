"""Re-ranking: follow the newest policy snapshot and rank candidates with exact propensities.

``SnapshotFollower`` reads the compacted snapshots topic (no consumer group: it always reads the
whole, small topic and keeps the newest snapshot per policy). ``Reranker`` ranks one request or
a batch of requests with the policy's jitted ``rank`` (vmapped over requests; one compilation per
candidate-count bucket and slate size).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from bandits import Candidates, Policy, load
from streaming.config import Config
from streaming.kafka_io import TopicPartition, make_consumer

log = logging.getLogger(__name__)


class SnapshotFollower:
    """The newest snapshot of one policy from the snapshots topic."""

    def __init__(
        self, config: Config, servers: str, policy: Policy, *, d_user: int, d_track: int
    ) -> None:
        self.policy = policy
        self.like = policy.init(d_user, d_track)
        self.name = policy.spec.name.encode()
        self.consumer = make_consumer(
            config.kafka, servers, group_id=None, enable_auto_commit=False
        )
        parts = self.consumer.partitions_for_topic(config.topics.snapshots) or {0}
        self.partitions = [TopicPartition(config.topics.snapshots, p) for p in sorted(parts)]
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_beginning(*self.partitions)
        self.version = 0

    def poll(self, timeout_ms: int = 0) -> Any | None:
        """The newest state published since the last call, or None if there is none."""
        newest: bytes | None = None
        while True:
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=1000)
            if not polled:
                break
            for records in polled.values():
                for rec in records:
                    if rec.key == self.name and rec.value:
                        newest = rec.value
            timeout_ms = 0
        if newest is None:
            return None
        self.version += 1
        return load(self.policy, newest, like=self.like)

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def bucket(k: int) -> int:
    """Candidate counts are padded to the next power of two (at least 8): few compilations."""
    return max(8, 1 << (k - 1).bit_length())


class Reranker:
    """Rank requests with a policy state; every choice comes with its exact propensity."""

    def __init__(self, policy: Policy, state: Any) -> None:
        self.policy = policy
        self.state = state

        @partial(jax.jit, static_argnames=("slate_size",))
        def _rank_many(
            state: Any,
            ctx: jax.Array,
            feats: jax.Array,
            ids: jax.Array,
            mask: jax.Array,
            keys: jax.Array,
            *,
            slate_size: int,
        ) -> tuple[jax.Array, jax.Array]:
            def one(
                c: jax.Array, f: jax.Array, i: jax.Array, m: jax.Array, k: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
                r = policy.rank(state, c, Candidates(f, i), m, key=k, slate_size=slate_size)
                return r.order, r.propensity

            return jax.vmap(one)(ctx, feats, ids, mask, keys)

        self._rank_many = _rank_many

    def rank_many(
        self,
        context: npt.NDArray[np.float32],
        features: npt.NDArray[np.float32],
        ids: npt.NDArray[np.int32],
        *,
        slate_size: int,
        key: jax.Array,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Rank ``n`` requests of ``k`` candidates each; returns ``(shown (n, s), propensity (n, s))``."""
        n, k, _ = features.shape
        kb, nb = bucket(k), bucket(n)  # pad both axes: one compilation per bucket, not per size
        mask = np.zeros((nb, kb), bool)
        mask[:, :k] = True
        feats = np.zeros((nb, kb, features.shape[2]), np.float32)
        feats[:n, :k] = features
        ctx = np.zeros((nb, context.shape[1]), np.float32)
        ctx[:n] = context
        idp = np.zeros((nb, kb), np.int32)
        idp[:n, :k] = ids
        keys = jax.random.split(key, nb)
        order, prop = self._rank_many(
            self.state,
            jnp.asarray(ctx),
            jnp.asarray(feats),
            jnp.asarray(idp),
            jnp.asarray(mask),
            keys,
            slate_size=slate_size,
        )
        return np.asarray(order, np.int64)[:n], np.asarray(prop, np.float64)[:n]
