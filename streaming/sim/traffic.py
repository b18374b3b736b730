"""Simulated listeners on the wire: the simulator's requests, slates and plays as encore events.

This is what the demo, the tests and the benchmarks produce into Kafka. The simulator knows the
truth (``Plays.p_stream30``); the events carry only what a real client would log.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from streaming.events import (
    IMPRESSION_SCHEMA,
    IMPRESSION_SCHEMA_V2,
    OUTCOME_SCHEMA,
    FeatureEncoding,
    Impression,
    Outcome,
    encode,
)
from streaming.sim.simulator import REASONS, Plays, Requests


class Wire(NamedTuple):
    """One message to produce: topic role ("impressions" or "outcomes"), key, value, event time."""

    role: str
    key: bytes
    value: bytes
    ts_ms: int


def user_id(uid: int) -> str:
    return f"u{uid}"


def track_id(tid: int) -> str:
    return f"t{tid}"


def impressions(
    req: Requests,
    shown: npt.NDArray[np.int64],
    propensity: npt.NDArray[np.float64],
    *,
    policy: npt.NDArray[np.str_] | str,
    policy_version: str = "1",
    surface: str = "home",
    run_id: str = "sim",
    feature_encoding: FeatureEncoding = "float32",
) -> list[Impression]:
    """One impression event per request; request ids are ``{run_id}-{request_id}``.

    ``feature_encoding`` ``"float32"`` writes the features as base64 float32 strings (schema
    ``impression/2``), ``"json"`` as number arrays (``impression/1``); the simulator's features
    are float32, so both decode to the same batch.
    """
    n = req.candidates.shape[0]
    policies = np.broadcast_to(np.asarray(policy), (n,))
    ctx: list[list[float]] | list[bytes]
    feats: list[list[list[float]]] | list[bytes]
    if feature_encoding == "float32":  # little-endian float32 bytes; encode() writes base64
        schema = IMPRESSION_SCHEMA_V2
        ctx = [row.tobytes() for row in req.context.astype("<f4")]
        feats = [rows.tobytes() for rows in req.candidate_features.astype("<f4")]
    else:
        schema = IMPRESSION_SCHEMA
        ctx = req.context.tolist()
        feats = req.candidate_features.tolist()
    cands = req.candidates.tolist()
    out: list[Impression] = []
    for i in range(n):
        out.append(
            Impression(
                schema=schema,
                request_id=f"{run_id}-{int(req.request_id[i])}",
                user_id=user_id(int(req.user_id[i])),
                surface=surface,
                ts=int(req.t_ms[i]),
                context=ctx[i],
                candidates=[track_id(t) for t in cands[i]],
                candidate_features=feats[i],
                shown=[int(j) for j in shown[i]],
                propensities=[float(p) for p in propensity[i]],
                policy=str(policies[i]),
                policy_version=policy_version,
            )
        )
    return out


def outcomes(req: Requests, plays: Plays, *, run_id: str = "sim") -> list[Outcome]:
    """One outcome event per heard track, in event-time order within each request."""
    out: list[Outcome] = []
    rows, cols = np.nonzero(plays.heard)
    for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
        out.append(
            Outcome(
                schema=OUTCOME_SCHEMA,
                request_id=f"{run_id}-{int(req.request_id[i])}",
                user_id=user_id(int(req.user_id[i])),
                track_id=track_id(int(plays.track_id[i, j])),
                position=int(j),
                ts=int(plays.t_ms[i, j]),
                ms_played=int(plays.ms_played[i, j]),
                track_duration_ms=int(plays.duration_ms[i, j]),
                reason_end=REASONS[int(plays.reason_end[i, j])],
                saved=bool(plays.saved[i, j]),
            )
        )
    return out


def wire(impr: list[Impression], outs: list[Outcome]) -> Iterator[Wire]:
    """Encode events as keyed messages (key = user_id, so a user's events share a partition)."""
    for e in impr:
        yield Wire("impressions", e.user_id.encode(), encode(e), e.ts)
    for o in outs:
        yield Wire("outcomes", o.user_id.encode(), encode(o), o.ts)


class EventTimeRelease:
    """Holds outcome messages until simulated time reaches their event time.

    The simulator knows a whole slate's plays at request time; a real client sends each outcome
    when the play ends. Releasing by event time keeps the outcome stream in (near) event-time
    order, as it is in production.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Wire]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def hold(self, messages: Iterator[Wire] | list[Wire]) -> None:
        import heapq

        for w in messages:
            heapq.heappush(self._heap, (w.ts_ms, self._seq, w))
            self._seq += 1

    def release(self, now_ms: int | None = None) -> list[Wire]:
        """Messages with ``ts_ms <= now_ms`` in event-time order (all of them when None)."""
        import heapq

        out: list[Wire] = []
        while self._heap and (now_ms is None or self._heap[0][0] <= now_ms):
            out.append(heapq.heappop(self._heap)[2])
        return out
