"""streaming.worker.deltas: the wire format round-trips, and a worker id used by two lineages is caught."""

from __future__ import annotations

import json
import struct
from typing import NamedTuple

import numpy as np
import pytest

from bandits.linear import LinearDelta
from streaming.worker import deltas


def stats() -> LinearDelta:
    rng = np.random.default_rng(0)
    return LinearDelta(
        precision=rng.normal(size=(3, 3)).astype(np.float32),
        b=rng.normal(size=3).astype(np.float32),
        id_count=np.array([1.0, 0.0], np.float32),
        id_resid=np.array([0.5, 0.0], np.float32),
        n=np.int32(7),
        fast_id_count=np.array([0.5, 0.0], np.float32),
        fast_id_resid=np.array([0.25, 0.0], np.float32),
    )


@pytest.mark.parametrize(("lineage", "created_ms"), [("0123456789abcdef", 1_700), (None, None)])
def test_a_delta_round_trips_with_or_without_a_lineage(
    lineage: str | None, created_ms: int | None
) -> None:
    d = deltas.decode(deltas.encode("w1", 4, "linucb", 2, stats(), lineage, created_ms))
    assert (d.worker, d.seq, d.policy, d.version) == ("w1", 4, "linucb", 2)
    assert (d.lineage, d.created_ms) == (lineage, created_ms)
    for name, want in stats()._asdict().items():
        np.testing.assert_array_equal(np.asarray(getattr(d.stats, name)), want)


def test_a_delta_from_before_lineages_decodes_with_none() -> None:
    data = deltas.encode("w1", 1, "linucb", 2, stats())
    (h,) = struct.unpack("<I", data[:4])
    assert not {"lineage", "created_ms"} & set(json.loads(data[4 : 4 + h]))
    assert deltas.decode(data).lineage is None


def delta(worker: str, lineage: str | None, created_ms: int | None) -> deltas.Delta:
    return deltas.decode(deltas.encode(worker, 3, "linucb", 2, stats(), lineage, created_ms))


def test_only_the_own_id_under_another_live_lineage_is_a_conflict() -> None:
    born = 1_000
    deltas.check_own(delta("w1", "aaaa", 5_000), "w1", "aaaa", born, "t")  # its own
    deltas.check_own(delta("w1", "bbbb", 5_000), "w2", "aaaa", born, "t")  # another worker's
    deltas.check_own(delta("w1", None, None), "w1", "aaaa", born, "t")  # before lineages
    # sent before this lineage was born: this id's past (its checkpoints were lost), skipped
    deltas.check_own(delta("w1", "bbbb", born - 1), "w1", "aaaa", born, "t")
    for created in (born, 5_000, None):  # sent since, or at an unknown time: a live other worker
        with pytest.raises(deltas.WorkerIdConflictError) as caught:
            deltas.check_own(delta("w1", "bbbb", created), "w1", "aaaa", born, "encore.deltas")
        message = str(caught.value)
        assert "'w1'" in message and "aaaa" in message and "bbbb" in message
        assert "encore.deltas" in message and "scale.worker_id" in message


class _BeforeAdaptation(NamedTuple):
    """A delta as workers sent it before the linear policies adapted to change."""

    precision: np.ndarray
    b: np.ndarray
    id_count: np.ndarray
    id_resid: np.ndarray
    n: np.ndarray


def test_a_delta_from_before_adaptation_decodes_with_empty_challenger_terms() -> None:
    old = _BeforeAdaptation(*stats()[:5])
    d = deltas.decode(deltas.encode("w1", 2, "linucb", 1, old))  # type: ignore[arg-type]
    for name, want in old._asdict().items():
        np.testing.assert_array_equal(np.asarray(getattr(d.stats, name)), want)
    assert d.stats.fast_id_count.shape == d.stats.fast_id_resid.shape == (0,)
