"""A daemon the group leaves without partitions comes back, against the real broker.

Three ways a worker can end up holding nothing: the group join completed with the leader
assigning nothing (kafka-python 3.0.12 then does not always rejoin by itself), the process
paused past its session timeout (a long stop of the world: it is kicked out of the group), and
the group simply having more workers than partitions (which must not set off rebalances).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.protocol.consumer.metadata import ConsumerProtocolAssignment

from streaming.config import Config
from streaming.demo import produce_simulated
from streaming.kafka.clients import TopicPartition, ensure_topics, make_consumer
from streaming.worker import daemon as daemon_module
from streaming.worker.daemon import Daemon
from tests.integration.test_faults import (
    ROOT,
    SLATE,
    assert_same_learning,
    child_env,
    events_counted,
    final_state,
    fresh_topics,
    newest_sequence,
    start_daemon,
    stop,
    tail,
    wait_done,
    write_config,
)
from tests.integration.test_rebalance import wait
from tests.integration.test_scale_out import config

pytestmark = pytest.mark.integration


class _NothingTheFirstTime(RangePartitionAssignor):
    """The range assignor, except that the first assignment it makes gives nobody anything:
    what a leader whose metadata lacked the topics hands out."""

    first = True

    @classmethod
    def assign(cls, cluster: Any, members: Any) -> Any:  # pyright: ignore[reportIncompatibleMethodOverride]  # kafka-python 3 names it members
        if cls.first:
            cls.first = False
            return {m.member_id: ConsumerProtocolAssignment(cls.version, [], b"") for m in members}
        return super().assign(cluster, members)


class _NothingTwice(RangePartitionAssignor):
    """The range assignor, except that its first two assignments give nobody anything: a
    client that a rejoin does not mend."""

    left = 2

    @classmethod
    def assign(cls, cluster: Any, members: Any) -> Any:  # pyright: ignore[reportIncompatibleMethodOverride]  # kafka-python 3 names it members
        if cls.left:
            cls.left -= 1
            return {m.member_id: ConsumerProtocolAssignment(cls.version, [], b"") for m in members}
        return super().assign(cluster, members)


def watched(servers: str, run: str, tmp: Path, name: str, group: str, *extra: str) -> Config:
    """A daemon's config on the run's topics, with a 6 s session and a 6 s watchdog."""
    return config(
        servers,
        run,
        tmp,
        name,
        "kafka.session_timeout_ms=6000",
        "kafka.rejoin_unassigned_ms=6000",
        *extra,
        share=False,
        group=group,
    )


def run_with_assignor(
    cfg: Config,
    servers: str,
    monkeypatch: pytest.MonkeyPatch,
    assignor: type,
    timeout_s: float,
    meanwhile: Callable[[Daemon], None] | None = None,
) -> Daemon:
    """Run a daemon whose group consumers use ``assignor`` until it is idle (``meanwhile``
    called once it started); fails if it is still running after ``timeout_s``."""

    def consumer_with_the_assignor(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("group_id") == cfg.kafka.group_id:
            kwargs["partition_assignment_strategy"] = [assignor]
        return make_consumer(*args, **kwargs)

    monkeypatch.setattr(daemon_module, "make_consumer", consumer_with_the_assignor)
    d = Daemon(cfg, servers=servers)
    stop_event = threading.Event()
    worker = threading.Thread(target=d.run, args=(stop_event,), kwargs={"exit_when_idle_ms": 3000})
    worker.start()
    try:
        if meanwhile is not None:
            meanwhile(d)
        worker.join(timeout=timeout_s)
        assert not worker.is_alive(), "the daemon never read the stream (stuck without partitions)"
    finally:
        stop_event.set()
        worker.join(timeout=60)
    return d


def test_a_daemon_whose_join_assigned_nothing_rejoins_and_reads_the_whole_stream(
    kafka_broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the watchdog this daemon holds nothing forever: the group is stable, its
    metadata unchanged, and kafka-python sees no reason to rejoin."""
    run = uuid.uuid4().hex[:8]
    cfg = watched(kafka_broker, run, tmp_path, "w", f"lv-{run}")
    ensure_topics(cfg, kafka_broker)
    sent = produce_simulated(cfg, kafka_broker, n_requests=1500, slate_size=SLATE, seed=3)

    _NothingTheFirstTime.first = True

    def first_join(d: Daemon) -> None:
        wait("the first join never completed", lambda: d.consumer is not None, 60)
        assert not _NothingTheFirstTime.first or not d.consumer.assignment()

    d = run_with_assignor(cfg, kafka_broker, monkeypatch, _NothingTheFirstTime, 180, first_join)
    assert not _NothingTheFirstTime.first  # the empty assignment did happen
    assert d.stats.rejoins >= 1
    assert d.watch is not None and d.watch.rejoins == d.stats.rejoins
    assert d.stats.events == sent
    assert d.metrics_snapshot()["rejoins_total"] == d.stats.rejoins


def test_a_daemon_a_rejoin_did_not_mend_replaces_its_consumer_and_reads_the_stream_once(
    kafka_broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing after the join, nothing after the watchdog's rejoin: at its next check the
    watchdog replaces the consumer, which then gets the partitions and reads everything once."""
    run = uuid.uuid4().hex[:8]
    cfg = watched(kafka_broker, run, tmp_path, "r", f"lr-{run}")
    ensure_topics(cfg, kafka_broker)
    sent = produce_simulated(cfg, kafka_broker, n_requests=1500, slate_size=SLATE, seed=4)
    _NothingTwice.left = 2
    d = run_with_assignor(cfg, kafka_broker, monkeypatch, _NothingTwice, 240)
    assert _NothingTwice.left == 0  # both empty assignments happened
    assert d.stats.rejoins >= 1 and d.stats.consumer_restarts >= 1
    assert d.stats.events == sent  # read once: nothing lost or doubled
    assert d.state.counters["impressions"] + d.state.counters["outcomes"] == sent


class _PausedOnce(Daemon):
    """A daemon whose first consumer stops fetching once assigned (all partitions paused):
    what a client that can no longer reach its coordinator looks like from the loop."""

    paused = False

    def on_assigned(self, tps: list[TopicPartition]) -> None:
        super().on_assigned(tps)
        if not self.paused:
            self.paused = True
            self.consumer.pause(*tps)


def test_a_consumer_that_stops_fetching_is_replaced_and_the_stream_read_once(
    kafka_broker: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    cfg = watched(kafka_broker, run, tmp_path, "p", f"st-{run}", "kafka.stall_restart_ms=8000")
    ensure_topics(cfg, kafka_broker)
    sent = produce_simulated(cfg, kafka_broker, n_requests=1500, slate_size=SLATE, seed=5)
    d = _PausedOnce(cfg, servers=kafka_broker)
    d.run(threading.Event(), exit_when_idle_ms=3000)
    assert d.paused
    assert d.stats.consumer_restarts == 1
    assert d.stats.events == sent  # read once, after the restart: nothing lost or doubled
    assert d.state.counters["impressions"] + d.state.counters["outcomes"] == sent


HOLDER = """
import sys, time
from streaming.config import Config
from streaming.kafka.clients import make_consumer
servers, group, *topics = sys.argv[1:]
cfg = Config.load(env={}, overrides=["kafka.client_id=a", "kafka.session_timeout_ms=10000"])
c = make_consumer(cfg.kafka, servers, group_id=group, topics=topics)
seen = None
while True:
    c.poll(timeout_ms=200)
    now = (c._coordinator._generation.generation_id, len(c.assignment()))
    if now != seen:
        print(*now, flush=True)
        seen = now
"""


def spare_worker_attempt(kafka_broker: str, tmp: Path) -> tuple[Daemon, list[tuple[int, int]]]:
    """One holder process ("a") and one daemon ("b") in a fresh group on one-partition topics;
    returns b once its watchdog asked the group twice (or once b holds partitions: a lost
    them), and a's (generation, partitions held)."""
    run = uuid.uuid4().hex[:8]
    group = f"sp-{run}"
    cfg = watched(kafka_broker, run, tmp, "b", group, "topics.partitions=1")
    ensure_topics(cfg, kafka_broker)
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / "holder.out"
    # Member "a" sorts before "b", so the range assignor gives it both partitions.
    with out.open("wb") as sink:
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                HOLDER,
                kafka_broker,
                group,
                cfg.topics.impressions,
                cfg.topics.outcomes,
            ],
            cwd=ROOT,
            env=child_env(),
            stdout=sink,
            stderr=subprocess.DEVNULL,
        )

    def holder_states() -> list[tuple[int, int]]:
        lines = out.read_text().split()
        return [(int(g), int(n)) for g, n in zip(lines[::2], lines[1::2], strict=False)]

    d = Daemon(cfg, servers=kafka_broker)
    stop_event = threading.Event()
    worker = threading.Thread(target=d.run, args=(stop_event,))
    try:
        wait("a never held its partitions", lambda: (holder_states() or [(0, 0)])[-1][1] == 2, 60)
        worker.start()
        wait(
            "b's watchdog did not ask the group twice",
            lambda: (
                d.watch is not None
                and (d.watch.checks >= 2 or d.watch.rejoins > 0 or bool(d.consumer.assignment()))
            ),
            90,
            lambda: f"b holds {d.consumer and d.consumer.assignment()}, a: {holder_states()}",
        )
    finally:
        stop_event.set()
        worker.join(timeout=60)
        holder.kill()
        holder.wait(timeout=30)
    return d, holder_states()


def test_a_spare_worker_of_a_group_that_owns_every_partition_does_not_rejoin(
    kafka_broker: str, tmp_path: Path
) -> None:
    """One partition per topic and two members: the second holds nothing, rightly; its
    watchdog asks the group, sees every partition owned, and sets off no rebalance.

    The holder is a plain kafka-python consumer in a process of its own. Should the group
    expel it meanwhile (a loaded machine; kafka-python 3.0.12 can stall), b
    rightly takes the partitions and the attempt says nothing about spare workers: it is run
    again, at most three times. A rejoin by b fails the test in any attempt.
    """
    held_nothing = 0
    for attempt in range(3):
        d, states = spare_worker_attempt(kafka_broker, tmp_path / f"attempt-{attempt}")
        assert d.stats.rejoins == d.stats.consumer_restarts == 0, (
            f"b rejoined while a held {states}"
        )
        if d.stats.events == 0 and states[-1][1] == 2 and len({g for g, _ in states}) <= 3:
            # a held both partitions throughout, with one more generation for b's join; a
            # rejoin per check would have added a generation per check.
            held_nothing += 1
            break
    assert held_nothing, "the holder lost its partitions in every attempt"


def test_a_daemon_paused_past_its_session_learns_what_an_uninterrupted_run_learns(
    tmp_path: Path, kafka_broker: str
) -> None:
    """SIGSTOP for 1.5 session timeouts mid-stream, then SIGCONT: the group expels the paused
    daemon; back, it must rejoin, take its partitions and windows again and finish."""
    topics = fresh_topics()
    paused = write_config(
        tmp_path / "paused.toml",
        kafka_broker,
        topics,
        group=f"ps-{uuid.uuid4().hex[:6]}",
        ckpt_dir=tmp_path / "ck-paused",
    )
    plain = write_config(
        tmp_path / "plain.toml",
        kafka_broker,
        topics,
        group=f"pl-{uuid.uuid4().hex[:6]}",
        ckpt_dir=tmp_path / "ck-plain",
    )
    ensure_topics(paused, kafka_broker)
    sent = produce_simulated(paused, kafka_broker, n_requests=9000, slate_size=SLATE, seed=17)
    log = tmp_path / "paused.log"
    proc = start_daemon(tmp_path / "paused.toml", log)
    uninterrupted = start_daemon(tmp_path / "plain.toml", tmp_path / "plain.log")
    try:
        deadline = time.monotonic() + 120
        while newest_sequence(tmp_path / "ck-paused") < 2:
            assert proc.poll() is None, f"the daemon stopped early:\n{tail(log)}"
            assert time.monotonic() < deadline, f"no checkpoint in 120 s:\n{tail(log)}"
            time.sleep(0.05)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(1.5 * paused.kafka.session_timeout_ms / 1000)
        proc.send_signal(signal.SIGCONT)
        wait_done(proc, log)
        wait_done(uninterrupted, tmp_path / "plain.log")
    finally:
        proc.send_signal(signal.SIGCONT)
        stop(proc)
        stop(uninterrupted)
    text = log.read_text(errors="replace")
    assert "Heartbeat session expired" in text or "lost membership" in text, tail(log)
    got, want = final_state(paused), final_state(plain)
    assert events_counted(want) == sent
    assert_same_learning(got, want)
