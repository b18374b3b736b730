"""Publishing a track table to the catalogue topic (``encore catalogue load`` and ``withdraw``).

Each track keeps its slot (the dense index a policy's per-track table can use) across loads:
the loader reads the topic first, keeps the slot of every track it holds, and gives new tracks
the next free slots. One loader at a time: two running at once could give two tracks one slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from streaming.config import Config
from streaming.core.catalogue import encode_track, encode_withdrawal
from streaming.events import key64
from streaming.kafka.catalogue import read_catalogue
from streaming.kafka.clients import KafkaError, make_producer

__all__ = ["TrackTable", "publish_tracks", "read_track_table", "withdraw_tracks"]


class TrackTable:
    """Tracks to publish: ids, ``(n, d_track)`` float32 features, durations (0: unknown)."""

    def __init__(
        self, ids: Sequence[str], features: npt.NDArray[Any], duration_ms: npt.NDArray[Any]
    ) -> None:
        feats = np.asarray(features, np.float32)
        if feats.ndim != 2 or feats.shape[0] != len(ids):
            raise ValueError(f"features of shape {feats.shape} for {len(ids)} track ids")
        if not np.isfinite(feats).all():
            raise ValueError("a track's features hold NaN or infinity")
        if len(set(ids)) != len(ids):
            raise ValueError("track ids must be distinct")
        if any(not i for i in ids):
            raise ValueError("a track id is empty")
        self.ids = list(ids)
        self.features = feats
        self.duration_ms = np.asarray(duration_ms, np.int64)


def read_track_table(
    path: Path,
    *,
    id_column: str = "track_id",
    features_column: str | None = None,
    feature_prefix: str | None = None,
    duration_column: str | None = None,
) -> TrackTable:
    """A Parquet or CSV file as a :class:`TrackTable`.

    Features come from one column of equal-length number lists (``features_column``, Parquet) or
    from the numbered columns ``{feature_prefix}0``, ``{feature_prefix}1``, ... (either format).
    """
    if path.suffix.lower() in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    elif path.suffix.lower() == ".csv":
        frame = pd.read_csv(path, dtype={id_column: str})
    else:
        raise ValueError(f"{path}: a track table is .parquet or .csv")
    if id_column not in frame:
        raise ValueError(f"{path}: no id column {id_column!r} (columns: {list(frame.columns)})")
    if (features_column is None) == (feature_prefix is None):
        raise ValueError("give exactly one of features_column and feature_prefix")
    if features_column is not None:
        if features_column not in frame:
            raise ValueError(f"{path}: no features column {features_column!r}")
        feats = np.stack([np.asarray(v, np.float32) for v in frame[features_column]])
    else:
        cols, j = [], 0
        while f"{feature_prefix}{j}" in frame:
            cols.append(f"{feature_prefix}{j}")
            j += 1
        if not cols:
            raise ValueError(
                f"{path}: no feature columns {feature_prefix}0, {feature_prefix}1, ..."
            )
        feats = frame[cols].to_numpy(np.float32)
    if duration_column is not None:
        if duration_column not in frame:
            raise ValueError(f"{path}: no duration column {duration_column!r}")
        duration = frame[duration_column].to_numpy(np.int64)
    else:
        duration = np.zeros(len(frame), np.int64)
    return TrackTable([str(i) for i in frame[id_column]], feats, duration)


def publish_tracks(
    config: Config, servers: str, table: TrackTable, *, embedding_version: int
) -> dict[str, int]:
    """Publish ``table`` to ``topics.catalogue``; counts of tracks ``new``, ``updated`` (live
    before) and ``restored`` (withdrawn before, back with their slot).

    Raises:
        ValueError: the table's feature width is not ``events.d_track``, a track's features
            are longer than ``events.max_feature_norm``, or the version is negative.
        MissingCatalogueError: no catalogue topic.
    """
    if table.features.shape[1] != config.events.d_track:
        raise ValueError(
            f"the table has {table.features.shape[1]} features per track, events.d_track is "
            f"{config.events.d_track}"
        )
    if embedding_version < 0:
        raise ValueError(f"embedding_version must be >= 0, got {embedding_version}")
    norms = np.linalg.norm(table.features, axis=1)
    limit = config.events.max_feature_norm
    if (norms > limit).any():
        i = int(np.argmax(norms > limit))
        raise ValueError(
            f"track {table.ids[i]!r} has features of norm {norms[i]:.4g} > "
            f"events.max_feature_norm {limit:g}: impressions with it would be refused"
        )
    current = read_catalogue(config, servers)
    slot = current.slot_of(key64(table.ids))
    fresh = slot < 0
    slot[fresh] = current.max_slot + 1 + np.arange(int(fresh.sum()))
    live = current.view().find(key64(table.ids))[1]
    records = [
        (
            track_id,
            encode_track(
                track_id,
                int(slot[i]),
                embedding_version,
                table.features[i],
                int(table.duration_ms[i]),
            ),
        )
        for i, track_id in enumerate(table.ids)
    ]
    _send(config, servers, records)
    return {
        "new": int(fresh.sum()),
        "updated": int(live.sum()),
        "restored": int((~fresh & ~live).sum()),
    }


def withdraw_tracks(config: Config, servers: str, ids: Sequence[str]) -> int:
    """Withdraw each track, keeping its slot for the day it comes back (a track the catalogue
    does not know gets a plain tombstone); how many records were sent."""
    slot = read_catalogue(config, servers).slot_of(key64(list(ids)))
    _send(
        config,
        servers,
        [
            (track_id, encode_withdrawal(track_id, int(s)) if s >= 0 else None)
            for track_id, s in zip(ids, slot.tolist(), strict=True)
        ],
    )
    return len(ids)


def _send(config: Config, servers: str, records: Sequence[tuple[str, bytes | None]]) -> None:
    """Send every record and wait for each acknowledgement.

    Raises:
        KafkaError: a record the broker did not take (named with its track id).
    """
    producer = make_producer(config.kafka, servers)
    try:
        sent = [
            (track_id, producer.send(config.topics.catalogue, key=track_id.encode(), value=value))
            for track_id, value in records
        ]
        producer.flush()
        for track_id, future in sent:
            try:
                future.get(timeout=60)
            except Exception as exc:
                raise KafkaError(
                    f"the catalogue record of {track_id!r} was not sent: {exc}"
                ) from exc
    finally:
        producer.close()
