"""Reward models on simulated plays: log loss, AUC, ECE and update throughput vs River and sklearn.

Run: ``/tmp/venv/bin/python -m benchmarks rewards [--quick] --out /tmp/bench-rewards``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from rewards.features import interaction_features
from rewards.session import HISTORY_DIM, history_entries, push_history, slate_history
from rewards.types import Outcomes
from streaming.simulator import SimConfig, Simulator


class SimBatch(NamedTuple):
    """Heard plays of a chunk of requests, flattened in (request, position) order."""

    outcomes: Outcomes  # with track_id and history
    user_id: np.ndarray  # (m,)
    p_stream30: np.ndarray  # (m,) true P(stream >= 30 s) of each play
    prev_skipped: np.ndarray  # (m,)


class SimStream:
    """Simulated plays under the logging policy, with per-listener play histories.

    Each call to :meth:`next` draws requests, logs slates, plays them and returns the heard plays
    with features (:func:`rewards.features.interaction_features`), track ids and the history of
    each listener's previous ``history_len`` plays (earlier requests, then earlier slate
    positions), as the daemon would keep it.
    """

    def __init__(self, config: SimConfig, *, slate_size: int = 5, history_len: int = 8) -> None:
        self.sim = Simulator(config)
        self.slate_size = slate_size
        self.buffer = np.zeros((config.n_users, history_len, HISTORY_DIM), np.float32)

    def next(self, n_requests: int) -> SimBatch:
        sim = self.sim
        req = sim.requests(n_requests)
        slates = sim.log_slates(req, self.slate_size)
        plays = sim.play(req, slates.shown)
        n, s = plays.heard.shape
        entries = history_entries(plays.ms_played, np.maximum(plays.duration_ms, 1),
                                  plays.reason_end, plays.censored, plays.saved, plays.heard)
        hist = slate_history(self.buffer[req.user_id], entries)  # (n, s, h, e)
        heard = plays.heard.reshape(-1)
        order_users = np.repeat(req.user_id, s)[heard]
        self.buffer = push_history(self.buffer, order_users, entries.reshape(n * s, -1)[heard])

        def flat(a: np.ndarray) -> np.ndarray:
            return a.reshape(n * s, *a.shape[2:])[heard]

        track = flat(plays.track_id)
        user = np.repeat(req.context, s, axis=0)[heard]
        position = flat(plays.position)
        x = interaction_features(user, sim.world.track_features[track], position)
        m = int(heard.sum())
        outcomes = Outcomes(
            features=x,
            ms_played=flat(plays.ms_played),
            duration_ms=flat(plays.duration_ms),
            reason_end=flat(plays.reason_end),
            saved=flat(plays.saved),
            position=position.astype(np.int32),
            censored=flat(plays.censored),
            mask=np.ones(m, bool),
            track_id=track,
            history=flat(hist),
        )
        return SimBatch(outcomes, order_users, flat(plays.p_stream30), flat(plays.prev_skipped))


def run(ctx: Any) -> list[dict[str, Any]]:  # filled in below
    raise NotImplementedError
