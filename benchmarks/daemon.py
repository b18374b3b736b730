"""The daemon end to end through the local broker, next to the raw client rates of the same run.

The same simulated traffic (impressions of 5-track slates from 20 candidates, and their plays)
is produced twice, into two sets of topics: once with the impressions' float features as JSON
numbers (schema impression/1) and once as base64 float32 (impression/2, encore's default).
Then, on each stream's topics, the suite measures kafka-python consuming it counting only,
consuming and decoding it to columns, and the full daemon (decode, validate, per-partition join,
reward model, composite reward, the default policy, Parquet log, checkpoints, snapshots,
metrics) from a fresh consumer group. Memory is sampled through each daemon run to show whether it stays flat:
the proportional set size (PSS) of the daemon's process and of its decoding process together,
so the pages the two share count once.
"""

from __future__ import annotations

import os

# As the `encore` CLI does before numpy loads (streaming/cli.py): OpenBLAS's thread pool
# oversubscribes a small shared machine, and the policy's 289 x 289 Cholesky re-factorisation
# waits on its threads. The daemon this suite measures runs in this process, so it gets the
# setting `encore run` would give it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import dataclasses
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from benchmarks._runner import (
    MIN_FIT_POINTS,
    TOO_SHORT,
    Context,
    Row,
    colour,
    fit_line,
    fmt,
    median,
    peak_rss_mb,
    pss_mb,
    rate,
    ratio,
)
from benchmarks.kafka_raw import broker_for_bench

if TYPE_CHECKING:
    from streaming.events import FeatureEncoding


MEMORY = "PSS, daemon + decoding process"
"""What the daemon rows' and plots' memory figures measure (see :func:`daemon_pss_mb`)."""


def daemon_pss_mb(daemon: Any) -> float | None:
    """Proportional set size, in MiB, of this process (the daemon's) and of the daemon's
    decoding process (``streaming.events.process``), if it has one: the shared memory areas
    both map, and the libraries, count once between them, where resident sizes count them in
    each. A decoding process gone counts 0; None where this process's cannot be read."""
    own = pss_mb()
    if own is None:
        return None
    pid = daemon.decoding.child_pid
    child = pss_mb(pid) if pid is not None else None
    return own + (child or 0.0)


Sample = tuple[float, int, float]
"""``(seconds into the run, events consumed, MiB)``: one memory sample of a daemon run."""


def draw_memory(ax: Any, series: dict[str, list[Sample]], title: str) -> None:
    """Memory against events consumed, one line per series (``_runner.colour``), each with its
    least-squares line over the second half of its events (dashed, its slope in the legend),
    or a legend entry saying the half held too few samples to fit one."""
    for label, samples in series.items():
        if not samples:
            continue
        c = colour(label)
        ax.plot(
            [e / 1e6 for _, e, _ in samples],
            [m for _, _, m in samples],
            color=c,
            marker=".",
            ms=4,
            label=label,
        )
        fit = second_half_fit(samples)
        if fit is None:
            ax.plot([], [], color=c, ls="--", label=f"{label}: second half {TOO_SHORT} a slope")
        else:
            ax.plot(
                [fit.x0, fit.x1],
                [fit.slope * fit.x0 + fit.intercept, fit.slope * fit.x1 + fit.intercept],
                color=c,
                ls="--",
                lw=2.5,
                alpha=0.7,
                label=f"{label}: least-squares fit over the second half of the events, "
                f"{fit.slope:+,.1f} MiB per million events",
            )
    ax.set_xlabel("million events consumed")
    ax.set_ylabel(f"MiB ({MEMORY})")
    ax.set_title(title)
    ax.grid(alpha=0.3)


def second_half_fit(samples: list[Sample]) -> Any:
    """The least-squares line of MiB against millions of events through the samples of the
    second half of the events consumed (after start-up's growth), up to the first sample that
    saw the last event (the samples after it watch the daemon close, not consume); None where
    too few."""
    if not samples:
        return None
    final = samples[-1][1]
    later: list[tuple[float, float]] = []
    for _, e, m in samples:
        if e >= final / 2 and e > 0:
            later.append((e / 1e6, m))
        if e >= final:
            break
    return fit_line([x for x, _ in later], [m for _, m in later])


class _Consumed:
    """What one consuming pass saw: events, payload bytes per topic, and the time it took."""

    def __init__(self) -> None:
        self.events: dict[str, int] = {}
        self.bytes: dict[str, int] = {}
        self.elapsed_s = 0.0

    @property
    def n(self) -> int:
        return sum(self.events.values())

    @property
    def rate(self) -> float | str:
        return rate(self.n, self.elapsed_s)


def _consume(
    servers: str, topics: list[str], n: int, *, decode: bool, lean: bool, max_records: int
) -> _Consumed:
    """Consume ``n`` events of ``topics`` (clock starts at the first record), default fetch
    settings; with ``lean``, through the daemon's record path (``streaming.kafka.records``)."""
    from kafka import KafkaConsumer

    from streaming.events import decode_impressions, decode_outcomes
    from streaming.kafka.clients import use_lean_records

    consumer: Any = KafkaConsumer(
        *topics,
        bootstrap_servers=servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    if lean and not use_lean_records(consumer):
        raise RuntimeError("lean records refused (see the warning): the lean rows would be stock")
    seen = _Consumed()
    got = 0
    started = 0.0
    deadline = time.perf_counter() + 600
    while got < n and time.perf_counter() < deadline:
        polled = consumer.poll(timeout_ms=500, max_records=max_records)
        if polled and not started:
            started = time.perf_counter()
        for tp, recs in polled.items():
            got += len(recs)
            seen.events[tp.topic] = seen.events.get(tp.topic, 0) + len(recs)
            values = [r.value for r in recs]
            if decode:
                if tp.topic == topics[0]:
                    decode_impressions(values)
                else:
                    decode_outcomes(values)
            else:
                seen.bytes[tp.topic] = seen.bytes.get(tp.topic, 0) + sum(map(len, values))
    seen.elapsed_s = time.perf_counter() - started
    consumer.close(autocommit=False)
    return seen


_BASE_OVERRIDES = [
    "checkpoint.every_events=100000",
    "checkpoint.every_ms=10000",
    "join.window_ms=1200000",
    "join.allowed_lateness_ms=60000",
    "join.slate_size=5",
    "metrics.port=0",
]
"""The daemon settings of every daemon row (with the run's broker, group and topics)."""


def default_policy() -> str:
    """The policy the daemon runs when its configuration names none (the one measured here)."""
    from streaming.config import Config

    return Config().policy.name


class _Steady(NamedTuple):
    """The daemon between 20 % and 90 % of the stream: after start-up, before the tail."""

    events_per_s: float | str
    cores: float | str  # CPU seconds per wall second of the daemon process and its decoding process
    cpu_us_per_event: float | str  # their CPU per event (all threads)
    main_busy: float | str  # the main thread's CPU seconds per wall second (1.0: never waits)


MIN_STEADY_SAMPLES = 5
"""The fewest one-second samples between 20 % and 90 % of the stream a steady rate is taken over."""


def _steady(progress: list[tuple[float, int, float, float]], total: int) -> _Steady:
    """From ``(wall s, events, process CPU s, main-thread CPU s)`` samples: the rates between
    the samples at 20 % and 90 % of the stream, after start-up (connecting, joining the group,
    JAX compiling each jitted function once) and before the tail. TOO_SHORT when fewer than
    ``MIN_STEADY_SAMPLES`` samples fall there."""
    mid = [x for x in progress if 0.2 * total <= x[1] <= 0.9 * total]
    if len(mid) < MIN_STEADY_SAMPLES or mid[-1][0] <= mid[0][0] or mid[-1][1] <= mid[0][1]:
        return _Steady(TOO_SHORT, TOO_SHORT, TOO_SHORT, TOO_SHORT)
    (t0, e0, p0, m0), (t1, e1, p1, m1) = mid[0], mid[-1]
    wall, events = t1 - t0, e1 - e0
    return _Steady(events / wall, (p1 - p0) / wall, 1e6 * (p1 - p0) / events, (m1 - m0) / wall)


ENCODINGS: tuple[tuple[FeatureEncoding, str], ...] = (
    ("json", "JSON floats"),
    ("float32", "base64 float32"),
)
"""The two impression feature forms measured, each on a stream of its own (same events)."""


class _Stream(NamedTuple):
    """One stream's rows, what its count-only pass saw, and its daemon's memory samples."""

    rows: list[Row]
    counted: _Consumed
    topics: list[str]
    produce_s: float
    samples: list[Sample]
    events: int
    overrides: list[str]  # the config of this stream's topics, as `encore run` overrides
    decode_rate: float | str  # consume + decode on the daemon's record path


class _DaemonRun(NamedTuple):
    """One in-process daemon run over a stream, from a fresh group and fresh state."""

    stats: Any  # the daemon's final Stats
    rate: float | str  # events over the whole run, start-up included
    steady: _Steady
    first_event_s: float | str
    last_event_s: float | str
    run_s: float
    samples: list[Sample]  # PSS of the daemon and its decoding process, each second


def _child_cpu_s(daemon: Any) -> float:
    """CPU seconds of the daemon's decoding process so far (0 when it decodes in-process)."""
    pid = daemon.decoding.child_pid
    if pid is None:
        return 0.0
    try:  # utime and stime are fields 14 and 15; the name in parentheses may hold spaces
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _daemon_run(cfg: Any, servers: str, idle_ms: int) -> _DaemonRun:
    """Run the daemon over ``cfg``'s topics until idle for ``idle_ms`` (and caught up), sampling
    memory and progress each second."""
    from streaming.worker.daemon import Daemon

    daemon = Daemon(cfg, servers=servers)
    first_done: list[float] = []  # when the first poll that returned records was done
    poll_once = daemon.poll_once

    def timed_poll() -> int:
        n = poll_once()
        if n and not first_done:
            first_done.append(time.perf_counter())
        return n

    daemon.poll_once = timed_poll
    samples: list[Sample] = []
    progress: list[tuple[float, int, float, float]] = []
    done = threading.Event()
    main_clock = time.pthread_getcpuclockid(threading.get_ident())  # the thread run() runs on

    def sample() -> None:
        t0 = time.perf_counter()
        while not done.wait(1.0):
            mib = daemon_pss_mb(daemon)
            if mib is not None:
                samples.append((time.perf_counter() - t0, daemon.stats.events, mib))
            progress.append(
                (
                    time.perf_counter() - t0,
                    daemon.stats.events,
                    time.process_time() + _child_cpu_s(daemon),
                    time.clock_gettime(main_clock),
                )
            )

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    stats = daemon.run(threading.Event(), exit_when_idle_ms=idle_ms)
    elapsed = time.perf_counter() - t0 - idle_ms / 1000  # the idle wait before exiting is not work
    done.set()
    sampler.join()
    ended = [t for t, e, _, _ in progress if e >= stats.events]
    return _DaemonRun(
        stats=stats,
        rate=rate(stats.events, elapsed),
        steady=_steady(progress, stats.events),
        first_event_s=first_done[0] - t0 if first_done else TOO_SHORT,
        last_event_s=ended[0] if ended else TOO_SHORT,
        run_s=elapsed + idle_ms / 1000,
        samples=samples,
    )


_PASSES: tuple[tuple[bool, str], ...] = (
    (False, "stock"),
    (False, "lean"),
    (True, "stock"),
    (True, "lean"),
)
"""The consumer passes of a round, in order: (decode to columns?, record path)."""


def _mb_per_s(events_per_s: float | str, event_bytes: float) -> float | str:
    """Payload MB/s at ``events_per_s`` events of ``event_bytes`` bytes (TOO_SHORT carried)."""
    return events_per_s * event_bytes / 1e6 if isinstance(events_per_s, float) else TOO_SHORT


def _each(values: list[float | str]) -> str:
    """Every round's figure, in order, for the ``rounds`` column."""
    return " / ".join(fmt(v, ",.0f") for v in values)


def _measure(
    base: Any,
    servers: str,
    tmp: str,
    run_id: str,
    encoding: FeatureEncoding,
    n_requests: int,
    rounds: int,
    idle_ms: int,
) -> _Stream:
    """Produce one stream with ``encoding``; then, ``rounds`` times over it: count-only and
    consume + decode on both record paths, and the daemon from a fresh group and fresh state.
    Each row reports the median of its rounds (and every round's figure)."""
    from streaming.demo import produce_simulated
    from streaming.kafka.clients import ensure_topics

    label = dict(ENCODINGS)[encoding]
    cfg = dataclasses.replace(
        base,
        topics=base.topics.for_run(f"{run_id}-{encoding}"),
        events=dataclasses.replace(base.events, feature_encoding=encoding),
    )
    ensure_topics(cfg, servers)
    started = time.perf_counter()
    n = produce_simulated(cfg, servers, n_requests=n_requests, slate_size=5, seed=0)
    produce_s = time.perf_counter() - started
    topics = [cfg.topics.impressions, cfg.topics.outcomes]
    per_poll = cfg.kafka.max_poll_records  # as many records per poll as the daemon takes
    passes: dict[tuple[bool, str], list[_Consumed]] = {k: [] for k in _PASSES}
    runs: list[_DaemonRun] = []
    for r in range(rounds):
        # Interleaved, so that drifting load on a shared machine hits every row alike.
        for decode, path in _PASSES:
            passes[(decode, path)].append(
                _consume(
                    servers, topics, n, decode=decode, lean=path == "lean", max_records=per_poll
                )
            )
        run_cfg = dataclasses.replace(
            cfg,
            kafka=dataclasses.replace(cfg.kafka, group_id=f"bench-{run_id}-{encoding}-{r}"),
            checkpoint=dataclasses.replace(cfg.checkpoint, dir=f"{tmp}/{encoding}/{r}/ckpt"),
            log=dataclasses.replace(cfg.log, dir=f"{tmp}/{encoding}/{r}/log"),
        )
        runs.append(_daemon_run(run_cfg, servers, idle_ms))
    # A restart: a new group and empty state, but the compilation cache (JaxConfig) that round
    # 0's worker filled in its checkpoint directory, as a worker restarted on its own finds it.
    restart = _daemon_run(
        dataclasses.replace(
            cfg,
            kafka=dataclasses.replace(cfg.kafka, group_id=f"bench-{run_id}-{encoding}-restart"),
            checkpoint=dataclasses.replace(cfg.checkpoint, dir=f"{tmp}/{encoding}/restart/ckpt"),
            log=dataclasses.replace(cfg.log, dir=f"{tmp}/{encoding}/restart/log"),
            jax=dataclasses.replace(
                cfg.jax, compilation_cache_dir=f"{tmp}/{encoding}/0/ckpt/jax-cache"
            ),
        ),
        servers,
        idle_ms,
    )
    rates = {k: median([c.rate for c in v]) for k, v in passes.items()}
    count = passes[(False, "stock")][0]
    # The daemon's own record path is the honest peer; the stock client's rate is printed too.
    daemon_lean = cfg.kafka.lean_records
    decode_rate = rates[(True, "lean" if daemon_lean else "stock")]
    stock_decode_rate = rates[(True, "stock")]
    total_bytes = sum(count.bytes.values())
    mean_bytes = total_bytes / max(count.n, 1)
    impression_bytes = count.bytes.get(topics[0], 0) / max(count.events.get(topics[0], 0), 1)
    rows: list[Row] = []
    for decode, path in _PASSES:
        what = "consume + encore decode to columns" if decode else "consume, count only"
        client = "kafka-python" if path == "stock" else "kafka-python + lean records"
        r_ = rates[(decode, path)]
        rows.append(
            {
                "system": f"{client} {what} [{label}]",
                "features": encoding,
                "record_path": path,
                "events": count.n,
                "event_bytes": mean_bytes,
                "impression_bytes": impression_bytes,
                "events_per_s": r_,
                "rounds": _each([c.rate for c in passes[(decode, path)]]),
                "mb_per_s": _mb_per_s(r_, mean_bytes),
                "vs_consume_decode": ratio(r_, rates[(True, path)]),
            }
        )
    whole = median([x.rate for x in runs])
    steady = median([x.steady.events_per_s for x in runs])
    # the median run's details (a run too short for a rate sorts first)
    mid = sorted(runs, key=lambda x: x.rate if isinstance(x.rate, float) else 0.0)
    stats = mid[(len(runs) - 1) // 2].stats
    samples = runs[0].samples
    third = max(len(samples) // 3, 1)
    fit = second_half_fit(samples)
    rows.append(
        {
            "system": f"encore daemon (decode, join, reward model, {default_policy()}, log, "
            f"checkpoints) [{label}]",
            "features": encoding,
            "record_path": "lean" if daemon_lean else "stock",
            "events": stats.events,
            "event_bytes": mean_bytes,
            "impression_bytes": impression_bytes,
            "events_per_s": whole,
            "rounds": f"whole {_each([x.rate for x in runs])}; "
            f"steady {_each([x.steady.events_per_s for x in runs])}",
            "mb_per_s": _mb_per_s(whole, mean_bytes),
            "vs_consume_decode": ratio(whole, decode_rate),
            "vs_stock_consume_decode": ratio(whole, stock_decode_rate),
            "steady_events_per_s": steady,
            "steady_vs_consume_decode": ratio(steady, decode_rate),
            "steady_cores": median([x.steady.cores for x in runs]),
            "steady_cpu_us_per_event": median([x.steady.cpu_us_per_event for x in runs]),
            "steady_main_thread_busy": median([x.steady.main_busy for x in runs]),
            "first_event_s": median([x.first_event_s for x in runs]),
            "restart_events_per_s": restart.rate,
            "restart_steady_events_per_s": restart.steady.events_per_s,
            "restart_first_event_s": restart.first_event_s,
            "restart_vs_consume_decode": ratio(restart.rate, decode_rate),
            "last_event_s": median([x.last_event_s for x in runs]),
            "run_s": median([x.run_s for x in runs]),
            "memory": MEMORY,
            "pss_first_third_mb": max(m for _, _, m in samples[:third]) if samples else TOO_SHORT,
            "pss_last_third_mb": max(m for _, _, m in samples[-third:]) if samples else TOO_SHORT,
            "pss_peak_mb": max(m for _, _, m in samples) if samples else TOO_SHORT,
            "pss_growth_mb_per_million_events_2nd_half": fit.slope if fit else TOO_SHORT,
            "peak_rss_mb": peak_rss_mb(),
            "closed": stats.counters.get("closed", 0),
            "dead_letters": stats.dead_letters,
            # outcomes refused by the join (after their window, orphans, pending overflow) and
            # partitions paused to keep the two streams aligned in event time (streaming.worker.alignment)
            "late": ", ".join(f"{k} {v}" for k, v in sorted(stats.late_by_kind.items())) or "0",
            "align_pauses": stats.align_pauses,
        }
    )
    topic_overrides = [
        f"topics.{f.name}={getattr(cfg.topics, f.name)}"
        for f in dataclasses.fields(cfg.topics)
        if isinstance(getattr(cfg.topics, f.name), str)
    ]
    overrides = [*_BASE_OVERRIDES, f"events.feature_encoding={encoding}", *topic_overrides]
    return _Stream(rows, count, topics, produce_s, samples, stats.events, overrides, decode_rate)


_WORKER = """
import json, resource, sys, threading, time
from streaming.config import Config
from streaming.worker.daemon import Daemon
cfg = Config.load(env={}, overrides=sys.argv[2:])
daemon = Daemon(cfg, servers=cfg.kafka.bootstrap_servers)
last = [time.time()]
poll_once = daemon.poll_once
def timed_poll():
    n = poll_once()
    if n:
        last[0] = time.time()  # after the poll's decode and step
    return n
daemon.poll_once = timed_poll
t0 = time.time()
stats = daemon.run(threading.Event(), exit_when_idle_ms=int(sys.argv[1]))
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"events": stats.events, "t0": t0, "t1": last[0], "end": time.time(),
                  "cpu_s": ru.ru_utime + ru.ru_stime, "merged": stats.deltas_merged,
                  "lean": cfg.kafka.lean_records}))
"""
"""One worker of the scale-out rows: ``encore run``'s daemon in a process of its own (JSON out:
``t1`` is when its last poll with records was done)."""

_GROUP_TIMEOUT_S = 1800.0


def _group(stream: _Stream, servers: str, tmp: str, workers: int, label: str, idle_ms: int) -> Row:
    """``workers`` daemon processes in one fresh consumer group over ``stream``'s topics (linear
    statistics shared as deltas when more than one): the stream's events over the wall time from
    the first worker's run() to the last poll that returned records."""
    group = f"bench-group-{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen[str]] = []
    done: list[dict[str, Any]] = []
    deadline = time.monotonic() + _GROUP_TIMEOUT_S
    try:
        for i in range(workers):
            overrides = [
                *stream.overrides,
                f"kafka.bootstrap_servers={servers}",
                f"kafka.group_id={group}",
                f"kafka.client_id=w{i}",
                f"scale.worker_id=w{i}",
                f"scale.share_deltas={'true' if workers > 1 else 'false'}",
                f"checkpoint.dir={tmp}/{group}/w{i}/ckpt",
                f"log.dir={tmp}/{group}/w{i}/log",
            ]
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _WORKER, str(idle_ms), *overrides],
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for i, proc in enumerate(procs):
            out, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 1.0))
            lines = out.strip().splitlines()
            if proc.returncode != 0 or not lines:
                raise RuntimeError(
                    f"scale-out worker w{i} of {workers} failed (exit {proc.returncode})"
                )
            done.append(json.loads(lines[-1]))
    finally:
        for proc in procs:  # a failed or timed-out run leaves no worker behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    read = sum(d["events"] for d in done)
    if read < stream.events:
        raise RuntimeError(f"{workers} scale-out workers read {read} of {stream.events} events")
    wall = max(d["t1"] for d in done) - min(d["t0"] for d in done)
    events_per_s = rate(stream.events, wall)
    return {
        "system": f"encore daemon, {workers} worker process{'es' if workers > 1 else ''} in one "
        f"group [{label}]",
        "features": "float32",
        "record_path": "lean" if all(d["lean"] for d in done) else "stock",
        "workers": workers,
        "events": stream.events,
        "records_read": read,
        "events_per_s": events_per_s,
        "vs_consume_decode": ratio(events_per_s, stream.decode_rate),
        "cpu_s": sum(d["cpu_s"] for d in done),
        "events_by_worker": "/".join(str(d["events"]) for d in done),
        "deltas_merged": sum(d["merged"] for d in done),
        "run_s": max(d["end"] for d in done) - min(d["t0"] for d in done),
    }


def run(ctx: Context) -> list[Row]:
    from streaming.config import Config

    default = 4_000 if ctx.quick else 180_000
    n_requests = int(os.environ.get("ENCORE_DAEMON_REQUESTS", default))
    rounds = int(os.environ.get("ENCORE_DAEMON_ROUNDS", 1 if ctx.quick else 3))
    # How long a daemon waits with nothing new (and every partition read) before it exits.
    idle_ms = 1000 if ctx.quick else 3000
    streams: dict[str, _Stream] = {}
    with broker_for_bench() as servers, tempfile.TemporaryDirectory(prefix="encore-daemon-") as tmp:
        run_id = uuid.uuid4().hex[:8]
        base = Config.load(
            env={}, overrides=[f"kafka.bootstrap_servers={servers}", *_BASE_OVERRIDES]
        )
        for encoding, _ in ENCODINGS:
            streams[encoding] = _measure(
                base, servers, tmp, run_id, encoding, n_requests, rounds, idle_ms
            )
        label = dict(ENCODINGS)["float32"]
        group_rows = [
            _group(streams["float32"], servers, tmp, workers, label, idle_ms) for workers in (1, 2)
        ]
    # Rows by kind, the two encodings side by side.
    rows = [s.rows[i] for i in range(len(streams["json"].rows)) for s in streams.values()]
    rows += group_rows
    if any(s.samples for s in streams.values()):
        title = (
            f"encore daemon memory, first round of each stream ({streams['json'].events:,} "
            "events; JSON first)"
        )
        ctx.save_plot(
            "daemon_pss",
            lambda ax: draw_memory(ax, {lb: streams[e].samples for e, lb in ENCODINGS}, title),
        )
    js, f32 = streams["json"], streams["float32"]
    n = js.counted.n
    ctx.notes.append(
        f"{n:,} events ({n_requests:,} requests of 5-track slates from 20 candidates) produced "
        f"twice, into 4-partition topics of a local single-node broker: with JSON float features "
        f"in {js.produce_s:.0f} s, with base64 float32 features in {f32.produce_s:.0f} s. The "
        "events are the same (same seed); only the impressions' encoding differs, and the "
        "simulator's features are float32, so both decode to identical batches."
    )
    ctx.notes.append(
        f"Rounds: {rounds} per stream. Each round runs, in turn, the four consumer passes and then "
        "the daemon from a fresh consumer group and fresh state; every row reports the median "
        "of its rounds (column rounds: each round's figure, in order; for the daemon, its whole "
        "run and its steady rate). The daemon row's other columns are medians too, except "
        "closed, dead_letters, late and align_pauses (the run with the median whole-run rate) "
        "and memory (the first round). ENCORE_DAEMON_ROUNDS sets another count."
    )
    for encoding, label in ENCODINGS:
        st = streams[encoding]
        sizes = ", ".join(
            f"{name} {st.counted.events.get(topic, 0):,} of ~"
            f"{st.counted.bytes.get(topic, 0) / max(st.counted.events.get(topic, 0), 1):,.0f} bytes"
            for name, topic in zip(("impressions", "outcomes"), st.topics, strict=True)
        )
        ctx.notes.append(f"Event sizes, {label}: {sizes}.")
    ctx.notes.append(
        "An impression carries 20 candidates x 16 float features: as JSON numbers (shortest "
        "round-trip decimals of float32 values) it is ~30x an outcome; as base64 float32 about "
        "a third of that. The reference rates for this kind of machine are for ~250-byte 'small events' "
        "(benchmarks.kafka_raw measures those: outcome events only)."
    )
    ctx.notes.append(
        "Same-run ratio: each daemon row's vs_consume_decode is its events/s over the consume + "
        "decode row of the same stream and the same record path as the daemon's (record_path: "
        "'lean' is streaming.kafka.records' (offset, key, value) records, 'stock' kafka-python's "
        "ConsumerRecord); vs_stock_consume_decode is over the stock client's consume + decode. "
        "Count-only rows' vs_consume_decode is over their own path's consume + decode. All "
        "measured minutes apart on the same topics, broker and machine; the consume rows use "
        "kafka-python's default fetch settings (1 MiB per partition; the daemon fetches up to "
        "kafka.max_partition_fetch_bytes, 4 MiB) and take as many records per poll as the daemon "
        "(kafka.max_poll_records). The JSON stream is measured first, then the "
        "float32 stream, in one process: peak_rss_mb is the process's peak resident size so far, "
        "and pss_*_mb the proportional set size (PSS, from /proc/PID/smaps_rollup) of the process "
        "and of the daemon's decoding process together during the first round (the highest "
        "sample of its first and last third, and of the run), which counts the memory the two "
        "share once; pss_growth_mb_per_million_events_2nd_half is the least-squares slope of "
        "those samples over the second half of the events (the dashed lines of the plot), "
        f"'{TOO_SHORT}' with fewer than {MIN_FIT_POINTS} samples at distinct event counts there "
        "(the daemon counts events a polled batch at a time). The second daemon's figures "
        "start from what the first run left (JAX caches, allocator pools). "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')} (as `encore run` sets it)."
    )
    ctx.notes.append(
        "events_per_s of the daemon covers its whole run, start-up included (group join, and JAX "
        "compiling the policy update and the reward model's update, which is most of a --quick "
        "run); steady_events_per_s is "
        "its rate between 20 % and 90 % of the stream (sampled each second; "
        f"'{TOO_SHORT}' where fewer than {MIN_STEADY_SAMPLES} samples fall there), against the "
        "same consume + decode rate; over the same window, steady_cores is the CPU seconds per "
        "second of the daemon's process (all threads) and of its decoding process "
        "(streaming.events.process) together (the machine has "
        f"{os.cpu_count()} cores and also runs the broker), steady_cpu_us_per_event their CPU "
        "per event, and steady_main_thread_busy the "
        "share of the time the thread running the loop was on a CPU (the rest it waited: for "
        "the GIL, fetch responses, the decoding process, the log's flush before a checkpoint, "
        "XLA). first_event_s: seconds into run() when the first poll that returned "
        "records was done (handed to the decoding process; the round after steps it, and JAX "
        "compiles the step's functions there); "
        "last_event_s: when the last event was done (1 s resolution); run_s: run() from open to "
        f"close (the {idle_ms / 1000:g} s idle wait that ends it is subtracted for events_per_s, "
        "the final "
        "checkpoint and closing are not)."
    )
    ctx.notes.append(
        "Each round's daemon is a worker's first start: its checkpoint directory is new, so is "
        "the JAX compilation cache in it, and the first poll waits for the step's functions to "
        "compile. restart_*: after the rounds, one more daemon over the same stream from a fresh "
        "group and fresh state, but with the compilation cache round 0's worker filled "
        "(jax.compilation_cache_dir), as a worker restarted on its own checkpoint directory finds "
        "it (compiled functions are loaded instead; tracing them still happens). Its "
        "restart_vs_consume_decode is over the same consume + decode rate."
    )
    ctx.notes.append(
        "Scale-out rows: the float32 stream read again by 1, then 2, daemon processes (each "
        "`encore run`'s Daemon in a Python process of its own, so no GIL is shared) in a fresh "
        "consumer group; with 2, each learns from its partitions and the linear statistics "
        "travel as deltas (scale.share_deltas). events_per_s is the stream's events over the wall "
        "time from the first worker's run() to the last poll that returned records, start-up "
        "included as in the in-process daemon row (records_read counts what the workers read, "
        "records read again after a rebalance included); cpu_s is the workers' CPU time in all (JAX start-up "
        "and compilation included). On a 2-core machine that also runs the broker, a second "
        "process competes with the first for the same cores."
    )
    ctx.notes.append(
        "Goal: the daemon at >= 50 % of the consume+decode rate and >= 80,000 "
        "events/s; the table says where it stands for each encoding. The 10-million-event "
        "memory soak is `python -m benchmarks soak`."
    )
    return rows
