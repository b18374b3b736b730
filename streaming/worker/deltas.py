"""Scale-out: workers of one group exchange the additive statistics of a linear policy.

Each worker learns from the partitions it owns and accumulates what it learned as a
``bandits.linear.LinearDelta``. At every checkpoint the delta is *sealed* with the worker's next
sequence number, written into the checkpoint, and then published to the deltas topic (keyed by
worker id). Every worker folds in the deltas of the others with ``bandits.linear.merge``,
remembering in its own checkpointed state the newest sequence folded in per worker, so a delta
published twice (a crash between the checkpoint and the send) is folded in once, and a delta
never sealed (a crash before the checkpoint) is learned again from the replayed events.

The wire format is not pickle: a 4-byte header length, a JSON header (worker, sequence, policy
name and version, lineage) and an ``.npz`` read with ``allow_pickle=False``.

Worker ids must differ within a group: a worker skips every delta that carries its own id, so two
workers sharing one would never fold in each other's statistics. The ``lineage`` catches that. It
is a random id a worker draws, with the time it was born, when it starts without a checkpoint,
and keeps in every checkpoint after, so it survives restarts (a checkpoint written before
lineages existed gets one derived from the host, the checkpoint directory and the worker id, the
same on every restart until a checkpoint stores it). Each delta carries its lineage and the time it
was sent: one with a worker's own id, another lineage, sent after this lineage was born, is some
other live worker's, and the worker stops with :class:`WorkerIdConflictError` instead of learning
a policy that is silently not the group's. One sent before is this id's past (a worker that lost
its checkpoints and started again), skipped like every delta of its own.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any, NamedTuple

import numpy as np

from bandits import linear

FORMAT = "encore.delta/1"


class WorkerIdConflictError(RuntimeError):
    """A delta carries this worker's id but another lineage: the id is not this worker's alone."""


class Delta(NamedTuple):
    worker: str
    seq: int
    policy: str
    version: int
    stats: linear.LinearDelta
    lineage: str | None = None  # None: written before deltas carried one
    created_ms: int | None = None  # when it was sent (wall clock); None: before deltas had one


def encode(
    worker: str,
    seq: int,
    policy: str,
    version: int,
    stats: linear.LinearDelta,
    lineage: str | None = None,
    created_ms: int | None = None,
) -> bytes:
    fields: dict[str, Any] = {
        "format": FORMAT,
        "worker": worker,
        "seq": seq,
        "policy": policy,
        "version": version,
    }
    if lineage is not None:
        fields["lineage"] = lineage
    if created_ms is not None:
        fields["created_ms"] = created_ms
    header = json.dumps(fields).encode()
    buf = io.BytesIO()
    arrays: dict[str, Any] = {k: np.asarray(v) for k, v in stats._asdict().items()}
    savez: Any = np.savez
    savez(buf, **arrays)
    return struct.pack("<I", len(header)) + header + buf.getvalue()


def decode(data: bytes) -> Delta:
    """Parse a published delta.

    Raises:
        ValueError: not an encore delta, another format version, or a damaged payload.
    """
    if len(data) < 4:
        raise ValueError("delta message too short")
    (h,) = struct.unpack("<I", data[:4])
    try:
        header: dict[str, Any] = json.loads(data[4 : 4 + h])
    except ValueError as exc:
        raise ValueError(f"delta header is not JSON: {exc}") from exc
    if header.get("format") != FORMAT:
        raise ValueError(f"delta format {header.get('format')!r} is not {FORMAT!r}")
    with np.load(io.BytesIO(data[4 + h :]), allow_pickle=False) as z:
        stats = linear.delta_from({f: z[f] for f in z.files})
    return Delta(
        str(header["worker"]),
        int(header["seq"]),
        str(header["policy"]),
        int(header["version"]),
        stats,
        None if header.get("lineage") is None else str(header["lineage"]),
        None if header.get("created_ms") is None else int(header["created_ms"]),
    )


def check_own(d: Delta, worker: str, lineage: str, born_ms: int, topic: str) -> None:
    """Raise :class:`WorkerIdConflictError` if ``d`` carries ``worker``'s id but was sent by
    another live worker: another lineage, sent at or after ``born_ms`` (or at an unknown time)."""
    if (
        d.worker == worker
        and d.lineage is not None
        and d.lineage != lineage
        and (d.created_ms is None or d.created_ms >= born_ms)
    ):
        raise WorkerIdConflictError(
            f"delta {d.seq} on {topic} carries this worker's id {worker!r} but lineage "
            f"{d.lineage}, not this worker's {lineage}: two workers of the group share "
            "scale.worker_id (or this worker lost the checkpoints it published from); give each "
            "worker its own scale.worker_id"
        )
