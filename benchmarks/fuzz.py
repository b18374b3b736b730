"""Fuzzing the event contract: any bytes through decode and ``step``, every message accounted for.

The generators here make one Kafka message at a time from a ``random.Random``: valid
impressions and outcomes (that join, so closed windows reach the reward model and the policy),
the same with fields replaced by wild values (wrong types, numbers at and past every bound,
``NaN``/``Infinity`` tokens and strings, base64 junk, huge arrays, nested objects, event times
in the year 3000), damaged bytes of valid messages, arbitrary JSON of any depth, and arbitrary
bytes. Each message comes with a Kafka record timestamp (sometimes unknown). :class:`Fuzz`
decodes a round of them, steps the engine with what decoded, and checks after every round:
nothing raised, every message is either in the step's counts or rejected with one of
``ERROR_CODES`` (exactly once), every accepted event's time is within
``max_event_ahead_ms`` of a known record timestamp, and the learned state is finite.

``tests/streaming/events/test_fuzz_decode.py`` runs the same generators under hypothesis (which draws
their seeds, derandomized) next to hypothesis's own bytes and JSON; this suite runs them in a
seeded loop, a million messages at full size (``--quick``: 20,000), and reports messages/s and
the count per code. ``python -m benchmarks fuzz``.
"""

from __future__ import annotations

import base64
import json
import math
import random
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from benchmarks._runner import Context, Row, peak_rss_mb, rate

__all__ = [
    "LIMITS",
    "YEAR_3000_MS",
    "Fuzz",
    "Message",
    "Stream",
    "arbitrary_json",
    "fuzz_engine",
    "message",
    "messages",
    "run",
    "traffic",
    "valid_impression",
    "valid_outcome",
]

D_USER = 2
D_TRACK = 2
SLATE = 3
WINDOW_MS = 10_000
LATENESS_MS = 5_000
YEAR_3000_MS = 32_503_680_000_000


def _limits() -> Any:
    from streaming.events import Limits

    return Limits(
        d_user=D_USER,
        d_track=D_TRACK,
        max_candidates=4,
        max_message_bytes=64 * 1024,
        max_event_ahead_ms=LATENESS_MS,
    )


LIMITS = _limits()
"""Small shapes (fast steps), a 64 KiB message limit (huge arrays on both sides of it) and
the join's allowed lateness as the bound on event time ahead of the record."""


def fuzz_engine(policy: str = "linucb") -> Any:
    """A small engine: 2 user and 2 track features, slates of 3, 10 s windows, the Parquet
    log's records built (4 candidates), so every stage of ``step`` sees what decoded."""
    from bandits import POLICIES
    from streaming import join
    from streaming.core import Engine

    cfg = join.JoinConfig(
        window_ms=WINDOW_MS,
        allowed_lateness_ms=LATENESS_MS,
        slate_size=SLATE,
        max_open=2_000,
        max_pending=2_000,
        late_horizon_ms=60_000,
        max_closed_keys=2_000,
    )
    return Engine(
        policy=POLICIES[policy](),
        join_config=cfg,
        d_user=D_USER,
        d_track=D_TRACK,
        log_candidates=4,
    )


# ------------------------------------------------------------------------------ generators
class Raw(str):
    """JSON text spliced in as it is (a token like ``NaN`` or ``1e999``, deep nesting)."""


def dumps(value: Any) -> str:
    """JSON text of ``value``, with :class:`Raw` pieces as they are and floats as Python
    writes them (``NaN``, ``Infinity``: not JSON, so they test the parser's refusal)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        items = cast(dict[str, Any], value).items()
        return "{" + ",".join(json.dumps(k) + ":" + dumps(v) for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dumps(v) for v in cast(list[Any], value)) + "]"
    return json.dumps(value)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _f32(values: Sequence[float]) -> str:
    return _b64(np.asarray(values, "<f4").tobytes())


EDGE_INTS = [
    0,
    -1,
    1,
    2,
    3,
    4,
    2**31 - 1,
    2**31,
    2**53,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**63) - 1,
    10**30,
    YEAR_3000_MS,
]
EDGE_FLOATS = [
    0.0,
    -0.0,
    1.0,
    1.0000001,
    0.9999999,
    1e-6,
    9.99e-7,
    1e-50,
    5e-324,
    1e-38,
    1e-45,
    3.4e38,
    3.5e38,
    1e39,
    -1e39,
    1e308,
    9.99,
    10.0,
    10.01,
    -1e4,
]
WILD_TOKENS = [
    "NaN",
    "-NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "1e-999",
    "01",
    "1.",
    ".5",
]
WILD_STRINGS = [
    "",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "nan",
    "inf",
    "null",
    "\u0000",
    "a\u0000",
    "é日本",
    "\U0001f600",
    "AAA=",
    "AAAA",
    "====",
    "zczM PczMTD4=",
    "-_-_",
    "trackdone",
    "impression/1",
    "impression/2",
    "outcome/1",
]


def wild_value(rng: random.Random, depth: int = 0) -> Any:
    """A value of any JSON type, biased to the edges the decoder and the learners have."""
    kind = rng.randrange(16)
    if kind == 0:
        return rng.choice(EDGE_INTS)
    if kind == 1:
        return rng.choice(EDGE_FLOATS) * rng.choice([1, -1])
    if kind == 2:
        return Raw(rng.choice(WILD_TOKENS))
    if kind == 3:
        return rng.choice(WILD_STRINGS)
    if kind == 4:  # base64 junk: random bytes, signalling NaNs, or float32 values at edges
        if rng.random() < 0.4:
            return _b64(rng.randbytes(rng.choice([0, 1, 3, 4, 7, 8, 16, 24, 32, 48])))
        if rng.random() < 0.2:  # 0x7fa00000 and 0xffa00001, little-endian
            return _b64(rng.choice([b"\x00\x00\xa0\x7f", b"\x01\x00\xa0\xff"]) * rng.choice([2, 6]))
        pool = [0.0, 1.0, math.nan, math.inf, -math.inf, 3.4e38, 1e-45, 9.0, 11.0, -7.0]
        return _f32([rng.choice(pool) for _ in range(rng.choice([1, 2, 4, 6, 8, 12]))])
    if kind == 5:
        return rng.choice([True, False, None])
    if kind == 6:  # a huge array, sometimes past the message limit
        n = rng.choice([100, 1_000, 10_000, 20_000])
        return Raw("[" + ",".join([rng.choice(["0.5", "1", "1e39", '"x"', "[]"])] * n) + "]")
    if kind == 7:  # nesting, sometimes far deeper than any valid event
        d = rng.choice([2, 5, 30, 31, 32, 33, 40, 1_000, 20_000])
        opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
        return Raw(opener * d + "1" + closer * d)
    if kind == 8:
        return rng.uniform(-1e6, 1e6)
    if kind == 9:
        return rng.randrange(-(2**70), 2**70)
    if kind == 10 and depth < 4:
        return [wild_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 11 and depth < 4:
        return {rng.choice(["a", "ts", "schema", ""]): wild_value(rng, depth + 1)}
    if kind == 12:  # small lists of numbers: the shapes of features, shown, propensities
        n = rng.randrange(5)
        return [rng.choice([*EDGE_FLOATS, *EDGE_INTS[:6]]) for _ in range(n)]
    if kind == 13:
        return [[rng.choice(EDGE_FLOATS) for _ in range(rng.randrange(4))] for _ in range(3)]
    if kind == 14:
        return "".join(rng.choice('ab\\"{}[]é\u0000 ') for _ in range(rng.randrange(20)))
    return rng.random()


def arbitrary_json(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON document: scalars, arrays and objects mixed to a random depth."""
    if depth > 6 or rng.random() < 0.3:
        return wild_value(rng, 4)
    if rng.random() < 0.5:
        return [arbitrary_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["schema", "ts", "request_id", "context", "x", ""]
    return {rng.choice(keys): arbitrary_json(rng, depth + 1) for _ in range(rng.randrange(4))}


@dataclass
class Message:
    """One generated Kafka message: its topic role, value and record timestamp (-1: none)."""

    role: str  # "impressions" or "outcomes"
    value: bytes
    record_ts_ms: int
    kind: str


@dataclass
class Stream:
    """The generator's memory: event time moves on, and outcomes name recent requests."""

    clock_ms: int = 1_700_000_000_000
    requests: list[str] = field(default_factory=list[str])
    serial: int = 0


def _feature(rng: random.Random) -> float:
    return round(rng.uniform(-1.5, 1.5), 3)


def valid_impression(rng: random.Random, stream: Stream) -> dict[str, Any]:
    stream.serial += 1
    rid = f"r{stream.serial}"
    stream.requests = [*stream.requests[-50:], rid]
    k = rng.randint(1, 4)
    s = rng.randint(1, min(k, SLATE + 1))  # sometimes longer than the engine's slate
    shown = rng.sample(range(k), s)
    context = [_feature(rng) for _ in range(D_USER)]
    features = [[_feature(rng) for _ in range(D_TRACK)] for _ in range(k)]
    schema = "impression/1"
    ctx: Any = context
    feats: Any = features
    if rng.random() < 0.4:
        schema = "impression/2"
        ctx = _f32(context) if rng.random() < 0.7 else context
        feats = _f32([x for row in features for x in row]) if rng.random() < 0.7 else features
    return {
        "schema": schema,
        "request_id": rid,
        "user_id": f"u{rng.randrange(5)}",
        "surface": rng.choice(["home", "radio", ""]),
        "ts": stream.clock_ms + rng.randint(-2_000, 500),
        "context": ctx,
        "candidates": [f"t{rng.randrange(20)}" for _ in range(k)],
        "candidate_features": feats,
        "shown": shown,
        "propensities": [round(rng.uniform(0.05, 1.0), 4) for _ in range(s)],
        "policy": rng.choice(["logging", "linucb"]),
        "policy_version": "1",
    }


def valid_outcome(rng: random.Random, stream: Stream) -> dict[str, Any]:
    duration = rng.randint(1, 400_000)
    out: dict[str, Any] = {
        "schema": "outcome/1",
        "request_id": rng.choice(stream.requests) if stream.requests else "r0",
        "user_id": f"u{rng.randrange(5)}",
        "track_id": f"t{rng.randrange(20)}",
        "position": rng.choice([0, 0, 1, 2, 3, 5]),
        "ts": stream.clock_ms + rng.randint(0, 8_000),
        "ms_played": rng.randint(0, 10 * duration),
        "track_duration_ms": duration,
        "reason_end": rng.choice(["trackdone", "fwdbtn", "logout", "endplay", "backbtn"]),
    }
    for flag in ("saved", "liked", "added_to_playlist"):
        if rng.random() < 0.2:
            out[flag] = rng.random() < 0.5
    return out


def _mutate(rng: random.Random, obj: dict[str, Any], stream: Stream) -> dict[str, Any]:
    """``obj`` with one to three fields dropped, added, or replaced: half the time by a value
    at that field's own edges (``_edge``), else by any wild value."""
    out = dict(obj)
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(list(obj))
        op = rng.random()
        if op < 0.1:
            out.pop(key, None)
        elif op < 0.2:
            out[rng.choice(["extra", "Schema", "ts ", key.upper()])] = wild_value(rng)
        elif op < 0.7:
            out[key] = _edge(rng, key, obj[key], stream)
        else:
            out[key] = wild_value(rng)
    return out


def _edge(rng: random.Random, key: str, value: Any, stream: Stream) -> Any:
    """A value of the right JSON type for ``key`` at or past one of its bounds."""
    ahead = LIMITS.max_event_ahead_ms
    if key == "ts":
        now = stream.clock_ms
        return rng.choice([YEAR_3000_MS, -1, 0, 2**53, 2**53 + 1, 2**63, now + ahead + 4_000])
    if key == "propensities":
        pool = [1e-50, 0.0, 9.99e-7, 1e-6, 1e-38, 1e-45, 1.0, 1.0000001, 1.5, -0.1]
        return [rng.choice(pool) if rng.random() < 0.6 else p for p in value]
    if key in ("context", "candidate_features"):
        return _scaled(rng, value)
    if key == "shown":
        return [rng.choice([-1, 0, 1, 3, 4, 2**31, 2**63, 2**64 - 1]) for _ in value] or [0]
    if key in ("position", "ms_played", "track_duration_ms"):
        return rng.choice(EDGE_INTS)
    if key == "candidates":
        return rng.choice([[], ["t"] * 5, [""], ["a", "a"]])
    if key == "schema":
        return rng.choice(["impression/1", "impression/2", "outcome/1", "impression/3", ""])
    if key == "reason_end":
        return rng.choice(["", "TRACKDONE", "teleported"])
    if isinstance(value, bool):
        return rng.choice([0, 1, "true"])
    return rng.choice(WILD_STRINGS)


def _scaled(rng: random.Random, value: Any) -> Any:
    """The same features times a large factor (past ``max_feature_norm``, float32's range)."""
    factor = rng.choice([7.0, 10.0, 100.0, 1e20, 1e38, 1e39])
    if isinstance(value, str):
        raw = np.frombuffer(base64.b64decode(value), "<f4").astype(np.float64) * factor
        with np.errstate(over="ignore"):
            return _b64(raw.astype("<f4").tobytes())
    if value and isinstance(value[0], list):
        return [[x * factor for x in row] for row in value]
    return [x * factor for x in value]


def _damage(rng: random.Random, data: bytes) -> bytes:
    op = rng.randrange(5)
    if not data:
        return data
    i = rng.randrange(len(data))
    if op == 0:
        return data[:i]
    if op == 1:
        return data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]
    if op == 2:
        return data[:i] + rng.randbytes(rng.randint(1, 4)) + data[i:]
    if op == 3:
        return data + data
    return b"\xef\xbb\xbf" + data  # a UTF-8 byte order mark


KINDS: list[tuple[str, float]] = [
    ("valid", 0.30),
    ("mutated", 0.30),
    ("damaged", 0.10),
    ("json", 0.12),
    ("deep", 0.04),
    ("huge", 0.02),
    ("bytes", 0.12),
]


def message(rng: random.Random, stream: Stream) -> Message:
    """One message of a random kind (see ``KINDS``), with its record timestamp."""
    kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
    role = "impressions" if rng.random() < 0.5 else "outcomes"
    stream.clock_ms += rng.randint(0, 400)
    obj = (valid_impression if role == "impressions" else valid_outcome)(rng, stream)
    if kind == "valid":
        value = dumps(obj).encode()
    elif kind == "mutated":
        value = dumps(_mutate(rng, obj, stream)).encode()
    elif kind == "damaged":
        value = _damage(rng, dumps(obj).encode())
    elif kind == "json":
        value = dumps(arbitrary_json(rng)).encode()
    elif kind == "deep":
        d = rng.choice([31, 32, 33, 100, 990, 5_000, 30_000])
        field_name = rng.choice([*obj, "extra"])
        nest = Raw("[" * d + "]" * d) if rng.random() < 0.5 else Raw('{"a":' * d + "1" + "}" * d)
        value = dumps({**obj, field_name: nest}).encode()
    elif kind == "huge":
        value = dumps({**obj, "candidates": Raw("[" + '"t",' * 30_000 + '"t"]')}).encode()
    else:
        value = rng.randbytes(rng.choice([0, 1, 2, 8, 64, 500]))
    now = stream.clock_ms
    stamp = rng.choice([now, now, now, now + 3_000, now + 3_000, -1, now - 50_000, 0])
    return Message(role, value, stamp, kind)


def messages(rng: random.Random, n: int, stream: Stream | None = None) -> list[Message]:
    stream = Stream() if stream is None else stream
    return [message(rng, stream) for _ in range(n)]


def traffic(n: int, *, seed: int = 3) -> list[Message]:
    """``n`` valid requests a second apart: each impression, then an outcome at each shown
    position, in event-time order per stream, each record sent up to 0.3 s after its event."""
    rng = random.Random(seed)
    stream = Stream()
    out: list[Message] = []
    for _ in range(n):
        stream.clock_ms += 1_000
        imp = valid_impression(rng, stream)
        sent = imp["ts"] + rng.randint(0, 300)  # the record's CreateTime: sent after the event
        out.append(Message("impressions", dumps(imp).encode(), sent, "valid"))
        for position in range(len(imp["shown"])):
            o = valid_outcome(rng, stream) | {
                "request_id": imp["request_id"],
                "position": position,
                "ts": stream.clock_ms + 600 + 100 * position,  # in order: none is late
            }
            sent = o["ts"] + rng.randint(0, 300)
            out.append(Message("outcomes", dumps(o).encode(), sent, "valid"))
    return out


# ------------------------------------------------------------------------------ the harness
@dataclass
class Fuzz:
    """Decode rounds of messages and step the engine with them, checking every round."""

    engine: Any = field(default_factory=fuzz_engine)
    limits: Any = LIMITS
    state: Any = None
    codes: Counter[str] = field(default_factory=Counter[str])
    accepted: int = 0
    messages: int = 0

    def __post_init__(self) -> None:
        """Start from a worker that has learned from four valid requests on each partition, so
        its joins exist: ``step`` on a worker without join state and nothing decoded raises
        (``test_fuzz_decode.test_a_first_step_of_only_rejected_messages``)."""
        from streaming.core import init

        if self.state is None:
            self.state = init(self.engine)
            warm = traffic(8, seed=1)
            self.feed(warm)
            self.messages = self.accepted = 0

    def feed(self, batch: Sequence[Message], partitions: int = 2) -> None:
        """Decode ``batch`` (both topics), step it, and check the accounting."""
        from streaming.core import step
        from streaming.events import ERROR_CODES, decode_impressions, decode_outcomes

        decoded = []
        for role, decode in (("impressions", decode_impressions), ("outcomes", decode_outcomes)):
            mine = [m for m in batch if m.role == role]
            stamps = np.array([m.record_ts_ms for m in mine], np.int64)
            good, rejects = decode([m.value for m in mine], self.limits, stamps)
            rows = [r.row for r in rejects]
            assert rows == sorted(set(rows)), "each reject once, in order"
            assert all(0 <= r < len(mine) for r in rows)
            assert all(r.code in ERROR_CODES and r.reason for r in rejects)
            assert all(r.raw == mine[r.row].value for r in rejects)
            assert good.n + len(rejects) == len(mine), "every message accounted for once"
            kept = np.delete(stamps, rows)
            known = kept >= 0
            assert (good.ts_ms[known] - kept[known] <= self.limits.max_event_ahead_ms).all()
            self.codes.update(r.code for r in rejects)
            self.accepted += good.n
            self.messages += len(mine)
            part = (np.arange(good.n) % partitions).astype(np.int32)
            decoded.append((good, part))
        (imps, imp_part), (outs, out_part) = decoded
        before = dict(self.state.counters)
        self.state, _ = step(
            self.engine,
            self.state,
            imps,
            outs,
            impression_partition=imp_part,
            outcome_partition=out_part,
        )
        after = self.state.counters
        for name, n in (("impressions", imps.n), ("outcomes", outs.n)):
            assert after.get(name, 0) - before.get(name, 0) == n, f"step counted {name}"

    def flush(self) -> None:
        """Close every window (the learners see every joined impression) and check the
        learned state is finite."""
        from streaming import join
        from streaming.core import step

        self.state, _ = step(self.engine, self.state, None, None, watermark_ms=join.MAX_TIME_MS)
        self.check_finite()

    def check_finite(self) -> None:
        import jax

        for name, leaves in (("policy", self.state.policy), ("model", self.state.model)):
            for leaf in jax.tree.leaves(leaves):
                a = np.asarray(leaf)
                if a.dtype.kind == "f":
                    assert np.isfinite(a).all(), f"the {name} state is not finite"


# ------------------------------------------------------------------------------ the suite
def run_loop(
    n: int, *, seed: int = 0, round_size: int = 500, flush_every: int = 20
) -> tuple[Fuzz, float, float]:
    """``n`` generated messages through :class:`Fuzz`, ``round_size`` per decode and step;
    every ``flush_every`` rounds all windows close. Returns the run, the seconds it took in
    all and the seconds of those spent decoding, stepping and checking. Warnings are errors
    (as in the test suite): numpy's "invalid value" from a signalling NaN counts as raising."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return _loop(n, seed, round_size, flush_every)


def _loop(n: int, seed: int, round_size: int, flush_every: int) -> tuple[Fuzz, float, float]:
    rng = random.Random(seed)
    stream = Stream()
    fuzz = Fuzz()
    fuzz.feed(messages(rng, 50, stream))  # compile the learners before the clock starts
    fuzz.flush()
    fuzz = Fuzz(engine=fuzz.engine)
    t0 = time.perf_counter()
    inside = 0.0
    done, rounds = 0, 0
    while done < n:
        batch = messages(rng, min(round_size, n - done), stream)
        t1 = time.perf_counter()
        fuzz.feed(batch)
        done += len(batch)
        rounds += 1
        if rounds % flush_every == 0:
            fuzz.flush()
        inside += time.perf_counter() - t1
    t1 = time.perf_counter()
    fuzz.flush()
    t2 = time.perf_counter()
    return fuzz, t2 - t0, inside + t2 - t1


def run(ctx: Context) -> list[Row]:
    n = 20_000 if ctx.quick else 1_000_000
    fuzz, seconds, decoding = run_loop(n)
    rows: list[Row] = [
        {
            "system": "encore decode + step",
            "messages": fuzz.messages,
            "accepted": fuzz.accepted,
            "rejected": sum(fuzz.codes.values()),
            "messages_per_s": rate(fuzz.messages, seconds),
            "decode_step_per_s": rate(fuzz.messages, decoding),
            "elapsed_s": seconds,
            "peak_rss_mb": peak_rss_mb(),
        }
    ]
    rows += [{"system": f"reject: {code}", "messages": count} for code, count in _by_code(fuzz)]
    ctx.notes.append(
        f"{fuzz.messages:,} generated messages (seed 0) decoded and stepped in rounds of 500, "
        "every window closed every 20 rounds; nothing raised, every message was counted by the "
        "step or rejected once with a code, the learned state stayed finite, and no warning "
        "was raised. "
        "messages_per_s counts generating them too; decode_step_per_s only decoding, stepping "
        "and the checks."
    )
    return rows


def _by_code(fuzz: Fuzz) -> list[tuple[str, int]]:
    from streaming.events import ERROR_CODES

    return [(code, fuzz.codes[code]) for code in ERROR_CODES]
