"""streaming.deltas: the wire format round-trips, and a worker id used by two lineages is caught."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from bandits.linear import LinearDelta
from streaming import deltas


def stats() -> LinearDelta:
    rng = np.random.default_rng(0)
    return LinearDelta(
        precision=rng.normal(size=(3, 3)).astype(np.float32),
        b=rng.normal(size=3).astype(np.float32),
        id_count=np.array([1.0, 0.0], np.float32),
        id_resid=np.array([0.5, 0.0], np.float32),
        n=np.int32(7),
    )


@pytest.mark.parametrize("lineage", ["0123456789abcdef", None])
def test_a_delta_round_trips_with_or_without_a_lineage(lineage: str | None) -> None:
    d = deltas.decode(deltas.encode("w1", 4, "linucb", 2, stats(), lineage))
    assert (d.worker, d.seq, d.policy, d.version, d.lineage) == ("w1", 4, "linucb", 2, lineage)
    for name, want in stats()._asdict().items():
        np.testing.assert_array_equal(np.asarray(getattr(d.stats, name)), want)


def test_a_delta_from_before_lineages_decodes_with_none() -> None:
    data = deltas.encode("w1", 1, "linucb", 2, stats())
    (h,) = struct.unpack("<I", data[:4])
    assert "lineage" not in json.loads(data[4 : 4 + h])
    assert deltas.decode(data).lineage is None


def test_only_the_own_id_under_another_lineage_is_a_conflict() -> None:
    own = deltas.decode(deltas.encode("w1", 3, "linucb", 2, stats(), "aaaa"))
    deltas.check_own(own, "w1", "aaaa", "t")  # this worker's own delta
    deltas.check_own(own, "w2", "bbbb", "t")  # another worker's delta
    old = deltas.decode(deltas.encode("w1", 3, "linucb", 2, stats()))
    deltas.check_own(old, "w1", "bbbb", "t")  # from before lineages: nothing to compare
    with pytest.raises(deltas.WorkerIdConflictError) as caught:
        deltas.check_own(own, "w1", "bbbb", "encore.policy-deltas")
    message = str(caught.value)
    assert "'w1'" in message and "aaaa" in message and "bbbb" in message
    assert "encore.policy-deltas" in message and "scale.worker_id" in message
