"""Bandits suite: encore's policies against Vowpal Wabbit and MABWiser on the same simulated rounds.

Every system sees the same rounds (users, 20 candidates of 2,000 tracks, 16 + 16 features) and
the same uniform draws ``u_t``; the binary reward of a choice ``a`` is ``u_t < p_t(a)`` with
``p_t`` the simulator's true P(stream >= 30 s) (``Simulator.expected_reward``; plays are not
simulated, so the hidden session mood stays 0). Regret and the reported average reward use the
true probabilities. Rows say what information each system was given.

Measured: cumulative regret, average true reward of the last 20,000 rounds, choose + learn
throughput, peak resident memory of the process while the system ran (the counter is reset per
system through ``/proc/self/clear_refs``; it includes the shared round data), a drifting-taste
variant, a re-rank latency table, and update-only throughput against VW's command-line learner.
"""

from __future__ import annotations

import os

# OpenBLAS (behind numpy, and behind JAX's LAPACK calls on CPU) spins a thread per core; on a
# small shared machine those threads contend for the cores, and a small factorisation such as
# the policy's 289 x 289 Cholesky spends its time waiting for them. One thread for every
# system in this suite (VW does not use it; MABWiser and encore both do).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import json
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bandits import POLICIES, Candidates, Feedback, Policy, linear
from benchmarks._runner import TOO_SHORT, Context, Row, colour, fmt, percentile, rate
from streaming.sim.simulator import SimConfig, Simulator

D_USER = D_TRACK = 16
K = 20
N_TRACKS = 2000
BATCH = 100


class Rounds(NamedTuple):
    user_id: np.ndarray  # (T,)
    context: np.ndarray  # (T, du) float32
    cand_ids: np.ndarray  # (T, K) int64
    cand_features: np.ndarray  # (T, K, dt) float32
    p: np.ndarray  # (T, K) true P(stream >= 30 s)
    u: np.ndarray  # (T,) shared uniforms for the binary reward
    u_explore: np.ndarray  # (T,) shared uniforms for systems that sample from a pmf in Python
    user_features: np.ndarray
    track_features: np.ndarray


def make_rounds(
    t: int,
    drift: float,
    seed: int = 0,
    *,
    n_tracks: int = N_TRACKS,
    k: int = K,
    d_user: int = D_USER,
    d_track: int = D_TRACK,
    change_at_ms: int | None = None,
) -> Rounds:
    sim = Simulator(
        SimConfig(
            n_tracks=n_tracks,
            d_user=d_user,
            d_track=d_track,
            n_candidates=k,
            drift=drift,
            change_at_ms=change_at_ms,
            seed=seed,
        )
    )
    parts = [sim.requests(min(10_000, t - lo)) for lo in range(0, t, 10_000)]
    p = np.concatenate([sim.expected_reward(r) for r in parts])
    rng = np.random.default_rng(seed + 1)
    return Rounds(
        user_id=np.concatenate([r.user_id for r in parts]),
        context=np.concatenate([r.context for r in parts]),
        cand_ids=np.concatenate([r.candidates for r in parts]),
        cand_features=np.concatenate([r.candidate_features for r in parts]),
        p=p,
        u=rng.random(t),
        u_explore=rng.random(t),
        user_features=sim.world.user_features,
        track_features=sim.world.track_features,
    )


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


class Result(NamedTuple):
    chosen: np.ndarray  # (n,) index into the K candidates
    seconds: float


def _metrics(
    system: str, given: str, rounds: Rounds, res: Result, batch: str
) -> tuple[Row, np.ndarray]:
    n = res.chosen.shape[0]
    got = rounds.p[np.arange(n), res.chosen]
    regret = np.cumsum(rounds.p[:n].max(axis=1) - got)
    last = min(20_000, n)
    row: Row = {
        "system": system,
        "given": given,
        "rounds": n,
        "learn_every": batch,
        "cum_regret": float(regret[-1]),
        "avg_reward_last20k": float(got[-last:].mean()),
        "rounds_per_s": rate(n, res.seconds),
        "peak_rss_mb": _peak_mb(),
    }
    return row, regret


# ---------------------------------------------------------------------------------------- encore
_JITTED: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {}
"""The jitted choose and update of each encore system, compiled once for all its rows."""


def _jitted(
    policy: Policy, serve: Callable[[Any], Any] | None = None
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``serve``: the form of the state a batch is chosen from (None: the state itself)."""

    def choose(state: Any, x: Any, c: Candidates, key: Any) -> Any:
        keys = jax.random.split(key, x.shape[0])
        m = jnp.ones(c.ids.shape, jnp.bool_)
        ranked = state if serve is None else serve(state)
        return jax.vmap(
            lambda xx, cc, mm, kk: policy.rank(ranked, xx, cc, mm, key=kk, slate_size=1)
        )(x, c, m, keys).order[:, 0]

    return jax.jit(choose), jax.jit(policy.update)


def run_encore(
    policy: Policy,
    rounds: Rounds,
    n: int,
    batch: int = BATCH,
    seed: int = 0,
    *,
    system: str | None = None,
    serve: Callable[[Any], Any] | None = None,
) -> Result:
    """Choose and learn over the first ``n`` rounds; ``system`` names the policy's factory and
    settings, so that runs of the same system (stationary and drifting rounds) reuse its
    compiled functions; ``serve`` derives the form each batch is chosen from."""
    if system is None or serve is not None:
        choose_jit, update = _jitted(policy, serve)
    else:
        choose_jit, update = _JITTED.setdefault(system, _jitted(policy))
    state = policy.init(rounds.context.shape[1], rounds.cand_features.shape[2])
    key = jax.random.key(seed)

    def batch_at(lo: int) -> tuple[np.ndarray, Candidates]:
        hi = lo + batch
        return rounds.context[lo:hi], Candidates(
            rounds.cand_features[lo:hi], rounds.cand_ids[lo:hi].astype(np.int32)
        )

    def step(state: Any, lo: int) -> tuple[Any, np.ndarray]:
        x, c = batch_at(lo)
        a = np.asarray(choose_jit(state, x, c, jax.random.fold_in(key, lo)))
        rows = np.arange(batch)
        p = rounds.p[lo : lo + batch][rows, a]
        y = (rounds.u[lo : lo + batch] < p).astype(np.float32)
        fb = Feedback(
            x,
            c.features[rows, a],
            c.ids[rows, a],
            np.zeros(batch, np.int32),
            y,
            np.ones(batch, np.float32),
            np.ones(batch, bool),
        )
        return update(state, fb), a

    step(state, 0)  # compile outside the timed loop (the result is discarded)
    chosen = []
    _reset_peak()
    t0 = time.perf_counter()
    for lo in range(0, n, batch):
        state, a = step(state, lo)
        chosen.append(a)
    jax.block_until_ready(state)
    return Result(np.concatenate(chosen), time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------- VW
def _vw_strings(rounds: Rounds) -> tuple[list[str], list[str]]:
    users = [
        "shared |U " + " ".join(f"u{i}:{v:.5f}" for i, v in enumerate(row))
        for row in rounds.user_features
    ]
    tracks = [
        f"|T {' '.join(f't{i}:{v:.5f}' for i, v in enumerate(row))} |I id{j}"
        for j, row in enumerate(rounds.track_features)
    ]
    return users, tracks


VW_GIVEN = "user + track features, quadratic U x T, track id as a feature"


def run_vw(args: str, rounds: Rounds, n: int) -> Result:
    import vowpalwabbit

    users, tracks = _vw_strings(rounds)
    k = rounds.cand_ids.shape[1]
    vw = vowpalwabbit.Workspace(f"{args} --quiet --random_seed 0")
    chosen = np.empty(n, np.int64)
    _reset_peak()
    t0 = time.perf_counter()
    for t in range(n):
        ex = [users[rounds.user_id[t]]] + [tracks[j] for j in rounds.cand_ids[t]]
        pmf = np.asarray(vw.predict(ex))
        a = min(int(np.searchsorted(np.cumsum(pmf), rounds.u_explore[t] * pmf.sum())), k - 1)
        y = rounds.u[t] < rounds.p[t, a]
        ex[a + 1] = f"0:{0.0 if y else 1.0}:{max(pmf[a], 1e-6):.6f} {ex[a + 1]}"
        vw.learn(ex)
        chosen[t] = a
    seconds = time.perf_counter() - t0
    vw.finish()
    return Result(chosen, seconds)


# ---------------------------------------------------------------------------------------- MABWiser
def _joint(x: np.ndarray, z: np.ndarray) -> np.ndarray:
    xa = np.concatenate([x, np.ones((*x.shape[:-1], 1), x.dtype)], -1)
    za = np.concatenate([z, np.ones((*z.shape[:-1], 1), z.dtype)], -1)
    return (xa[..., :, None] * za[..., None, :]).reshape(*z.shape[:-1], -1)


def run_mabwiser_shared(kind: str, rounds: Rounds, n: int, *, per_round: bool = False) -> Result:
    """One MABWiser arm whose linear model scores every candidate's joint features.

    The model learns once per ``BATCH`` rounds (``partial_fit``), as encore's rows do, so it is
    fixed within a batch: by default the batch's ``BATCH x K`` candidate rows are scored in one
    ``predict_expectations`` call (MABWiser vectorises over rows; for LinUCB the choices are
    the same as one call per round, for LinTS every row still gets its own posterior draw).
    ``per_round=True`` makes one call per round instead (as a serving loop that answers one request at a time does).
    """
    from mabwiser.mab import MAB, LearningPolicy

    lp = LearningPolicy.LinUCB(alpha=1.0) if kind == "linucb" else LearningPolicy.LinTS(alpha=0.3)
    mab = MAB([0], lp, seed=0)
    chosen = np.empty(n, np.int64)
    _reset_peak()
    t0 = time.perf_counter()
    # The first batch is chosen uniformly (MABWiser must be fitted before it predicts).
    first = (rounds.u_explore[:BATCH] * K).astype(np.int64)
    for lo in range(0, n, BATCH):
        hi = min(lo + BATCH, n)
        if lo == 0:
            a = first[: hi - lo]
        elif per_round:
            a = np.empty(hi - lo, np.int64)
            for t in range(lo, hi):
                phi = _joint(
                    np.broadcast_to(rounds.context[t], (K, D_USER)), rounds.cand_features[t]
                )
                exp = mab.predict_expectations(phi)
                a[t - lo] = int(np.argmax([e[0] for e in exp]))
        else:
            ctx = np.broadcast_to(rounds.context[lo:hi, None, :], (hi - lo, K, D_USER))
            phi = _joint(ctx, rounds.cand_features[lo:hi]).reshape((hi - lo) * K, -1)
            exp = mab.predict_expectations(phi)
            a = np.array([e[0] for e in exp]).reshape(hi - lo, K).argmax(axis=1)
        rows = np.arange(hi - lo)
        phi_c = _joint(rounds.context[lo:hi], rounds.cand_features[lo:hi][rows, a])
        y = (rounds.u[lo:hi] < rounds.p[lo:hi][rows, a]).astype(np.float64)
        if lo == 0:
            mab.fit(np.zeros(hi - lo, np.int64), y, phi_c)
        else:
            mab.partial_fit(np.zeros(hi - lo, np.int64), y, phi_c)
        chosen[lo:hi] = a
    return Result(chosen, time.perf_counter() - t0)


def run_mabwiser_per_arm(rounds: Rounds, n: int) -> Result:
    """MABWiser's own LinUCB layout: one model per track (2,000 arms) over the user features."""
    from mabwiser.mab import MAB, LearningPolicy

    mab = MAB(list(range(N_TRACKS)), LearningPolicy.LinUCB(alpha=1.0), seed=0)
    chosen = np.empty(n, np.int64)
    _reset_peak()
    t0 = time.perf_counter()
    for lo in range(0, n, BATCH):
        hi = min(lo + BATCH, n)
        a = np.empty(hi - lo, np.int64)
        for t in range(lo, hi):
            if lo == 0:
                a[t - lo] = int(rounds.u_explore[t] * K)
            else:
                exp = mab.predict_expectations(rounds.context[t][None])
                a[t - lo] = int(np.argmax([exp[int(j)] for j in rounds.cand_ids[t]]))
        rows = np.arange(hi - lo)
        arms = rounds.cand_ids[lo:hi][rows, a]
        y = (rounds.u[lo:hi] < rounds.p[lo:hi][rows, a]).astype(np.float64)
        (mab.fit if lo == 0 else mab.partial_fit)(arms, y, rounds.context[lo:hi])
        chosen[lo:hi] = a
    return Result(chosen, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------- latency
# One request = a context and k candidate features as numpy arrays on the host -> the ordered
# slate and the probability of every choice, back on the host as numpy. Measured in a child
# process pinned to one core with XLA's CPU thread pools off, so the figure is a one-core figure
# whatever else the machine runs (the parent's JAX has already started its thread pools).
LATENCY_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
LATENCY_BATCH = 32
LATENCY_SLATE = 10


def _latency_state(policy: Policy, d_track: int, d_user: int, rng: np.random.Generator) -> Any:
    """A state that has learned from 512 rows (so scores are not all equal)."""
    n = 512
    fb = Feedback(
        rng.normal(size=(n, d_user)).astype(np.float32) / 4,
        rng.normal(size=(n, d_track)).astype(np.float32) / 8,
        rng.integers(0, 1 << 30, n).astype(np.int32),
        np.zeros(n, np.int32),
        rng.random(n).astype(np.float32),
        np.ones(n, np.float32),
        np.ones(n, bool),
    )
    return jax.block_until_ready(jax.jit(policy.update)(policy.init(d_user, d_track), fb))


def _percentiles(seconds: list[float], per: int = 1) -> tuple[float | str, float | str]:
    """p50 and p99 in ms per request; a p99 needs 100 calls (see ``_runner.percentile``)."""
    ms = [s * 1e3 / per for s in seconds]
    return percentile(ms, 50), percentile(ms, 99)


class _Requests(NamedTuple):
    xs: list[np.ndarray]  # distinct single requests, cycled
    cands: list[Candidates]
    mask: np.ndarray  # (k,)
    xb: np.ndarray  # (b, du): one batch
    cb: Candidates  # (b, k, dt)
    mb: np.ndarray  # (b, k)


def _requests(k: int, d_track: int, d_user: int, rng: np.random.Generator) -> _Requests:
    pool, b = 8, LATENCY_BATCH  # 8 requests cycled: no call reuses the previous call's buffers
    return _Requests(
        [(rng.normal(size=d_user) / 4).astype(np.float32) for _ in range(pool)],
        [
            Candidates(
                (rng.normal(size=(k, d_track)) / 8).astype(np.float32),
                rng.integers(0, 1 << 30, size=k).astype(np.int32),
            )
            for _ in range(pool)
        ],
        np.ones(k, bool),
        (rng.normal(size=(b, d_user)) / 4).astype(np.float32),
        Candidates(
            (rng.normal(size=(b, k, d_track)) / 8).astype(np.float32),
            rng.integers(0, 1 << 30, size=(b, k)).astype(np.int32),
        ),
        np.ones((b, k), bool),
    )


class _Timings(NamedTuple):
    single: list[float]  # jax.jit(policy.rank) on the raw state
    prepared: list[float]  # jax.jit(policy.rank) on policy.prepare(state)
    checked: list[float]  # policy.rank itself (host value checks)
    batch: list[float]  # vmapped batches of LATENCY_BATCH
    reranker: list[float]  # streaming.serving.reranker.Reranker.rank (what `encore rerank` calls)


def _latency_one_policy(policy: Policy, state: Any, req: _Requests, reps: int) -> _Timings:
    """Seconds per call: jitted single requests (raw and prepared state), ``policy.rank``
    itself, vmapped batches, and the re-ranker's single-request path."""
    from streaming.serving.reranker import Reranker

    s, b = LATENCY_SLATE, LATENCY_BATCH
    single = jax.jit(policy.rank, static_argnames="slate_size")
    serving = jax.block_until_ready(policy.prepare(state))
    reranker = Reranker(policy, state)

    def rank_one(st: Any, xx: jax.Array, cc: Candidates, mm: jax.Array, kk: jax.Array) -> Any:
        return policy.rank(st, xx, cc, mm, key=kk, slate_size=s)

    many = jax.jit(jax.vmap(rank_one, in_axes=(None, 0, 0, 0, 0)))
    keys = list(jax.random.split(jax.random.key(1), reps + 10))
    bkeys = [jax.random.split(k_, b) for k_ in keys[: max(reps // 8, 10)]]
    pool = len(req.xs)
    base_key = jax.random.key(2)

    def one(i: int, fn: Callable[..., Any], st: Any = state) -> float:
        t0 = time.perf_counter()
        r = fn(st, req.xs[i % pool], req.cands[i % pool], req.mask, key=keys[i], slate_size=s)
        order, prop = np.asarray(r.order), np.asarray(r.propensity)
        elapsed = time.perf_counter() - t0
        assert order.shape == prop.shape == (s,)
        return elapsed

    def batch(i: int) -> float:
        t0 = time.perf_counter()
        r = many(state, req.xb, req.cb, req.mb, bkeys[i])
        order, prop = np.asarray(r.order), np.asarray(r.propensity)
        elapsed = time.perf_counter() - t0
        assert order.shape == prop.shape == (b, s)
        return elapsed

    def rerank(i: int) -> float:
        c = req.cands[i % pool]
        t0 = time.perf_counter()
        order, prop = reranker.rank(
            req.xs[i % pool], c.features, c.ids, slate_size=s, key=base_key, index=i
        )
        elapsed = time.perf_counter() - t0
        assert order.shape == prop.shape == (s,)
        return elapsed

    for i in range(10):  # compile and warm up (policy.rank jits its own core on first use)
        one(i, single)
        one(i, single, serving)
        one(i, policy.rank)
        batch(i % len(bkeys))
        rerank(i)
    # Interleaved, so a burst of load on the machine hits every variant alike.
    t_single, t_prepared, t_rerank = [], [], []
    for i in range(reps):
        t_single.append(one(i, single))
        t_prepared.append(one(i, single, serving))
        t_rerank.append(rerank(i))
    t_checked = [one(i, policy.rank) for i in range(max(reps // 4, 100))]
    t_batch = [batch(i) for i in range(len(bkeys))]
    return _Timings(t_single, t_prepared, t_checked, t_batch, t_rerank)


def latency_child(names: list[str], k: int, d_track: int, d_user: int, reps: int) -> list[Row]:
    """The measurement itself (runs in the pinned child; see :func:`latency_rows`)."""
    rng = np.random.default_rng(0)
    req = _requests(k, d_track, d_user, rng)
    rows: list[Row] = []
    shape = (
        f"{k} candidates x {d_track} track + {d_user} user features, "
        f"slate {LATENCY_SLATE} with propensities, numpy in and out, one core"
    )
    for name in names:
        policy = POLICIES[name]()
        state = _latency_state(policy, d_track, d_user, rng)
        t = _latency_one_policy(policy, state, req, reps)
        p50, p99 = _percentiles(t.single)
        q50, q99 = _percentiles(t.prepared)
        c50, c99 = _percentiles(t.checked)
        b50, b99 = _percentiles(t.batch, per=LATENCY_BATCH)
        r50, r99 = _percentiles(t.reranker)
        rows.append(
            {
                "system": f"encore {name} rank latency",
                "given": shape,
                "p50_ms": p50,
                "p99_ms": p99,
                "prepared_p50_ms": q50,
                "prepared_p99_ms": q99,
                "checked_p50_ms": c50,
                "checked_p99_ms": c99,
                f"batched{LATENCY_BATCH}_p50_ms_per_request": b50,
                f"batched{LATENCY_BATCH}_p99_ms_per_request": b99,
            }
        )
        rows.append(
            {
                "system": f"encore {name} Reranker.rank latency",
                "given": shape + " (candidates padded to a power of two, prepared state)",
                "p50_ms": r50,
                "p99_ms": r99,
            }
        )
    return rows


def _latency_core() -> int:
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    return cores[-1]


def _pinned_child(core: int, body: str) -> tuple[dict[str, str], str]:
    """The environment and ``python -c`` code of a child that pins itself to ``core`` and runs
    ``body`` with this checkout first on its path and the latency XLA flags.

    The child pins itself before JAX starts a thread (a fork with ``preexec_fn`` could deadlock
    the parent's threads).
    """
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {LATENCY_XLA_FLAGS}"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    )
    pin = f"os.sched_setaffinity(0, {{{core}}}) if hasattr(os, 'sched_setaffinity') else None"
    return env, f"import os; {pin}; {body}"


LatencyShape = tuple[list[str], int, int, int]
"""Policies measured at one request shape: ``(names, k candidates, d_track, d_user)``."""


def latency_rows(shapes: list[LatencyShape], reps: int) -> list[Row]:
    """Re-rank latency per request, single and batched, in one child pinned to one core.

    Returns two rows per policy and shape, in the order given. The first: ``p50_ms`` /
    ``p99_ms`` through ``jax.jit(policy.rank)`` on the raw state (jitted once; value checks are
    the caller's, as in ``streaming``), ``prepared_*`` the same on ``policy.prepare(state)``,
    ``checked_*`` through ``policy.rank`` itself (host value checks included), and vmapped
    batches of 32 per call. A p99 needs 100 calls: with fewer it is TOO_SHORT.
    The second: ``streaming.serving.reranker.Reranker.rank``, the path ``encore rerank`` serves with
    (padding to a candidate bucket, prepared state, randomness folded in per request).
    """
    core = _latency_core()
    env, boot = _pinned_child(
        core,
        "import runpy; runpy.run_module('benchmarks.bandits', run_name='__main__', alter_sys=True)",
    )
    cmd = [sys.executable, "-c", boot, "latency", str(reps)]
    cmd += [f"{','.join(names)}:{k}:{dt}:{du}" for names, k, dt, du in shapes]
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    rows: list[Row] = json.loads(done.stdout.strip().splitlines()[-1])
    for row in rows:
        row["core"] = core
    return rows


def _rank_bodies(k: int, d_track: int, n: int, rng: np.random.Generator) -> list[bytes]:
    """``n`` distinct ``POST /rank`` bodies (features rounded to 4 decimals, as a client would
    send float32 features without excess digits)."""
    return [
        json.dumps(
            {
                "user_id": f"user-{i}",
                "surface": "home",
                "context": np.round(rng.normal(size=D_USER) / 4, 4).tolist(),
                "candidates": [f"track-{i}-{j}" for j in range(k)],
                "candidate_features": np.round(rng.normal(size=(k, d_track)) / 8, 4).tolist(),
                "slate_size": LATENCY_SLATE,
            }
        ).encode()
        for i in range(n)
    ]


HTTP_BODIES = {
    "json": "JSON with the candidates' features",
    "json-ids": "JSON, candidates by id (features from the catalogue)",
    "msgpack-ids": "MessagePack, candidates by id (features from the catalogue)",
}
"""How ``POST /rank`` bodies carry their candidates, by name."""


def _by_id(bodies: list[bytes], binary: bool) -> list[bytes]:
    """The same requests without features: ids only, as JSON or MessagePack."""
    import msgspec

    out = []
    for b in bodies:
        req = json.loads(b)
        del req["candidate_features"]
        out.append(msgspec.msgpack.encode(req) if binary else json.dumps(req).encode())
    return out


def _publish_candidates(config: Any, servers: str, bodies: list[bytes]) -> None:
    """Every candidate of ``bodies`` into the catalogue topic, with the features it names."""
    from streaming.serving.catalogue import TrackTable, publish_tracks

    ids: list[str] = []
    feats: list[list[float]] = []
    for b in bodies:
        req = json.loads(b)
        ids += req["candidates"]
        feats += req["candidate_features"]
    table = TrackTable(ids, np.asarray(feats, np.float32), np.zeros(len(ids), np.int64))
    publish_tracks(config, servers, table, embedding_version=1)


def _http_round_trips(
    servers: str, policy: str, k: int, d_track: int, reps: int, core: int, body: str = "json"
) -> tuple[list[float], int]:
    """Start ``encore rerank`` pinned to ``core``, time ``reps`` ``POST /rank`` round trips from
    this process (on another core where there is one), stop it; ``(seconds, body bytes)``.
    ``body`` names how requests carry their candidates (``HTTP_BODIES``); by id, the candidates
    are first published to a catalogue the server follows."""
    import dataclasses
    import http.client
    import re
    import select
    import signal
    import uuid

    import msgspec

    from streaming.config import Config
    from streaming.kafka.clients import ensure_topics

    others = (
        sorted(set(os.sched_getaffinity(0)) - {core}) if hasattr(os, "sched_getaffinity") else []
    )
    bodies = _rank_bodies(k, d_track, 8, np.random.default_rng(4))
    base = Config.load(env={}, overrides=[f"events.d_user={D_USER}", f"events.d_track={d_track}"])
    topics = base.topics.for_run(uuid.uuid4().hex[:8])
    run_config = dataclasses.replace(base, topics=topics)
    ensure_topics(run_config, servers)
    sets = [
        f"topics.{name}={getattr(topics, name)}"
        for name in ("impressions", "outcomes", "dlq", "late", "snapshots", "deltas", "catalogue")
    ]
    sets += [f"policy.name={policy}", f"events.d_user={D_USER}", f"events.d_track={d_track}"]
    content_type = "application/msgpack" if body == "msgpack-ids" else "application/json"
    if body != "json":
        _publish_candidates(run_config, servers, bodies)
        bodies = _by_id(bodies, binary=body == "msgpack-ids")
        sets.append("catalogue.follow=true")
    env, boot = _pinned_child(
        core, "import sys; from streaming.serving.service import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = [sys.executable, "-c", boot, "--bootstrap-servers", servers, "--port", "0"]
    argv += [x for s in sets for x in ("--set", s)]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    before = os.sched_getaffinity(0) if others else set[int]()
    try:
        assert proc.stdout is not None
        said: list[str] = []  # start-up warnings may come before the address
        match = None
        while match is None and len(said) < 20:
            ready, _, _ = select.select([proc.stdout], [], [], 120)
            said.append(proc.stdout.readline() if ready else "")
            if not said[-1]:
                break
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", said[-1])
        if not match:
            raise RuntimeError(f"encore rerank did not start: {said!r}")
        if others:
            os.sched_setaffinity(0, set(others))
        conn = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=60)

        def post(i: int) -> float:
            t0 = time.perf_counter()
            conn.request(
                "POST", "/rank", bodies[i % len(bodies)], headers={"Content-Type": content_type}
            )
            resp = conn.getresponse()
            raw = resp.read()
            answer = msgspec.msgpack.decode(raw) if body == "msgpack-ids" else json.loads(raw)
            elapsed = time.perf_counter() - t0
            if resp.status != 200 or len(answer["shown"]) != LATENCY_SLATE:
                raise RuntimeError(f"POST /rank answered {resp.status}: {answer}")
            return elapsed

        for i in range(20):  # compile and warm up
            post(i)
        times = [post(i) for i in range(reps)]
        conn.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"encore rerank exited {proc.returncode}: {out[-2000:]}")
    finally:
        if others:
            os.sched_setaffinity(0, before)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return times, sum(len(b) for b in bodies) // len(bodies)


def http_latency_rows(policy: str, shapes: list[tuple[int, int]], reps: int) -> list[Row]:
    """``POST /rank`` round trips to an ``encore rerank`` process on 127.0.0.1, per request shape
    ``(k candidates, d_track)``.

    The server is the real CLI (``streaming.serving.service.main``) in a child pinned to one core (the
    latency core, same XLA flags), following and logging to run-specific topics of a local
    broker; the client (``http.client``, one keep-alive connection, one request at a time) runs
    in this process, pinned to another core where there is one. The server ranks with the
    policy's initial state (no snapshot is published): the same arithmetic as a trained one.
    """
    from benchmarks.kafka_raw import broker_for_bench

    core = _latency_core()
    rows: list[Row] = []
    with broker_for_bench() as servers:
        for k, d_track in shapes:
            for body, about in HTTP_BODIES.items():
                times, size = _http_round_trips(servers, policy, k, d_track, reps, core, body)
                p50, p99 = _percentiles(times)
                rows.append(
                    {
                        "system": f"encore rerank HTTP POST /rank ({policy}, {body})",
                        "given": f"{k} candidates x {d_track} track + {D_USER} user features, "
                        f"slate {LATENCY_SLATE}, {about}, {size / 1e3:.1f} kB body, server on "
                        "one core, impression logged to Kafka",
                        "p50_ms": p50,
                        "p99_ms": p99,
                        "core": core,
                    }
                )
    return rows


# ---------------------------------------------------------------------------------------- catalogue
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def catalogue_rows(n_tracks: int, d_track: int, update: int, k: int = 500) -> list[Row]:
    """The in-memory catalogue at scale: ``n_tracks`` tracks of ``d_track`` float32 features
    applied in batches of ``update`` (as a follower applies what it polls), its bytes per
    track, and the time of a request's lookup of ``k`` candidates, idle and while a batch of
    ``update`` re-embedded tracks is applied on another thread; and how fast records decode."""
    import threading

    from streaming.core.catalogue import Catalogue, TrackBatch, decode_tracks, encode_track
    from streaming.events import key64

    rng = np.random.default_rng(5)
    ids = [f"track-{i}" for i in range(n_tracks)]
    keys = key64(ids)
    before = _rss_mb()
    _reset_peak()
    cat = Catalogue(d_track)
    t0 = time.perf_counter()
    for lo in range(0, n_tracks, update):
        hi = min(lo + update, n_tracks)
        cat.apply(
            TrackBatch(
                keys[lo:hi],
                np.ones(hi - lo, bool),
                rng.normal(0, 0.1, (hi - lo, d_track)).astype(np.float32),
                np.ones(hi - lo, np.int32),
                np.zeros(hi - lo, np.int64),
                np.arange(lo, hi, dtype=np.int64),
            )
        )
    load_s = time.perf_counter() - t0
    peak, after = _peak_mb() - before, _rss_mb() - before
    requests = [keys[rng.choice(n_tracks, k, replace=False)] for _ in range(64)]

    def lookups(stop: threading.Event | None, count: int) -> list[float]:
        out: list[float] = []
        i = 0
        while (stop is None and i < count) or (stop is not None and not stop.is_set()):
            t = time.perf_counter()
            cat.view().lookup(requests[i % len(requests)])
            out.append(time.perf_counter() - t)
            i += 1
        return out

    idle = lookups(None, 2_000)
    changed = rng.choice(n_tracks, update, replace=False)
    batch = TrackBatch(
        keys[changed],
        np.ones(update, bool),
        rng.normal(0, 0.1, (update, d_track)).astype(np.float32),
        np.full(update, 2, np.int32),
        np.zeros(update, np.int64),
        changed.astype(np.int64),
    )
    stop = threading.Event()
    during: list[float] = []
    reader = threading.Thread(target=lambda: during.extend(lookups(stop, 0)))
    reader.start()
    t0 = time.perf_counter()
    cat.apply(batch)
    update_s = time.perf_counter() - t0
    stop.set()
    reader.join()
    records = [
        (ids[i].encode(), encode_track(ids[i], i, 1, rng.normal(0, 0.1, d_track), 200_000))
        for i in range(20_000)
    ]
    t0 = time.perf_counter()
    decode_tracks(records, d_track)
    decode_rate = len(records) / (time.perf_counter() - t0)
    i50, i99 = _percentiles(idle)
    _, d99 = _percentiles(during)
    return [
        {
            "system": f"encore catalogue, {n_tracks:,} tracks x {d_track} float32",
            "given": f"applied in batches of {update:,}; a request looks up {k} random candidates "
            f"(key64, search, gather) through the newest view; an update of {update:,} "
            "re-embedded tracks applied on another thread while requests look up",
            "tracks": n_tracks,
            "bytes_per_track": cat.storage_bytes / cat.view().size,
            "rss_mb": after,
            "peak_rss_mb": peak,
            "load_s": load_s,
            "update_s": update_s,
            "lookup_p50_ms": i50,
            "lookup_p99_ms": i99,
            "lookup_p99_during_update_ms": d99,
            "lookups_during_update": len(during),
            "decode_records_per_s": decode_rate,
        }
    ]


# ---------------------------------------------------------------------------------------- update only
def update_only_rows(rounds: Rounds, n: int, ctx: Context) -> list[Row]:
    """Learning from logged data: encore ``update`` on arrays vs ``python -m vowpalwabbit -d FILE``."""
    a = (rounds.u_explore[:n] * K).astype(np.int64)  # uniform logging policy
    rows_ = np.arange(n)
    y = (rounds.u[:n] < rounds.p[:n][rows_, a]).astype(np.float32)
    out: list[Row] = []
    for name in ("linucb",) if ctx.quick else ("linucb", "squarecb"):
        policy = POLICIES[name]()
        # the same system as the regret rows' `encore NAME`: its compiled update is reused
        update = _JITTED.setdefault(f"encore {name}", _jitted(policy))[1]
        for b in (100,) if ctx.quick else (100, 1000):
            m = n - n % b
            fb = Feedback(
                rounds.context[:m],
                rounds.cand_features[:m][rows_[:m], a[:m]],
                rounds.cand_ids[:m][rows_[:m], a[:m]].astype(np.int32),
                np.zeros(m, np.int32),
                y[:m],
                np.full(m, 1.0 / K, np.float32),
                np.ones(m, bool),
            )
            batches = [
                jax.tree_util.tree_map(lambda v, lo=lo, b=b: jnp.asarray(v[lo : lo + b]), fb)
                for lo in range(0, m, b)
            ]
            state = policy.init(D_USER, D_TRACK)
            jax.block_until_ready(update(state, batches[0]))
            _reset_peak()
            t0 = time.perf_counter()
            for batch in batches:
                state = update(state, batch)
            jax.block_until_ready(state)
            sec = time.perf_counter() - t0
            out.append(
                {
                    "system": f"encore {name} update only",
                    "given": f"Feedback arrays, batches of {b} rows (already on device)",
                    "rounds": m,
                    "examples_per_s": rate(m, sec),
                    "peak_rss_mb": _peak_mb(),
                }
            )
    users, tracks = _vw_strings(rounds)
    with tempfile.TemporaryDirectory(prefix="encore-vw-") as tmp:
        path = Path(tmp) / "logged.txt"
        tiny = Path(tmp) / "tiny.txt"
        lines: list[str] = []
        for t in range(n):
            ex = [users[rounds.user_id[t]]] + [tracks[j] for j in rounds.cand_ids[t]]
            ex[a[t] + 1] = f"0:{0.0 if y[t] else 1.0}:{1.0 / K:.6f} {ex[a[t] + 1]}"
            lines.append("\n".join(ex) + "\n\n")
        path.write_text("".join(lines))
        tiny.write_text(lines[0])
        for args in ("--cb_explore_adf --squarecb -q UT",) + (
            () if ctx.quick else ("--cb_adf -q UT",)
        ):
            cmd = [sys.executable, "-m", "vowpalwabbit", *args.split(), "--quiet", "-d"]
            t0 = time.perf_counter()
            subprocess.run([*cmd, str(tiny)], check=True, capture_output=True)
            startup = time.perf_counter() - t0
            t0 = time.perf_counter()
            subprocess.run([*cmd, str(path)], check=True, capture_output=True)
            sec = time.perf_counter() - t0
            # Start-up is subtracted only where the examples took longer than it: a smaller
            # difference of two process timings is mostly their noise.
            learning = sec - startup
            out.append(
                {
                    "system": f"vw CLI {args} -d FILE",
                    "given": VW_GIVEN + "; text file (parsing included)",
                    "rounds": n,
                    "examples_per_s": rate(n, learning) if learning >= startup else TOO_SHORT,
                    "examples_per_s_incl_startup": rate(n, sec),
                }
            )
        ctx.notes.append(
            f"Update-only: {n:,} logged rounds (uniform logging, propensity 1/20). "
            "VW examples/s subtract the CLI's start-up time (a 1-example run), and are "
            f"'{TOO_SHORT}' where the examples took less time than that start-up; "
            "encore's input is Feedback arrays already in memory, VW's is its text "
            f"format ({path.stat().st_size / 1e6:.0f} MB), so VW also pays parsing."
        )
    return out


# ---------------------------------------------------------------------------------------- suite
def _encore_systems(quick: bool, drift: bool) -> dict[str, tuple[Callable[[], Policy], str]]:
    given = "user + track features (joint outer product), track id (hashed per-track bias)"
    if quick:
        names = {"linucb": {}, "squarecb": {}}
    else:
        names = {
            "linucb": {},
            "lin_ts": {},
            "squarecb": {},
            "epsilon_greedy": {},
            "softmax": {},
            "logistic_ts": {},
            "neural_linear": {},
        }
    out: dict[str, tuple[Callable[[], Policy], str]] = {}
    for name, kw in names.items():
        out[f"encore {name}"] = (lambda name=name, kw=kw: POLICIES[name](**kw), given)
    if not quick:
        out["encore linucb (no track id)"] = (
            lambda: POLICIES["linucb"](n_ids=0),
            "user + track features only",
        )
    if drift:
        for name in ("linucb",) if quick else ("linucb", "squarecb"):
            out[f"encore {name} forgetting 0.99"] = (
                lambda name=name: POLICIES[name](discount=0.99),
                given + "; discount 0.99 per update of 100 rows",
            )
    return out


def _suite(
    ctx: Context, rounds: Rounds, drift: bool, per_arm_n: int
) -> tuple[list[Row], dict[str, np.ndarray]]:
    n = rounds.p.shape[0]
    label = " [drift]" if drift else ""
    rows: list[Row] = []
    curves: dict[str, np.ndarray] = {}

    def add(system: str, given: str, res: Result, batch: str) -> None:
        row, curve = _metrics(system + label, given, rounds, res, batch)
        rows.append(row)
        curves[system] = curve
        print(
            f"  {row['system']}: regret {row['cum_regret']:.0f}, last20k "
            f"{row['avg_reward_last20k']:.4f}, {fmt(row['rounds_per_s'], '.0f')} r/s",
            flush=True,
        )

    # Baselines: exact expectations, no sampling noise.
    best = rounds.p.max(axis=1)
    for system, got in (("uniform", rounds.p.mean(axis=1)), ("oracle", best)):
        regret = np.cumsum(best - got)
        rows.append(
            {
                "system": system + label,
                "given": "exact expectation" if system == "uniform" else "true probabilities",
                "rounds": n,
                "learn_every": "-",
                "cum_regret": float(regret[-1]),
                "avg_reward_last20k": float(got[-min(20_000, n) :].mean()),
            }
        )
        curves[system] = regret
    for system, (factory, given) in _encore_systems(ctx.quick, drift).items():
        res = run_encore(factory(), rounds, n, system=system)
        add(system, given, res, f"{BATCH} rounds (rank vmapped)")
    for system, args in (
        ("vw squarecb (quadratic U x T, track id)", "--cb_explore_adf --squarecb -q UT"),
        ("vw epsilon 0.05 (quadratic U x T, track id)", "--cb_explore_adf --epsilon 0.05 -q UT"),
    ):
        if (drift or ctx.quick) and "epsilon" in system:
            continue
        add(system, VW_GIVEN, run_vw(args, rounds, n), "1 round (Python API)")
    for kind in ("linucb", "lints"):
        if (drift or ctx.quick) and kind == "lints":
            continue
        m = min(n, 500) if ctx.quick else n
        res = run_mabwiser_shared(kind, rounds, m)
        add(
            f"mabwiser {kind} (one shared model){'' if m == n else f' first {m:,} rounds'}",
            "joint user x track features; no track id (a 2,000-wide one-hot makes its "
            "289-dim ridge 2,289-dim)",
            res,
            f"{BATCH} rounds (predict_expectations over the batch, partial_fit)",
        )
    if not drift:
        # The same model with one predict call per round: MABWiser's per-request speed.
        m = min(n, 500 if ctx.quick else 5_000)
        res = run_mabwiser_shared("linucb", rounds, m, per_round=True)
        add(
            f"mabwiser linucb (one shared model) per-round predict, first {m:,} rounds",
            "as mabwiser linucb (one shared model)",
            res,
            f"{BATCH} rounds (predict_expectations per round, partial_fit)",
        )
    if per_arm_n and not drift:
        res = run_mabwiser_per_arm(rounds, per_arm_n)
        per_arm = f"mabwiser linucb per-arm (2,000 arms) first {per_arm_n:,} rounds"
        add(
            per_arm,
            "user features; one model per track id (track features unused)",
            res,
            f"{BATCH} rounds (partial_fit)",
        )
    # Systems that ran fewer rounds: compare with encore linucb over the same first rounds.
    ref = curves.get("encore linucb")
    for system, curve in curves.items():
        m = curve.shape[0]
        if ref is not None and m < n:
            ctx.notes.append(
                f"{system}{label} ran the first {m:,} rounds only: regret {curve[-1]:.1f} there, "
                f"encore linucb {ref[m - 1]:.1f} over the same rounds."
            )
    return rows, curves


# ---------------------------------------------------------------------------------------- scenarios
class Scenario(NamedTuple):
    name: str
    about: str
    rounds: dict[str, Any]  # make_rounds keywords
    n_ids: int | None  # the per-track table sized from the catalogue; None: the default


def scenarios(t: int) -> tuple[Scenario, ...]:
    """The four streams the default policies are judged on (``t`` rounds, about 50 ms each)."""
    return (
        Scenario(
            "stationary", "2,000 tracks, 20 candidates, 16 user x 16 track features", {}, None
        ),
        Scenario(
            "abrupt change",
            "as stationary; at mid-run the taste map is replaced by an independent one",
            {"change_at_ms": 25 * t},
            None,
        ),
        Scenario(
            "gradual drift",
            "as stationary; tastes rotate 2 rad per simulated hour (about 2.8 rad over the run)",
            {"drift": 2.0},
            None,
        ),
        Scenario(
            "large catalogue",
            "10,000 tracks, 50 candidates, 32 user x 24 track features; encore's per-track "
            "table sized from the catalogue (n_ids = 10,000)",
            {"n_tracks": 10_000, "k": 50, "d_user": 32, "d_track": 24},
            10_000,
        ),
    )


DISCOUNTS = (1.0, 0.999, 0.99, 0.95)
DEFAULTS = ("linucb", "squarecb")
VW_SQUARECB = "vw squarecb (quadratic U x T, track id)"


def _scenario_systems(sc: Scenario) -> dict[str, Callable[[], Policy]]:
    ids = {} if sc.n_ids is None else {"n_ids": sc.n_ids}
    out: dict[str, Callable[[], Policy]] = {}
    for name in DEFAULTS:
        out[f"encore {name} (default)"] = lambda name=name: POLICIES[name](**ids)
        for d in DISCOUNTS:
            out[f"encore {name}, adaptation off, discount {d}"] = lambda name=name, d=d: POLICIES[
                name
            ](adapt_window=0, discount=d, **ids)
    if sc.n_ids is not None:
        out["encore linucb (default, n_ids 4,096: ids hashed)"] = lambda: POLICIES["linucb"]()
    return out


def scenario_rows(ctx: Context, t: int, seeds: list[int]) -> list[Row]:
    """Each scenario's systems over ``seeds`` (same rounds for every system of a seed): regret
    (median and range), its ratio to VW squarecb and, for the defaults, to the best fixed
    discount of the same policy in hindsight; rounds per second and its ratio to VW's."""
    rows: list[Row] = []
    for sc in scenarios(t):
        systems = _scenario_systems(sc)
        regret: dict[str, list[float]] = {name: [] for name in [*systems, VW_SQUARECB]}
        speed: dict[str, list[float]] = {name: [] for name in regret}
        for seed in seeds:
            rounds = make_rounds(
                t,
                sc.rounds.get("drift", 0.0),
                seed,
                **{k: v for k, v in sc.rounds.items() if k != "drift"},
            )
            best = rounds.p.max(axis=1)
            for system, factory in [*systems.items(), (VW_SQUARECB, None)]:
                if factory is None:
                    res = run_vw("--cb_explore_adf --squarecb -q UT", rounds, t)
                else:
                    key = f"{sc.name}|{system}"
                    res = run_encore(factory(), rounds, t, seed=seed, system=key)
                got = rounds.p[np.arange(t), res.chosen]
                regret[system].append(float(np.sum(best - got)))
                speed[system].append(t / res.seconds)
                print(
                    f"  {sc.name} seed {seed} {system}: regret {regret[system][-1]:.0f}, "
                    f"{speed[system][-1]:.0f} r/s",
                    flush=True,
                )
            del rounds
        vw_r, vw_s = np.array(regret[VW_SQUARECB]), np.array(speed[VW_SQUARECB])
        for system in regret:
            r, v = np.array(regret[system]), np.array(speed[system])
            row: Row = {
                "scenario": sc.name,
                "system": system,
                "given": sc.about if system.startswith("encore") else VW_GIVEN,
                "rounds": t,
                "seeds": len(seeds),
                "regret_median": float(np.median(r)),
                "regret_range": f"{r.min():,.0f} to {r.max():,.0f}",
                "vs_vw": float(np.median(r / vw_r)),
                "rounds_per_s": float(np.median(v)),
                "speed_vs_vw": float(np.median(v / vw_s)),
            }
            policy = next((n for n in DEFAULTS if system == f"encore {n} (default)"), None)
            if policy is not None:
                grid = np.array(
                    [regret[f"encore {policy}, adaptation off, discount {d}"] for d in DISCOUNTS]
                )
                row["vs_best_discount"] = float(np.median(r / grid.min(axis=0)))
                met = (
                    row["vs_best_discount"] <= 1.10
                    and row["vs_vw"] <= 0.6
                    and row["speed_vs_vw"] >= 3.0
                )
                ctx.notes.append(
                    f"{sc.name}, {system}: regret {row['vs_best_discount']:.3f}x the best fixed "
                    f"discount of {DISCOUNTS} in hindsight (goal <= 1.10), {row['vs_vw']:.2f}x "
                    f"VW squarecb's (goal <= 0.6), {row['speed_vs_vw']:.1f}x its rounds/s "
                    f"(goal >= 3); medians over seeds {seeds}: {'met' if met else 'MISSED'}."
                )
            rows.append(row)
    ctx.notes.append(
        "Scenario rows: every system of a seed sees the same rounds and reward draws; encore "
        "chooses for 100 requests at a time and learns once per 100 rounds, VW chooses and "
        "learns every round through its Python API; discounts are per update of 100 rows, "
        "and the 'adaptation off' rows are the fixed-discount grid the defaults are judged "
        "against."
    )
    return rows


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _same_curves(curves: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """The curves to draw (the oracle's is 0 throughout), one per distinct curve: systems whose
    regret is identical round for round share a line and a legend entry that names them all."""
    drawn: list[tuple[list[str], np.ndarray]] = []
    for system, curve in curves.items():
        if system == "oracle":
            continue
        same = next((names for names, c in drawn if np.array_equal(c, curve)), None)
        if same is None:
            drawn.append(([system], curve))
        else:
            same.append(system)
    return [(_same_label(names), c) for names, c in drawn]


def _same_label(names: list[str]) -> str:
    """``names[0]``, followed by the others without the words they share with it."""
    if len(names) == 1:
        return names[0]
    first = names[0].split(" ")
    others = []
    for name in names[1:]:
        words = name.split(" ")
        shared = next(
            (i for i, (a, b) in enumerate(zip(first, words, strict=False)) if a != b),
            min(len(first), len(words)),
        )
        others.append(" ".join(words[shared:]) or name)
    return f"{names[0]} (and its {', '.join(others)} row: the same choices)"


def _plot(ctx: Context, name: str, title: str, curves: dict[str, np.ndarray]) -> None:
    """Cumulative regret per round, one colour per system (``_runner.colour``): encore's
    policies solid, the peers and the uniform baseline dashed with markers, staggered so that
    curves drawn over each other (a peer that ran the first rounds only) stay visible."""
    shown = sorted(_same_curves(curves), key=lambda sc: -sc[1].shape[0])  # shortest on top

    def draw(ax: Any) -> None:
        for i, (label, curve) in enumerate(shown):
            step = max(1, curve.shape[0] // 500)
            x = np.arange(curve.shape[0])[::step] + 1
            ours = label.startswith("encore")
            every = max(1, x.shape[0] // 6)
            ax.plot(
                x,
                curve[::step],
                label=label,
                color=colour(label),
                lw=2.0 if ours else 1.2,
                ls="-" if ours else "--",
                marker=None if ours else _MARKERS[zlib.crc32(colour(label).encode()) % 8],
                markevery=(every * (i % 5) // 5 + every // 2, every),
                ms=5,
                zorder=2 + i,
            )
        ax.set_xlabel("round")
        ax.set_ylabel("cumulative regret (true P(stream >= 30 s))")
        ax.set_title(title)
        ax.grid(alpha=0.3)

    ctx.save_plot(name, draw)


def run(ctx: Context) -> list[Row]:
    t_rounds = 2_000 if ctx.quick else 100_000
    rows: list[Row] = []
    jax.config.update("jax_numpy_dtype_promotion", "standard")
    print(
        f"bandits: {t_rounds:,} rounds, {K} of {N_TRACKS:,} tracks, {D_USER}+{D_TRACK} dims",
        flush=True,
    )
    rounds = make_rounds(t_rounds, drift=0.0)
    base_rss = _peak_mb()
    stat_rows, curves = _suite(ctx, rounds, drift=False, per_arm_n=0 if ctx.quick else 300)
    rows += stat_rows
    _plot(ctx, "bandits_regret", f"Stationary, {t_rounds:,} rounds", curves)
    drifted = make_rounds(t_rounds, drift=1.0)
    drift_rows, drift_curves = _suite(ctx, drifted, drift=True, per_arm_n=0)
    rows += drift_rows
    _plot(
        ctx,
        "bandits_regret_drift",
        f"Drifting tastes (1 rad / simulated hour), {t_rounds:,} rounds",
        drift_curves,
    )
    del rounds, drifted
    if not ctx.quick:
        # At 1 rad / hour forgetting barely matters over 100,000 rounds (1.4 simulated hours);
        # at 4 rad / hour it does. Encore linucb with and without forgetting, same rounds.
        fast = make_rounds(t_rounds, drift=4.0)
        for discount in (1.0, 0.99):
            res = run_encore(POLICIES["linucb"](discount=discount), fast, t_rounds)
            row, _ = _metrics(
                f"encore linucb discount {discount} [drift 4 rad/h]",
                "as encore linucb",
                fast,
                res,
                f"{BATCH} rounds (rank vmapped)",
            )
            rows.append(row)
        del fast
        # The serving form past serving.EXACT_WIDTH_BYTES: widths from a low-rank factorisation
        # of the packed covariance (forced here, at a shape where the exact one is cheap, to
        # measure what it costs in regret against the exact encore linucb row above).
        stationary = make_rounds(t_rounds, drift=0.0)
        for rank in (8, 32):
            linucb = POLICIES["linucb"]()

            def factorised(state: Any, rank: int = rank) -> Any:
                return linear.prepare(state, id_ridge=10.0, width_rank=rank)

            res = run_encore(linucb, stationary, t_rounds, serve=factorised)
            row, _ = _metrics(
                f"encore linucb, widths from a rank-{rank} factorised covariance",
                "as encore linucb; chosen from linear.prepare(state, width_rank) each batch",
                stationary,
                res,
                f"{BATCH} rounds (rank vmapped)",
            )
            rows.append(row)
        del stationary

    vw_regret = {r["system"]: r["cum_regret"] for r in rows}
    for label in ("", " [drift]"):
        enc = {
            s: v
            for s, v in vw_regret.items()
            if s.startswith("encore")
            and s.endswith(label)
            and (label or "[drift]" not in s)
            and "factorised" not in s
        }
        best = min(enc, key=enc.__getitem__)
        vw = vw_regret[f"vw squarecb (quadratic U x T, track id){label}"]
        mab = vw_regret.get(f"mabwiser linucb (one shared model){label}")
        mab_txt = f", MABWiser shared LinUCB {mab:.0f}" if mab is not None else ""
        ctx.notes.append(
            f"Best encore policy{label or ' (stationary)'}: {best} with regret "
            f"{enc[best]:.0f} = {enc[best] / vw:.2f}x VW squarecb's {vw:.0f}{mab_txt}."
        )
    ctx.notes.append(
        "Encore rows choose with rank vmapped over 100 requests and learn once per "
        "100 rounds (one update of 100 rows); VW chooses and learns every round "
        "through its Python API; MABWiser (one shared model) runs all rounds, scores "
        "each batch of 100 rounds x 20 candidates in one predict_expectations call and "
        "partial_fits per 100 rounds (its 'per-round predict' row calls it once per round; "
        "LinUCB's choices are the same either way). rounds_per_s excludes jit compilation "
        "(the first batch is run once untimed) and includes host-side slicing and transfers."
    )
    ctx.notes.append(
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')} for the whole "
        "suite (numpy / LAPACK; affects encore and MABWiser, not VW)."
    )
    ctx.notes.append(
        f"peak_rss_mb is the process's peak resident set while the system ran "
        f"(reset per system); the process held {base_rss:.0f} MB before the first "
        "system (Python, JAX, VW, the round data)."
    )

    seeds = [0] if ctx.quick else [0, 1, 2]
    print(f"scenarios: {t_rounds:,} rounds, seeds {seeds} ...", flush=True)
    rows += scenario_rows(ctx, t_rounds, seeds)

    print("latency ...", flush=True)
    reps = 200 if ctx.quick else 2000
    # --quick: both policies at one request shape (each policy and shape compiles five paths)
    shapes: list[LatencyShape] = (
        [(["linucb", "squarecb"], 2000, D_TRACK, D_USER)]
        if ctx.quick
        else [
            (["linucb", "squarecb", "softmax", "lin_ts"], 2000, D_TRACK, D_USER),
            (["linucb", "squarecb"], 500, 64, D_USER),
            # 64 x 64: the packed covariance is 18 MB, past serving.EXACT_WIDTH_BYTES, so the
            # prepared rows read its rank-32 factorisation (the raw-state rows read all of cov)
            (["linucb", "squarecb"], 500, 64, 64),
        ]
    )
    rows += latency_rows(shapes, reps)
    print("rerank over HTTP ...", flush=True)
    # --quick: the small request only (each shape starts its own `encore rerank` process)
    http_shapes = [(20, D_TRACK)] if ctx.quick else [(20, D_TRACK), (500, 64)]
    rows += http_latency_rows("linucb", http_shapes, 100 if ctx.quick else 1000)
    print("catalogue ...", flush=True)
    if ctx.quick:
        rows += catalogue_rows(20_000, 64, 5_000)
    else:
        rows += catalogue_rows(1_000_000, 64, 100_000)
    ctx.notes.append(
        "Latency: one request per call = a context and the candidates' features and ids as "
        "numpy arrays on the host -> jax.jit(policy.rank) -> the slate of "
        f"{LATENCY_SLATE} and its propensities back on the host as numpy (p50 / p99 over "
        f"{reps:,} calls, 8 distinct requests cycled); prepared_* rank from "
        "policy.prepare(state) (the serving form a re-ranker derives once per snapshot; for "
        "linear policies the covariance packed to its symmetric part); checked_* call "
        "policy.rank itself, "
        f"which also checks the values on the host (non-finite values, mask); batched: vmapped "
        f"batches of {LATENCY_BATCH} per call, per request. Run in a child process pinned to "
        f"one core (sched_setaffinity) with XLA_FLAGS='{LATENCY_XLA_FLAGS}' and "
        "jax_cpu_enable_async_dispatch off (on one core the default hand-off to a worker "
        "thread waits for the scheduler, and the calls it stalls set the p99)."
    )
    ctx.notes.append(
        "encore rerank HTTP: POST /rank round trips (one keep-alive connection, one request at a "
        "time, client on another core) to the `encore rerank` CLI process pinned to the latency "
        "core: JSON parse, checks, Reranker.rank, the impression encoded and checked with the "
        "daemon's decoder, then sent to a local broker, JSON answer. The JSON work on the "
        "candidate features, not the ranking, is most of it (compare the Reranker.rank row)."
    )

    print("update only ...", flush=True)
    n_logged = 2_000 if ctx.quick else 50_000
    rows += update_only_rows(make_rounds(n_logged, 0.0, seed=5), n_logged, ctx)
    if not ctx.quick:
        rows.append(_numerics_row())
    return rows


def _numerics_row() -> Row:
    """10 million rank-one Woodbury updates (refactor every 10,000) on a small model: drift."""
    from bandits import linear

    st = linear.init(2, 2, ridge=1.0, n_ids=0, position_bias=(1.0,))

    def step(s: Any, k: Any) -> tuple[Any, None]:
        k1, k2, k3 = jax.random.split(k, 3)
        fb = Feedback(
            3 * jax.random.normal(k1, (1, 2)),
            jax.random.normal(k2, (1, 2)),
            jnp.zeros(1, jnp.int32),
            jnp.zeros(1, jnp.int32),
            jax.random.normal(k3, (1,)),
            jnp.ones(1),
            jnp.ones(1, bool),
        )
        return linear.update(s, fb, ridge=1.0, discount=1.0, refactor_every=10_000), None

    run_ = jax.jit(lambda s, ks: jax.lax.scan(step, s, ks)[0])
    t0 = time.perf_counter()
    for i in range(10):
        st = run_(st, jax.random.split(jax.random.key(i), 1_000_000))
    jax.block_until_ready(st)
    sec = time.perf_counter() - t0
    cov, a = np.asarray(st.cov, np.float64), np.asarray(st.precision, np.float64)
    return {
        "system": "numerics: 10M rank-one Woodbury updates (D = 9, refactor every 10k)",
        "given": "float32",
        "rounds": int(st.n),
        "examples_per_s": int(st.n) / sec,
        "max_asymmetry": float(np.abs(cov - cov.T).max()),
        "min_eigenvalue_cov": float(np.linalg.eigvalsh(cov).min()),
        "max_abs_cov_A_minus_I": float(np.abs(cov @ a - np.eye(9)).max()),
    }


if __name__ == "__main__":  # the pinned latency child: latency REPS NAMES:K:D_TRACK:D_USER ...
    if len(sys.argv) < 4 or sys.argv[1] != "latency":
        sys.exit("usage: python -m benchmarks.bandits latency REPS NAMES:K:D_TRACK ...")
    jax.config.update("jax_numpy_dtype_promotion", "standard")
    # One core: run each computation on the calling thread. With asynchronous CPU dispatch
    # (JAX's default) every call hands off to a worker thread, and on a single core that
    # thread must wait to be scheduled: a few calls stall, and the tail latency measures the
    # scheduler rather than the policy.
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    out: list[Row] = []
    for spec in sys.argv[3:]:
        names_, k_, dt_, du_ = spec.split(":")
        out += latency_child(names_.split(","), int(k_), int(dt_), int(du_), int(sys.argv[2]))
    print(json.dumps(out))
