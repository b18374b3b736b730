"""The track catalogue in memory: features by track id, updated live, never read half-written.

Tracks are known by ``key64`` of their id. A :class:`CatalogueView` is an immutable snapshot:
the sorted keys of the live tracks, the storage row of each, and references to the storage
arrays. One writer (the thread that follows the catalogue topic) applies batches of records
with :meth:`Catalogue.apply`; readers take :meth:`Catalogue.view` once per request or batch
and read only through it. A batch writes its vectors into storage rows no view points at yet
(storage is append-only between compactions), then publishes a new view in one reference
assignment, so a reader sees each track entirely as it was before the batch or entirely as
after, never a vector half-written, and never waits for a write.

Memory per live track: the features (``4 d_track`` bytes), the embedding version (4), the
duration (8), the stable slot (8) and the index (the key and its row, 16): ``4 d_track + 36``
bytes, 292 at 64 features. Storage is allocated for twice the rows it needs when it grows, and
rows that updates and withdrawals left behind are reclaimed by a compaction (a copy of the live
rows into new storage) once they outnumber the live ones, so between compactions storage holds
up to about twice the live rows (400 to 570 bytes per track at 64 features, measured); while a
compaction runs, the old storage lives on until no view holds it, so the peak is about three
times the live bytes.

Each track also carries a *slot*: a dense index the loader assigns once per track id and keeps
(``encore catalogue load``; a withdrawal by ``encore catalogue withdraw`` keeps it too), the same
in every process that reads the topic: an exact index for a per-track table, for consumers that
want one (the policies still hash track ids into theirs).
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

from streaming.events import key64

__all__ = [
    "BYTES_PER_TRACK_BASE",
    "TRACK_SCHEMA",
    "Catalogue",
    "CatalogueView",
    "TrackBatch",
    "TrackRecord",
    "decode_tracks",
    "encode_track",
    "encode_withdrawal",
]

F32 = npt.NDArray[np.float32]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
B = npt.NDArray[np.bool_]

BYTES_PER_TRACK_BASE = 36
"""Bytes per live track besides its ``4 d_track`` bytes of features (see the module docstring)."""


class TrackBatch(NamedTuple):
    """Catalogue records in topic order: an update per key, or a tombstone (``alive`` False)."""

    keys: U64  # (m,) key64 of the track ids
    alive: B  # (m,) False: a tombstone (the track is withdrawn)
    features: F32  # (m, d_track); rows of tombstones are ignored
    version: I32  # (m,) embedding version
    duration_ms: I64  # (m,) 0 when unknown
    slot: I64  # (m,) the track's stable dense index

    @staticmethod
    def empty(d_track: int) -> TrackBatch:
        return TrackBatch(
            np.zeros(0, np.uint64),
            np.zeros(0, bool),
            np.zeros((0, d_track), np.float32),
            np.zeros(0, np.int32),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
        )


class CatalogueView(NamedTuple):
    """An immutable snapshot of the catalogue (take one per request; see the module docstring)."""

    keys: U64  # (n,) sorted keys of the live tracks
    rows: I64  # (n,) storage row of each
    features: F32  # storage (rows not indexed here are not read through this view)
    version: I32  # storage: embedding version per row
    duration_ms: I64  # storage: duration per row
    slot: I64  # storage: stable slot per row
    generation: int  # batches applied before this view

    @property
    def size(self) -> int:
        """Live tracks."""
        return int(self.keys.shape[0])

    def find(self, keys: U64) -> tuple[I64, B]:
        """Each key's storage row (0 where unknown) and whether the catalogue knows it."""
        keys = np.asarray(keys, np.uint64)
        if self.keys.shape[0] == 0:
            return np.zeros(keys.shape, np.int64), np.zeros(keys.shape, bool)
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, self.keys.shape[0] - 1)
        known = self.keys[pos] == keys
        return np.where(known, self.rows[pos], 0), known

    def lookup(self, keys: U64) -> tuple[F32, I32, I64, B]:
        """``(features, version, slot, known)`` of each key; unknown keys get zeros and slot -1."""
        rows, known = self.find(keys)
        feats = self.features[rows]
        feats[~known] = 0.0
        return (
            feats,
            np.where(known, self.version[rows], 0).astype(np.int32),
            np.where(known, self.slot[rows], -1),
            known,
        )


def _last_per_key(keys: U64) -> I64:
    """Indices of the last occurrence of each distinct key, in key order."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    last = np.ones(sorted_keys.shape[0], bool)
    last[:-1] = sorted_keys[1:] != sorted_keys[:-1]
    return order[last]


class Catalogue:
    """The writer's side: applies batches and publishes views (one writer thread at a time).

    Args:
        d_track: features per track; a batch of another width is an error.
        capacity: storage rows allocated at first (it doubles as needed).
    """

    def __init__(self, d_track: int, capacity: int = 1024) -> None:
        if d_track < 1:
            raise ValueError(f"d_track must be positive, got {d_track}")
        self.d_track = d_track
        self._used = 0
        self.max_slot = -1  # the highest slot of any record applied (withdrawn tracks included)
        self._withdrawn: dict[int, int] = {}  # key -> slot of tracks withdrawn keeping their slot
        self.counts: Counter[str] = Counter()
        self._view = CatalogueView(
            np.zeros(0, np.uint64), np.zeros(0, np.int64), *self._storage(max(1, capacity)), 0
        )

    def _storage(self, rows: int) -> tuple[F32, I32, I64, I64]:
        return (
            np.zeros((rows, self.d_track), np.float32),
            np.zeros(rows, np.int32),
            np.zeros(rows, np.int64),
            np.zeros(rows, np.int64),
        )

    def view(self) -> CatalogueView:
        """The newest snapshot (an atomic read of one reference)."""
        return self._view

    def slot_of(self, keys: U64) -> I64:
        """Each key's slot, live or withdrawn by a slot-keeping record (-1: never seen)."""
        _, _, slot, known = self._view.lookup(keys)
        for i in np.flatnonzero(~known):
            slot[i] = self._withdrawn.get(int(keys[i]), -1)
        return slot

    @property
    def storage_bytes(self) -> int:
        """Bytes of the storage and index arrays the newest view holds."""
        v = self._view
        return int(
            v.features.nbytes
            + v.version.nbytes
            + v.duration_ms.nbytes
            + v.slot.nbytes
            + v.keys.nbytes
            + v.rows.nbytes
        )

    def apply(self, batch: TrackBatch) -> CatalogueView:
        """Apply records in topic order (the last record per key wins) and publish the result.

        Nothing is published, and nothing a view indexes is touched, until the new view is
        complete: an error part way (out of memory while compacting, say) leaves the catalogue
        as it was.
        """
        if batch.features.shape[1:] != (self.d_track,):
            raise ValueError(
                f"catalogue batch has {batch.features.shape[1:]} features per track, the "
                f"catalogue {self.d_track}"
            )
        old = self._view
        if batch.keys.shape[0] == 0:
            return old
        pick = _last_per_key(np.asarray(batch.keys, np.uint64))
        keys, alive = batch.keys[pick], batch.alive[pick]
        # Live tracks the batch does not touch keep their rows.
        _, touched = old.find(keys)
        keep = np.ones(old.keys.shape[0], bool)
        if touched.any():
            keep[np.searchsorted(old.keys, keys[touched])] = False
        live = int(keep.sum())
        new_keys, new_pick = keys[alive], pick[alive]
        m = int(new_keys.shape[0])
        store = (old.features, old.version, old.duration_ms, old.slot)
        used = self._used
        compacted = used + m > store[0].shape[0] or used > 2 * (live + m) + 1024
        if compacted:
            # New storage: the live rows kept, room for the new ones and to grow. The old
            # arrays stay as they are for the views that hold them.
            rows_kept = old.rows[keep]
            fresh = self._storage(max(1024, 2 * (live + m)))
            for dst, src in zip(fresh, store, strict=True):
                dst[:live] = src[rows_kept]
            store, used = fresh, live
            kept_rows = np.arange(live, dtype=np.int64)
        else:
            kept_rows = old.rows[keep]
        at = used + np.arange(m, dtype=np.int64)
        # Rows no view indexes yet: written in full before the view that indexes them exists.
        store[0][at] = batch.features[new_pick]
        store[1][at] = batch.version[new_pick]
        store[2][at] = batch.duration_ms[new_pick]
        store[3][at] = batch.slot[new_pick]
        all_keys = np.concatenate([old.keys[keep], new_keys])
        all_rows = np.concatenate([kept_rows, at])
        order = np.argsort(all_keys, kind="stable")
        view = CatalogueView(all_keys[order], all_rows[order], *store, old.generation + 1)
        # Publish: the view in one reference assignment, then the writer's own bookkeeping.
        self._view = view
        self._used = used + m
        seen = batch.slot[batch.slot >= 0]
        if seen.size:
            self.max_slot = max(self.max_slot, int(seen.max()))
        for key, slot, is_alive in zip(
            keys.tolist(), batch.slot[pick].tolist(), alive.tolist(), strict=True
        ):
            if is_alive:
                self._withdrawn.pop(key, None)
            elif slot >= 0:
                self._withdrawn[key] = slot
        self.counts["updated"] += int(touched[alive].sum())
        self.counts["added"] += int((~touched[alive]).sum())
        self.counts["withdrawn"] += int(touched[~alive].sum())
        self.counts["withdrawn_unknown"] += int((~touched[~alive]).sum())
        self.counts["compactions"] += int(compacted)
        return view


# ----------------------------------------------------------------------------- records
TRACK_SCHEMA = "track/1"


class TrackRecord(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A catalogue record's value (the key is the track id; a null value withdraws it).

    ``features`` is the base64 of ``d_track`` little-endian float32 values (as impression/2
    writes them) or a list of numbers. ``withdrawn`` withdraws the track but keeps its slot
    (a null value withdraws it and, once compaction removes its records, forgets the slot).
    """

    schema: str
    track_id: str
    slot: int
    embedding_version: int
    features: str | list[float]
    duration_ms: int = 0
    withdrawn: bool = False  # withdrawn, keeping its slot (features then empty)


_TRACK_DECODER = msgspec.json.Decoder(TrackRecord)
_TRACK_ENCODER = msgspec.json.Encoder()


def encode_track(
    track_id: str, slot: int, embedding_version: int, features: F32, duration_ms: int = 0
) -> bytes:
    """The value of a catalogue record (base64 float32 features)."""
    vec = np.asarray(features, "<f4").reshape(-1)
    return _TRACK_ENCODER.encode(
        TrackRecord(
            TRACK_SCHEMA,
            track_id,
            int(slot),
            int(embedding_version),
            base64.b64encode(vec.tobytes()).decode(),
            int(duration_ms),
        )
    )


def encode_withdrawal(track_id: str, slot: int) -> bytes:
    """The value of a record that withdraws a track and keeps its slot."""
    return _TRACK_ENCODER.encode(TrackRecord(TRACK_SCHEMA, track_id, int(slot), 0, "", 0, True))


def _track_vector(rec: TrackRecord, d_track: int) -> F32:
    if isinstance(rec.features, str):
        try:
            raw = base64.b64decode(rec.features, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"features are not standard base64: {exc}") from None
        if len(raw) != 4 * d_track:
            raise ValueError(f"features hold {len(raw)} bytes, not 4 x {d_track}")
        vec = np.frombuffer(raw, "<f4").astype(np.float32)
    else:
        if len(rec.features) != d_track:
            raise ValueError(f"features hold {len(rec.features)} values, not {d_track}")
        vec = np.asarray(rec.features, np.float64)
        if np.isfinite(vec).all() and np.abs(vec).max(initial=0.0) > np.finfo(np.float32).max:
            raise ValueError("a feature is beyond float32's range")
        vec = vec.astype(np.float32)
    if not np.isfinite(vec).all():
        raise ValueError("a feature is NaN or infinite")
    return vec


def decode_tracks(
    records: Sequence[tuple[bytes | None, bytes | None]],
    d_track: int,
    max_norm: float = float("inf"),
) -> tuple[TrackBatch, list[tuple[int, str]]]:
    """Catalogue records ``(key, value)`` in topic order as a batch, and ``(index, reason)`` of
    each record refused (no key, not a ``track/1`` record, a key other than its track id,
    features of another width, non-finite or longer than ``max_norm``, a negative slot or
    version)."""
    keys: list[str] = []
    alive: list[bool] = []
    feats: list[F32] = []
    version: list[int] = []
    duration: list[int] = []
    slot: list[int] = []
    refused: list[tuple[int, str]] = []
    zero = np.zeros(d_track, np.float32)
    for i, (key, value) in enumerate(records):
        if not key:
            refused.append((i, "a catalogue record needs the track id as its key"))
            continue
        try:
            track_id = key.decode()
        except UnicodeDecodeError:
            refused.append((i, "the key is not UTF-8"))
            continue
        if value is None:  # a tombstone
            keys.append(track_id)
            alive.append(False)
            feats.append(zero)
            version.append(0)
            duration.append(0)
            slot.append(-1)
            continue
        try:
            rec = _TRACK_DECODER.decode(value)
            if rec.schema != TRACK_SCHEMA:
                raise ValueError(f"schema {rec.schema!r} is not {TRACK_SCHEMA!r}")
            if rec.track_id != track_id:
                raise ValueError(f"the record is track {rec.track_id!r} under key {track_id!r}")
            if rec.slot < 0 or rec.embedding_version < 0 or rec.duration_ms < 0:
                raise ValueError("slot, embedding_version and duration_ms must be >= 0")
            if rec.withdrawn:
                vec = zero
            else:
                vec = _track_vector(rec, d_track)
                norm = float(np.linalg.norm(vec))
                if norm > max_norm:
                    raise ValueError(f"features of norm {norm:.4g} > max_feature_norm {max_norm:g}")
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            refused.append((i, str(exc)))
            continue
        keys.append(track_id)
        alive.append(not rec.withdrawn)
        feats.append(vec)
        version.append(rec.embedding_version)
        duration.append(rec.duration_ms)
        slot.append(rec.slot)
    if not keys:
        return TrackBatch.empty(d_track), refused
    return (
        TrackBatch(
            key64(keys),
            np.asarray(alive, bool),
            np.stack(feats).astype(np.float32, copy=False),
            np.asarray(version, np.int32),
            np.asarray(duration, np.int64),
            np.asarray(slot, np.int64),
        ),
        refused,
    )
