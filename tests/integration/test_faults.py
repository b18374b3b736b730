"""Fault tests of the daemon against the real broker: kill -9, broker restart, bad input.

Every test runs ``python -m streaming run --config <toml> --exit-when-idle-ms ...`` as a
subprocess on topics of its own, then reads the daemon's newest checkpoint and compares the
learned state with what an uninterrupted run (fresh checkpoint folder, another consumer group)
learned from the same events.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from streaming.config import Config
from streaming.core import WorkerState, from_arrays, join_counters, make_engine
from streaming.demo import LOGGING, SimulatedStream, produce_simulated
from streaming.kafka.broker import TEST_SETTINGS, LocalBroker
from streaming.kafka.clients import ensure_topics, make_consumer, make_producer
from streaming.sim import traffic
from streaming.sim.simulator import SimConfig, Simulator
from streaming.worker import checkpoint

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SLATE = 5
IDLE_MS = 4000
RUN_TIMEOUT_S = 240.0
DAEMON = [sys.executable, "-m", "streaming", "run"]


# ------------------------------------------------------------------------------------ helpers
@dataclass(frozen=True)
class Topics:
    impressions: str
    outcomes: str
    dlq: str
    late: str
    snapshots: str
    deltas: str
    joined: str
    handoff: str


def fresh_topics() -> Topics:
    run = uuid.uuid4().hex[:8]
    return Topics(*(f"{p}-{run}" for p in ("fi", "fo", "fd", "fl", "fs", "fx", "fj", "fh")))


def write_config(
    path: Path,
    servers: str,
    topics: Topics,
    *,
    group: str,
    ckpt_dir: Path,
    kafka: str = "",
    reward: str = "",
) -> Config:
    """Write the daemon's TOML (join window suited to simulated time) and return it parsed;
    ``kafka`` and ``reward``: more lines of its ``[kafka]`` and ``[reward]`` tables."""
    text = f"""
[kafka]
bootstrap_servers = {json.dumps(servers)}
group_id = {json.dumps(group)}
session_timeout_ms = 6000
# A consumer that stops fetching is replaced within a quarter of a run's time limit, so a run
# sees several attempts (the replacement itself is what these tests exercise, among faults).
stall_restart_ms = 30000
{kafka}
# Smaller polls than the default: more polls, and more checkpoints between them, for the kills
# to land in (each checkpoint comes after a whole poll).
max_poll_records = 5000

[topics]
impressions = {json.dumps(topics.impressions)}
outcomes = {json.dumps(topics.outcomes)}
dlq = {json.dumps(topics.dlq)}
late = {json.dumps(topics.late)}
snapshots = {json.dumps(topics.snapshots)}
deltas = {json.dumps(topics.deltas)}
joined = {json.dumps(topics.joined)}
handoff = {json.dumps(topics.handoff)}

[join]
window_ms = 1200000
allowed_lateness_ms = 1200000
slate_size = {SLATE}

[checkpoint]
dir = {json.dumps(str(ckpt_dir))}
every_events = 3000
every_ms = 2000
keep = 3

[rerank]
snapshot_every_ms = 5000

[log]
dir = {json.dumps(str(ckpt_dir.parent / (ckpt_dir.name + "-log")))}

[metrics]
port = 0

[reward]
{reward}
"""
    path.write_text(text)
    return Config.load(path, env={})


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCORE_")}
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_daemon(toml: Path, log: Path, *, idle_ms: int = IDLE_MS) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    try:
        return subprocess.Popen(
            [*DAEMON, "--config", str(toml), "--exit-when-idle-ms", str(idle_ms)],
            cwd=ROOT,
            env=child_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    finally:
        out.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill a daemon subprocess this test started if it still runs (finally blocks)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


def wait_done(proc: subprocess.Popen[bytes], log: Path, timeout_s: float = RUN_TIMEOUT_S) -> None:
    """Wait for a daemon to stop by itself (idle); it must exit 0."""
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop(proc)
        pytest.fail(f"the daemon did not finish in {timeout_s:.0f} s:\n{tail(log)}")
    assert rc == 0, f"the daemon exited with {rc}:\n{tail(log)}"


def tail(log: Path, n: int = 40) -> str:
    """The log's warnings and errors (the first 40 before the tail), then its last ``n`` lines."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    told = [line for line in lines[:-n] if " WARNING " in line or " ERROR " in line]
    return "\n".join([*told[:40], "...", *lines[-n:]] if told else lines[-n:])


def newest_sequence(ckpt_dir: Path) -> int:
    found = checkpoint.list_checkpoints(ckpt_dir)
    return int(found[-1].name.split("-")[1].split(".")[0]) if found else 0


def final_state(config: Config) -> WorkerState:
    found = checkpoint.load_latest(config.checkpoint.dir)
    assert found is not None, f"no checkpoint in {config.checkpoint.dir}"
    arrays, header = found
    return from_arrays(make_engine(config), arrays, header["worker"])


def events_counted(state: WorkerState) -> int:
    return int(state.counters.get("impressions", 0)) + int(state.counters.get("outcomes", 0))


LEARNED = ("impressions", "outcomes", "outcomes_beyond_slate", "closed", "feedback_rows")


def assert_same_learning(got: WorkerState, want: WorkerState) -> None:
    """Same events counted, same offsets, same join results, same policy statistics."""
    for name in LEARNED:
        assert got.counters.get(name, 0) == want.counters.get(name, 0), name
    assert join_counters(got, cut_dependent=False) == join_counters(want, cut_dependent=False)
    assert got.offsets == want.offsets
    assert got.sums["model_rows"] == want.sums["model_rows"]
    assert got.sums["reward_sum"] == pytest.approx(want.sums["reward_sum"], rel=1e-9)
    # The reward model learns the same mini-batches in the same event-time order, however the
    # polls cut and interleaved the partitions (streaming.core.learners.release_model_rows), unless
    # its queue reached its cap and released rows early (counted): a restarted worker that reads
    # one partition's backlog far behind the others can get there, and from then on the order
    # depends on timing (docs/reliability.md).
    early = [int(s.counters.get("model_rows_released_early", 0)) for s in (got, want)]
    if early == [0, 0]:
        for x, y in zip(jax.tree.leaves(got.model), jax.tree.leaves(want.model), strict=True):
            np.testing.assert_allclose(
                np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7, err_msg="reward model"
            )
    a, b = got.policy._asdict(), want.policy._asdict()
    assert a.keys() == b.keys()
    # The policy learns its feedback in one update per event-time interval, in one order
    # (streaming.core.learners.release_policy_rows): the same updates, bit for bit, unless a
    # queue reached its cap.
    early += [int(s.counters.get("policy_rows_released_early", 0)) for s in (got, want)]
    if early == [0, 0, 0, 0]:
        for name in a:
            np.testing.assert_array_equal(
                np.asarray(a[name]), np.asarray(b[name]), err_msg=f"policy.{name}"
            )
        return
    # Otherwise the ridge statistics are sums, so they (and the weights and covariance derived
    # from them) agree within rounding; the per-track residual sums are taken against the
    # weights of the moment (bandits.linear): their counts must agree exactly, their values
    # closely.
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if name == "id_resid":
            assert np.isfinite(x).all() and np.count_nonzero(x) == np.count_nonzero(y)
            assert np.corrcoef(x, y)[0, 1] > 0.9, "per-track residuals disagree"
            continue
        if name == "precision":
            # A float32 sum taken in other batches (the polls of a killed run are not those of
            # an uninterrupted one) differs by rounding in proportion to the sum of its terms'
            # magnitudes, which a cancelling off-diagonal entry does not show (an entry near
            # -0.75 beside diagonal entries near 660 can differ by 2e-4 from rounding alone).
            # Cauchy-Schwarz bounds that sum by sqrt(A_ii A_jj): the tolerance is 2e-6 of it
            # (about 17 float32 epsilons).
            # Events lost or doubled are caught exactly above (counters, offsets, rows).
            scale = np.sqrt(np.outer(np.diag(y), np.diag(y)))
            worst = float(np.max(np.abs(x - y) / (1e-4 + 2e-6 * scale)))
            assert worst <= 1.0, f"policy.precision: {worst:.2f} times the rounding tolerance"
            continue
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4, err_msg=f"policy.{name}")


def produce_halves(config: Config, servers: str, n_requests: int, *, seed: int) -> Iterator[int]:
    """Yield the number of events sent after each half (same stream as one produce call)."""
    stream = SimulatedStream(config, servers, slate_size=SLATE, seed=seed)
    try:
        sent = stream.produce(n_requests // 2, last=False)
        yield sent
        yield sent + stream.produce(n_requests - n_requests // 2, last=True)
    finally:
        stream.close()


# ------------------------------------------------------------------- joining the group
JOINS = 50


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_consumer_that_joins_the_group_at_once_gets_its_partitions(
    kafka_broker: str, tmp_path: Path
) -> None:
    """A restarted daemon must own partitions, or it consumes nothing and never goes idle.

    ``make_consumer`` subscribes before the client holds the topics' metadata; when the group
    join completes first (the group is empty, as after a clean stop or once a killed member's
    session expired), the range assignor sees "No partition metadata", hands out nothing, and
    kafka-python 3.0.12 sometimes never rejoins: the consumer stays without partitions, and a
    restarted daemon sits at "0 events". Fetching the topics' metadata before subscribing
    keeps the assignor from seeing a topic without it; ``JOINS`` joins in a row check that.
    """
    topics = fresh_topics()
    cfg = write_config(
        tmp_path / "j.toml",
        kafka_broker,
        topics,
        group=f"j-{uuid.uuid4().hex[:6]}",
        ckpt_dir=tmp_path / "ck",
    )
    ensure_topics(cfg, kafka_broker)
    group = f"join-{uuid.uuid4().hex[:6]}"
    stalled = []
    for i in range(JOINS):
        consumer = make_consumer(
            cfg.kafka, kafka_broker, group_id=group, topics=[topics.impressions, topics.outcomes]
        )
        try:
            deadline = time.monotonic() + 8
            while not consumer.assignment() and time.monotonic() < deadline:
                consumer.poll(timeout_ms=200, max_records=1)
            if not consumer.assignment():
                stalled.append(i)
        finally:
            consumer.close(autocommit=False)
    assert not stalled, f"joins {stalled} of {JOINS} got no partitions within 8 s"


# --------------------------------------------------------------------------------- kill -9
KILL_REQUESTS = 36_000  # about 201,000 impressions and outcomes
KILLS = 10


# The watchdogs (streaming.worker.liveness, and Daemon.stalled at write_config's 30 s) act well
# inside the 90 s a restart gets, so a restarted daemon whose consumer never starts fetching (it
# sits at "0 events") is replaced rather than waited on until its time runs out.
WATCHDOGS = "rejoin_unassigned_ms = 10000"


def killed_and_plain(
    tmp_path: Path, servers: str, topics: Topics, *, reward: str = ""
) -> tuple[Config, Config]:
    """The configs of a daemon to kill and of an uninterrupted one (another group and
    checkpoint folder) on the same topics: ``killed.toml`` and ``plain.toml`` in ``tmp_path``."""
    made = [
        write_config(
            tmp_path / f"{name}.toml",
            servers,
            topics,
            group=f"{name[0]}-{uuid.uuid4().hex[:6]}",
            ckpt_dir=tmp_path / f"ck-{name}",
            kafka=WATCHDOGS,
            reward=reward,
        )
        for name in ("killed", "plain")
    ]
    return made[0], made[1]


def kill_and_finish(killed: Path, plain: Path, tmp_path: Path, delays: list[float]) -> int:
    """Run ``killed``'s daemon, SIGKILL it at each of ``delays`` after a new checkpoint and
    restart it, then let it finish; ``plain``'s daemon runs meanwhile, uninterrupted. Both end
    once idle and caught up. Returns the kills that landed before the stream ended."""
    kills = 0
    log, ckpt_dir = tmp_path / "killed.log", Path(Config.load(killed, env={}).checkpoint.dir)
    uninterrupted = start_daemon(plain, tmp_path / "plain.log")
    try:
        for i, delay in enumerate(delays):
            before = newest_sequence(ckpt_dir)
            proc = start_daemon(killed, log)
            try:
                deadline = time.monotonic() + 90
                while newest_sequence(ckpt_dir) == before and proc.poll() is None:
                    assert time.monotonic() < deadline, (
                        f"restart {i} wrote no checkpoint in 90 s (stuck?):\n{tail(log)}"
                    )
                    time.sleep(0.05)
                time.sleep(delay)
                if proc.poll() is not None:  # it read the whole stream before the kill
                    assert proc.returncode == 0, f"restart {i} failed:\n{tail(log)}"
                    break
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                kills += 1
            finally:
                stop(proc)
        proc = start_daemon(killed, log)
        try:
            wait_done(proc, log)
        finally:
            stop(proc)
        wait_done(uninterrupted, tmp_path / "plain.log")
    finally:
        stop(uninterrupted)
    return kills


def test_kill_minus_nine_ten_times_learns_what_an_uninterrupted_run_learns(
    kafka_broker: str, tmp_path: Path
) -> None:
    """SIGKILL at 10 seeded random points of the stream, restart each time; same final state.

    Size: 36,000 simulated requests with slates of 5, about 201,000 impressions and outcomes.
    Each kill lands after the restarted daemon wrote a new checkpoint (every 3,000 events, so
    it is consuming) plus a seeded random delay of up to 0.4 s, so it hits the daemon
    mid-batch, mid-step or mid-checkpoint. Should a restart finish the stream before its kill
    (a fast, idle machine), the remaining kills are skipped; at least five must have landed.
    The uninterrupted run (another group, a fresh checkpoint folder) runs meanwhile; both end
    once idle and caught up.
    """
    topics = fresh_topics()
    killed, plain = killed_and_plain(tmp_path, kafka_broker, topics)
    ensure_topics(killed, kafka_broker)
    sent = produce_simulated(
        killed, kafka_broker, n_requests=KILL_REQUESTS, slate_size=SLATE, seed=11
    )
    delays = np.random.default_rng(5).uniform(0.0, 0.4, size=KILLS).tolist()
    kills = kill_and_finish(tmp_path / "killed.toml", tmp_path / "plain.toml", tmp_path, delays)
    assert kills >= 5, f"only {kills} kills landed before the stream ended"
    got, want = final_state(killed), final_state(plain)
    assert events_counted(want) == sent >= 200_000
    assert want.counters["feedback_rows"] > 0
    assert_same_learning(got, want)


SESSION_REQUESTS = 8_000  # about 45,000 impressions and outcomes


def test_the_session_reward_model_killed_three_times_learns_what_an_uninterrupted_run_learns(
    kafka_broker: str, tmp_path: Path
) -> None:
    """The session reward model reads each listener's recent plays, which the worker keeps per
    partition in its state: three SIGKILLs and restarts (as above) end with the same histories,
    bit for bit, and the same reward model as an uninterrupted run."""
    topics = fresh_topics()
    session = 'model = "session"\nmodel_params = { gru_units = 8 }\nhistory_length = 4'
    killed, plain = killed_and_plain(tmp_path, kafka_broker, topics, reward=session)
    ensure_topics(killed, kafka_broker)
    sent = produce_simulated(
        killed, kafka_broker, n_requests=SESSION_REQUESTS, slate_size=SLATE, seed=12
    )
    delays = np.random.default_rng(6).uniform(0.0, 0.4, size=3).tolist()
    kills = kill_and_finish(tmp_path / "killed.toml", tmp_path / "plain.toml", tmp_path, delays)
    assert kills >= 1, "no kill landed before the stream ended"
    got, want = final_state(killed), final_state(plain)
    assert events_counted(want) == sent
    assert want.sums["model_rows"] >= 8 * 1024
    assert_same_learning(got, want)
    assert "history_listeners_evicted" not in want.counters
    assert sorted(got.history) == sorted(want.history) != []
    for p, table in want.history.items():
        assert table.listener.size > 0
        for x, y in zip(got.history[p], table, strict=True):
            np.testing.assert_array_equal(x, y, err_msg=f"partition {p}'s histories")


# ------------------------------------------------------------------------ broker restart
BROKER_REQUESTS = 6_000


# kafka-python leaves sockets of connection attempts made while the broker is down unclosed
QUIET = (
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
)


@QUIET[0]
@QUIET[1]
def test_a_restarted_local_broker_keeps_its_address_after_serving_clients(
    tmp_path: Path,
) -> None:
    """``LocalBroker.start`` on the same state dir must come back on the same ports, or every
    client configured with the old address is lost. The broker closes its clients' connections
    when it stops, which leaves TIME_WAIT sockets on its port; a probe that binds without
    SO_REUSEADDR (the JVM binds with it) sees the port as taken and would pick new ports, so
    ``_port_free`` binds with SO_REUSEADDR."""
    broker = LocalBroker(state_dir=tmp_path / "broker", settings=TEST_SETTINGS)
    servers = broker.start().bootstrap_servers
    try:
        cfg = write_config(
            tmp_path / "r.toml",
            servers,
            fresh_topics(),
            group=f"r-{uuid.uuid4().hex[:6]}",
            ckpt_dir=tmp_path / "ck",
        )
        ensure_topics(cfg, servers)
        consumer = make_consumer(cfg.kafka, servers, group_id=None, topics=[cfg.topics.impressions])
        consumer.poll(timeout_ms=500)
        broker.stop()
        consumer.close(autocommit=False)
        assert broker.start().bootstrap_servers == servers
    finally:
        broker.stop()


@QUIET[0]
@QUIET[1]
def test_broker_stop_and_restart_mid_stream_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    """The broker stops while the daemon runs and comes back on the same ports: every event
    is counted once, and the learned state equals an uninterrupted run's."""
    broker = LocalBroker(state_dir=tmp_path / "broker", settings=TEST_SETTINGS)
    servers = broker.start().bootstrap_servers
    procs: list[subprocess.Popen[bytes]] = []
    try:
        topics = fresh_topics()
        cfg = write_config(
            tmp_path / "a.toml",
            servers,
            topics,
            group=f"a-{uuid.uuid4().hex[:6]}",
            ckpt_dir=tmp_path / "ck-a",
        )
        ensure_topics(cfg, servers)
        halves = produce_halves(cfg, servers, BROKER_REQUESTS, seed=4)
        next(halves)
        log = tmp_path / "a.log"
        procs.append(proc := start_daemon(tmp_path / "a.toml", log))
        deadline = time.monotonic() + 120
        while newest_sequence(tmp_path / "ck-a") == 0:
            assert proc.poll() is None and time.monotonic() < deadline, tail(log)
            time.sleep(0.05)
        broker.stop()
        time.sleep(5)
        assert proc.poll() is None, f"the daemon died with the broker:\n{tail(log)}"
        assert broker.start().bootstrap_servers == servers
        sent = next(halves)
        wait_done(proc, log)
        got = final_state(cfg)
        assert events_counted(got) == sent
        plain = write_config(
            tmp_path / "b.toml",
            servers,
            topics,
            group=f"b-{uuid.uuid4().hex[:6]}",
            ckpt_dir=tmp_path / "ck-b",
        )
        procs.append(proc := start_daemon(tmp_path / "b.toml", tmp_path / "b.log"))
        wait_done(proc, tmp_path / "b.log")
        assert_same_learning(got, final_state(plain))
    finally:
        for p in procs:
            stop(p)
        broker.stop()


# ------------------------------------------------------------------------------ malformed
MALFORMED_REQUESTS = 3_000


DAMAGE = ("invalid_json", "invalid_utf8", "wrong_type", "invalid_json")
"""The dead-letter code each kind of damage in ``corrupt`` must get."""


def corrupt(value: bytes, kind: int) -> bytes:
    """Damage of four kinds: truncated, not UTF-8, a string where an int belongs, not JSON."""
    if kind == 0:
        return value[: len(value) // 2]
    if kind == 1:
        return b"\xff\xfe" + value[2:]
    if kind == 2:
        return value.replace(b'"ts":', b'"ts":"soon","was":', 1)
    return b"not json"


def test_one_percent_malformed_all_reach_the_dead_letter_topic_and_the_rest_is_learned(
    kafka_broker: str, tmp_path: Path
) -> None:
    topics = fresh_topics()
    cfg = write_config(
        tmp_path / "m.toml",
        kafka_broker,
        topics,
        group=f"m-{uuid.uuid4().hex[:6]}",
        ckpt_dir=tmp_path / "ck-m",
    )
    ensure_topics(cfg, kafka_broker)
    sim = Simulator(SimConfig(seed=8, request_gap_ms=1000))
    req = sim.requests(MALFORMED_REQUESTS)
    sl = sim.log_slates(req, SLATE)
    plays = sim.play(req, sl.shown)
    imps = traffic.impressions(req, sl.shown, sl.propensity, policy=LOGGING)
    release = traffic.EventTimeRelease()
    release.hold(list(traffic.wire([], traffic.outcomes(req, plays))))
    messages = [*traffic.wire(imps, []), *release.release()]
    role_topic = {"impressions": topics.impressions, "outcomes": topics.outcomes}
    producer = make_producer(cfg.kafka, kafka_broker)
    bad: dict[tuple[str, int, int], tuple[bytes, str]] = {}
    futures = []
    try:
        for i, w in enumerate(messages):
            kind = (i // 100) % 4 if i % 100 == 99 else -1  # every 100th message is damaged
            value = corrupt(w.value, kind) if kind >= 0 else w.value
            futures.append((producer.send(role_topic[w.role], key=w.key, value=value), value, kind))
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)
    for fut, value, kind in futures:
        meta = fut.get(timeout=10)
        if kind >= 0:
            bad[(meta.topic, meta.partition, meta.offset)] = (value, DAMAGE[kind])
    good = len(messages) - len(bad)
    assert len(bad) == len(messages) // 100
    log = tmp_path / "m.log"
    proc = start_daemon(tmp_path / "m.toml", log)
    try:
        wait_done(proc, log)
    finally:
        stop(proc)
    state = final_state(cfg)
    assert events_counted(state) == good
    assert state.counters["feedback_rows"] > 0
    consumer = make_consumer(cfg.kafka, kafka_broker, group_id=None, topics=[topics.dlq])
    dead: dict[tuple[str, int, int], dict[str, Any]] = {}
    try:
        deadline = time.monotonic() + 60
        while len(dead) < len(bad) and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=500).values():
                for r in recs:
                    d = json.loads(r.value)
                    where = (d["topic"], d["partition"], d["offset"])
                    assert r.key == "/".join(map(str, where)).encode()  # replays share the key
                    dead[where] = d
    finally:
        consumer.close(autocommit=False)
    assert dead.keys() == bad.keys()  # every damaged message, once, with where it came from
    for where, d in dead.items():
        raw, code = bad[where]
        assert base64.b64decode(d["raw_b64"]) == raw
        assert d["code"] == code and d["reason"], d
    assert {d["code"] for d in dead.values()} == set(DAMAGE)


# --------------------------------------------------- values that decode but cannot be learned
POISON_REQUESTS = 3_000
YEAR_3000_MS = 32_503_680_000_000


def nested_impression(w: traffic.Wire) -> tuple[bytes, str]:
    """The impression with its ``context`` nested 100,000 arrays deep (200 KB: not too large)."""
    obj = json.loads(w.value)
    obj["context"] = "@"
    deep = b"[" * 100_000 + b"]" * 100_000
    return json.dumps(obj).encode().replace(b'"@"', deep), "too_deep"


def tiny_propensity(w: traffic.Wire) -> tuple[bytes, str]:
    """The impression with its first propensity 1e-50 (0 in float32, which policies refuse)."""
    obj = json.loads(w.value)
    obj["propensities"][0] = 1e-50
    return json.dumps(obj).encode(), "low_propensity"


def year_3000(w: traffic.Wire) -> tuple[bytes, str]:
    """The event stamped in the year 3000 (its record's CreateTime is the time it is sent)."""
    obj = json.loads(w.value)
    obj["ts"] = YEAR_3000_MS
    return json.dumps(obj).encode(), "ts_ahead_of_record"


POISONS = {
    # name: (which messages of the stream to damage, how); impression 200 is early enough for
    # its window (20 minutes, and as much allowed lateness) to close within the stream's 50
    "deep": ([200], nested_impression),
    "propensity": ([200], tiny_propensity),
    # 17 events on both topics, from the first tenth of the stream on: each would move its
    # partition's watermark to the year 3000, and every later event would be late
    "year_3000": ([1_500 + 97 * i for i in range(17)], year_3000),
}


def simulated_wire(seed: int) -> list[traffic.Wire]:
    """The malformed test's stream: impressions, then outcomes released in event-time order."""
    sim = Simulator(SimConfig(seed=seed, request_gap_ms=1000))
    req = sim.requests(POISON_REQUESTS)
    sl = sim.log_slates(req, SLATE)
    plays = sim.play(req, sl.shown)
    imps = traffic.impressions(req, sl.shown, sl.propensity, policy=LOGGING)
    release = traffic.EventTimeRelease()
    release.hold(list(traffic.wire([], traffic.outcomes(req, plays))))
    return [*traffic.wire(imps, []), *release.release()]


def produce_wire(
    cfg: Config, servers: str, topics: Topics, messages: list[tuple[traffic.Wire, bytes]]
) -> list[tuple[str, int, int]]:
    """Send ``(wire, value)`` pairs in order; each one's ``(topic, partition, offset)``."""
    role_topic = {"impressions": topics.impressions, "outcomes": topics.outcomes}
    producer = make_producer(cfg.kafka, servers)
    try:
        futures = [
            producer.send(role_topic[w.role], key=w.key, value=value) for w, value in messages
        ]
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)
    return [(m.topic, m.partition, m.offset) for m in (f.get(timeout=10) for f in futures)]


def dead_letters(cfg: Config, servers: str, dlq: str, want: int) -> list[dict[str, Any]]:
    """Every record of the dead-letter topic (waiting until ``want`` are there, or 60 s)."""
    consumer = make_consumer(cfg.kafka, servers, group_id=None, topics=[dlq])
    found: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 60
        quiet = 0
        while time.monotonic() < deadline and (len(found) < want or quiet < 4):
            got = [
                json.loads(r.value) for recs in consumer.poll(timeout_ms=500).values() for r in recs
            ]
            found += got
            quiet = 0 if got else quiet + 1
    finally:
        consumer.close(autocommit=False)
    return found


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_messages_that_decode_but_cannot_be_learned_go_to_the_dead_letter_topic(
    kafka_broker: str, tmp_path: Path, poison: str
) -> None:
    """A deeply nested impression, a propensity of 1e-50, or 17 events stamped in the year
    3000 among a simulated stream: the daemon exits 0, each bad message is a dead letter once
    with its code, and the learned state (closed windows included) equals that of a daemon
    that read the same stream without them."""
    rows, damage = POISONS[poison]
    wire = simulated_wire(seed=9)
    bad_rows = {i: damage(wire[i]) for i in rows}
    assert len({wire[i].role for i in rows}) == (2 if poison == "year_3000" else 1)
    mixed = [(w, bad_rows[i][0] if i in bad_rows else w.value) for i, w in enumerate(wire)]
    clean = [(w, w.value) for i, w in enumerate(wire) if i not in bad_rows]
    runs = {}
    for name, messages in (("mixed", mixed), ("clean", clean)):
        topics = fresh_topics()
        cfg = write_config(
            tmp_path / f"{name}.toml", kafka_broker, topics, group=name, ckpt_dir=tmp_path / name
        )
        ensure_topics(cfg, kafka_broker)
        where = produce_wire(cfg, kafka_broker, topics, messages)
        runs[name] = (cfg, topics, where)
    procs = {
        name: start_daemon(tmp_path / f"{name}.toml", tmp_path / f"{name}.log") for name in runs
    }
    try:
        for name, proc in procs.items():
            wait_done(proc, tmp_path / f"{name}.log")
    finally:
        for proc in procs.values():
            stop(proc)
    cfg, topics, where = runs["mixed"]
    bad = {where[i]: code for i, (_, code) in bad_rows.items()}
    dead = dead_letters(cfg, kafka_broker, topics.dlq, len(bad))
    got = {(d["topic"], d["partition"], d["offset"]): d["code"] for d in dead}
    assert len(dead) == len(got), "a message reached the dead-letter topic twice"
    assert got == bad
    mixed_state, clean_state = final_state(cfg), final_state(runs["clean"][0])
    assert events_counted(mixed_state) == len(wire) - len(bad)
    assert mixed_state.counters["closed"] == clean_state.counters["closed"] > 0
    # the offsets differ (the mixed topics hold the bad messages too); all else is the same
    assert_same_learning(mixed_state._replace(offsets=clean_state.offsets), clean_state)
    per_partition: dict[tuple[str, int], int] = {}
    for t, p, _ in where:
        per_partition[(t, p)] = per_partition.get((t, p), 0) + 1
    assert mixed_state.offsets == per_partition
