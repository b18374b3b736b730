"""Atomic, checksummed checkpoints of a worker's whole state, in a format that cannot run code.

One checkpoint is one file, ``checkpoint-<sequence:012d>.ckpt``, laid out as:

=======  ======  ==============================================================================
offset   size    field
=======  ======  ==============================================================================
0        8       magic ``b"ENCORECK"``
8        4       format version, uint32 little-endian
12       4       CRC-32 of bytes 0..12 (so a damaged version field reads as damage, not as a
                 different version)
16       4       header length ``h``, uint32 little-endian
20       8       payload length ``p``, uint64 little-endian
28       32      SHA-256 of bytes 0..28, the header and the payload
60       h       header: UTF-8 JSON object (``format_version``, ``created_at_ms``, ``sequence``
                 and whatever the caller put in: config, offsets, reward version, policy spec)
60 + h   p       payload: an uncompressed ``.npz`` (zip of ``.npy``), read with
                 ``allow_pickle=False``
=======  ======  ==============================================================================

``write`` builds the file under a temporary name in the same directory, fsyncs it, renames it
into place and fsyncs the directory, so a reader sees the old set of checkpoints or the new one,
never half a file. It keeps the newest ``keep`` checkpoints. ``load_latest`` returns the newest
checkpoint that verifies, logging a warning for each newer one that is truncated or damaged; the
writer's own call also removes temporary files left by a writer that was killed (a writer's next
``write`` does too). One writer per directory; readers may come and go while it writes.

Example:
    >>> import tempfile, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> path = write(d, {"n": np.arange(3)}, {"offsets": {"encore.outcomes/0": 42}},
    ...              created_at_ms=0)
    >>> path.name
    'checkpoint-000000000001.ckpt'
    >>> arrays, header = load_latest(d)
    >>> arrays["n"].tolist(), header["offsets"], header["sequence"]
    ([0, 1, 2], {'encore.outcomes/0': 42}, 1)
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import struct
import time
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt

__all__ = [
    "FORMAT_VERSION",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointVersionError",
    "CheckpointWriteError",
    "decode",
    "encode",
    "list_checkpoints",
    "load",
    "load_latest",
    "sequence_of",
    "write",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION: Final = 1
MAGIC: Final = b"ENCORECK"
_PREFIX: Final = struct.Struct("<8sII")  # magic, version, crc32 of the two
_LENGTHS: Final = struct.Struct("<IQ")  # header length, payload length
_DIGEST_SIZE: Final = 32
_HEAD_SIZE: Final = _PREFIX.size + _LENGTHS.size + _DIGEST_SIZE  # 60
_NAME: Final = re.compile(r"^checkpoint-(\d{12})\.ckpt$")
_TEMP: Final = re.compile(r"^\.checkpoint-\d{12}\.ckpt\.tmp-")
_ARRAY_NAME: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]*$")
_RESERVED: Final = ("format_version", "created_at_ms", "sequence")
_ZIP_DATE: Final = (1980, 1, 1, 0, 0, 0)  # fixed, so equal states give equal payload bytes


class CheckpointError(Exception):
    """No usable checkpoint: the base of the errors below."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint file is truncated, damaged, or not a checkpoint at all."""


class CheckpointVersionError(CheckpointError):
    """A checkpoint was written in a format version this code does not read."""


class CheckpointWriteError(CheckpointError):
    """The checkpoint directory cannot take a new checkpoint (unwritable, full, not a directory).

    The checkpoints already there are untouched and the unfinished file is removed, so the newest
    good checkpoint is still the one a restart reads.
    """

    def __init__(self, directory: Path, err: OSError) -> None:
        self.directory = directory
        self.errno = err.errno
        why = err.strerror or str(err)
        name = errno.errorcode.get(err.errno or 0, "")
        good = list_checkpoints(directory) if directory.is_dir() else []
        kept = f"the newest checkpoint there, {good[-1].name}, is intact" if good else "none kept"
        super().__init__(
            f"cannot write a checkpoint to {directory}: {why}{f' ({name})' if name else ''}; "
            f"{kept}. Free space or fix the directory's permissions (checkpoint.dir), then "
            "start again: the worker resumes from its newest good checkpoint"
        )


def _encode_payload(arrays: Mapping[str, npt.NDArray[Any]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        # checked at run time: callers may pass anything
        for name, value in cast("Mapping[object, object]", arrays).items():
            if not isinstance(name, str) or not _ARRAY_NAME.match(name) or ".." in name:
                raise ValueError(
                    f"checkpoint array name {name!r} must match {_ARRAY_NAME.pattern} without '..'"
                )
            if not isinstance(value, np.ndarray):
                raise TypeError(
                    f"checkpoint array {name!r} must be a numpy array, got {type(value).__name__}"
                )
            if value.dtype.hasobject:
                raise ValueError(
                    f"checkpoint array {name!r} has dtype {value.dtype}, which needs pickle; "
                    "store numbers, bools or fixed-width strings"
                )
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, value, allow_pickle=False)
    return buffer.getvalue()


def _encode(
    arrays: Mapping[str, npt.NDArray[Any]], header: Mapping[str, Any], version: int
) -> bytes:
    """The whole file's bytes (``version`` is a parameter so tests can forge other versions)."""
    try:
        header_bytes = json.dumps(dict(header), allow_nan=False, sort_keys=True).encode()
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint header is not plain JSON: {err}") from err
    payload = _encode_payload(arrays)
    prefix = MAGIC + struct.pack("<I", version)
    prefix = _PREFIX.pack(MAGIC, version, zlib.crc32(prefix))
    lengths = _LENGTHS.pack(len(header_bytes), len(payload))
    digest = hashlib.sha256(prefix + lengths)
    digest.update(header_bytes)
    digest.update(payload)
    return b"".join((prefix, lengths, digest.digest(), header_bytes, payload))


def _decode(data: bytes, where: str) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]:
    if len(data) < _HEAD_SIZE:
        raise CheckpointCorruptError(f"{where}: {len(data)} bytes, shorter than the 60-byte head")
    magic, version, crc = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise CheckpointCorruptError(f"{where}: not an encore checkpoint (magic {magic!r})")
    if zlib.crc32(data[:12]) != crc:
        raise CheckpointCorruptError(f"{where}: the version field is damaged (CRC mismatch)")
    if version != FORMAT_VERSION:
        raise CheckpointVersionError(
            f"{where}: checkpoint format version {version}, but this encore reads version "
            f"{FORMAT_VERSION}; use the encore release that wrote it, or start from an "
            "empty checkpoint directory"
        )
    header_len, payload_len = _LENGTHS.unpack_from(data, _PREFIX.size)
    expected = _HEAD_SIZE + header_len + payload_len
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "has trailing bytes"
        raise CheckpointCorruptError(f"{where}: {state} ({len(data)} of {expected} bytes)")
    stored = data[_PREFIX.size + _LENGTHS.size : _HEAD_SIZE]
    digest = hashlib.sha256(data[: _PREFIX.size + _LENGTHS.size])
    digest.update(memoryview(data)[_HEAD_SIZE:])
    if digest.digest() != stored:
        raise CheckpointCorruptError(f"{where}: SHA-256 mismatch, the file is damaged")
    try:
        header = json.loads(data[_HEAD_SIZE : _HEAD_SIZE + header_len].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointCorruptError(f"{where}: header is not JSON ({err})") from err
    if not isinstance(header, dict) or header.get("format_version") != FORMAT_VERSION:
        raise CheckpointCorruptError(f"{where}: header lacks format_version {FORMAT_VERSION}")
    try:
        with np.load(io.BytesIO(data[_HEAD_SIZE + header_len :]), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        # a checksummed file with an object array lands here: it is refused, never unpickled
        raise CheckpointCorruptError(f"{where}: payload unreadable ({err})") from err
    return arrays, header


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_temps(directory: Path) -> None:
    for entry in directory.iterdir():
        if _TEMP.match(entry.name):
            logger.warning("removing %s, left by a checkpoint write that did not finish", entry)
            entry.unlink(missing_ok=True)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sequence(path: Path) -> int:
    match = _NAME.match(path.name)
    if match is None:
        raise ValueError(f"{path} is not named like a checkpoint")
    return int(match.group(1))


def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """Checkpoint files in ``directory`` (by name, not verified), oldest first; [] if missing."""
    path = Path(directory)
    if not path.is_dir():
        return []
    return sorted((p for p in path.iterdir() if _NAME.match(p.name)), key=_sequence)


def write(
    directory: str | os.PathLike[str],
    arrays: Mapping[str, npt.NDArray[Any]],
    header: Mapping[str, Any],
    *,
    keep: int = 3,
    created_at_ms: int | None = None,
) -> Path:
    """Write one checkpoint atomically and keep the newest ``keep``.

    Args:
        directory: where checkpoints live; created if missing. One writer per directory.
        arrays: the state, by name (letters, digits, ``_ . - /``); numbers, bools or
            fixed-width strings only, never object arrays. Saved bit for bit (dtype, byte
            order, shape, memory order).
        header: JSON-able metadata: config, offsets per topic-partition, reward version,
            policy spec. ``format_version``, ``created_at_ms`` and ``sequence`` are added.
        keep: how many checkpoints to keep, newest first (>= 1).
        created_at_ms: wall-clock time to record, ms; the system clock when None.

    Returns:
        The path of the new checkpoint.

    Raises:
        ValueError: ``keep`` < 1, a reserved or non-JSON header entry, a bad array name, or an
            object array.
        TypeError: an array is not a numpy array.
        CheckpointWriteError: the file system refused (unwritable, full, not a directory); the
            previous checkpoints are untouched and no partial file is left.
    """
    if not _is_int(keep) or keep < 1:
        raise ValueError(f"keep must be an int >= 1, got {keep!r}")
    reserved = sorted(set(_RESERVED) & set(header))
    if reserved:
        raise ValueError(f"checkpoint header keys {reserved} are reserved; rename them")
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        _remove_temps(path)
        existing = list_checkpoints(path)
    except OSError as err:
        raise CheckpointWriteError(path, err) from err
    sequence = _sequence(existing[-1]) + 1 if existing else 1
    now_ms = time.time_ns() // 1_000_000 if created_at_ms is None else int(created_at_ms)
    full = {"format_version": FORMAT_VERSION, "created_at_ms": now_ms, "sequence": sequence}
    data = _encode(arrays, {**header, **full}, FORMAT_VERSION)
    final = path / f"checkpoint-{sequence:012d}.ckpt"
    temp = path / f".{final.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        try:
            with open(temp, "xb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, final)
        finally:
            temp.unlink(missing_ok=True)
        _fsync_dir(path)
    except OSError as err:
        raise CheckpointWriteError(path, err) from err
    old = list_checkpoints(path)[:-keep]
    try:
        for stale in old:
            stale.unlink(missing_ok=True)
        if old:
            _fsync_dir(path)
    except OSError as err:  # the new checkpoint is in place; old ones are removed next time
        logger.warning("could not remove old checkpoints in %s: %s", path, err)
    return final


def encode(
    arrays: Mapping[str, npt.NDArray[Any]], header: Mapping[str, Any], *, created_at_ms: int
) -> bytes:
    """One checkpoint's bytes, in memory (for state sent over Kafka rather than to a file).

    ``header`` gets ``format_version``, ``created_at_ms`` and ``sequence`` 0; see ``write``.
    """
    reserved = sorted(set(_RESERVED) & set(header))
    if reserved:
        raise ValueError(f"checkpoint header keys {reserved} are reserved; rename them")
    full = {"format_version": FORMAT_VERSION, "created_at_ms": int(created_at_ms), "sequence": 0}
    return _encode(arrays, {**header, **full}, FORMAT_VERSION)


def decode(data: bytes, where: str) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]:
    """Verify and read bytes from ``encode`` (``where`` names them in errors); see ``load``."""
    return _decode(data, where)


def load(path: str | os.PathLike[str]) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]:
    """Read and verify one checkpoint file.

    Returns:
        ``(arrays, header)``; the header as JSON decodes it (tuples come back as lists).

    Raises:
        CheckpointCorruptError: the file is truncated, damaged or not a checkpoint.
        CheckpointVersionError: the file has another format version.
        OSError: it cannot be read.
    """
    return _decode(Path(path).read_bytes(), str(path))


def sequence_of(path: str | os.PathLike[str]) -> int:
    """The sequence number in a checkpoint file's name."""
    return _sequence(Path(path))


def load_latest(
    directory: str | os.PathLike[str],
    *,
    before: int | None = None,
    remove_temps: bool = False,
) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]] | None:
    """The newest checkpoint that verifies, falling back past damaged ones.

    ``before``: only checkpoints with a smaller sequence number count. ``remove_temps``: also
    remove temporary files left by a killed writer; only the directory's one writer may ask
    (another reader would remove the file a live writer is about to rename into place).

    Returns:
        ``(arrays, header)``, or None when ``directory`` is missing or holds no checkpoint.

    Raises:
        CheckpointVersionError: the newest readable candidate has another format version
            (never skipped: going back to an older state silently would be worse).
        CheckpointError: there are checkpoints but none verifies.
    """
    path = Path(directory)
    if not path.is_dir():
        return None
    if remove_temps:
        _remove_temps(path)
    candidates = [
        c for c in list_checkpoints(path)[::-1] if before is None or _sequence(c) < before
    ]
    problems: list[str] = []
    for candidate in candidates:
        try:
            return load(candidate)
        except CheckpointCorruptError as err:
            logger.warning("skipping checkpoint: %s", err)
            problems.append(str(err))
    if problems:
        raise CheckpointError(f"no checkpoint in {path} verifies: " + "; ".join(problems))
    return None
