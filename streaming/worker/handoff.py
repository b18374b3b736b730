"""Moving one partition's open join windows from one worker to another, through Kafka.

Why one long module: what a partition record holds, how it is encoded, and the rules that
decide whose record a new owner installs (``choose``, ``take_over``, ``beyond``) are read
together whenever one of them changes.

A partition number ``p`` of the co-partitioned impressions and outcomes topics owns, in a worker's
state, a join buffer (open impressions, outcomes waiting for them, recently closed keys,
watermarks, counters), the side-table rows its open impressions and outcomes refer to, its
listeners' recent plays (with a reward model that reads them), and the next offset to read on
both topics. All of that moves with ``p`` between workers through the
compacted handoff topic (keyed by group and partition number): a worker publishes a *partition
record* of every partition it holds with every checkpoint, after the checkpoint file is durable
and before its offsets are committed, and the new owner installs the newest record it finds. So
whenever a worker stops, cleanly or killed at any instant, the newest record of each of its
partitions is at least as far as the committed offsets, and no window is stranded.

Which state of ``p`` is the newest is decided by its offsets: a later state of a partition has
read at least as far on both topics. The committed group offsets are a floor: they are written
only after a checkpoint and its records, so a candidate behind them is older than some worker's
learned state, and installing it would count events twice; the partition then starts fresh at
the committed offsets instead (its open windows are lost and counted). Each record and each
commit names the worker's lineage and checkpoint sequence, which settles the one case offsets
cannot: a worker whose newest checkpoint was damaged resumes from an older one, and what it
published or committed after that older one is void (``beyond``), for itself and for whoever
takes its partitions, so the events are read again rather than skipped.

Everything here is pure and works on numpy arrays; ``streaming.worker.handoff_topic`` does the Kafka I/O.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, Final, NamedTuple

import jax
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from streaming import join
from streaming.core import (
    History,
    Plays,
    Side,
    WorkerState,
    concat_side,
    history_from_arrays,
    plays_from_arrays,
)
from streaming.events import ImpressionBatch
from streaming.worker import checkpoint

__all__ = [
    "FORMAT",
    "Commit",
    "PartitionRecord",
    "TakeOver",
    "beyond",
    "choose",
    "commit_metadata",
    "commit_void",
    "decode",
    "encode",
    "extract",
    "install",
    "key",
    "lost_offsets",
    "newer",
    "parse_commit_metadata",
    "read_from_beginning",
    "take_over",
    "without",
]

FORMAT: Final = "encore.partition/1"
_ZSTD: Final = b"ENCZSTD1"  # first bytes of a zstd-compressed record (zlib ones are read too)
_MAX_RAW_BYTES: Final = 1 << 34  # refuse to inflate a damaged length beyond 16 GiB


class PartitionRecord(NamedTuple):
    """One partition's share of a worker's state, with the offsets it has read to."""

    partition: int
    impressions_offset: int | None  # next offset to read on the impressions topic
    outcomes_offset: int | None  # ... and on the outcomes topic
    join: join.JoinState | None  # None: nothing of this partition was ever buffered
    side: Side  # rows of the open impressions, payload ids as in ``join``
    plays: Plays  # rows of the outcomes ``join`` still holds
    worker: str  # who published it (for logs)
    lineage: str = ""  # the publishing worker's lineage ("": unknown)
    sequence: int = 0  # the checkpoint of that lineage this state was written with (0: unknown)
    history: History | None = None  # its listeners' recent plays (a model that reads them)

    @property
    def offsets(self) -> tuple[int, int]:
        return (self.impressions_offset or 0, self.outcomes_offset or 0)


def key(group: str, partition: int) -> bytes:
    """The handoff topic's message key: one live record per group and partition number."""
    return f"{group}/{partition}".encode()


def _tree_take(t: Any, keep: npt.NDArray[Any]) -> Any:
    def take(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return x[keep]

    return jax.tree.map(take, t)


def _tree_concat(a: Any, b: Any) -> Any:
    def cat(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return np.concatenate([x, y])

    return jax.tree.map(cat, a, b)


def _owned(state: WorkerState, p: int) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Masks of the side and plays rows partition ``p``'s join refers to."""
    js = state.join.get(p)
    if js is None:
        return np.zeros(state.side.payload.size, bool), np.zeros(state.plays.payload.size, bool)
    imp, out = join.live_payloads(js)
    return np.isin(state.side.payload, imp), np.isin(state.plays.payload, out)


def extract(
    state: WorkerState,
    p: int,
    topics: tuple[str, str],
    worker: str,
    *,
    lineage: str = "",
    sequence: int = 0,
) -> PartitionRecord:
    """Partition ``p``'s share of ``state`` (copied out; ``state`` is not changed).

    Args:
        state: the worker's state.
        p: the partition number.
        topics: the impressions and outcomes topic names (the offsets' keys).
        worker: the publishing worker's id.
        lineage: the worker's lineage.
        sequence: the checkpoint ``state`` was written with.
    """
    side_rows, play_rows = _owned(state, p)
    return PartitionRecord(
        partition=p,
        impressions_offset=state.offsets.get((topics[0], p)),
        outcomes_offset=state.offsets.get((topics[1], p)),
        join=state.join.get(p),
        side=_tree_take(state.side, side_rows),
        plays=_tree_take(state.plays, play_rows),
        worker=worker,
        lineage=lineage,
        sequence=sequence,
        history=state.history.get(p),
    )


def without(state: WorkerState, partitions: Iterable[int], topics: tuple[str, str]) -> WorkerState:
    """``state`` with everything of ``partitions`` removed (join, side rows, offsets)."""
    drop = set(partitions)
    if not drop:
        return state
    side_keep = np.ones(state.side.payload.size, bool)
    plays_keep = np.ones(state.plays.payload.size, bool)
    for p in drop:
        s, o = _owned(state, p)
        side_keep &= ~s
        plays_keep &= ~o
    return state._replace(
        join={p: js for p, js in state.join.items() if p not in drop},
        side=_tree_take(state.side, side_keep),
        plays=_tree_take(state.plays, plays_keep),
        offsets={
            tp: o for tp, o in state.offsets.items() if not (tp[0] in topics and tp[1] in drop)
        },
        history={p: h for p, h in state.history.items() if p not in drop},
    )


def install(state: WorkerState, record: PartitionRecord, topics: tuple[str, str]) -> WorkerState:
    """``state`` with partition ``record.partition`` replaced by the record's.

    Payload ids are worker-local: the record's are renumbered from ``state.next_payload`` on, in
    their order, so the side tables stay sorted by payload.
    """
    p = record.partition
    state = without(state, [p], topics)
    offsets = dict(state.offsets)
    for topic, offset in zip(
        topics, (record.impressions_offset, record.outcomes_offset), strict=True
    ):
        if offset is not None:
            offsets[(topic, p)] = offset
    if record.history is not None:
        state = state._replace(history={**state.history, p: record.history})
    if record.join is None:
        return state._replace(offsets=offsets)
    js = record.join
    old = np.unique(
        np.concatenate(
            [
                js.open_payload,
                js.joined_payload,
                js.pending_payload,
                record.side.payload,
                record.plays.payload,
            ]
        )
    )
    base = state.next_payload

    def renumber(payload: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return (base + np.searchsorted(old, payload)).astype(np.int64)

    js = js._replace(
        open_payload=renumber(js.open_payload),
        joined_payload=renumber(js.joined_payload),
        pending_payload=renumber(js.pending_payload),
    )
    side = record.side._replace(payload=renumber(record.side.payload))
    plays = record.plays._replace(payload=renumber(record.plays.payload))
    return state._replace(
        join={**state.join, p: js},
        side=concat_side(state.side, side),
        plays=_tree_concat(state.plays, plays),
        offsets=offsets,
        next_payload=base + int(old.size),
    )


def newer(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """True when offsets ``a`` are ahead of ``b``: at least as far on both topics, and not equal."""
    return a[0] >= b[0] and a[1] >= b[1] and a != b


class Commit(NamedTuple):
    """A partition's committed group offsets and the checkpoint they were committed after."""

    offsets: tuple[int | None, int | None]  # impressions, outcomes
    lineage: str = ""  # the committing worker's lineage ("": unknown, e.g. another tool)
    sequence: int = 0  # its checkpoint's sequence


def commit_metadata(lineage: str, sequence: int) -> str:
    """The metadata string a worker commits its offsets with (``parse_commit_metadata``)."""
    return f"encore/{lineage}/{sequence}"


def parse_commit_metadata(metadata: str | None) -> tuple[str, int]:
    """``(lineage, sequence)`` from ``commit_metadata``'s string; ``("", 0)`` for any other."""
    parts = (metadata or "").split("/")
    if len(parts) == 3 and parts[0] == "encore" and parts[2].isdigit():
        return parts[1], int(parts[2])
    return "", 0


def beyond(lineage: str, sequence: int, durable: tuple[str, int]) -> bool:
    """True when ``(lineage, sequence)`` is a checkpoint of the lineage ``durable`` names past
    the newest of its checkpoints whose learning survives (``durable[1]``): state that was
    learned, then lost with a damaged or missing checkpoint, and that nobody may build on."""
    return bool(lineage) and lineage == durable[0] and sequence > durable[1]


def commit_void(
    commit: Commit, chosen: PartitionRecord | None, durable: tuple[str, int] = ("", 0)
) -> bool:
    """True when ``commit`` was made after a checkpoint whose learning is lost: one of the calling
    worker's lineage past its surviving checkpoint ``durable``, or one of ``chosen``'s lineage
    past ``chosen`` (that worker fell back to ``chosen`` and published it again). Such offsets
    are no floor, and not a place to resume reading from either."""
    if beyond(commit.lineage, commit.sequence, durable):
        return True
    return chosen is not None and beyond(
        commit.lineage, commit.sequence, (chosen.lineage, chosen.sequence)
    )


def read_from_beginning(
    commit: Commit | None, published: PartitionRecord | None, durable: tuple[str, int]
) -> bool:
    """Whether a topic of a partition that the state never read must be read from its beginning:
    its committed offset is one of a lost checkpoint (``commit_void``), so the state that made
    it is gone, and the state that survives would have read from the beginning."""
    if commit is None or commit.offsets == (None, None):
        return False
    if published is not None and beyond(published.lineage, published.sequence, durable):
        published = None
    return commit_void(commit, published, durable)


def lost_offsets(
    held: Iterable[int],
    published: Mapping[int, PartitionRecord],
    committed: Mapping[int, Commit],
    durable: tuple[str, int],
) -> dict[int, tuple[int, int]]:
    """For each held partition that a lost checkpoint of this lineage had moved further (its
    records or its commit are beyond ``durable``), the furthest offsets it reached on each topic:
    the events between the surviving checkpoint and those are read again."""
    lost: dict[int, tuple[int, int]] = {}
    for p in held:
        ahead: list[tuple[int, int]] = []
        rec = published.get(p)
        if rec is not None and beyond(rec.lineage, rec.sequence, durable):
            ahead.append(rec.offsets)
        c = committed[p]
        if beyond(c.lineage, c.sequence, durable):
            ahead.append((c.offsets[0] or 0, c.offsets[1] or 0))
        if ahead:
            lost[p] = (max(a[0] for a in ahead), max(a[1] for a in ahead))
    return lost


def choose(
    local: PartitionRecord | None,
    remote: PartitionRecord | None,
    committed: tuple[int | None, int | None] | Commit,
    durable: tuple[str, int] = ("", 0),
) -> tuple[str, PartitionRecord | None]:
    """Which state of a partition to run: ``("local" | "remote" | "fresh" | "none", record)``.

    The newest of the local and the published state wins (the local one on a tie: it is the same
    state, already installed). If the committed offsets are ahead of the winner, the winner is
    older than a learned state somewhere and would count events twice: ``"fresh"`` (start at the
    committed offsets with an empty window). ``"none"``: nobody holds anything, read from the
    committed offsets or the beginning.

    ``durable`` is ``(lineage, sequence)`` of the calling worker's newest checkpoint whose
    learning survives: a published record or a commit of that lineage made after a later
    checkpoint (lost to damage, so its learning is gone) is not a candidate and not a floor; the
    worker reads those events again. A commit of the winner's own lineage made after a later
    checkpoint than the winner's is void too: that worker fell back to the winner's state and
    published it again.
    """
    commit = committed if isinstance(committed, Commit) else Commit(committed)
    if remote is not None and beyond(remote.lineage, remote.sequence, durable):
        remote = None
    best: tuple[str, PartitionRecord | None] = ("none", None)
    if local is not None:
        best = ("local", local)
    if remote is not None and (local is None or newer(remote.offsets, local.offsets)):
        best = ("remote", remote)
    held = best[1]
    if commit_void(commit, held, durable):
        return best
    floor = (commit.offsets[0] or 0, commit.offsets[1] or 0)
    at = held.offsets if held is not None else (0, 0)
    if floor[0] > at[0] or floor[1] > at[1]:
        return "fresh", held
    return best


class TakeOver(NamedTuple):
    """What :func:`take_over` did to a worker's state for a new assignment."""

    state: WorkerState
    installed: list[PartitionRecord]  # partitions taken over with another worker's windows
    fresh: list[tuple[int, PartitionRecord | None, tuple[int | None, int | None]]]
    # ^ (partition, the newest state found, the committed offsets it was behind): started fresh


def take_over(
    state: WorkerState,
    partitions: Iterable[int],
    held_before: set[int],
    published: Mapping[int, PartitionRecord],
    committed: Mapping[int, tuple[int | None, int | None] | Commit],
    topics: tuple[str, str],
    worker: str,
    *,
    durable: tuple[str, int] = ("", 0),
) -> TakeOver:
    """Keep, take over or start each of ``partitions`` (the new assignment), drop the others.

    ``held_before``: the partitions ``state`` holds anything of; ``published``: the newest
    handoff record of each assigned partition; ``committed``: each one's committed offsets (the
    floor, see :func:`choose`); ``durable``: the worker's lineage and the newest checkpoint of it
    whose learning survives (the local state is that checkpoint's or newer). A partition started
    fresh is counted in the state's ``partitions_started_fresh`` counter.
    """
    numbers = set(partitions)
    state = without(state, held_before - numbers, topics)
    installed: list[PartitionRecord] = []
    fresh: list[tuple[int, PartitionRecord | None, tuple[int | None, int | None]]] = []
    for p in sorted(numbers):
        found = committed.get(p, (None, None))
        commit = found if isinstance(found, Commit) else Commit(found)
        floor = commit.offsets
        local = (
            extract(state, p, topics, worker, lineage=durable[0], sequence=durable[1])
            if p in held_before
            else None
        )
        how, record = choose(local, published.get(p), commit, durable)
        if how == "remote" and record is not None:
            state = install(state, record, topics)
            installed.append(record)
        elif how == "fresh":
            state = without(state, [p], topics)
            state = state._replace(
                offsets={
                    **state.offsets,
                    **{(t, p): int(o) for t, o in zip(topics, floor, strict=True) if o is not None},
                }
            )
            fresh.append((p, record, floor))
    if fresh:
        n = state.counters.get("partitions_started_fresh", 0) + len(fresh)
        state = state._replace(counters={**state.counters, "partitions_started_fresh": n})
    return TakeOver(state, installed, fresh)


# ---------------------------------------------------------------------------------- bytes
def encode(record: PartitionRecord, group: str, created_ms: int) -> bytes:
    """The record as a checksummed, zstd-compressed checkpoint-format message (no pickle).

    ``_ZSTD`` then the uncompressed length (uint64 little-endian), then one zstd frame (level 1,
    through pyarrow: zstd's fast levels compress far faster than zlib's fastest, and a record
    goes out with every checkpoint). ``decode`` also reads zlib-compressed records."""
    arrays: dict[str, np.ndarray] = {}
    if record.join is not None:
        arrays.update({f"join/{k}": v for k, v in join.to_arrays(record.join).items()})
    arrays.update({f"side/{k}": v for k, v in record.side._asdict().items() if k != "log"})
    arrays.update({f"side/log/{k}": v for k, v in record.side.log._asdict().items()})
    arrays.update({f"plays/{k}": v for k, v in record.plays._asdict().items()})
    if record.history is not None:
        arrays.update({f"history/{k}": v for k, v in record.history._asdict().items()})
    header = {
        "format": FORMAT,
        "group": group,
        "partition": record.partition,
        "impressions_offset": record.impressions_offset,
        "outcomes_offset": record.outcomes_offset,
        "worker": record.worker,
        "lineage": record.lineage,
        "lineage_sequence": record.sequence,
        "has_join": record.join is not None,
    }
    raw = checkpoint.encode(arrays, header, created_at_ms=created_ms)
    packed = pa.Codec("zstd", compression_level=1).compress(raw, asbytes=True)
    return _ZSTD + struct.pack("<Q", len(raw)) + packed


def decode(value: bytes, where: str) -> PartitionRecord:
    """A record from ``encode``'s bytes.

    Raises:
        checkpoint.CheckpointError: damaged bytes or another format.
    """
    try:
        if value[: len(_ZSTD)] == _ZSTD:
            (size,) = struct.unpack_from("<Q", value, len(_ZSTD))
            if size > _MAX_RAW_BYTES:
                raise ValueError(f"an uncompressed length of {size:,} bytes")
            body = value[len(_ZSTD) + 8 :]
            raw = pa.Codec("zstd").decompress(body, decompressed_size=size, asbytes=True)
        else:
            raw = zlib.decompress(value)
    except (zlib.error, ValueError, OSError, struct.error, pa.ArrowException) as err:
        raise checkpoint.CheckpointCorruptError(f"{where}: not compressed data ({err})") from err
    arrays, header = checkpoint.decode(raw, where)
    if header.get("format") != FORMAT:
        raise checkpoint.CheckpointError(
            f"{where}: format {header.get('format')!r} is not {FORMAT!r}"
        )
    joined: Mapping[str, np.ndarray] = {
        k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("join/")
    }
    return PartitionRecord(
        partition=int(header["partition"]),
        impressions_offset=header["impressions_offset"],
        outcomes_offset=header["outcomes_offset"],
        join=join.from_arrays(joined) if header["has_join"] else None,
        side=Side(
            **{f: arrays[f"side/{f}"] for f in Side._fields if f != "log"},
            log=ImpressionBatch(**{f: arrays[f"side/log/{f}"] for f in ImpressionBatch._fields}),
        ),
        plays=plays_from_arrays(arrays, "plays/"),
        worker=str(header["worker"]),
        lineage=str(header.get("lineage", "")),
        sequence=int(header.get("lineage_sequence", 0)),
        history=history_from_arrays(arrays, "history/"),
    )
