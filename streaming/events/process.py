"""Decoding in a second process: one batch decodes there while the daemon learns from the last.

Why one long module: the parent's side (submit, result, close) and the child's (its loop, the
shared-memory area the decoded arrays travel through, the framing of its pipe) are one protocol,
kept in one file so both ends change together.

The daemon's loop is one thread, and decoding a batch (msgspec's parse, the checks, the columns)
is a large share of its work. :class:`Decoding` hands each polled batch's raw values to a
child process (``python -m streaming.events.process``), which runs the very same
``decode_impressions`` and ``decode_outcomes`` and sends back the columns and each reject's
code, reason and row. The daemon polls the next batch and steps the previous one
meanwhile (``Daemon.poll_once``), so the two cores of a small machine both work.

What crosses between them: the raw values go through a shared memory file (``memfd``), one
after the other, and the request on the child's stdin (msgpack, after an 8-byte little-endian
length) says how many are impressions, how long each is and each one's Kafka record timestamp
(which bounds how far ahead of it the event's time may be; -1 where unknown). The child writes
the columns into a second shared memory file (each at a 64-byte aligned offset) and answers on
its stdout with their dtypes, shapes and offsets and each reject's code, reason and row, or
with ``["error", message]``. The daemon copies the columns out before the next request, so the next
answer cannot overwrite a batch still in use. Nothing is pickled.

One request is in flight at a time: :meth:`Decoding.submit` needs the previous answer taken
(:meth:`Decoding.result`). Decoding in the child is an optimisation, never a dependency: if it
cannot start, answers an error, dies or sends something malformed, :class:`Decoding` logs a
warning once, stops the child, and decodes the batch in flight (whose raw values it keeps)
and every later one in this process. The answer is the same either way (a test holds them
equal), so a fallback changes only the speed.

The child ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole process group; the daemon
finishes its batch and closes the child itself) and exits when its input closes, which is also
what happens when the daemon is killed.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import select
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

from streaming.events import (
    ImpressionBatch,
    Limits,
    OutcomeBatch,
    RecordTimestamps,
    Reject,
    decode_impressions,
    decode_outcomes,
)

log = logging.getLogger(__name__)

__all__ = ["Decoded", "Decoding", "decode_here"]

_HEADER = 8  # bytes of the little-endian frame length
_AREA_BYTES = 16 << 20  # each shared area's first size (a file of holes until written)

Slot = tuple[str, list[int], int]  # dtype, shape, byte offset in the answers area
RejectRow = tuple[str, str, int]  # code, reason, row


class Decoded(NamedTuple):
    """One batch decoded: good events as columns, bad ones as rejects (in input order)."""

    impressions: ImpressionBatch
    impression_rejects: list[Reject]
    outcomes: OutcomeBatch
    outcome_rejects: list[Reject]


def decode_here(
    impressions: Sequence[bytes],
    outcomes: Sequence[bytes],
    limits: Limits,
    impression_ts_ms: RecordTimestamps = None,
    outcome_ts_ms: RecordTimestamps = None,
) -> Decoded:
    """Decode one batch in this process (what the child runs, and the fallback); the
    ``*_ts_ms`` are each message's Kafka record timestamp (None: unknown)."""
    imps, imp_rej = decode_impressions(impressions, limits, impression_ts_ms)
    outs, out_rej = decode_outcomes(outcomes, limits, outcome_ts_ms)
    return Decoded(imps, imp_rej, outs, out_rej)


class _Batch(NamedTuple):
    """One submitted batch: the raw values and their record timestamps (-1: unknown)."""

    impressions: Sequence[bytes]
    outcomes: Sequence[bytes]
    impression_ts_ms: npt.NDArray[np.int64]
    outcome_ts_ms: npt.NDArray[np.int64]

    def decode(self, limits: Limits) -> Decoded:
        return decode_here(
            self.impressions, self.outcomes, limits, self.impression_ts_ms, self.outcome_ts_ms
        )


def _stamps(ts_ms: RecordTimestamps, n: int) -> npt.NDArray[np.int64]:
    if ts_ms is None:
        return np.full(n, -1, np.int64)
    out = np.asarray(ts_ms, np.int64).reshape(-1)
    if out.size != n:
        raise ValueError(f"{out.size} record timestamps for {n} messages")
    return out


class Decoding:
    """Decode batches in a child process, one in flight; in this one if the child fails.

    ``process=False`` decodes every batch in this process (``submit`` does the work).
    ``answer_timeout_s``: a child that has not answered a batch this long (stopped, swapped out,
    stuck) is killed and the batch decoded here, so the daemon's loop never waits on it forever.
    Any failure of the child, whatever it raises, is a fallback: never an error of the daemon.
    """

    def __init__(
        self, limits: Limits, *, process: bool = True, answer_timeout_s: float = 60.0
    ) -> None:
        self.limits = limits
        self.answer_timeout_s = answer_timeout_s
        self._child: _Child | None = None
        self._in_flight: _Batch | None = None
        self._done: Decoded | None = None
        self.failures = 0  # times the child failed (at most once per Decoding)
        if process:
            try:
                self._child = _Child(limits)
            except Exception as exc:  # no memfd (not Linux), no fork, ...: decode here
                self._fail(f"could not start ({type(exc).__name__}: {exc})")

    @property
    def in_process(self) -> bool:
        """True when batches are decoded in this process (no child, or it failed)."""
        return self._child is None

    @property
    def child_pid(self) -> int | None:
        """The decoding process's id (None when decoding here)."""
        child = self._child  # read once: a fallback on another thread may clear it
        return None if child is None else child.proc.pid

    @property
    def busy(self) -> bool:
        """True while a submitted batch's answer has not been taken."""
        return self._in_flight is not None

    def submit(
        self,
        impressions: Sequence[bytes],
        outcomes: Sequence[bytes],
        impression_ts_ms: RecordTimestamps = None,
        outcome_ts_ms: RecordTimestamps = None,
    ) -> None:
        """Start decoding one batch; take its answer with :meth:`result`.

        ``impression_ts_ms`` and ``outcome_ts_ms``: each message's Kafka record timestamp, ms
        (-1, or None for all: unknown; see ``streaming.events.Limits.max_event_ahead_ms``).
        """
        if self._in_flight is not None:
            raise RuntimeError("submit() before the previous batch's result() was taken")
        batch = _Batch(
            impressions,
            outcomes,
            _stamps(impression_ts_ms, len(impressions)),
            _stamps(outcome_ts_ms, len(outcomes)),
        )
        self._in_flight = batch
        if self._child is not None:
            try:
                self._child.send(batch)
                return
            except Exception as exc:
                self._fail(f"could not take a batch ({type(exc).__name__}: {exc})")
        self._done = batch.decode(self.limits)

    def result(self) -> Decoded:
        """The submitted batch, decoded (waits for the child)."""
        batch = self._in_flight
        if batch is None:
            raise RuntimeError("result() without a batch submitted")
        done, self._done = self._done, None
        if done is None and self._child is not None:
            try:
                done = self._child.receive(batch, self.answer_timeout_s)
            except Exception as exc:  # no answer, an error, or one that does not parse
                self._fail(f"gave no usable answer ({type(exc).__name__}: {exc})")
        if done is None:
            done = batch.decode(self.limits)
        self._in_flight = None
        return done

    def close(self) -> None:
        """Stop the child (a batch in flight is dropped: take its result first)."""
        dropping = self._in_flight is not None and self._done is None
        self._in_flight = self._done = None
        if self._child is not None:
            self._child.close(kill=dropping)
            self._child = None

    def _fail(self, why: str) -> None:
        self.failures += 1
        log.warning("the decoding process %s; decoding in the daemon's process from now on", why)
        if self._child is not None:
            self._child.close(kill=True)
            self._child = None


class _Child:
    """The child process, the two shared memory areas and the two control pipes."""

    def __init__(self, limits: Limits) -> None:
        areas: list[_Area] = []
        try:
            for name in ("encore-decode-requests", "encore-decode-answers"):
                areas.append(_Area(os.memfd_create(name)))
            self.requests, self.answers = areas
            fds = (self.requests.fd, self.answers.fd)
            # The child imports the very ``streaming`` this module is part of: run from the
            # folder it is in (``python -m`` puts the working directory first on the path,
            # where another checkout of encore may be) and with that folder on PYTHONPATH.
            root = str(Path(__file__).resolve().parent.parent)
            path = os.environ.get("PYTHONPATH")
            env = {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}
            # msgpack keeps every float (JSON has no inf, a max_feature_norm that may be)
            args = [msgspec.msgpack.encode(limits).hex(), *map(str, fds)]
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streaming.events.process", *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                cwd=root,
                bufsize=0,
                pass_fds=fds,
            )
        except BaseException:
            for area in areas:
                area.close()
            raise
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.writer = self.proc.stdin
        self.reader = self.proc.stdout

    def send(self, batch: _Batch) -> None:
        raws = [*batch.impressions, *batch.outcomes]
        lengths = np.fromiter(map(len, raws), np.int64, count=len(raws))
        stamps = np.concatenate([batch.impression_ts_ms, batch.outcome_ts_ms])
        data = b"".join(raws)  # one copy in C, then one into the shared area
        self.requests.fit(len(data))
        self.requests.map[: len(data)] = data
        request = [
            len(batch.impressions),
            self.requests.size,
            lengths.tobytes(),
            stamps.astype("<i8").tobytes(),
        ]
        _write_frame(self.writer, msgspec.msgpack.encode(request))

    def receive(self, batch: _Batch, timeout_s: float) -> Decoded:
        if not select.select([self.reader], [], [], timeout_s)[0]:
            raise TimeoutError(f"no answer in {timeout_s:g} s")
        answer = msgspec.msgpack.decode(_read_frame(self.reader))
        if len(answer) == 2 and answer[0] == "error":
            raise ValueError(f"failed: {answer[1]}")
        size, imp_cols, imp_rej, out_cols, out_rej = answer
        self.answers.fit(size, grow=False)
        return Decoded(
            ImpressionBatch(*self.answers.arrays(imp_cols, len(ImpressionBatch._fields))),
            _rejects(imp_rej, batch.impressions),
            OutcomeBatch(*self.answers.arrays(out_cols, len(OutcomeBatch._fields))),
            _rejects(out_rej, batch.outcomes),
        )

    def close(self, *, kill: bool = False) -> None:
        """End the child: at the end of its input, or at once (``kill``: it may be stuck, or
        busy with an answer nobody will read)."""
        if kill:
            self.proc.kill()
        with contextlib.suppress(OSError):
            self.writer.close()  # the child exits at the end of its input
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            self.reader.close()
        self.requests.close()
        self.answers.close()


class _Area:
    """A shared memory file (``memfd``) and this process's mapping of it, grown on demand.

    Either process may grow it (``ftruncate``); the other maps the new size when a control
    message says so. Arrays read out of it are copies, so no view outlives a remap.
    """

    def __init__(self, fd: int, size: int = _AREA_BYTES) -> None:
        self.fd = fd
        self.size = 0
        self.map = mmap.mmap(-1, 1)  # replaced by fit()
        self.fit(size)

    def fit(self, size: int, *, grow: bool = True) -> None:
        """Map at least ``size`` bytes (``grow``: enlarge the file first if it is smaller)."""
        if size <= self.size:
            return
        if grow:  # to a power of two, and never smaller than the file (the other maps it all)
            on_file = os.fstat(self.fd).st_size
            size = max(1 << (size - 1).bit_length(), on_file)
            if size > on_file:
                os.ftruncate(self.fd, size)
        self.map.close()
        self.map = mmap.mmap(self.fd, size)
        self.size = size

    def put(self, arrays: Sequence[np.ndarray], start: int = 0) -> list[Slot]:
        """Copy ``arrays`` in (64-byte aligned), growing as needed; where each one went."""
        slots: list[Slot] = []
        pos = start
        for a in arrays:
            slots.append((a.dtype.str, list(a.shape), pos))
            pos += -(-a.nbytes // 64) * 64
        self.fit(pos)
        for a, (_, _, offset) in zip(arrays, slots, strict=True):
            np.ndarray(a.shape, a.dtype, buffer=self.map, offset=offset)[...] = a
        return slots

    def arrays(self, slots: list[Any], fields: int) -> list[np.ndarray]:
        """Copies of the arrays at ``slots``."""
        if len(slots) != fields:
            raise ValueError(f"{len(slots)} columns where {fields} were expected")
        return [
            np.ndarray(shape, np.dtype(dtype), buffer=self.map, offset=offset).copy()
            for dtype, shape, offset in slots
        ]

    def close(self) -> None:
        self.map.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _write_frame(out: Any, payload: bytes) -> None:
    out.write(len(payload).to_bytes(_HEADER, "little"))
    view = memoryview(payload)
    while view:
        written = out.write(view)
        if written is None:
            raise OSError("the pipe is non-blocking")
        view = view[written:]


def _read_frame(source: Any) -> bytearray:
    size = int.from_bytes(_read_exact(source, _HEADER), "little")
    return _read_exact(source, size)


def _read_exact(source: Any, size: int) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = source.readinto(view[got:])
        if not n:
            raise OSError(f"the pipe closed after {got} of {size} bytes")
        got += n
    return buf


def _rejects(rows: list[Any], raws: Sequence[bytes]) -> list[Reject]:
    return [Reject(code, reason, raws[row], row) for code, reason, row in rows]


def _reject_rows(rejects: list[Reject]) -> list[RejectRow]:
    return [(r.code, r.reason, r.row) for r in rejects]


def _serve(limits: Limits, requests: _Area, answers: _Area, source: Any, out: Any) -> None:
    """The child's loop: a request in, an answer out, until the input closes."""
    control = msgspec.msgpack.Decoder(tuple[int, int, bytes, bytes])
    while True:
        try:
            frame = _read_frame(source)
        except OSError:
            return  # the daemon closed the pipe, or is gone
        try:
            n_impressions, size, lengths, stamps = control.decode(frame)
            requests.fit(size, grow=False)
            ends = np.cumsum(np.frombuffer(lengths, np.int64)).tolist()
            ts = np.frombuffer(stamps, "<i8").astype(np.int64)
            mm = requests.map
            raws = [mm[a:b] for a, b in zip([0, *ends][:-1], ends, strict=True)]
            d = decode_here(
                raws[:n_impressions],
                raws[n_impressions:],
                limits,
                ts[:n_impressions],
                ts[n_impressions:],
            )
            imp_slots = answers.put(d.impressions)
            out_slots = answers.put(d.outcomes, imp_slots[-1][2] + _nbytes(d.impressions[-1]))
            answer: list[Any] = [
                answers.size,
                imp_slots,
                _reject_rows(d.impression_rejects),
                out_slots,
                _reject_rows(d.outcome_rejects),
            ]
        except Exception as exc:  # told to the daemon, which decodes the batch itself
            answer = ["error", f"{type(exc).__name__}: {exc}"]
        _write_frame(out, msgspec.msgpack.encode(answer))


def _nbytes(a: np.ndarray) -> int:
    return -(-a.nbytes // 64) * 64


def main(argv: Sequence[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    limits = msgspec.msgpack.decode(bytes.fromhex(argv[0]), type=Limits)
    requests, answers = _Area(int(argv[1]), 0), _Area(int(argv[2]), 0)
    frames_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything printed goes to stderr, never into the frames
    frames_in = open(0, "rb", buffering=0, closefd=False)  # noqa: SIM115 - for the whole life
    with contextlib.suppress(BrokenPipeError):
        _serve(limits, requests, answers, frames_in, frames_out)


if __name__ == "__main__":
    main(sys.argv[1:])
