"""The old-against-new replay check works: the same code replayed twice learns the same bits."""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).parents[2] / "tools"))

import replay_check  # a tool script (see its docstring), not a package module


def test_replay_dumps_of_the_same_code_compare_identical(tmp_path: Path) -> None:
    polls = replay_check.build_polls(1_500, max_records=2_000)
    fixture = tmp_path / "stream.msgpack"
    fixture.write_bytes(msgspec.msgpack.encode(polls))
    assert replay_check.main(["dump", str(fixture), str(tmp_path / "a"), "--passes", "1"]) == 0
    assert replay_check.main(["dump", str(fixture), str(tmp_path / "b"), "--passes", "1"]) == 0
    assert replay_check.compare(tmp_path / "a", tmp_path / "b") == []
    # and a difference is found: one checkpoint array changed
    import numpy as np

    with np.load(tmp_path / "b.npz") as z:
        arrays = dict(z)
    arrays["next_payload"] = arrays["next_payload"] + 1
    np.savez(tmp_path / "b.npz", **arrays)
    assert replay_check.compare(tmp_path / "a", tmp_path / "b") == ["array next_payload differs"]
