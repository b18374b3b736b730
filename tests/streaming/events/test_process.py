"""The decoding process answers exactly what decoding in the daemon's process gives, and a
decoding process that fails loses nothing: the batch in flight is decoded here instead."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
from collections.abc import Iterator

import numpy as np
import pytest

from streaming.events import Limits
from streaming.events.process import Decoded, Decoding, decode_here
from streaming.sim import traffic
from streaming.sim.simulator import SimConfig, Simulator
from tests.streaming.events.test_events import (
    IMPRESSION_CASES,
    LIM,
    OUTCOME_CASES,
    RECORD_TS_CASES,
    impression,
    raw,
)

SIM_LIMITS = Limits()


def simulated(n: int, seed: int, encoding: traffic.FeatureEncoding) -> tuple[list[bytes], ...]:
    sim = Simulator(SimConfig(seed=seed, request_gap_ms=1000))
    req = sim.requests(n)
    sl = sim.log_slates(req, 5)
    imps = traffic.impressions(
        req, sl.shown, sl.propensity, policy="logging", feature_encoding=encoding
    )
    wire = list(traffic.wire(imps, traffic.outcomes(req, sim.play(req, sl.shown))))
    return (
        [w.value for w in wire if w.role == "impressions"],
        [w.value for w in wire if w.role == "outcomes"],
    )


def assert_same(a: Decoded, b: Decoded) -> None:
    for batch_a, batch_b in ((a.impressions, b.impressions), (a.outcomes, b.outcomes)):
        assert type(batch_a) is type(batch_b)
        for name, x, y in zip(batch_a._fields, batch_a, batch_b, strict=True):
            assert x.dtype == y.dtype and x.shape == y.shape, name
            assert np.array_equal(x, y), name
    assert a.impression_rejects == b.impression_rejects
    assert a.outcome_rejects == b.outcome_rejects


@pytest.fixture
def decoding() -> Iterator[Decoding]:
    d = Decoding(SIM_LIMITS)
    assert not d.in_process
    yield d
    d.close()


@pytest.mark.parametrize("encoding", ["float32", "json"])
def test_simulated_batches_decode_there_as_here(
    decoding: Decoding, encoding: traffic.FeatureEncoding
) -> None:
    for seed in range(3):  # the same child, batch after batch
        imps, outs = simulated(300, seed, encoding)
        imps[7], outs[11] = b"{", b'{"schema": "outcome/1"}'
        decoding.submit(imps, outs)
        assert decoding.busy
        got = decoding.result()
        assert not decoding.busy and not decoding.in_process
        assert_same(got, decode_here(imps, outs, SIM_LIMITS))
        assert [r.row for r in got.impression_rejects] == [7]
        assert got.impression_rejects[0].raw == b"{"  # the original bytes, for the dead letters


def test_every_malformed_case_gets_the_same_code_and_reason_there() -> None:
    imps = [data for _, data, _ in IMPRESSION_CASES]
    outs = [data for _, data, _ in OUTCOME_CASES]
    d = Decoding(LIM)
    try:
        d.submit(imps, outs)
        got = d.result()
    finally:
        d.close()
    assert_same(got, decode_here(imps, outs, LIM))
    assert [r.code for r in got.impression_rejects] == [c for _, _, c in IMPRESSION_CASES]
    assert [r.code for r in got.outcome_rejects] == [c for _, _, c in OUTCOME_CASES]


@pytest.mark.parametrize("process", [True, False])
def test_record_timestamps_and_every_limit_reach_the_child(process: bool) -> None:
    """Each message's record timestamp goes with it, and every ``Limits`` field (an infinite
    ``max_feature_norm`` too) reaches the child: the same verdicts there as here."""
    imps = [(d, ts) for name, d, ts, _ in RECORD_TS_CASES if name.startswith("impression")]
    outs = [(d, ts) for name, d, ts, _ in RECORD_TS_CASES if name.startswith("outcome")]
    huge = raw(impression(context=[3e38, 0.0]))
    for limits in (LIM, dataclasses.replace(LIM, max_feature_norm=math.inf, min_propensity=0.3)):
        d = Decoding(limits, process=process)
        try:
            batch = ([huge, *(x for x, _ in imps)], [x for x, _ in outs])
            stamps = ([0, *(t for _, t in imps)], [t for _, t in outs])
            d.submit(*batch, *stamps)
            got = d.result()
            d.submit(*batch)  # no timestamps: no bound on event time
            unbounded = d.result()
            assert d.failures == 0 and d.in_process is not process
        finally:
            d.close()
        assert_same(got, decode_here(*batch, limits, *stamps))
        assert_same(unbounded, decode_here(*batch, limits))
        codes = [r.code for r in got.impression_rejects + got.outcome_rejects]
        ahead = [c == "ts_ahead_of_record" for _, _, _, c in RECORD_TS_CASES]
        assert codes.count("ts_ahead_of_record") == sum(ahead)
        assert "ts_ahead_of_record" not in [r.code for r in unbounded.impression_rejects]
        # impression()'s propensity 0.25 is below the second limits' minimum: every impression
        # not ahead of its record (the huge one too: propensities are checked before features)
        imps_ahead = [c for (n, _, _, c) in RECORD_TS_CASES if n.startswith("impression")]
        low = 1 + len(imps) - imps_ahead.count("ts_ahead_of_record")
        assert codes.count("low_propensity") == (0 if limits is LIM else low)
        assert ("large_features" in codes) is (limits is LIM)


def test_empty_and_one_sided_batches(decoding: Decoding) -> None:
    imps, outs = simulated(5, 0, "float32")
    for batch in (([], []), (imps, []), ([], outs), ([b""], [b""])):
        decoding.submit(*batch)
        assert_same(decoding.result(), decode_here(*batch, SIM_LIMITS))


def test_batches_beyond_the_shared_areas_first_size_grow_them(decoding: Decoding) -> None:
    """Requests over 16 MiB (too-large messages, rejected) and answers over 16 MiB (wide
    candidate lists) both fit after the areas grow; smaller batches still decode after."""
    big = [b"x" * (SIM_LIMITS.max_message_bytes + 1)] * 20
    decoding.submit(big, [])
    got = decoding.result()
    assert [r.code for r in got.impression_rejects] == ["too_large"] * 20
    assert got.impression_rejects[3].raw == big[3]
    sim = Simulator(SimConfig(seed=1, request_gap_ms=1000, n_candidates=1000))
    req = sim.requests(300)
    sl = sim.log_slates(req, 5)
    wide = [
        w.value
        for w in traffic.wire(traffic.impressions(req, sl.shown, sl.propensity, policy="p"), [])
    ]
    decoding.submit(wide, [])
    got = decoding.result()
    assert got.impressions.candidate_features.nbytes > 16 << 20
    assert_same(got, decode_here(wide, [], SIM_LIMITS))
    imps, outs = simulated(20, 2, "float32")
    decoding.submit(imps, outs)
    assert_same(decoding.result(), decode_here(imps, outs, SIM_LIMITS))
    assert not decoding.in_process


def test_a_decoding_process_that_dies_loses_nothing(
    decoding: Decoding, caplog: pytest.LogCaptureFixture
) -> None:
    imps, outs = simulated(50, 3, "float32")
    child = decoding._child  # pyright: ignore[reportPrivateUsage]
    assert child is not None
    child.proc.send_signal(signal.SIGSTOP)  # it cannot answer before it is killed
    decoding.submit(imps, outs)
    child.proc.kill()
    child.proc.wait()
    with caplog.at_level(logging.WARNING, logger="streaming.events.process"):
        got = decoding.result()  # the batch in flight, decoded here
    assert_same(got, decode_here(imps, outs, SIM_LIMITS))
    assert decoding.in_process and decoding.failures == 1
    assert "decoding in the daemon's process from now on" in caplog.text
    decoding.submit(imps[:3], outs[:4])  # and the next ones too
    assert_same(decoding.result(), decode_here(imps[:3], outs[:4], SIM_LIMITS))


def test_a_dead_decoding_process_found_at_submit_loses_nothing(decoding: Decoding) -> None:
    imps, outs = simulated(50, 4, "json")
    child = decoding._child  # pyright: ignore[reportPrivateUsage]
    assert child is not None
    child.proc.kill()
    child.proc.wait()
    decoding.submit(imps, outs)
    assert_same(decoding.result(), decode_here(imps, outs, SIM_LIMITS))
    assert decoding.in_process and decoding.failures == 1


def test_submit_and_result_must_alternate(decoding: Decoding) -> None:
    with pytest.raises(RuntimeError, match="without a batch submitted"):
        decoding.result()
    decoding.submit([], [])
    with pytest.raises(RuntimeError, match="previous batch"):
        decoding.submit([], [])
    decoding.result()


def test_in_process_decoding_starts_no_child() -> None:
    d = Decoding(SIM_LIMITS, process=False)
    imps, outs = simulated(10, 5, "float32")
    d.submit(imps, outs)
    assert d.in_process and d.failures == 0
    assert_same(d.result(), decode_here(imps, outs, SIM_LIMITS))
    d.close()


def test_a_decoding_process_that_does_not_answer_in_time_is_replaced_by_decoding_here(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = Decoding(SIM_LIMITS, answer_timeout_s=0.5)
    try:
        child = d._child  # pyright: ignore[reportPrivateUsage]
        assert child is not None
        child.proc.send_signal(signal.SIGSTOP)  # stopped: alive, but it never answers
        imps, outs = simulated(20, 6, "float32")
        d.submit(imps, outs)
        with caplog.at_level(logging.WARNING, logger="streaming.events.process"):
            got = d.result()
        assert_same(got, decode_here(imps, outs, SIM_LIMITS))
        assert d.in_process and "TimeoutError: no answer in 0.5 s" in caplog.text
        assert child.proc.poll() is not None  # killed, not left stopped
    finally:
        d.close()


def test_an_answer_that_cannot_be_read_is_a_fallback_not_an_error(
    decoding: Decoding, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streaming.events import process as decode_process

    def broken(*_: object) -> list[object]:
        raise TypeError("a column of no known dtype")

    monkeypatch.setattr(decode_process._Area, "arrays", broken)  # pyright: ignore[reportPrivateUsage]
    imps, outs = simulated(20, 7, "json")
    decoding.submit(imps, outs)
    assert_same(decoding.result(), decode_here(imps, outs, SIM_LIMITS))
    assert decoding.in_process and decoding.failures == 1


def test_no_shared_memory_means_decoding_here(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where ``os.memfd_create`` is missing (not Linux) the daemon decodes in its own process."""
    monkeypatch.delattr(os, "memfd_create")
    with caplog.at_level(logging.WARNING, logger="streaming.events.process"):
        d = Decoding(SIM_LIMITS)
    assert d.in_process and d.failures == 1 and d.child_pid is None
    assert "could not start (AttributeError" in caplog.text
    imps, outs = simulated(5, 8, "float32")
    d.submit(imps, outs)
    assert_same(d.result(), decode_here(imps, outs, SIM_LIMITS))
    d.close()


def test_the_config_sets_every_bound_and_ahead_follows_the_join() -> None:
    """``events.max_event_ahead_ms`` -1 (the default) is the join's allowed lateness: an event
    further ahead than that would make the on-time events after it late."""
    from streaming.config import Config
    from streaming.core import limits

    lim = limits(Config.load(env={}, overrides=["join.allowed_lateness_ms=90000"]))
    assert lim.max_event_ahead_ms == 90_000
    assert (lim.min_propensity, lim.max_feature_norm) == (1e-6, 10.0)
    env = {
        "ENCORE_EVENTS__MAX_EVENT_AHEAD_MS": "0",
        "ENCORE_EVENTS__MIN_PROPENSITY": "1e-4",
        "ENCORE_EVENTS__MAX_FEATURE_NORM": "inf",
    }
    lim = limits(Config.load(env=env))
    assert (lim.max_event_ahead_ms, lim.min_propensity, lim.max_feature_norm) == (
        0,
        1e-4,
        math.inf,
    )
