"""``encore demo``: the main job end to end on embedded defaults.

It starts a local broker (unless ``--bootstrap-servers`` names a cluster), creates this run's
topics, and runs two things side by side for a bounded time:

- simulated listeners (``streaming.sim.simulator``) that send requests to two arms at random: the
  *logging* policy (the simulator's popularity-and-taste softmax) and the *learner* (the
  configured bandit policy, re-ranking with the newest snapshot the daemon published). Every
  request's impression (with exact propensities) and the plays that follow go to Kafka, with a
  few malformed messages mixed in;
- the daemon (``streaming.worker.daemon``), consuming both topics as a consumer group, joining outcomes
  to impressions, learning, checkpointing and publishing snapshots.

The report compares the arms by the simulator's *true* expected reward of what each showed at
the top of the slate (P(stream >= 30 s)), over time, next to what the daemon measured, and
against two references computed from the same truth on the same requests: the oracle (the best
candidate on top of every slate) and a uniformly random slate (:func:`reference_top_reward`).

Why one long module: the demo is one job (broker, topics, listeners, daemon, report) whose parts
share its options and its clock; split, each part would take them all as arguments.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

import jax
import numpy as np
import numpy.typing as npt

from streaming.config import Config
from streaming.core import make_engine
from streaming.events import FeatureEncoding, key64
from streaming.kafka.broker import LocalBroker, default_state_dir
from streaming.kafka.clients import TopicPartition, ensure_topics, make_consumer, make_producer
from streaming.serving.reranker import Reranker, SnapshotFollower
from streaming.sim import traffic
from streaming.sim.simulator import SimConfig, Simulator
from streaming.worker.daemon import Daemon
from streaming.worker.stats import summary_line

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.console import Console

LOGGING = "logging"
ORACLE = "oracle"
"""Reference arm: the candidate with the highest true reward on top of every slate."""
RANDOM = "random"
"""Reference arm: a uniformly random slate (its top track is any candidate, equally likely)."""
DEMO_GAP_MS = 5_000
"""Simulated time between two requests of the whole population in the demo."""


class TopReward(NamedTuple):
    """True P(stream >= 30 s) of the top track of each request under the two reference policies."""

    oracle: npt.NDArray[np.float64]  # (n,) the best candidate on top: no slate does better
    random: npt.NDArray[np.float64]  # (n,) expected over a uniformly random slate


def reference_top_reward(expected_reward: npt.ArrayLike) -> TopReward:
    """The oracle's and a uniformly random slate's true top-track reward, per request.

    The demo scores an arm by the true reward of the track it puts on top, so the best slate of
    a request is any slate that starts with its best candidate, and a uniformly random slate's
    top track is each candidate with probability ``1 / k``.

    Args:
        expected_reward: ``(n, k)`` the simulator's true P(stream >= 30 s) of each candidate on
            top (:meth:`streaming.sim.simulator.Simulator.expected_reward`).

    Returns:
        ``TopReward(oracle=(n,), random=(n,))``.

    Example:
        >>> reference_top_reward(np.array([[0.25, 0.75, 0.5]]))
        TopReward(oracle=array([0.75]), random=array([0.5]))
    """
    er = np.asarray(expected_reward, dtype=np.float64)
    if er.ndim != 2 or er.shape[1] == 0:
        raise ValueError(f"expected_reward must be (n, k) with k >= 1, got shape {er.shape}")
    return TopReward(oracle=er.max(axis=1), random=er.mean(axis=1))


def demo_console(file: IO[str] | None = None) -> Console:
    """The demo's console (stdout by default), in soft-wrap mode.

    When its output is not a terminal, rich renders at 80 columns and would break a long progress
    line (the daemon's summary line) in two; with soft wrap every printed line stays one line.
    Tables still fit the console's width.
    """
    from rich.console import Console

    return Console(file=file, soft_wrap=True)


def progress(console: Console, line: str) -> None:
    """Print one progress line as it is: never wrapped, and brackets in it are not markup."""
    console.print(line, markup=False, soft_wrap=True)


@dataclass(frozen=True)
class DemoOptions:
    duration_s: float = 60.0
    rate: int = 800
    slate_size: int = 5
    seed: int = 0
    bootstrap_servers: str | None = None
    out: Path = Path("demo-out")
    state_dir: Path | None = None  # the local broker's folder: None is ENCORE_STATE_DIR or .encore
    malformed_per_10k: int = 20
    learner_share: float = 0.5


def demo_config(config: Config, run_id: str, servers: str, opts: DemoOptions) -> Config:
    """This run's topics, group, checkpoints and a join window suited to simulated time."""
    t = config.topics
    topics = t.for_run(run_id)
    return dataclasses.replace(
        config,
        topics=topics,
        kafka=dataclasses.replace(
            config.kafka, bootstrap_servers=servers, group_id=f"encore-{run_id}"
        ),
        # Simulated time runs DEMO_GAP_MS per request: a 20-minute window (a slate of five
        # tracks) closes a few hundred requests later, so learning starts within seconds. Each
        # partition has its own join, so a minute of lateness is plenty.
        join=dataclasses.replace(
            config.join, window_ms=1_200_000, allowed_lateness_ms=60_000, slate_size=opts.slate_size
        ),
        checkpoint=dataclasses.replace(
            config.checkpoint, dir=str(opts.out / "checkpoints" / run_id), every_ms=5_000
        ),
        rerank=dataclasses.replace(config.rerank, snapshot_every_ms=1_000),
        log=dataclasses.replace(config.log, dir=str(opts.out / "log" / run_id)),
        metrics=dataclasses.replace(config.metrics, port=0),
    )


class SimulatedStream:
    """Requests served by the logging policy, with their plays, produced in event-time order.

    ``produce`` can be called several times: simulated time goes on, and plays whose event time
    has not come yet are held back for the next call (so a pause leaves join windows open).
    """

    def __init__(
        self,
        config: Config,
        servers: str,
        *,
        slate_size: int,
        seed: int,
        run_id: str = "sim",
        start_ms: int = 0,
    ) -> None:
        self.sim = Simulator(SimConfig(seed=seed, request_gap_ms=1000, start_ms=start_ms))
        self.slate_size, self.run_id = slate_size, run_id
        self.producer = make_producer(config.kafka, servers)
        self.topics = {"impressions": config.topics.impressions, "outcomes": config.topics.outcomes}
        self.release = traffic.EventTimeRelease()
        self.feature_encoding: FeatureEncoding = config.events.feature_encoding

    def produce(self, n_requests: int, *, last: bool = True, batch: int = 1000) -> int:
        """Send ``n_requests`` more requests; ``last`` also sends every play still held back."""
        sent = 0
        for lo in range(0, n_requests, batch):
            req = self.sim.requests(min(batch, n_requests - lo))
            sl = self.sim.log_slates(req, self.slate_size)
            plays = self.sim.play(req, sl.shown)
            imps = traffic.impressions(
                req,
                sl.shown,
                sl.propensity,
                policy=LOGGING,
                run_id=self.run_id,
                feature_encoding=self.feature_encoding,
            )
            self.release.hold(
                list(traffic.wire([], traffic.outcomes(req, plays, run_id=self.run_id)))
            )
            final = last and lo + len(req.t_ms) >= n_requests
            now = None if final else int(req.t_ms[-1])
            for w in [*traffic.wire(imps, []), *self.release.release(now)]:
                self.producer.send(self.topics[w.role], key=w.key, value=w.value)
                sent += 1
        self.producer.flush(timeout=60)
        return sent

    def close(self) -> None:
        self.producer.close(timeout=10)


def produce_simulated(
    config: Config,
    servers: str,
    *,
    n_requests: int,
    slate_size: int,
    seed: int,
    run_id: str = "sim",
    batch: int = 1000,
    start_ms: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Produce ``n_requests`` requests served by the logging policy, with their plays.

    Impressions carry their features as ``config.events.feature_encoding`` says; simulated time
    starts at ``start_ms`` (``newest_event_ms`` continues a stream already in the topics).
    ``progress(requests, events)``: called after each tenth of the requests (each at least
    ``batch``) with how many requests and events were sent so far.
    """
    stream = SimulatedStream(
        config, servers, slate_size=slate_size, seed=seed, run_id=run_id, start_ms=start_ms
    )
    chunk = max(batch, -(-n_requests // 10 // batch) * batch)
    sent = 0
    try:
        for lo in range(0, n_requests, chunk):
            n = min(chunk, n_requests - lo)
            sent += stream.produce(n, batch=batch, last=lo + n >= n_requests)
            if progress is not None:
                progress(lo + n, sent)
        return sent
    finally:
        stream.close()


def newest_event_ms(config: Config, servers: str, timeout_s: float = 10.0) -> int | None:
    """The largest event time (``ts``) among the last record of every partition of the
    impressions and outcomes topics; None when they hold nothing (or nothing readable)."""
    import msgspec

    topics = [config.topics.impressions, config.topics.outcomes]
    reader = make_consumer(config.kafka, servers, group_id=None)
    try:
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(reader.partitions_for_topic(t) or [])
        ]
        if not tps:
            return None
        ends = reader.end_offsets(tps)
        held = [tp for tp in tps if ends[tp] > 0]
        if not held:
            return None
        reader.assign(held)
        for tp in held:
            reader.seek(tp, ends[tp] - 1)
        newest: int | None = None
        waiting = set(held)
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            for tp, records in reader.poll(timeout_ms=200).items():
                waiting.discard(tp)
                for r in records:
                    try:
                        ts = msgspec.json.decode(r.value)["ts"]
                    except Exception:  # a malformed message says nothing of the stream's time
                        continue
                    if isinstance(ts, int) and (newest is None or ts > newest):
                        newest = ts
        return newest
    finally:
        reader.close(autocommit=False)


class Listeners:
    """Simulated listeners served by two arms, producing into Kafka, recording the truth."""

    def __init__(self, config: Config, servers: str, opts: DemoOptions, run_id: str) -> None:
        self.config, self.opts, self.run_id = config, opts, run_id
        self.sim = Simulator(SimConfig(seed=opts.seed, request_gap_ms=DEMO_GAP_MS))
        self.rng = np.random.default_rng(opts.seed + 1)
        self.engine = make_engine(config)
        self.reranker = Reranker(
            self.engine.policy, self.engine.policy.init(config.events.d_user, config.events.d_track)
        )
        self.follower = SnapshotFollower(
            config,
            servers,
            self.engine.policy,
            d_user=config.events.d_user,
            d_track=config.events.d_track,
        )
        self.producer = make_producer(config.kafka, servers)
        self.key = jax.random.key(opts.seed)
        self.release = traffic.EventTimeRelease()
        self.topics = {"impressions": config.topics.impressions, "outcomes": config.topics.outcomes}
        self.sent = 0
        self.malformed = 0
        self.snapshots_used = 0
        # (t_s, arm, sum of the true top-track P(stream >= 30 s), requests) per tick and arm
        self.truth: list[tuple[float, str, float, float]] = []
        # the same for the reference arms (ORACLE, RANDOM), over every request of the tick
        self.reference: list[tuple[float, str, float, float]] = []

    def tick(self, n: int, t_s: float) -> None:
        req = self.sim.requests(n)
        s = self.opts.slate_size
        learner = self.rng.random(n) < self.opts.learner_share
        sl = self.sim.log_slates(req, s)
        shown, prop = sl.shown.copy(), sl.propensity.copy()
        if learner.any():
            self.key, sub = jax.random.split(self.key)
            # The same ids the daemon learns from: key64 of the track id string, hashed.
            names = [traffic.track_id(t) for t in req.candidates[learner].ravel().tolist()]
            ids = (key64(names) % np.uint64(self.engine.id_space)).astype(np.int32)
            ids = ids.reshape(req.candidates[learner].shape)
            o, p = self.reranker.rank_many(
                req.context[learner], req.candidate_features[learner], ids, slate_size=s, key=sub
            )
            shown[learner], prop[learner] = o, p
        plays = self.sim.play(req, shown)
        er = self.sim.expected_reward(req)
        top = np.take_along_axis(er, shown[:, :1], axis=1)[:, 0]
        ref = reference_top_reward(er)
        self.reference += [
            (t_s, ORACLE, float(ref.oracle.sum()), float(n)),
            (t_s, RANDOM, float(ref.random.sum()), float(n)),
        ]
        for arm, sel in ((LOGGING, ~learner), (self.engine.policy.spec.name, learner)):
            if sel.any():
                self.truth.append(
                    (t_s, arm, float(top[sel].mean()) * int(sel.sum()), float(sel.sum()))
                )
        names = np.where(learner, self.engine.policy.spec.name, LOGGING)
        imps = traffic.impressions(
            req,
            shown,
            prop,
            policy=names,
            run_id=self.run_id,
            feature_encoding=self.config.events.feature_encoding,
        )
        self.release.hold(list(traffic.wire([], traffic.outcomes(req, plays, run_id=self.run_id))))
        self._send([*traffic.wire(imps, []), *self.release.release(int(req.t_ms[-1]))])

    def _send(self, messages: list[traffic.Wire]) -> None:
        for w in messages:
            value = w.value
            if self.rng.random() * 10_000 < self.opts.malformed_per_10k:
                value = value[: len(value) // 2]  # a truncated message: must reach the DLQ
                self.malformed += 1
            self.producer.send(self.topics[w.role], key=w.key, value=value)
            self.sent += 1

    def refresh(self) -> None:
        state = self.follower.poll()
        if state is not None:
            self.reranker.state = state
            self.snapshots_used += 1

    def close(self) -> None:
        self._send(self.release.release())
        self.producer.flush(timeout=30)
        self.producer.close(timeout=10)
        self.follower.close()


def _curve(
    truth: list[tuple[float, str, float, float]], duration_s: float, buckets: int = 6
) -> dict[str, list[float]]:
    edges = np.linspace(0.0, duration_s, buckets + 1)
    out: dict[str, list[float]] = {}
    for arm in sorted({a for _, a, _, _ in truth}):
        rows = np.array([(t, s, c) for t, a, s, c in truth if a == arm])
        vals = []
        for lo, hi in itertools.pairwise(edges):
            sel = (rows[:, 0] >= lo) & (rows[:, 0] < hi)
            vals.append(float(rows[sel, 1].sum() / max(rows[sel, 2].sum(), 1.0)))
        out[arm] = vals
    return out


def run_means(truth: list[tuple[float, str, float, float]]) -> dict[str, float]:
    """Each arm's mean over the whole run (weighted by requests)."""
    sums: dict[str, list[float]] = {}
    for _, arm, total, count in truth:
        acc = sums.setdefault(arm, [0.0, 0.0])
        acc[0] += total
        acc[1] += count
    return {arm: total / max(count, 1.0) for arm, (total, count) in sorted(sums.items())}


def run_demo(config: Config, opts: DemoOptions) -> int:
    from rich.table import Table

    console = demo_console()
    run_id = f"demo{int(time.time())}"
    opts.out.mkdir(parents=True, exist_ok=True)
    broker: LocalBroker | None = None
    servers = opts.bootstrap_servers
    t0 = time.perf_counter()
    if not servers:
        broker = LocalBroker(state_dir=(opts.state_dir or default_state_dir()) / "demo-broker")
        broker.wipe()
        console.print(
            "[bold]encore demo[/bold]: starting a local Apache Kafka broker "
            "(the first run fetches it from Maven Central)..."
        )
        servers = broker.start().bootstrap_servers
        progress(console, f"broker up at {servers} in {time.perf_counter() - t0:.1f} s")
    try:
        cfg = demo_config(config, run_id, servers, opts)
        ensure_topics(cfg, servers)
        learner_name = cfg.policy.name
        daemon = Daemon(cfg, servers=servers, policy_names=[LOGGING, learner_name])
        stop = threading.Event()
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["stats"] = daemon.run(
                    stop,
                    on_tick=lambda d: progress(
                        console, "  daemon: " + summary_line(d.stats, d.clock())
                    ),
                )
            except BaseException as exc:
                result["error"] = exc
                raise

        thread = threading.Thread(target=work, name="encore-daemon", daemon=True)
        thread.start()
        lst = Listeners(cfg, servers, opts, run_id)
        progress(
            console,
            f"listeners: {opts.rate} requests/s for {opts.duration_s:.0f} s, slates of "
            f"{opts.slate_size} from 20 candidates; arms: {LOGGING} vs {learner_name}",
        )
        start = time.perf_counter()
        tick_s = 0.1
        next_refresh = start
        while (now := time.perf_counter()) - start < opts.duration_s:
            if "error" in result:
                raise RuntimeError("the daemon failed") from result["error"]
            lst.tick(max(1, int(opts.rate * tick_s)), now - start)
            if now >= next_refresh:
                lst.refresh()
                next_refresh = now + 1.0
            lag = start + (int((now - start) / tick_s) + 1) * tick_s - time.perf_counter()
            if lag > 0:
                time.sleep(lag)
        produce_s = time.perf_counter() - start
        lst.close()
        # Let the daemon drain what was produced, then stop it (it checkpoints on the way out).
        deadline = time.perf_counter() + 60
        while (
            daemon.stats.events < lst.sent
            and time.perf_counter() < deadline
            and "error" not in result
        ):
            time.sleep(0.2)
        stop.set()
        thread.join(timeout=60)
        if "error" in result:
            raise RuntimeError("the daemon failed") from result["error"]
        stats = daemon.stats
        curve = _curve(lst.truth, produce_s)
        reference_curve = _curve(lst.reference, produce_s)
        reference = run_means(lst.reference)
        report = {
            "run_id": run_id,
            "bootstrap_servers": servers,
            "policy": learner_name,
            "events_produced": lst.sent,
            "events_consumed": stats.events,
            "produce_events_per_s": lst.sent / produce_s,
            "daemon_events_per_s": stats.events
            / max((daemon.clock() - stats.started_ms) / 1000.0, 1e-9),
            "malformed_injected": lst.malformed,
            "dead_letters": stats.dead_letters,
            "late_or_orphan": stats.late,
            "checkpoints": stats.checkpoints,
            "snapshots_published": stats.snapshots,
            "snapshots_used_by_listeners": lst.snapshots_used,
            "gc_collections": stats.gc_collections,
            "counters": stats.counters,
            "true_top_reward_by_period": curve,
            "true_top_reward_reference": reference,
            "true_top_reward_reference_by_period": reference_curve,
            "daemon_top_reward": {
                k: v[0] / max(v[1], 1) for k, v in stats.reward_by_policy.items()
            },
        }
        daemon_top: dict[str, float] = {
            k: v[0] / max(v[1], 1) for k, v in stats.reward_by_policy.items()
        }
        (opts.out / "report.json").write_text(json.dumps(report, indent=2))
        _plot(curve, produce_s, reference, opts.out / "learning.png")
        table = Table(title=f"encore demo report ({run_id})")
        table.add_column("measure")
        table.add_column("value", justify="right")
        for k in (
            "events_produced",
            "events_consumed",
            "produce_events_per_s",
            "daemon_events_per_s",
            "malformed_injected",
            "dead_letters",
            "late_or_orphan",
            "checkpoints",
            "snapshots_published",
            "snapshots_used_by_listeners",
        ):
            v = report[k]
            table.add_row(k, f"{v:,.0f}" if isinstance(v, float) else f"{v:,}")
        table.add_row("feedback rows learned", f"{stats.counters.get('feedback_rows', 0):,}")
        console.print(table)
        arms = Table(title="True P(stream >= 30 s) of the top track, by sixth of the run")
        arms.add_column("arm")
        for i in range(len(next(iter(curve.values())))):
            arms.add_column(f"{i + 1}/6", justify="right")
        arms.add_column("daemon saw", justify="right")
        for arm, vals in curve.items():
            arms.add_row(
                arm,
                *(f"{v:.3f}" for v in vals),
                f"{daemon_top.get(arm, float('nan')):.3f}",
            )
        for arm, vals in reference_curve.items():
            arms.add_row(f"[dim]{arm}[/dim]", *(f"[dim]{v:.3f}[/dim]" for v in vals), "")
        console.print(arms)
        lift = curve[learner_name][-1] - curve[LOGGING][-1]
        progress(
            console,
            f"learner vs logging in the last sixth: {lift:+.3f} "
            f"({'ahead' if lift > 0 else 'behind'}); over the run the oracle reaches "
            f"{reference[ORACLE]:.3f} and a uniformly random slate {reference[RANDOM]:.3f}; "
            f"report in {opts.out}/report.json, plot {opts.out}/learning.png",
        )
        return 0
    finally:
        if broker is not None:
            broker.wipe()


def learning_figure(
    curve: dict[str, list[float]], duration_s: float, reference: dict[str, float]
) -> Figure:
    """The demo's plot: each arm's true top-track reward per period, between the references.

    Args:
        curve: arm -> its true P(stream >= 30 s) of the top track in each equal period of the run.
        duration_s: the run's length; the periods split it evenly.
        reference: the whole run's :data:`ORACLE` and :data:`RANDOM` values (others are ignored).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.2))
    ax = fig.subplots()
    for arm, vals in curve.items():
        xs = (np.arange(len(vals)) + 0.5) * duration_s / len(vals)
        ax.plot(xs, vals, marker="o", lw=2, label=arm)
    styles = {
        ORACLE: ("oracle (best track on top)", "black", "--"),
        RANDOM: ("uniformly random slate", "grey", ":"),
    }
    for arm, (name, colour, ls) in styles.items():
        if arm in reference:
            v = reference[arm]
            ax.axhline(v, color=colour, ls=ls, lw=1.5, label=f"{name}: {v:.3f}")
    ax.set_xlim(0, duration_s)
    ax.set_ylim(0, 1)
    ax.set_xlabel("seconds into the demo")
    ax.set_ylabel("true P(stream >= 30 s) of the top track")
    ax.set_title("True reward of the top track by arm, between oracle and random")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _plot(
    curve: dict[str, list[float]], duration_s: float, reference: dict[str, float], path: Path
) -> None:
    learning_figure(curve, duration_s, reference).savefig(path, dpi=110)
