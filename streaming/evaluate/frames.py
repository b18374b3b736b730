"""Reading logged records: files, column maps and column references."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


class UsageError(ValueError):
    """A command-line or input-mapping mistake; printed without a traceback."""


def parse_column_map(text: str | None) -> dict[str, str]:
    """``"action=item_id,reward=click"`` -> ``{"action": "item_id", "reward": "click"}``."""
    if not text:
        return {}
    out: dict[str, str] = {}
    for part in text.split(","):
        name, sep, column = part.partition("=")
        if not sep or not name.strip() or not column.strip():
            raise UsageError(f"--column-map entry {part!r} is not field=column")
        out[name.strip()] = column.strip()
    return out


def select_columns(frame: pd.DataFrame, spec: str, what: str) -> list[str]:
    """Columns named by a comma list or a glob (``'target_prob_*'``), in natural order."""
    names: list[str] = []
    for part in spec.split(","):
        part = part.strip()
        if any(c in part for c in "*?["):
            hits = [str(c) for c in frame.columns if fnmatch.fnmatch(str(c), part)]
            hits.sort(key=lambda c: (len(c), c))  # tp_2 before tp_10
            names += hits
        elif part:
            names.append(part)
    missing = [c for c in names if c not in frame.columns]
    if missing or not names:
        raise UsageError(
            f"{what} {spec!r}: missing column(s) {missing or '(no match)'}; "
            f"available: {sorted(map(str, frame.columns))}"
        )
    return names


def read_log(path: Path) -> pd.DataFrame:
    """A Parquet or CSV file, or a folder of the daemon's joined-records log, as a frame."""
    if not path.exists():
        raise UsageError(f"log file {str(path)!r} does not exist")
    if path.is_dir():
        from streaming.worker.parquet_log import read_log as read_joined

        return read_joined(path)
    if path.suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if path.suffix in (".csv", ".gz", ".txt"):
        return pd.read_csv(path)
    raise UsageError(f"log file {str(path)!r}: expected .parquet, .csv or a log folder")


_ELEMENT = re.compile(r"^(?P<name>.+)\[(?P<index>\d+)\]$")


def column_values(frame: pd.DataFrame, ref: str, what: str = "") -> np.ndarray:
    """A column by name, or one element of a list column with ``name[j]`` (``shown[0]``).

    Raises:
        UsageError: no such column, or rows whose list is shorter than ``j + 1``.
    """
    m = _ELEMENT.match(ref)
    name, index = (m["name"], int(m["index"])) if m else (ref, None)
    if name not in frame.columns:
        raise UsageError(
            f"missing column {name!r}{' for ' + what if what else ''}; "
            f"available columns: {sorted(map(str, frame.columns))}"
        )
    values = frame[name].to_numpy()
    if index is None:
        return values
    lengths = np.fromiter((len(v) for v in values), np.int64, len(values))
    short = np.flatnonzero(lengths <= index)
    if short.size:
        raise UsageError(
            f"column {name!r} has no element [{index}] at rows {short[:10].tolist()} "
            f"({short.size} of {len(values)})"
        )
    return np.array([v[index] for v in values])


def matrix(frame: pd.DataFrame, spec: str, what: str) -> np.ndarray:
    """``(n, m)`` float array from several scalar columns or one list column."""
    cols = select_columns(frame, spec, what)
    first = frame[cols[0]].to_numpy()
    if len(cols) == 1 and first.dtype == object:
        lengths = {len(v) for v in first}
        if len(lengths) != 1:
            raise UsageError(
                f"{what} {spec!r}: list column rows differ in length {sorted(lengths)}"
            )
        return np.stack([np.asarray(v, dtype=np.float64) for v in first])
    return frame[cols].to_numpy(dtype=np.float64)


def candidate_features(frame: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-row candidate features, padded to the largest ``k``: ``(n, k, d)`` float32 and the
    ``(n, k)`` mask of real candidates (padding has zero features and target probability 0)."""
    rows = column_values(frame, column)
    dims = {len(c) for r in rows for c in r}
    if len(dims) != 1:
        raise UsageError(
            f"--candidate-features-column {column!r}: feature lengths differ {sorted(dims)}"
        )
    k = max(len(r) for r in rows)
    out = np.zeros((len(rows), k, dims.pop()), np.float32)
    mask = np.zeros((len(rows), k), bool)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = np.stack([np.asarray(c, np.float32) for c in r])
            mask[i, : len(r)] = True
    return out, mask


def topic_from_start(servers_flag: str | None, topic: str, flag: str) -> tuple[Any, list[Any]]:
    """A consumer (no group) assigned every partition of ``topic``, at the beginning.

    ``servers_flag`` is ``--bootstrap-servers`` (None: the configured or running local broker).

    Raises ``UsageError`` naming ``flag`` when the topic does not exist; the caller closes the
    consumer (``close(autocommit=False)``).
    """
    from streaming.config import Config
    from streaming.kafka.clients import TopicPartition, bootstrap_servers, make_consumer

    config = Config.load(
        env={},
        overrides=([f"kafka.bootstrap_servers={servers_flag}"] if servers_flag else []),
    )
    servers = bootstrap_servers(config.kafka)
    consumer = make_consumer(config.kafka, servers, group_id=None)
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        consumer.close(autocommit=False)
        raise UsageError(f"{flag} {topic!r} does not exist on {servers}")
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    return consumer, tps
