"""Re-ranking: follow the newest policy snapshot and rank candidates with exact propensities.

``SnapshotFollower`` reads the compacted snapshots topic (no consumer group: it always reads the
whole, small topic and keeps the newest snapshot per policy). ``Reranker`` ranks one request
(``jax.jit(policy.rank)`` on numpy inputs) or a batch (the same, vmapped over requests) with the
policy's serving form of the state (``policy.prepare``); one compilation per candidate-count
bucket and slate size.
"""

from __future__ import annotations

import copy
import logging
from functools import partial
from typing import Any

import jax
import numpy as np
import numpy.typing as npt

from bandits import Candidates, Policy, load, pad
from bandits.slates import bucket
from streaming.config import Config
from streaming.kafka.clients import TopicPartition, make_consumer

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


class Reranker:
    """Rank requests with a policy state; every choice comes with its exact propensity.

    One request (:meth:`rank`) goes through ``jax.jit(policy.rank)`` with numpy inputs and
    numpy results (no padding of the request axis, no host-side JAX operations); a batch
    (:meth:`rank_many`) through the same ``rank`` vmapped over requests. Candidate counts are
    padded to ``bandits.slates.bucket`` sizes (``bandits.pad``), so each axis compiles once per bucket and slate size.

    The state is ranked through ``policy.prepare(state)``, the policy's serving form of it
    (for the linear policies a packed, symmetrised projection of the covariance that a request
    reads in a quarter of the memory; the identity for the others). It is derived once per
    state, here, and never stored: snapshots and checkpoints keep the raw state.

    Args:
        policy: the policy that produced ``state``.
        state: its state (e.g. the newest snapshot, or ``policy.init(d_user, d_track)``).

    Example:
        >>> import jax, numpy as np
        >>> from bandits import POLICIES
        >>> p = POLICIES["linucb"](n_ids=0)
        >>> r = Reranker(p, p.init(2, 3))
        >>> order, prop = r.rank(np.ones(2, np.float32), np.ones((5, 3), np.float32),
        ...                      np.arange(5, dtype=np.int32), slate_size=2, key=jax.random.key(0))
        >>> order.shape, prop.dtype
        ((2,), dtype('float64'))
    """

    def __init__(self, policy: Policy, state: Any) -> None:
        self.policy = policy
        self._states: tuple[Any, Any] = (state, jax.block_until_ready(policy.prepare(state)))

        @partial(jax.jit, static_argnames=("slate_size",))
        def _rank_one(
            serving: Any,
            ctx: jax.Array,
            feats: jax.Array,
            ids: jax.Array,
            mask: jax.Array,
            key: jax.Array,
            index: jax.Array,
            *,
            slate_size: int,
        ) -> tuple[jax.Array, jax.Array]:
            # fold_in inside the jitted call: outside it is a separate dispatch per request.
            k = jax.random.fold_in(key, index)
            r = policy.rank(
                serving, ctx, Candidates(feats, ids), mask, key=k, slate_size=slate_size
            )
            return r.order, r.propensity

        @partial(jax.jit, static_argnames=("slate_size",))
        def _rank_many(
            serving: Any,
            ctx: jax.Array,
            feats: jax.Array,
            ids: jax.Array,
            mask: jax.Array,
            key: jax.Array,
            *,
            slate_size: int,
        ) -> tuple[jax.Array, jax.Array]:
            def one(
                c: jax.Array, f: jax.Array, i: jax.Array, m: jax.Array, k: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
                r = policy.rank(serving, c, Candidates(f, i), m, key=k, slate_size=slate_size)
                return r.order, r.propensity

            keys = jax.random.split(key, ctx.shape[0])
            return jax.vmap(one)(ctx, feats, ids, mask, keys)

        self._rank_one = _rank_one
        self._rank_many = _rank_many

    @property
    def state(self) -> Any:
        """The raw policy state requests are ranked with (setting it re-derives the serving form)."""
        return self._states[0]

    @state.setter
    def state(self, state: Any) -> None:
        # One tuple, swapped whole: a concurrent request sees the old pair or the new pair.
        self._states = (state, jax.block_until_ready(self.policy.prepare(state)))

    @property
    def serving_state(self) -> Any:
        """``policy.prepare(state)``: what requests are actually ranked with."""
        return self._states[1]

    def with_state(self, state: Any) -> Reranker:
        """A re-ranker for ``state`` sharing this one's compiled functions (``self`` unchanged)."""
        fresh = copy.copy(self)
        fresh.state = state
        return fresh

    def rank(
        self,
        context: npt.NDArray[np.float32],
        features: npt.NDArray[np.float32],
        ids: npt.NDArray[np.int32],
        *,
        slate_size: int,
        key: jax.Array,
        index: int = 0,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Rank one request of ``k`` candidates.

        Args:
            context: ``(d_user,)`` float32 user context.
            features: ``(k, d_track)`` float32 candidate features.
            ids: ``(k,)`` int32 candidate (hashed track) ids.
            slate_size: how many to show (``1 <= slate_size <= k``).
            key: a PRNG key; the request's randomness is ``fold_in(key, index)``.
            index: the request's number (a service folds its request counter in here).

        Returns:
            ``(shown (s,) int64 indices into the candidates, propensity (s,) float64)``.
        """
        cands, mask = pad(features, ids)
        order, prop = self._rank_one(
            self._states[1],
            np.asarray(context, np.float32),
            cands.features,
            cands.ids,
            mask,
            key,
            np.uint32(index),
            slate_size=slate_size,
        )
        return np.asarray(order).astype(np.int64), np.asarray(prop).astype(np.float64)

    def rank_many(
        self,
        context: npt.NDArray[np.float32],
        features: npt.NDArray[np.float32],
        ids: npt.NDArray[np.int32],
        *,
        slate_size: int,
        key: jax.Array,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Rank ``n`` requests of ``k`` candidates each (request ``i`` uses ``split(key, nb)[i]``,
        ``nb`` the padded request count); returns ``(shown (n, s), propensity (n, s))``."""
        n, k, _ = features.shape
        nb = bucket(n)  # pad both axes: one compilation per bucket, not per size
        cands, mask = pad(  # padded requests too: every row has candidates
            _padded(features, (nb, k, features.shape[2]), np.float32),
            _padded(ids, (nb, k), np.int32),
        )
        order, prop = self._rank_many(
            self._states[1],
            _padded(context, (nb, context.shape[1]), np.float32),
            cands.features,
            cands.ids,
            mask,
            key,
            slate_size=slate_size,
        )
        return np.asarray(order, np.int64)[:n], np.asarray(prop, np.float64)[:n]


def _padded(a: npt.NDArray[Any], shape: tuple[int, ...], dtype: type[Any]) -> npt.NDArray[Any]:
    """``a`` in the leading corner of zeros of ``shape`` (padding to a compiled bucket)."""
    out = np.zeros(shape, dtype)
    out[tuple(slice(0, n) for n in a.shape)] = a
    return out
