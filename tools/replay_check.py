"""Replay one simulated stream through ``decode_*`` and ``step`` and compare what two versions learn.

A change that should not alter what the daemon learns (a faster decoder or step) is checked by
replaying the same stream, cut into the same polls, through the old code and the new, and
comparing every checkpoint array, the checkpoint header and every Parquet row bit for bit::

    python tools/replay_check.py fixture --requests 20000 --out /tmp/stream.msgpack
    PYTHONPATH=<old checkout> python tools/replay_check.py dump /tmp/stream.msgpack /tmp/old
    PYTHONPATH=<new checkout> python tools/replay_check.py dump /tmp/stream.msgpack /tmp/new
    python tools/replay_check.py compare /tmp/old /tmp/new

The stream is the daemon benchmark's (``benchmarks.daemon``: the simulator's requests of 5-track
slates from 20 candidates with their plays, outcomes released in event time, float32 features),
keyed by user into 4 partitions with Kafka's default partitioner, and cut into polls of at most
5,000 messages in production order, grouped by topic-partition as a consumer that keeps pace
sees them. ``dump`` also prints the CPU time per event of decoding and stepping (a second pass,
after JAX has compiled), which makes it a same-fixture micro-benchmark too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import msgspec
import numpy as np

Poll = list[tuple[str, int, list[bytes], int]]  # (topic role, partition, values, end offset)


def build_polls(
    n_requests: int, *, encoding: str = "float32", partitions: int = 4, max_records: int = 5000
) -> list[Poll]:
    """The benchmark's stream, cut into polls (see the module docstring)."""
    from kafka.partitioner.default import murmur2

    from streaming.demo import LOGGING

    try:
        from streaming.sim import traffic
        from streaming.sim.simulator import SimConfig, Simulator
    except ImportError:  # a checkout whose streaming package is one flat folder of modules
        from streaming.simulator import SimConfig, Simulator  # type: ignore[no-redef]

    sim = Simulator(SimConfig(seed=0, request_gap_ms=1000))
    release = traffic.EventTimeRelease()
    messages: list[tuple[str, int, bytes]] = []
    for lo in range(0, n_requests, 1000):
        req = sim.requests(min(1000, n_requests - lo))
        slates = sim.log_slates(req, 5)
        plays = sim.play(req, slates.shown)
        imps = traffic.impressions(
            req,
            slates.shown,
            slates.propensity,
            policy=LOGGING,
            run_id="sim",
            feature_encoding=encoding,  # type: ignore[arg-type]
        )
        release.hold(list(traffic.wire([], traffic.outcomes(req, plays, run_id="sim"))))
        last = lo + len(req.t_ms) >= n_requests
        for w in [*traffic.wire(imps, []), *release.release(None if last else int(req.t_ms[-1]))]:
            messages.append((w.role, (murmur2(w.key) & 0x7FFFFFFF) % partitions, w.value))
    polls: list[Poll] = []
    ends: dict[tuple[str, int], int] = {}
    for lo in range(0, len(messages), max_records):
        groups: dict[tuple[str, int], list[bytes]] = {}
        for role, p, value in messages[lo : lo + max_records]:
            groups.setdefault((role, p), []).append(value)
        poll: Poll = []
        for (role, p), values in sorted(groups.items()):
            ends[(role, p)] = ends.get((role, p), 0) + len(values)
            poll.append((role, p, values, ends[(role, p)]))
        polls.append(poll)
    return polls


def replay(polls: list[Poll], *, passes: int = 1) -> tuple[dict[str, Any], Any, Any, list[Any]]:
    """Decode and step every poll as ``Daemon.poll_once`` does; the last pass's state and rows.

    Returns:
        CPU figures of the last pass, the engine, the final state and the Parquet tables.
    """
    from streaming.config import Config
    from streaming.events import decode_impressions, decode_outcomes

    try:
        from streaming import core as stepmod
        from streaming.core import limits, make_engine
        from streaming.worker.parquet_log import to_table
    except ImportError:  # a checkout whose streaming package is one flat folder of modules
        from streaming.engine import limits, make_engine  # type: ignore[no-redef]
        from streaming.parquet_log import to_table  # type: ignore[no-redef]

        from streaming import step as stepmod  # type: ignore[no-redef]

    cfg = Config.load(
        env={},
        overrides=[
            "join.window_ms=1200000",
            "join.allowed_lateness_ms=60000",
            "join.slate_size=5",
            "metrics.port=0",
            "log.dir=unused",  # keeps the log columns in the side table, as the daemon does
        ],
    )
    engine, lim = make_engine(cfg), limits(cfg)
    figures: dict[str, Any] = {}
    state: Any = None
    tables: list[Any] = []
    for _ in range(passes):
        state, tables = stepmod.init(engine), []
        t_decode = t_step = 0.0
        n = 0
        started = time.process_time()
        for poll in polls:
            imp_raw: list[bytes] = []
            out_raw: list[bytes] = []
            imp_part: list[int] = []
            out_part: list[int] = []
            offsets: dict[tuple[str, int], int] = {}
            for role, p, values, end in poll:
                raw, part = (imp_raw, imp_part) if role == "impressions" else (out_raw, out_part)
                raw += values
                part += [p] * len(values)
                offsets[(role, p)] = end
            t0 = time.process_time()
            imps, imp_rej = decode_impressions(imp_raw, lim)
            outs, out_rej = decode_outcomes(out_raw, lim)
            t1 = time.process_time()
            if imp_rej or out_rej:
                raise AssertionError(f"the simulated stream has rejects: {imp_rej + out_rej}")
            state, effects = stepmod.step(
                engine,
                state,
                imps,
                outs,
                offsets=offsets,
                impression_partition=np.asarray(imp_part, np.int32),
                outcome_partition=np.asarray(out_part, np.int32),
            )
            t_decode += t1 - t0
            t_step += time.process_time() - t1
            n += len(imp_raw) + len(out_raw)
            tables.extend(to_table(r) for r in effects.records)
        import jax

        jax.block_until_ready(state.policy)
        figures = {
            "events": n,
            "polls": len(polls),
            "cpu_us_per_event": 1e6 * (time.process_time() - started) / n,
            "decode_cpu_us_per_event": 1e6 * t_decode / n,
            "step_cpu_us_per_event": 1e6 * t_step / n,
        }
    return figures, engine, state, tables


def dump(polls: list[Poll], out: Path, *, passes: int = 2) -> dict[str, Any]:
    """Replay and write ``out.npz`` (checkpoint arrays), ``out.json`` (header), ``out.parquet``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        from streaming.core import to_arrays
    except ImportError:  # a checkout whose streaming package is one flat folder of modules
        from streaming.step import to_arrays  # type: ignore[no-redef]

    figures, engine, state, tables = replay(polls, passes=passes)
    arrays, header = to_arrays(engine, state)
    named: dict[str, Any] = dict(arrays)
    np.savez(out.with_suffix(".npz"), **named)
    out.with_suffix(".json").write_text(json.dumps(header, sort_keys=True, default=str))
    pq.write_table(pa.concat_tables(tables), out.with_suffix(".parquet"))
    return {**figures, "arrays": len(arrays), "rows": sum(t.num_rows for t in tables)}


def compare(a: Path, b: Path) -> list[str]:
    """What differs between two dumps (empty when every array, the header and every row agree)."""
    import pyarrow.parquet as pq

    problems: list[str] = []
    with np.load(a.with_suffix(".npz")) as x, np.load(b.with_suffix(".npz")) as y:
        if sorted(x.files) != sorted(y.files):
            problems.append(f"array names differ: {sorted(set(x.files) ^ set(y.files))}")
        for name in sorted(set(x.files) & set(y.files)):
            u, v = x[name], y[name]
            if u.dtype != v.dtype or u.shape != v.shape or u.tobytes() != v.tobytes():
                problems.append(f"array {name} differs")
    if json.loads(a.with_suffix(".json").read_text()) != json.loads(
        b.with_suffix(".json").read_text()
    ):
        problems.append("checkpoint headers differ")
    ta, tb = pq.read_table(a.with_suffix(".parquet")), pq.read_table(b.with_suffix(".parquet"))
    if not ta.equals(tb):
        problems.append(f"Parquet rows differ ({ta.num_rows} and {tb.num_rows} rows)")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixture", help="build the stream, cut into polls (msgpack)")
    f.add_argument("--requests", type=int, default=20_000)
    f.add_argument("--encoding", choices=["float32", "json"], default="float32")
    f.add_argument("--out", type=Path, required=True)
    d = sub.add_parser("dump", help="replay a fixture with the code on PYTHONPATH, write its state")
    d.add_argument("fixture", type=Path)
    d.add_argument("out", type=Path)
    d.add_argument("--passes", type=int, default=2)
    c = sub.add_parser("compare", help="compare two dumps bit for bit")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "fixture":
        polls = build_polls(args.requests, encoding=args.encoding)
        args.out.write_bytes(msgspec.msgpack.encode(polls))
        print(f"{sum(len(v) for p in polls for _, _, v, _ in p)} messages in {len(polls)} polls")
    elif args.cmd == "dump":
        polls = msgspec.msgpack.decode(args.fixture.read_bytes(), type=list[Poll])
        print(json.dumps(dump(polls, args.out, passes=args.passes)))
    else:
        problems = compare(args.a, args.b)
        print("\n".join(problems) or "identical: every checkpoint array, the header, every row")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
