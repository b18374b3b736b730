"""The joined-records log: rolling Parquet files of what the daemon learned from.

Why one long module: the writer, its background thread and the reader share one file-naming and
durability scheme (write under a temporary name, fsync, rename, fsync the directory), which is
easier to keep right in one place.

One row per closed impression (its window ended, or it was evicted): the request, the context,
the candidates (keys and, optionally, features), the shown slate with its logging propensities,
and per shown position the aggregated reward, the number of outcomes joined and whether the
default reward was used, plus the composite reward's name and version. Off-policy evaluation
and offline training read exactly these rows with ``read_log``.

Files are named ``part-<first_ts_ms:013d>-<writer>-<seq:06d>.parquet`` (``first_ts_ms`` is the
event time of the file's first row), so a plain sort lists them by time. A file is written under
a hidden temporary name (``.part-...parquet.tmp``) and renamed into place only once it is closed
and fsynced, so a reader never sees half a file. A file is closed (rolled) when it holds
``rows_per_file`` rows, when it is older than ``max_file_age_ms`` (checked on ``append`` and on
``roll_if_due``), on ``flush`` and on ``close``.

Exactly-once view: the daemon calls ``flush()`` right before each checkpoint, so every row the
checkpoint covers is in a committed file. After a kill, the rows in the open temporary file are
discarded (a new writer with the same ``writer`` id deletes its stale temporary files) and come
back when the daemon replays from its checkpoint; rows of files rolled after the checkpoint are
written a second time, identically, and ``read_log`` keeps one row per ``request_id``.

A writer id has one live writer at a time: ``ParquetLog`` holds a lock on
``.writer-<writer>.lock`` in the directory (``streaming.worker.lock``) from its start to ``close``,
and a second writer with the same id raises ``InUseError`` instead of deleting the first one's
open file.

Example:
    >>> import tempfile, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> log = ParquetLog(d, clock=lambda: 0)
    >>> log.append(example_records(3, d_user=2, k=4, s=2, d_track=3))
    >>> log.close()
    >>> frame = read_log(d)
    >>> len(frame), frame["reward"][0].tolist(), frame["reward_name"][0]
    (3, [1.0, 0.0], 'stream30')
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from streaming.core import COLUMNS, JoinedRecords
from streaming.core.state import ModelPlays
from streaming.worker.lock import DirLock

__all__ = [
    "BackgroundLog",
    "ParquetLog",
    "example_records",
    "log_files",
    "plays_table",
    "read_log",
    "to_table",
]

PLAYS_DIR = "reward-plays"
"""The folder, inside the log's, of the reward model's plays with its predictions
(``plays_table``), which ``encore rewards report`` reads."""

log = logging.getLogger(__name__)

Clock = Callable[[], int]
ArrowArray = Any  # pyarrow ships no complete type information: its objects are Any to pyright
ArrowTable = Any
ArrowSchema = Any

_STRINGS = ("request_id", "user_id", "surface", "policy", "policy_version", "reward_name")
_NAME = re.compile(r"^part-(\d{13})-([A-Za-z0-9_]+)-(\d{6})\.parquet$")
_WRITER = re.compile(r"^[A-Za-z0-9_]+$")


def _check(rec: JoinedRecords) -> None:
    n = rec.n_rows
    for name in (*_STRINGS, "ts_ms", "reward_version"):
        col = getattr(rec, name)
        if col.shape != (n,):
            raise ValueError(f"JoinedRecords.{name} has shape {col.shape}, expected ({n},)")
    if rec.context.ndim != 2 or rec.context.shape[0] != n:
        raise ValueError(
            f"JoinedRecords.context has shape {rec.context.shape}, expected ({n}, d_user)"
        )
    if rec.candidate_key.ndim != 2 or rec.candidate_key.shape[0] != n:
        raise ValueError(
            f"JoinedRecords.candidate_key has shape {rec.candidate_key.shape}, expected ({n}, k)"
        )
    k = rec.candidate_key.shape[1]
    if rec.candidate_mask.shape != (n, k):
        raise ValueError(
            f"JoinedRecords.candidate_mask has shape {rec.candidate_mask.shape}, expected ({n}, {k})"
        )
    f = rec.candidate_features
    if f is not None and (f.ndim != 3 or f.shape[:2] != (n, k)):
        raise ValueError(
            f"JoinedRecords.candidate_features has shape {f.shape}, expected ({n}, {k}, d_track)"
        )
    if rec.shown.ndim != 2 or rec.shown.shape[0] != n:
        raise ValueError(f"JoinedRecords.shown has shape {rec.shown.shape}, expected ({n}, s)")
    s = rec.shown.shape[1]
    for name in ("propensity", "reward", "n_outcomes", "defaulted"):
        col = getattr(rec, name)
        if col.shape != (n, s):
            raise ValueError(f"JoinedRecords.{name} has shape {col.shape}, expected ({n}, {s})")
    bad = np.flatnonzero((rec.shown >= k).any(axis=1))
    if bad.size:
        raise ValueError(f"JoinedRecords.shown has indices >= k={k} in rows {bad[:10].tolist()}")


def _lists(values: npt.NDArray[np.generic], mask: npt.NDArray[np.bool_]) -> ArrowArray:
    """A list column holding, per row, the entries of ``values`` where ``mask`` (row-major)."""
    counts = mask.sum(axis=1, dtype=np.int64)
    offsets = np.zeros(mask.shape[0] + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    flat = values[mask]
    inner: ArrowArray
    if flat.ndim == 2:  # rows of a fixed width (features): a fixed-size list inside
        inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    else:
        inner = pa.array(flat)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), inner)


def to_table(rec: JoinedRecords) -> ArrowTable:
    """The records as an Arrow table (vectorised: no per-row Python).

    Raises:
        ValueError: a column's shape disagrees with the others (the message names it).
    """
    _check(rec)
    n = rec.n_rows
    shown_mask = rec.shown >= 0
    ctx = np.ascontiguousarray(rec.context, np.float32)
    cols: dict[str, ArrowArray] = {
        "request_id": pa.array(rec.request_id, pa.string()),
        "user_id": pa.array(rec.user_id, pa.string()),
        "ts_ms": pa.array(np.asarray(rec.ts_ms, np.int64)),
        "surface": pa.array(rec.surface, pa.string()),
        "policy": pa.array(rec.policy, pa.string()),
        "policy_version": pa.array(rec.policy_version, pa.string()),
        "context": pa.FixedSizeListArray.from_arrays(pa.array(ctx.reshape(-1)), ctx.shape[1]),
        "candidate_key": _lists(np.asarray(rec.candidate_key, np.uint64), rec.candidate_mask),
    }
    if rec.candidate_features is not None:
        cols["candidate_features"] = _lists(
            np.asarray(rec.candidate_features, np.float32), rec.candidate_mask
        )
    cols.update(
        shown=_lists(np.asarray(rec.shown, np.int32), shown_mask),
        propensity=_lists(np.asarray(rec.propensity, np.float32), shown_mask),
        reward=_lists(np.asarray(rec.reward, np.float32), shown_mask),
        n_outcomes=_lists(np.asarray(rec.n_outcomes, np.int32), shown_mask),
        defaulted=_lists(np.asarray(rec.defaulted, bool), shown_mask),
        reward_name=pa.array(rec.reward_name, pa.string()),
        reward_version=pa.array(np.asarray(rec.reward_version, np.int32)),
    )
    table = pa.table(cols)
    assert table.num_rows == n
    return table


def plays_table(plays: ModelPlays, model: str) -> ArrowTable:
    """The reward model's plays of one step as a table for a ``ParquetLog`` in ``PLAYS_DIR``: one
    row per play (its outcome, ``reason_end`` as its ``rewards.REASONS`` code), ``model`` (the
    reward model's name) and its predictions ``p_skip_1``, ``p_skip_2``, ``p_skip_3``,
    ``p_complete``. A play is identified by ``(request_key, position, ts_ms)``: rows written
    again after a restart from a checkpoint are identical copies.

    >>> import numpy as np
    >>> from streaming.core.state import ModelPlays
    >>> p = ModelPlays(np.array([5]), np.array([9], np.uint64), np.array([0], np.int32),
    ...     np.array([3], np.int32), np.array([40_000]), np.array([200_000]),
    ...     np.array([1], np.int8), np.array([False]), np.array([False]),
    ...     np.array([[0.1, 0.2, 0.7]], np.float32), np.array([0.3], np.float32))
    >>> plays_table(p, "survival").column_names[-5:]
    ['model', 'p_skip_1', 'p_skip_2', 'p_skip_3', 'p_complete']
    """
    n = plays.ts_ms.shape[0]
    return pa.table(
        {
            "ts_ms": pa.array(plays.ts_ms, pa.int64()),
            "request_key": pa.array(plays.request_key, pa.uint64()),
            "position": pa.array(plays.position, pa.int32()),
            "track_id": pa.array(plays.track_id, pa.int32()),
            "ms_played": pa.array(plays.ms_played, pa.int64()),
            "duration_ms": pa.array(plays.duration_ms, pa.int64()),
            "reason_end": pa.array(plays.reason_end, pa.int8()),
            "saved": pa.array(plays.saved, pa.bool_()),
            "censored": pa.array(plays.censored, pa.bool_()),
            "model": pa.array([model] * n, pa.string()),
            "p_skip_1": pa.array(plays.p_skip[:, 0], pa.float32()),
            "p_skip_2": pa.array(plays.p_skip[:, 1], pa.float32()),
            "p_skip_3": pa.array(plays.p_skip[:, 2], pa.float32()),
            "p_complete": pa.array(plays.p_complete, pa.float32()),
        }
    )


class ParquetLog:
    """Appends joined records to rolling Parquet files in ``directory`` (one writer per ``writer``).

    Args:
        directory: where the files go (created if missing).
        rows_per_file: a file is committed once it holds at least this many rows.
        max_file_age_ms: a file is committed once this long has passed (by ``clock``) since its
            first row, on the next ``append`` or ``roll_if_due``.
        clock: wall time in ms (injected; tests pass a fake one).
        writer: this writer's id in file names (letters, digits, ``_``); several daemons
            writing one directory each need their own.
        compression: the Parquet codec.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        rows_per_file: int = 100_000,
        max_file_age_ms: int = 60_000,
        clock: Clock = lambda: time.time_ns() // 1_000_000,
        writer: str = "w0",
        compression: str = "zstd",
    ) -> None:
        if rows_per_file <= 0:
            raise ValueError(f"rows_per_file must be positive, got {rows_per_file}")
        if max_file_age_ms <= 0:
            raise ValueError(f"max_file_age_ms must be positive, got {max_file_age_ms}")
        if not _WRITER.match(writer):
            raise ValueError(f"writer {writer!r} must be letters, digits or _")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = DirLock(
            self.directory / f".writer-{writer}.lock", f"log writer {writer!r} in {directory}"
        )
        self.rows_per_file = rows_per_file
        self.max_file_age_ms = max_file_age_ms
        self.clock = clock
        self.writer = writer
        self.compression = compression
        self.seq = 0
        self._claim()
        self._pq: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._first_ts = 0
        self._opened_ms = 0
        self._rows = 0
        self._schema: ArrowSchema | None = None
        self.committed: list[Path] = []
        self.rows_written = 0

    def append(self, records: JoinedRecords) -> None:
        """Write ``records`` (any number of rows) to the open file, rolling as configured.

        Raises:
            ValueError: the columns' shapes disagree, or the schema (feature sizes, features
                omitted or not) differs from the open file's.
        """
        self.roll_if_due()
        if records.n_rows == 0:
            return
        self.append_table(to_table(records))

    def append_table(self, table: ArrowTable) -> None:
        """Write a table made by ``to_table`` (or several concatenated), rolling as configured.

        Raises:
            ValueError: the table's schema differs from the open file's.
        """
        try:
            self._append_table(table)
        except OSError as err:
            raise LogWriteError(self.directory, err) from err

    def _append_table(self, table: ArrowTable) -> None:
        self.roll_if_due()
        lo = 0
        ts = table.column("ts_ms")
        while lo < table.num_rows:
            if self._pq is None:
                self._open(int(ts[lo].as_py()), table.schema)
            elif self._schema is not None and not table.schema.equals(self._schema):
                raise ValueError(
                    f"records' schema {table.schema} differs from the open file's {self._schema}"
                )
            take = min(table.num_rows - lo, self.rows_per_file - self._rows)
            assert self._pq is not None
            self._pq.write_table(table.slice(lo, take))
            self._rows += take
            self.rows_written += take
            lo += take
            if self._rows >= self.rows_per_file:
                self._commit()

    def roll_if_due(self) -> Path | None:
        """Commit the open file if it is older than ``max_file_age_ms``; returns its path if so."""
        if self._pq is not None and self.clock() - self._opened_ms >= self.max_file_age_ms:
            return self._commit()
        return None

    def flush(self) -> Path | None:
        """Commit the open file now (call before each checkpoint); returns its path, if any."""
        try:
            return self._commit() if self._pq is not None else None
        except OSError as err:
            raise LogWriteError(self.directory, err) from err

    def close(self) -> None:
        """Commit the open file and let go of the writer id; idempotent."""
        try:
            self.flush()
        finally:
            self._lock.release()

    def abandon(self) -> None:
        """Let go of the writer id without committing (after a failure): the open temporary
        file stays, and the next writer with this id removes it, as after a kill."""
        self._lock.release()

    def __enter__(self) -> ParquetLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _claim(self) -> None:
        """Hold the writer id; then continue its numbering and drop its stale temporary files.

        In that order: while another live writer has the id, its open file is not stale.
        """
        self._lock.acquire()
        for path in self.directory.iterdir():
            m = _NAME.match(path.name)
            if m and m.group(2) == self.writer:
                self.seq = max(self.seq, int(m.group(3)))
            elif path.name.startswith(".part-") and path.name.endswith(f"-{self.writer}.tmp"):
                log.warning("removing %s, left open by a writer that stopped", path)
                path.unlink(missing_ok=True)

    def _open(self, first_ts: int, schema: ArrowSchema) -> None:
        if not self._lock.held:  # appending again after close
            self._claim()
        self.seq += 1
        self._first_ts = max(0, first_ts)
        self._tmp = self.directory / f".part-{self._first_ts:013d}-{self.seq:06d}-{self.writer}.tmp"
        self._pq = pq.ParquetWriter(
            self._tmp,
            schema,
            compression=self.compression,
            # Dictionary-encode the string columns only (not the float lists).
            use_dictionary=[c for c in _STRINGS if c in schema.names],  # pyright: ignore[reportArgumentType]
        )
        self._schema = schema
        self._opened_ms = self.clock()
        self._rows = 0

    def _commit(self) -> Path:
        assert self._pq is not None and self._tmp is not None
        self._pq.close()
        with open(self._tmp, "rb") as f:
            os.fsync(f.fileno())
        final = self.directory / f"part-{self._first_ts:013d}-{self.writer}-{self.seq:06d}.parquet"
        os.replace(self._tmp, final)
        _fsync_dir(self.directory)
        self._pq = self._tmp = self._schema = None
        self.committed.append(final)
        return final


class LogWriteError(Exception):
    """The log directory cannot take more rows (unwritable, full): what was committed before is
    intact, and the daemon checkpoints nothing the log does not hold."""

    def __init__(self, directory: Path, err: OSError) -> None:
        self.directory = directory
        self.errno = err.errno
        why = err.strerror or str(err)
        super().__init__(
            f"cannot write the Parquet log to {directory}: {why}. Free space or fix the "
            "directory's permissions (log.dir), then start again: the worker resumes from its "
            "newest checkpoint and writes the rows after it again"
        )


class BackgroundLog:
    """A ``ParquetLog`` written by a thread of its own, so the caller does not wait for Arrow
    conversion, compression and disk writes (pyarrow releases the GIL while it compresses).

    ``append`` checks the records' shapes, queues them and returns (it blocks only while
    ``max_pending`` batches are already queued). The thread converts each batch and writes them
    ``rows_per_write`` rows at a time (fewer, larger row groups: each group has a fixed cost in
    metadata and encoding, which small ones pay per few rows), and whatever is left on
    ``flush``, ``roll_if_due`` and ``close``. ``flush`` returns once every row appended
    before it is in a committed file, as ``ParquetLog.flush`` does, so the daemon's
    rule (flush, then checkpoint) keeps the log's exactly-once view: a kill loses only rows no
    checkpoint covers, and those come back when the daemon replays. An error in the thread (a
    schema that changed, a full disk) is raised by the next ``append``, ``flush`` or ``close``;
    the rows after it are not written.

    Args:
        log: the log to write (used only by the thread from now on).
        max_pending: batches queued at most before ``append`` waits.
        rows_per_write: rows gathered before a write (the last write of a flush has fewer).
    """

    def __init__(
        self, log: ParquetLog, *, max_pending: int = 16, rows_per_write: int = 4096
    ) -> None:
        if max_pending <= 0 or rows_per_write <= 0:
            raise ValueError("max_pending and rows_per_write must be positive")
        self.log = log
        self.rows_per_write = rows_per_write
        self._queue: queue.Queue[tuple[str, JoinedRecords | None, threading.Event | None]] = (
            queue.Queue(max_pending)
        )
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None  # started by the first call, stopped by close

    @property
    def committed(self) -> list[Path]:
        """The files committed so far (complete once ``flush`` returned)."""
        return self.log.committed

    @property
    def rows_written(self) -> int:
        return self.log.rows_written

    def append(self, records: JoinedRecords) -> None:
        """Queue ``records`` for writing.

        Raises:
            ValueError: the columns' shapes disagree (checked here, before queueing).
        """
        self._raise()
        if records.n_rows == 0:
            return
        _check(records)
        self._put("append", records, None)

    def roll_if_due(self) -> None:
        """Have the thread commit the open file if it is older than ``max_file_age_ms``."""
        self._raise()
        self._put("roll", None, None)

    def flush(self) -> None:
        """Return once every row appended so far is in a committed file."""
        self._call("flush")

    def close(self) -> None:
        """Flush, stop the thread and close the log; idempotent (a later ``append`` starts again)."""
        try:
            if self._thread is None:
                self._raise()
                return
            try:
                self._call("flush")
            finally:
                self._queue.put(("stop", None, None))
                self._thread.join()
                self._thread = None
        finally:
            if self._error is None:
                self.log.close()  # nothing is open now: this lets go of the writer id
            else:
                self.log.abandon()

    def __enter__(self) -> BackgroundLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _put(self, op: str, records: JoinedRecords | None, done: threading.Event | None) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="encore-parquet-log", daemon=True
            )
            self._thread.start()
        self._queue.put((op, records, done))

    def _call(self, op: str) -> None:
        done = threading.Event()
        self._put(op, None, done)
        done.wait()
        self._raise()

    def _raise(self) -> None:
        if isinstance(self._error, LogWriteError):
            raise self._error
        if isinstance(self._error, OSError):
            raise LogWriteError(self.log.directory, self._error) from self._error
        if self._error is not None:
            raise RuntimeError(f"the Parquet log's writer failed: {self._error}") from self._error

    def _run(self) -> None:
        tables: list[ArrowTable] = []
        rows = 0
        while True:
            op, records, done = self._queue.get()
            try:
                if self._error is not None:
                    pass  # refuse everything after a failure; the caller sees the error
                elif op == "append" and records is not None:
                    tables.append(to_table(records))
                    rows += records.n_rows
                    if rows >= self.rows_per_write:
                        self._write(tables)
                        tables, rows = [], 0
                else:
                    self._write(tables)
                    tables, rows = [], 0
                    if op == "roll":
                        self.log.roll_if_due()
                    elif op == "flush":
                        self.log.flush()
            except BaseException as exc:  # handed to the caller by ``_raise``
                self._error = exc
                tables, rows = [], 0
            finally:
                if done is not None:
                    done.set()
            if op == "stop":
                return

    def _write(self, tables: list[ArrowTable]) -> None:
        """Each run of tables of one schema as one write (a schema change fails in the log)."""
        lo = 0
        for hi in range(1, len(tables) + 1):
            if hi == len(tables) or not tables[hi].schema.equals(tables[lo].schema):
                run = tables[lo:hi]
                self.log.append_table(run[0] if len(run) == 1 else pa.concat_tables(run))
                lo = hi


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can fsync a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def log_files(directory: str | Path) -> list[Path]:
    """The committed files of a log directory, oldest first (temporary files are never listed)."""
    return sorted(p for p in Path(directory).iterdir() if _NAME.match(p.name))


def read_log(directory: str | Path, *, dedupe: bool = True) -> pd.DataFrame:
    """Every committed row of a log directory as one frame, in file (time) order.

    List columns come back as numpy arrays per row (``context`` is ``(d_user,)`` float32,
    ``candidate_features`` an array of ``(d_track,)`` arrays).

    Args:
        directory: a folder written by ``ParquetLog``.
        dedupe: keep only the first row of each ``request_id`` (rows written again after a
            restart from a checkpoint are identical copies).

    Returns:
        The frame, with the columns of ``COLUMNS`` (an empty frame with those columns when the
        directory holds no file).

    Raises:
        FileNotFoundError: ``directory`` does not exist.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"log directory {directory} does not exist")
    files = log_files(directory)
    if not files:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in COLUMNS})
    table = pa.concat_tables([pq.read_table(p) for p in files], promote_options="default")
    frame = table.to_pandas()
    if dedupe:
        frame = frame.drop_duplicates(subset="request_id", keep="first", ignore_index=True)
    return frame


def example_records(
    n: int,
    *,
    d_user: int = 4,
    k: int = 5,
    s: int = 2,
    d_track: int = 3,
    ts0_ms: int = 0,
    seed: int = 0,
    features: bool = True,
) -> JoinedRecords:
    """A small deterministic batch for tests and examples (reward 1.0 at position 0, else 0.0)."""
    rng = np.random.default_rng(seed)
    n_cand = rng.integers(s, k + 1, size=n)
    mask = np.arange(k)[None, :] < n_cand[:, None]
    shown = np.full((n, s), -1, np.int32)
    shown[:, :s] = np.argsort(rng.random((n, k)) + ~mask, axis=1)[:, :s].astype(np.int32)
    reward = np.zeros((n, s), np.float32)
    reward[:, 0] = 1.0
    ids = np.array([f"r{ts0_ms + i}" for i in range(n)])
    return JoinedRecords(
        request_id=ids,
        user_id=np.array([f"u{i % 7}" for i in range(n)]),
        ts_ms=ts0_ms + np.arange(n, dtype=np.int64),
        surface=np.full(n, "home"),
        policy=np.full(n, "logging"),
        policy_version=np.full(n, "1"),
        context=rng.standard_normal((n, d_user)).astype(np.float32),
        candidate_key=np.where(mask, rng.integers(1, 2**63, size=(n, k)), 0).astype(np.uint64),
        candidate_mask=mask,
        candidate_features=(
            rng.standard_normal((n, k, d_track)).astype(np.float32) if features else None
        ),
        shown=shown,
        propensity=np.full((n, s), 0.5, np.float32),
        reward=reward,
        n_outcomes=np.ones((n, s), np.int32),
        defaulted=np.zeros((n, s), bool),
        reward_name=np.full(n, "stream30"),
        reward_version=np.ones(n, np.int32),
    )
