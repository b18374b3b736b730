"""Saved state reads as written: a checkpoint kept in ``tests/data`` loads, and it equals what the
same seeded stream teaches the worker's core today, array for array and bit for bit.

``tests/data/worker-linucb.ckpt`` was written by ``state_from_stream`` below (through
``checkpoint.write``) with the checkpoint format this module names, by a core whose policy learned
each batch's feedback as its windows closed (``policy.update_every_ms = 0`` today), before
checkpoints held the policy's queue of feedback (``policy_rows``) and each play's listener: it
loads with an empty queue and unknown listeners, and its policy state was saved before the linear
policies adapted to change: it loads with a fresh challenger (the policy's arrays it lacks are the
prior's), so the policy's arrays are compared one by one (``policy_arrays``).
A change that moves modules, renames them or rewrites the core without meaning to change what a
worker learns must keep both tests passing; a deliberate change of the format or of the learned
state replaces the file and says so.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np

from bandits import POLICIES, linear
from bandits.state import MAGIC, read_header
from streaming import join
from streaming.core import Engine, PolicyRows, WorkerState, from_arrays, init, step, to_arrays
from streaming.events import Limits, decode_impressions, decode_outcomes, encode
from streaming.sim import EventTimeRelease, SimConfig, Simulator, impressions, outcomes, wire
from streaming.worker import checkpoint

FIXTURE = Path(__file__).resolve().parents[2] / "data" / "worker-linucb.ckpt"
D = 4


def engine() -> Engine:
    cfg = join.JoinConfig(window_ms=1_800_000, allowed_lateness_ms=600_000, slate_size=3)
    return Engine(
        policy=POLICIES["linucb"](),
        join_config=cfg,
        d_user=D,
        d_track=D,
        id_space=64,
        update_every_ms=0,
    )


ADAPTATION = linear.ADDED_LEAVES  # the challenger's arrays, saved since


def policy_arrays(blob: np.ndarray) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """The saved policy state's spec and its arrays by leaf path."""
    data = blob.tobytes()
    header = read_header(data)
    start = len(MAGIC) + 8 + struct.unpack("<Q", data[len(MAGIC) : len(MAGIC) + 8])[0]
    with np.load(io.BytesIO(data[start:]), allow_pickle=False) as npz:
        leaves = {m["path"]: npz[f"arr_{i}"] for i, m in enumerate(header["leaves"])}
    return header["spec"], leaves


def assert_same_policy(now: np.ndarray, kept: np.ndarray) -> None:
    """The kept policy state's arrays, bit for bit, plus the challenger's, from the prior."""
    now_spec, now_leaves = policy_arrays(now)
    kept_spec, kept_leaves = policy_arrays(kept)
    assert set(now_leaves) - set(kept_leaves) == set(ADAPTATION)
    for path, value in kept_leaves.items():
        assert now_leaves[path].tobytes() == value.tobytes(), path
    assert {k: v for k, v in now_spec["params"].items() if k != "adapt_window"} == kept_spec[
        "params"
    ]


QUEUE = tuple(f"policy_rows/{f}" for f in PolicyRows._fields)  # written since, empty here
# also written since: each play's listener and each queued play's history, for a reward model
# that reads listening history (zero, and zero-width, for one that does not), and the track ids
# the policy learned of (to measure per-track slot sharing; empty when loaded from the fixture)
LISTENING = ("plays/listener", "model_rows/history", "tracks")


def state_from_stream(eng: Engine) -> WorkerState:
    """40 simulated requests (two minutes apart, so some windows close), stepped in two polls."""
    lim = Limits(d_user=D, d_track=D)
    sim = Simulator(
        SimConfig(seed=7, request_gap_ms=120_000, d_user=D, d_track=D, n_tracks=60, n_candidates=10)
    )
    req = sim.requests(40)
    slates = sim.log_slates(req, 3)
    plays = sim.play(req, slates.shown)
    imps = [encode(e) for e in impressions(req, slates.shown, slates.propensity, policy="logging")]
    release = EventTimeRelease()
    release.hold(list(wire([], outcomes(req, plays))))
    outs = [w.value for w in release.release()]
    state = init(eng)
    halves = zip(
        np.array_split(np.arange(len(imps)), 2),
        np.array_split(np.arange(len(outs)), 2),
        strict=True,
    )
    for ii, oo in halves:
        ib, _ = decode_impressions([imps[i] for i in ii], lim)
        ob, _ = decode_outcomes([outs[i] for i in oo], lim)
        state, _ = step(eng, state, ib, ob)
    return state


def test_the_kept_checkpoint_loads_and_writes_back_the_same_arrays() -> None:
    arrays, header = checkpoint.load(FIXTURE)
    assert header["format_version"] == checkpoint.FORMAT_VERSION
    eng = engine()
    state = from_arrays(eng, arrays, header)
    assert state.counters["impressions"] == 40 and state.counters["closed"] > 0
    again, _ = to_arrays(eng, state)
    assert sorted(again) == sorted([*arrays, *QUEUE, *LISTENING])
    assert all(again[name].shape[0] == 0 for name in QUEUE)
    assert not again["plays/listener"].any() and again["model_rows/history"].size == 0
    assert again["tracks"].size == 0
    for name, value in arrays.items():
        assert again[name].dtype == value.dtype, name
        if name == "policy_blob":
            assert_same_policy(again[name], value)
        else:
            assert again[name].tobytes() == value.tobytes(), name


def test_the_same_stream_teaches_todays_core_the_kept_state_bit_for_bit() -> None:
    eng = engine()
    kept, kept_header = checkpoint.load(FIXTURE)
    now, now_header = to_arrays(eng, state_from_stream(eng))
    assert sorted(now) == sorted([*kept, *QUEUE, *LISTENING])
    for name, value in kept.items():
        if name == "policy_blob":
            assert_same_policy(now[name], value)
        else:
            assert now[name].tobytes() == value.tobytes(), name
    assert now_header == {k: kept_header[k] for k in now_header}
    assert set(kept_header) - set(now_header) == {"created_at_ms", "format_version", "sequence"}
