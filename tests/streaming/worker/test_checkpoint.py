"""Checkpoints: bit-for-bit round trips, atomicity, damage detection and fallback, pruning."""

from __future__ import annotations

import errno
import io
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streaming import join
from streaming.worker import checkpoint
from streaming.worker.checkpoint import (
    FORMAT_VERSION,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointVersionError,
)

HEADER: dict[str, Any] = {
    "config": {"join": {"window_ms": 1800000, "aggregate": "max"}},
    "offsets": {"encore.impressions/0": 1234, "encore.outcomes/3": 99},
    "reward_version": "stream30-v1",
    "policy": {"name": "linucb", "version": 1, "params": {"alpha": 1.0}},
}


def sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    nan_payload = np.array([0x7FC00001, 0xFFC00000], np.uint32).view(np.float32)
    return {
        "u64": rng.integers(0, 2**64 - 1, 7, dtype=np.uint64),
        "i8": np.array([-128, 0, 127], np.int8),
        "f16": rng.standard_normal(5).astype(np.float16),
        "f32_nan_bits": nan_payload,
        "f64_2d": rng.standard_normal((3, 4)),
        "fortran": np.asfortranarray(rng.standard_normal((4, 3)).astype(np.float32)),
        "big_endian": np.arange(6, dtype=">i4").reshape(2, 3),
        "bool": np.array([True, False, True]),
        "complex": np.array([1 + 2j, -0.5j], np.complex64),
        "scalar": np.array(42, np.int64),
        "empty": np.zeros((0, 3), np.float32),
        "text": np.array(["a", "bcd"], "<U3"),
        "policy/a_inv": np.eye(3, dtype=np.float32),
        "join.open_key": np.array([1, 2], np.uint64),
    }


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        x, y = a[name], b[name]
        assert (x.dtype, x.shape) == (y.dtype, y.shape), name
        assert x.flags.f_contiguous == y.flags.f_contiguous, name
        assert x.tobytes(order="A") == y.tobytes(order="A"), name


def test_round_trip_is_bit_for_bit(tmp_path: Path) -> None:
    arrays = sample_arrays()
    path = checkpoint.write(tmp_path, arrays, HEADER, created_at_ms=1_700_000_000_000)
    assert path == tmp_path / "checkpoint-000000000001.ckpt"
    loaded = checkpoint.load_latest(tmp_path)
    assert loaded is not None
    back, header = loaded
    assert_same(arrays, back)
    assert header == {
        **HEADER,
        "format_version": FORMAT_VERSION,
        "created_at_ms": 1_700_000_000_000,
        "sequence": 1,
    }
    # equal inputs give equal bytes (fixed zip dates, sorted header keys)
    again = checkpoint.write(tmp_path / "b", arrays, HEADER, created_at_ms=1_700_000_000_000)
    assert again.read_bytes() == path.read_bytes()


def test_join_state_survives_a_checkpoint(tmp_path: Path) -> None:
    cfg = join.JoinConfig(window_ms=100, allowed_lateness_ms=10, slate_size=2)
    state, _ = join.add_impressions(
        join.init(cfg),
        join.JoinImpressions(
            np.array([5, 6], np.uint64), np.array([0, 5], np.int64), np.array([0, 1], np.int64)
        ),
        cfg,
    )
    state, _ = join.add_outcomes(
        state,
        join.JoinOutcomes(
            np.array([6, 9], np.uint64),
            np.array([7, 8], np.int64),
            np.array([1, 0], np.int32),
            np.array([1.0, 0.0], np.float32),
            np.array([0, 1], np.int64),
        ),
        cfg,
    )
    checkpoint.write(tmp_path, join.to_arrays(state), {"config": {"window_ms": 100}})
    loaded = checkpoint.load_latest(tmp_path)
    assert loaded is not None
    back = join.from_arrays(loaded[0])
    assert_same(join.to_arrays(state), join.to_arrays(back))
    _, fx1 = join.advance(state, cfg, watermark_ms=join.MAX_TIME_MS)
    _, fx2 = join.advance(back, cfg, watermark_ms=join.MAX_TIME_MS)
    np.testing.assert_array_equal(fx1.closed.reward, fx2.closed.reward)
    np.testing.assert_array_equal(fx1.rejected_outcomes.payload, fx2.rejected_outcomes.payload)


def test_sequence_numbers_grow_and_only_the_newest_k_are_kept(tmp_path: Path) -> None:
    paths = [
        checkpoint.write(tmp_path, {"i": np.array(i)}, {}, keep=2, created_at_ms=i)
        for i in range(5)
    ]
    assert [p.name for p in paths] == [f"checkpoint-{i:012d}.ckpt" for i in range(1, 6)]
    assert checkpoint.list_checkpoints(tmp_path) == paths[-2:]
    assert sorted(os.listdir(tmp_path)) == [p.name for p in paths[-2:]]
    loaded = checkpoint.load_latest(tmp_path)
    assert loaded is not None
    assert int(loaded[0]["i"]) == 4 and loaded[1]["sequence"] == 5


def write_two(tmp_path: Path) -> tuple[Path, Path]:
    old = checkpoint.write(tmp_path, {"x": np.arange(1000)}, {"n": 1})
    new = checkpoint.write(tmp_path, {"x": np.arange(1000) * 2}, {"n": 2})
    return old, new


def damage_truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def damage_flip_payload(data: bytes) -> bytes:
    i = len(data) - 200
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


def damage_flip_header(data: bytes) -> bytes:
    return data[:70] + bytes([data[70] ^ 0x20]) + data[71:]


def damage_flip_version(data: bytes) -> bytes:
    return data[:8] + bytes([data[8] ^ 0x02]) + data[9:]


def damage_garbage(data: bytes) -> bytes:
    return np.random.default_rng(0).bytes(len(data))


def damage_empty(data: bytes) -> bytes:
    return b""


def damage_trailing(data: bytes) -> bytes:
    return data + b"\0"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (damage_truncate, "truncated"),
        (damage_flip_payload, "SHA-256 mismatch"),
        (damage_flip_header, "SHA-256 mismatch"),
        (damage_flip_version, "version field is damaged"),
        (damage_garbage, "not an encore checkpoint"),
        (damage_empty, "shorter than the 60-byte head"),
        (damage_trailing, "has trailing bytes"),
    ],
)
def test_damaged_newest_falls_back_to_the_previous_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Any, reason: str
) -> None:
    _, new = write_two(tmp_path)
    new.write_bytes(damage(new.read_bytes()))
    with pytest.raises(CheckpointCorruptError, match=reason):
        checkpoint.load(new)
    with caplog.at_level(logging.WARNING, logger="streaming.worker.checkpoint"):
        loaded = checkpoint.load_latest(tmp_path)
    assert loaded is not None
    arrays, header = loaded
    assert header["n"] == 1 and header["sequence"] == 1
    np.testing.assert_array_equal(arrays["x"], np.arange(1000))
    assert any(reason in r.getMessage() and new.name in r.getMessage() for r in caplog.records)


def test_no_good_checkpoint_is_an_error_naming_each_file(tmp_path: Path) -> None:
    old, new = write_two(tmp_path)
    for path in (old, new):
        path.write_bytes(damage_truncate(path.read_bytes()))
    with pytest.raises(CheckpointError, match=f"{old.name}.*truncated") as info:
        checkpoint.load_latest(tmp_path)
    assert new.name in str(info.value)


def test_missing_or_empty_directory_has_no_checkpoint(tmp_path: Path) -> None:
    assert checkpoint.load_latest(tmp_path / "nope") is None
    assert checkpoint.list_checkpoints(tmp_path / "nope") == []
    assert checkpoint.load_latest(tmp_path) is None


def test_other_format_version_is_a_clear_error_not_a_fallback(tmp_path: Path) -> None:
    write_two(tmp_path)
    forged = checkpoint._encode({"x": np.arange(3)}, {"format_version": 2}, version=2)  # pyright: ignore[reportPrivateUsage]
    (tmp_path / "checkpoint-000000000003.ckpt").write_bytes(forged)
    with pytest.raises(CheckpointVersionError, match="format version 2, but this encore reads"):
        checkpoint.load_latest(tmp_path)


def test_a_killed_write_leaves_a_temp_file_that_is_ignored_and_removed(tmp_path: Path) -> None:
    old, _ = write_two(tmp_path)
    new_name = "checkpoint-000000000003.ckpt"
    partial = tmp_path / f".{new_name}.tmp-4242-deadbeef"
    partial.write_bytes(old.read_bytes()[:100])
    loaded = checkpoint.load_latest(tmp_path)  # a reader: the file may be a live writer's
    assert loaded is not None and loaded[1]["n"] == 2
    assert partial.exists()
    loaded = checkpoint.load_latest(tmp_path, remove_temps=True)  # the writer, starting
    assert loaded is not None and loaded[1]["n"] == 2
    assert not partial.exists()
    partial.write_bytes(b"half")
    path = checkpoint.write(tmp_path, {"x": np.arange(2)}, {"n": 3})
    assert path.name == new_name and not partial.exists()


def test_a_failed_rename_keeps_the_previous_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_two(tmp_path)
    before = sorted(os.listdir(tmp_path))

    def fail(src: Any, dst: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "replace", fail)
    with pytest.raises(checkpoint.CheckpointWriteError, match="No space left") as caught:
        checkpoint.write(tmp_path, {"x": np.arange(2)}, {"n": 3})
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOSPC
    assert "checkpoint-000000000002.ckpt, is intact" in str(caught.value)
    assert sorted(os.listdir(tmp_path)) == before
    loaded = checkpoint.load_latest(tmp_path)
    assert loaded is not None and loaded[1]["n"] == 2


@pytest.mark.parametrize(
    ("where", "code"), [("open", errno.ENOSPC), ("fsync", errno.EIO), ("open", errno.EACCES)]
)
def test_a_full_or_unwritable_directory_is_a_clear_error_and_keeps_the_last_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, code: int
) -> None:
    write_two(tmp_path)
    before = sorted(os.listdir(tmp_path))
    real = getattr(checkpoint.os, where) if where == "fsync" else open

    def fail(*args: Any, **kwargs: Any) -> Any:
        if where == "open" and not str(args[0]).startswith(str(tmp_path)):
            return real(*args, **kwargs)
        raise OSError(code, os.strerror(code))

    if where == "open":
        monkeypatch.setattr("builtins.open", fail)
    else:
        monkeypatch.setattr(checkpoint.os, where, fail)
    with pytest.raises(checkpoint.CheckpointWriteError) as caught:
        checkpoint.write(tmp_path, {"x": np.arange(2)}, {"n": 3})
    monkeypatch.undo()
    assert caught.value.errno == code and str(tmp_path) in str(caught.value)
    assert sorted(os.listdir(tmp_path)) == before  # no partial file left behind
    loaded = checkpoint.load_latest(tmp_path)
    assert loaded is not None and loaded[1]["n"] == 2


def test_a_checkpoint_directory_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    target.write_bytes(b"not a directory")
    with pytest.raises(checkpoint.CheckpointWriteError, match="cannot write a checkpoint"):
        checkpoint.write(target, {"x": np.arange(2)}, {"n": 1})


def test_every_single_byte_flip_is_detected(tmp_path: Path) -> None:
    path = checkpoint.write(tmp_path, {"x": np.arange(4, dtype=np.int8)}, {"n": 1})
    data = path.read_bytes()
    for i in range(len(data)):
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1 :])
        with pytest.raises(CheckpointCorruptError):
            checkpoint.load(path)


def test_object_arrays_are_refused_on_write_and_never_unpickled_on_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="'bad' has dtype object, which needs pickle"):
        checkpoint.write(tmp_path, {"bad": np.array([{"a": 1}], dtype=object)}, {})
    assert checkpoint.list_checkpoints(tmp_path) == []
    # a correctly checksummed file whose payload holds a pickled object array
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, archive.open("bad.npy", "w") as member:
        np.lib.format.write_array(member, np.array([print], dtype=object), allow_pickle=True)
    payload = buffer.getvalue()
    monkeypatch.setattr(checkpoint, "_encode_payload", lambda arrays: payload)
    data = checkpoint._encode({}, {"format_version": FORMAT_VERSION}, FORMAT_VERSION)  # pyright: ignore[reportPrivateUsage]
    monkeypatch.undo()
    path = tmp_path / "checkpoint-000000000001.ckpt"
    path.write_bytes(data)
    with pytest.raises(CheckpointCorruptError, match=r"payload unreadable.*allow_pickle"):
        checkpoint.load(path)


@pytest.mark.parametrize(
    ("arrays", "header", "keep", "error", "message"),
    [
        ({"x": np.zeros(1)}, {"sequence": 3}, 3, ValueError, r"keys \['sequence'\] are reserved"),
        ({"x": np.zeros(1)}, {"bad": float("nan")}, 3, ValueError, "header is not plain JSON"),
        ({"x": np.zeros(1)}, {"bad": {1, 2}}, 3, ValueError, "header is not plain JSON"),
        ({"../x": np.zeros(1)}, {}, 3, ValueError, "array name '../x' must match"),
        ({"": np.zeros(1)}, {}, 3, ValueError, "array name '' must match"),
        ({"x": [1, 2]}, {}, 3, TypeError, "'x' must be a numpy array, got list"),
        ({"x": np.zeros(1)}, {}, 0, ValueError, "keep must be an int >= 1"),
    ],
)
def test_bad_inputs_are_rejected_before_anything_is_written(
    tmp_path: Path, arrays: Any, header: Any, keep: int, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        checkpoint.write(tmp_path, arrays, header, keep=keep)
    assert [p for p in tmp_path.iterdir() if p.is_file()] == []
