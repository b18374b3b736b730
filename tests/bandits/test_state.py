"""Saved state: no pickle, and loading the wrong thing fails clearly."""

from __future__ import annotations

import json
import struct

import pytest

from bandits import POLICIES, StateFormatError, load, save
from bandits.state import MAGIC, read_header

POLICY = POLICIES["linucb"](n_ids=8)
STATE = POLICY.init(3, 2)
BLOB = save(POLICY, STATE)


def test_header_records_spec_and_format() -> None:
    header = read_header(BLOB)
    assert header["format_version"] == 1
    assert header["spec"]["name"] == "linucb" and header["spec"]["params"]["n_ids"] == 8
    assert header["state_type"] == "LinearState"
    assert b"pickle" not in BLOB and b"\x80\x04" not in BLOB[:64]


def test_another_policy_is_refused() -> None:
    other = POLICIES["squarecb"](n_ids=8)
    with pytest.raises(
        StateFormatError, match="written by policy 'linucb', cannot load it into 'squarecb'"
    ):
        load(other, BLOB, like=other.init(3, 2))


def test_other_hyperparameters_are_refused() -> None:
    other = POLICIES["linucb"](n_ids=8, alpha=2.0)
    with pytest.raises(StateFormatError, match=r"alpha: saved 1\.0 != 2\.0"):
        load(other, BLOB, like=STATE)


def test_other_dimensions_are_refused() -> None:
    with pytest.raises(StateFormatError, match=r"\.precision has shape \(12, 12\).*\(9, 9\)"):
        load(POLICY, BLOB, like=POLICY.init(2, 2))


def _rewrite(mutate: str, value: object) -> bytes:
    header = read_header(BLOB)
    start = len(MAGIC) + 8
    (size,) = struct.unpack("<Q", BLOB[len(MAGIC) : start])
    if mutate == "version":
        header["spec"]["version"] = value
    else:
        header["format_version"] = value
    head = json.dumps(header).encode()
    return MAGIC + struct.pack("<Q", len(head)) + head + BLOB[start + size :]


def test_another_policy_version_is_refused() -> None:
    with pytest.raises(StateFormatError, match="'linucb' version 99, this is version 1"):
        load(POLICY, _rewrite("version", 99), like=STATE)


def test_another_format_version_is_refused() -> None:
    with pytest.raises(StateFormatError, match="state format version 7 is not supported"):
        load(POLICY, _rewrite("format", 7), like=STATE)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"PK\x03\x04rest", "bad magic"),
        (MAGIC + b"\x01", "truncated"),
        (MAGIC + struct.pack("<Q", 100) + b"{}", "truncated"),
        (MAGIC + struct.pack("<Q", 3) + b"{x}", "corrupt policy state header"),
    ],
)
def test_garbage_is_refused(blob: bytes, message: str) -> None:
    with pytest.raises(StateFormatError, match=message):
        load(POLICY, blob, like=STATE)
