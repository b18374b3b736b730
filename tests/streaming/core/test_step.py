"""The daemon's functional core: join + learning without a broker or a clock."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from bandits import POLICIES
from streaming import join
from streaming.core import (
    Engine,
    WorkerState,
    from_arrays,
    init,
    join_counters,
    slate_features,
    step,
    to_arrays,
    warm_up,
)
from streaming.events import Limits, decode_impressions, decode_outcomes, encode, key64
from streaming.sim import traffic as sim_traffic
from streaming.sim.simulator import SimConfig, Simulator

LIM = Limits(d_user=16, d_track=16)


def engine(policy: str = "linucb") -> Engine:
    cfg = join.JoinConfig(window_ms=1_800_000, allowed_lateness_ms=600_000, slate_size=3)
    return Engine(policy=POLICIES[policy](), join_config=cfg, d_user=16, d_track=16)


def traffic(n: int, seed: int = 0) -> tuple[list[bytes], list[bytes]]:
    sim = Simulator(SimConfig(seed=seed, request_gap_ms=1000))
    req = sim.requests(n)
    sl = sim.log_slates(req, 3)
    plays = sim.play(req, sl.shown)
    imps = [
        encode(e) for e in sim_traffic.impressions(req, sl.shown, sl.propensity, policy="logging")
    ]
    release = sim_traffic.EventTimeRelease()
    release.hold(list(sim_traffic.wire([], sim_traffic.outcomes(req, plays))))
    outs = [w.value for w in release.release()]
    return imps, outs


def run(
    eng: Engine, imps: list[bytes], outs: list[bytes], cuts: int
) -> tuple[WorkerState, dict[str, int]]:
    state = init(eng)
    bi = np.array_split(np.arange(len(imps)), cuts)
    bo = np.array_split(np.arange(len(outs)), cuts)
    for ii, oo in zip(bi, bo, strict=True):
        ib, _ = decode_impressions([imps[i] for i in ii], LIM)
        ob, _ = decode_outcomes([outs[i] for i in oo], LIM)
        state, _ = step(eng, state, ib, ob)
    state, _ = step(eng, state, None, None, watermark_ms=join.MAX_TIME_MS)
    return state, {**state.counters, **join_counters(state)}


def test_every_impression_closes_once_and_feeds_the_policy() -> None:
    eng = engine()
    imps, outs = traffic(600)
    state, c = run(eng, imps, outs, cuts=1)
    assert c["impressions"] == 600 and c["closed"] == 600
    assert c["joined"] == len(outs)
    censored = sum(b'"reason_end":"logout"' in o for o in outs)
    assert c["feedback_rows"] == 600 * 3 - censored  # censored plays teach the policy nothing
    assert state.sums["model_rows"] == (len(outs) // 1024) * 1024  # full mini-batches only
    assert state.side.payload.size == 0  # nothing left behind once everything closed
    stable = join_counters(state, cut_dependent=False)
    assert set(join_counters(state)) - set(stable) == join.CUT_DEPENDENT


@pytest.mark.slow
@pytest.mark.parametrize("cuts", [2, 7, 31])
def test_learned_state_does_not_depend_on_batch_cuts(cuts: int) -> None:
    eng = engine()
    imps, outs = traffic(1500, seed=1)
    whole, c1 = run(eng, imps, outs, cuts=1)
    cut, c2 = run(eng, imps, outs, cuts=cuts)
    assert c1 == c2
    from bandits import save

    # The policy makes the same updates too (one per update interval): bit for bit.
    a = np.frombuffer(save(eng.policy, whole.policy), np.uint8)
    b = np.frombuffer(save(eng.policy, cut.policy), np.uint8)
    np.testing.assert_array_equal(a, b)
    # Learning each batch as its windows close: the same sums, within float32 rounding.
    eng = dataclasses.replace(eng, update_every_ms=0)
    whole, _ = run(eng, imps, outs, cuts=1)
    cut, _ = run(eng, imps, outs, cuts=cuts)
    for x, y in zip(whole.policy, cut.policy, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-4)
    # The reward model makes the same mini-batch updates however the stream was cut.
    import jax

    for x, y in zip(jax.tree.leaves(whole.model), jax.tree.leaves(cut.model), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_state_round_trips_through_arrays() -> None:
    eng = engine()
    imps, outs = traffic(200, seed=2)
    state = init(eng)
    ib, _ = decode_impressions(imps, LIM)
    ob, _ = decode_outcomes(outs[: len(outs) // 2], LIM)
    state, _ = step(eng, state, ib, ob, offsets={("encore.impressions", 0): 200})
    arrays, header = to_arrays(eng, state)
    back = from_arrays(eng, arrays, header)
    assert back.offsets == {("encore.impressions", 0): 200}
    assert back.counters == state.counters and back.next_payload == state.next_payload
    a2, _ = to_arrays(eng, back)
    assert a2.keys() == arrays.keys()
    for name in arrays:
        np.testing.assert_array_equal(a2[name], arrays[name], err_msg=name)
    for x, y in zip(back.policy, state.policy, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_closed_impressions_become_parquet_log_records(tmp_path: object) -> None:
    from pathlib import Path

    from streaming.worker.parquet_log import ParquetLog, read_log

    eng = dataclasses.replace(engine(), log_candidates=20)
    imps, outs = traffic(300, seed=4)
    state = init(eng)
    ib, _ = decode_impressions(imps, LIM)
    ob, _ = decode_outcomes(outs, LIM)
    state, eff = step(eng, state, ib, ob, watermark_ms=join.MAX_TIME_MS)
    assert sum(r.n_rows for r in eff.records) == 300
    out = Path(str(tmp_path))
    with ParquetLog(out / "log") as log:
        for r in eff.records:
            log.append(r)
    frame = read_log(out / "log")
    assert len(frame) == 300 and frame["request_id"].is_unique
    assert set(frame["policy"]) == {"logging"}
    assert all(len(c) == 20 for c in frame["candidate_key"])
    assert all(len(s) == 3 for s in frame["shown"])


def test_log_keeps_each_impressions_candidates_when_batch_widths_differ(tmp_path: object) -> None:
    """Side rows keep candidates as wide as their batch; later, wider batches pad the older rows."""
    import base64
    import json
    from pathlib import Path

    from streaming.worker.parquet_log import ParquetLog, read_log

    eng = dataclasses.replace(engine(), log_candidates=8)
    imps, outs = traffic(40, seed=5)

    def cut(value: bytes, k: int) -> bytes:  # keep k candidates (the shown ones are among them)
        d = json.loads(value)
        keep = sorted(set(d["shown"]) | set(range(k)))[:k]
        if not set(d["shown"]) <= set(keep):
            keep = sorted(d["shown"])
        at = {old: new for new, old in enumerate(keep)}
        feats = d["candidate_features"]
        if isinstance(feats, str):  # base64 float32 (impression/2): keep rows of the array
            rows = np.frombuffer(base64.b64decode(feats), "<f4").reshape(len(d["candidates"]), -1)
            d["candidate_features"] = base64.b64encode(rows[keep].tobytes()).decode()
        else:
            d["candidate_features"] = [feats[i] for i in keep]
        d["candidates"] = [d["candidates"][i] for i in keep]
        d["shown"] = [at[i] for i in d["shown"]]
        return json.dumps(d).encode()

    narrow = [cut(v, 3) for v in imps[:20]]  # 3 candidates each
    wide = list(imps[20:])  # 20 candidates each, cut to 8 by log_candidates
    state = init(eng)
    ib, _ = decode_impressions(narrow, LIM)
    state, first = step(eng, state, ib, None)
    assert state.side.log.candidate_key.shape[1] == 3
    ib, _ = decode_impressions(wide, LIM)
    state, second = step(eng, state, ib, None)
    assert state.side.log.candidate_key.shape[1] == 8
    arrays, header = to_arrays(eng, state)
    state = from_arrays(eng, arrays, header)
    ob, _ = decode_outcomes(outs, LIM)
    state, last = step(eng, state, None, ob, watermark_ms=join.MAX_TIME_MS)
    out = Path(str(tmp_path))
    with ParquetLog(out / "log") as log:
        for r in [*first.records, *second.records, *last.records]:
            log.append(r)
    frame = read_log(out / "log").set_index("request_id")
    assert len(frame) == 40
    for value in narrow:
        d = json.loads(value)
        assert len(frame.loc[d["request_id"], "candidate_key"]) == 3
        assert list(frame.loc[d["request_id"], "shown"]) == d["shown"]
    for value in wide:
        d = json.loads(value)
        assert len(frame.loc[d["request_id"], "candidate_key"]) == 8


@pytest.mark.slow
def test_evaluate_the_policy_a_checkpoint_holds_on_the_daemon_log(tmp_path: object) -> None:
    from pathlib import Path

    from streaming import evaluate
    from streaming.worker import checkpoint
    from streaming.worker.parquet_log import ParquetLog

    eng = dataclasses.replace(engine(), log_candidates=20)
    imps, outs = traffic(400, seed=5)
    ib, _ = decode_impressions(imps, LIM)
    ob, _ = decode_outcomes(outs, LIM)
    state, eff = step(eng, init(eng), ib, ob, watermark_ms=join.MAX_TIME_MS)
    out = Path(str(tmp_path))
    with ParquetLog(out / "log") as log:
        for r in eff.records:
            log.append(r)
    arrays, worker = to_arrays(eng, state)
    spec = eng.policy.spec
    checkpoint.write(
        out / "ckpt",
        arrays,
        {
            "policy_spec": {
                "name": spec.name,
                "version": spec.version,
                "params": dict(spec.params),
            },
            "worker": worker,
        },
    )
    rc = evaluate.main(
        [
            str(out / "log"),
            "--column-map",
            "action=shown[0],reward=reward[0],propensity=propensity[0]",
            "--context-columns",
            "context",
            "--candidate-features-column",
            "candidate_features",
            "--policy-checkpoint",
            str(out / "ckpt"),
            "--estimators",
            "ips,snips,dr",
            "--policy-samples",
            "8",
            "--n-bootstrap",
            "50",
            "--no-progress",
            "--out",
            str(out / "eval"),
        ]
    )
    assert rc == 0
    report = (out / "eval" / "report.md").read_text()
    assert "linucb learned by the daemon" in report and "| snips" in report.lower()


def test_a_checkpoint_of_other_reward_model_params_is_refused_clearly() -> None:
    from rewards.survival import survival_model

    eng = engine()
    arrays, header = to_arrays(eng, init(eng))
    averaged = dataclasses.replace(eng, reward_model=survival_model(average=0.99))
    with pytest.raises(ValueError, match=r"reward\.model_params changed"):
        from_arrays(averaged, arrays, header)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["stream30", "denoised"])
def test_warm_up_compiles_everything_a_step_runs_and_changes_nothing(kind: str) -> None:
    from jax._src import monitoring

    import rewards

    def engine_of_kind() -> Engine:
        composite = rewards.CompositeReward(kind=kind, shrink=0.5 if kind == "denoised" else 0.0)
        return dataclasses.replace(engine(), composite=composite)

    imps, outs = traffic(600)
    compiled: list[str] = []

    def count(event: str, duration: float, **kwargs: Any) -> None:
        if event.endswith("backend_compile_duration"):
            compiled.append(event)

    monitoring.register_event_duration_secs_listener(count)  # pyright: ignore[reportArgumentType]
    try:
        cold, c_cold = run(engine_of_kind(), imps, outs, cuts=7)
        assert compiled  # a fresh engine compiles on its first steps (what is not cached yet)
        eng = engine_of_kind()
        warm_up(eng, init(eng))
        compiled.clear()
        warmed, c = run(eng, imps, outs, cuts=7)
    finally:
        monitoring.unregister_event_duration_listener(count)  # pyright: ignore[reportArgumentType]
    assert compiled == []  # every padded size and both learners were compiled ahead
    assert c == c_cold
    a, b = to_arrays(eng, warmed)[0], to_arrays(eng, cold)[0]
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_only_the_denoised_reward_predicts_at_impression_time() -> None:
    """The provisional reward (the model's expectation when the slate is shown) is mixed into
    the final reward by the denoised kind only; no other kind computes it."""
    import rewards

    imps, _ = traffic(40)
    batch, _ = decode_impressions(imps, LIM)
    for kind, shrink in (("stream30", 0.0), ("linear", 0.0), ("denoised", 0.5)):
        eng = dataclasses.replace(
            engine(), composite=rewards.CompositeReward(kind=kind, shrink=shrink)
        )
        state, _ = step(eng, init(eng), batch, None)
        prov = state.side.provisional
        assert prov.shape == (40, 3)
        if kind == "denoised":
            assert np.all(prov != 0.0) and np.all(np.isfinite(prov))  # the model's guesses
        else:
            assert not prov.any()


@pytest.mark.parametrize(("n", "s"), [(1, 1), (37, 3), (5, 12)])
def test_slate_features_equal_interaction_features_bit_for_bit(n: int, s: int) -> None:
    from rewards import interaction_features

    rng = np.random.default_rng(n * s)
    context = rng.standard_normal((n, 16)).astype(np.float32)
    shown = rng.standard_normal((n, s, 16)).astype(np.float32)
    want = interaction_features(
        np.repeat(context, s, axis=0), shown.reshape(n * s, -1), np.tile(np.arange(s), n)
    )
    got = slate_features(context, shown)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


def run_partitioned(
    eng: Engine, imps: list[bytes], outs: list[bytes], parts: int, seed: int | None
) -> WorkerState:
    """Feed the streams as ``parts`` partitions keyed by user; ``seed`` None: whole partitions
    in one step, else each step takes a random share of each partition's remaining events."""
    ib, _ = decode_impressions(imps, LIM)
    ob, _ = decode_outcomes(outs, LIM)
    ip = (key64(ib.user_id.tolist()) % np.uint64(parts)).astype(np.int32)
    op = (key64(ob.user_id.tolist()) % np.uint64(parts)).astype(np.int32)
    imp_rows = [np.flatnonzero(ip == p) for p in range(parts)]
    out_rows = [np.flatnonzero(op == p) for p in range(parts)]
    state = init(eng)
    rng = np.random.default_rng(seed)
    at_i, at_o = [0] * parts, [0] * parts
    while any(at_i[p] < imp_rows[p].size or at_o[p] < out_rows[p].size for p in range(parts)):
        take_i: list[np.ndarray] = []
        take_o: list[np.ndarray] = []
        for p in rng.permutation(parts).tolist() if seed is not None else range(parts):
            ki = imp_rows[p].size if seed is None else int(rng.integers(0, 200))
            ko = out_rows[p].size if seed is None else int(rng.integers(0, 300))
            take_i.append(imp_rows[p][at_i[p] : at_i[p] + ki])
            take_o.append(out_rows[p][at_o[p] : at_o[p] + ko])
            at_i[p] += ki
            at_o[p] += ko
        si, so = np.concatenate(take_i), np.concatenate(take_o)
        state, _ = step(
            eng,
            state,
            type(ib)(*(c[si] for c in ib)) if si.size else None,
            type(ob)(*(c[so] for c in ob)) if so.size else None,
            impression_partition=ip[si],
            outcome_partition=op[so],
        )
    state, _ = step(eng, state, None, None, watermark_ms=join.MAX_TIME_MS)
    return state


def test_learners_do_not_depend_on_how_partitions_interleave() -> None:
    """Partitions consumed unevenly and in varying order: the same reward-model and policy
    updates."""
    import jax

    cfg = join.JoinConfig(window_ms=120_000, allowed_lateness_ms=30_000, slate_size=3)
    eng = dataclasses.replace(engine(), join_config=cfg)
    imps, outs = traffic(4000, seed=4)
    whole = run_partitioned(eng, imps, outs, parts=4, seed=None)
    assert whole.sums["model_rows"] >= 3 * 1024
    for seed in (1, 2):
        uneven = run_partitioned(eng, imps, outs, parts=4, seed=seed)
        assert uneven.sums["model_rows"] == whole.sums["model_rows"]
        for x, y in zip(jax.tree.leaves(whole.model), jax.tree.leaves(uneven.model), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        # and the policy, per-track residuals included: the same updates, bit for bit
        assert int(uneven.policy.n) == int(whole.policy.n) > 0
        for x, y in zip(whole.policy, uneven.policy, strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_the_reward_models_plays_come_out_with_its_predictions_and_change_nothing() -> None:
    """``log_predictions``: each step returns the plays its reward model learned from, one per
    learned row, with probabilities; what is learned is the same as without it."""
    imps, outs = traffic(800)
    plain, _ = run(engine(), imps, outs, cuts=3)
    eng = dataclasses.replace(engine(), log_predictions=True)
    state = init(eng)
    learned = []
    for ii, oo in zip(
        np.array_split(np.arange(len(imps)), 3),
        np.array_split(np.arange(len(outs)), 3),
        strict=True,
    ):
        ib, _ = decode_impressions([imps[i] for i in ii], LIM)
        ob, _ = decode_outcomes([outs[i] for i in oo], LIM)
        state, effects = step(eng, state, ib, ob)
        learned.append(effects.model_plays)
    state, effects = step(eng, state, None, None, watermark_ms=join.MAX_TIME_MS)
    learned.append(effects.model_plays)
    assert all(p is not None for p in learned)
    plays = [p for p in learned if p is not None]
    n = sum(p.ts_ms.size for p in plays)
    assert n == state.sums["model_rows"] == plain.sums["model_rows"] >= 2 * 1024
    skip = np.concatenate([p.p_skip for p in plays])
    complete = np.concatenate([p.p_complete for p in plays])
    assert skip.shape == (n, 3) and ((skip > 0) & (skip < 1)).all()
    np.testing.assert_allclose(complete, 1 - skip[:, 2], atol=1e-6)  # the survival model's heads
    assert (np.diff(skip, axis=1) >= -1e-6).all()  # skipped within 5 s <= before 30 s <= before end
    (a, _), (b, _) = to_arrays(engine(), plain), to_arrays(eng, state)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_policy_updates_are_cut_from_the_release_order_alone() -> None:
    """Whatever frontiers release the rows in, the policy's updates are the same: 2,048 rows of
    one interval of ``update_every_ms`` (by window end), or what is left of an interval once
    the frontier has passed it; an interval still filling waits, and everything after it."""
    from streaming.core import PolicyRows, learners

    sizes: list[int] = []  # the rows of each update the policy makes (padding excluded)

    def record(state: Any, fb: Any) -> Any:
        sizes.append(int(np.asarray(fb.mask).sum()))
        return state

    base = engine()
    eng = dataclasses.replace(
        base, policy=base.policy._replace(update=record), update_every_ms=1_000
    )
    ends = np.sort(np.r_[np.full(5_000, 500), np.full(100, 1_200), np.full(10, 2_500)])
    n = ends.size
    rows = PolicyRows(
        context=np.zeros((n, 4), np.float32),
        features=np.zeros((n, 4), np.float32),
        action=np.zeros(n, np.int32),
        position=np.zeros(n, np.int32),
        reward=np.zeros(n, np.float32),
        propensity=np.ones(n, np.float32),
        end_ms=ends.astype(np.int64),
        partition=np.zeros(n, np.int32),
        request_key=np.arange(n, dtype=np.uint64),
    )

    def run(frontiers: list[int]) -> list[int]:
        """Each frontier releases the rows whose window ended by then; what is not learned
        stays first in the queue."""
        sizes.clear()
        learned = 0
        for f in frontiers:
            released = int((rows.end_ms <= f).sum())
            ready = PolicyRows._make(x[learned:released] for x in rows)
            _, _, rest = learners.learn_policy_rows(eng, None, ready, f)
            learned = released - rest.end_ms.size
        return list(sizes)

    one = run([10_000])
    many = run([500, 999, 1_000, 1_500, 2_000, 3_000, 10_000])
    assert one == many == [2_048, 2_048, 904, 100, 10]
    assert run([500, 998]) == [2_048, 2_048]  # the rest of [0, 1000) waits for its end
    assert run([1_200, 1_500]) == [2_048, 2_048, 904]  # [1000, 2000) has not ended


def session_engine(**join_settings: int) -> Engine:
    """The session reward model, reading each listener's last 4 plays."""
    import rewards

    eng = engine()
    if join_settings:
        eng = dataclasses.replace(eng, join_config=join.JoinConfig(**join_settings, slate_size=3))
    return dataclasses.replace(
        eng,
        reward_model=rewards.MODELS["session"](gru_units=8),
        history_length=4,
        history_dim=rewards.session.HISTORY_DIM,
    )


@pytest.mark.slow
def test_the_session_model_learns_the_same_however_the_stream_was_cut_or_interleaved() -> None:
    """Each joined play is learned with its listener's earlier plays, and those histories (so
    the session model's updates) do not depend on the polls or on how partitions interleave."""
    import jax

    eng = session_engine()
    imps, outs = traffic(1500, seed=1)
    whole, c1 = run(eng, imps, outs, cuts=1)
    cut, c2 = run(eng, imps, outs, cuts=7)
    assert c1 == c2 and whole.sums["model_rows"] >= 3 * 1024
    table = whole.history[0]
    assert table.entries[:, -1, -1].all()  # every listener that played has a newest entry
    assert (table.entries[:, :, -1].sum(axis=1) > 1).mean() > 0.5  # most have several
    for x, y in zip(jax.tree.leaves(whole.model), jax.tree.leaves(cut.model), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(whole.history[0], cut.history[0], strict=True):
        np.testing.assert_array_equal(x, y)
    # an engine that keeps no history is refused by the session model, never fed zeros
    blind = dataclasses.replace(eng, history_length=0, history_dim=0)
    with pytest.raises(ValueError, match="needs history"):
        run(blind, imps, outs, cuts=1)
    eng = session_engine(window_ms=120_000, allowed_lateness_ms=30_000)
    imps, outs = traffic(3000, seed=4)
    even = run_partitioned(eng, imps, outs, parts=3, seed=None)
    uneven = run_partitioned(eng, imps, outs, parts=3, seed=1)
    assert sorted(even.history) == [0, 1, 2]
    for x, y in zip(jax.tree.leaves(even.model), jax.tree.leaves(uneven.model), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for p in even.history:
        for x, y in zip(even.history[p], uneven.history[p], strict=True):
            np.testing.assert_array_equal(x, y)


def test_a_session_models_state_round_trips_through_arrays_with_its_histories() -> None:
    eng = session_engine()
    imps, outs = traffic(300, seed=2)
    state, _ = run(eng, imps, outs, cuts=2)
    assert state.history[0].listener.size > 0
    arrays, header = to_arrays(eng, state)
    back = from_arrays(eng, arrays, header)
    assert sorted(back.history) == sorted(state.history)
    for x, y in zip(back.history[0], state.history[0], strict=True):
        np.testing.assert_array_equal(x, y)
    assert back.model_rows.history.shape[1:] == (4, eng.history_dim)


def test_the_tracks_the_policy_learned_of_are_kept_sorted_and_unique() -> None:
    from streaming.core.step import seen_tracks

    tracks = seen_tracks(np.zeros(0, np.int32), [np.array([5, 3, 5], np.int32)])
    assert tracks.tolist() == [3, 5]
    tracks = seen_tracks(tracks, [np.array([4, 9], np.int32), np.array([3], np.int32)])
    assert tracks.tolist() == [3, 4, 5, 9]
    assert seen_tracks(tracks, [np.array([9, 4], np.int32)]) is tracks
    state, c = run(engine(), *traffic(300), cuts=3)
    assert 0 < state.tracks.size <= c["feedback_rows"]
    assert (np.diff(state.tracks) > 0).all()


def test_a_session_checkpoint_goes_on_under_another_history_length_and_refuses_other_shapes() -> (
    None
):
    import rewards

    eng = session_engine(window_ms=120_000, allowed_lateness_ms=30_000)
    imps, outs = traffic(600, seed=3)
    ib, _ = decode_impressions(imps, LIM)
    ob, _ = decode_outcomes(outs, LIM)
    half_i, half_o = ib.n // 2, ob.n // 2
    first = (type(ib)(*(c[:half_i] for c in ib)), type(ob)(*(c[:half_o] for c in ob)))
    rest = (type(ib)(*(c[half_i:] for c in ib)), type(ob)(*(c[half_o:] for c in ob)))
    state, _ = step(eng, init(eng), *first)
    old = state.history[0]
    assert old.listener.size > 0
    arrays, header = to_arrays(eng, state)
    longer = dataclasses.replace(eng, history_length=6)
    back = from_arrays(longer, arrays, header)
    assert back.model_rows.history.shape[1:] == (6, eng.history_dim)
    back, _ = step(longer, back, *rest, watermark_ms=join.MAX_TIME_MS)
    table = back.history[0]
    assert table.entries.shape[1] == 6
    kept = np.isin(table.listener, old.listener)
    assert kept.sum() == old.listener.size  # every listener's plays went on from where they were
    wider = dataclasses.replace(eng, reward_model=rewards.MODELS["session"](gru_units=12))
    with pytest.raises(ValueError, match="model_params changed"):
        from_arrays(wider, arrays, header)
