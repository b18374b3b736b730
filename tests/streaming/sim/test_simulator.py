"""The simulator: seeded, consistent with its own truth, and near its documented marginals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from streaming.sim.simulator import REASONS, SimConfig, Simulator, describe


def test_same_seed_same_world_and_traffic() -> None:
    a, b = Simulator(SimConfig(seed=3)), Simulator(SimConfig(seed=3))
    ra, rb = a.requests(50), b.requests(50)
    np.testing.assert_array_equal(ra.candidates, rb.candidates)
    pa = a.play(ra, a.log_slates(ra, 3).shown)
    pb = b.play(rb, b.log_slates(rb, 3).shown)
    np.testing.assert_array_equal(pa.ms_played, pb.ms_played)


def test_candidates_distinct_and_shapes() -> None:
    sim = Simulator(SimConfig(n_tracks=50, n_candidates=20, seed=1))
    req = sim.requests(200)
    assert req.candidate_features.shape == (200, 20, 16)
    assert all(len(set(row)) == 20 for row in req.candidates.tolist())
    assert (np.diff(req.t_ms) >= 0).all()


def test_expected_reward_matches_empirical_stream_rate() -> None:
    sim = Simulator(SimConfig(seed=2, logout_prob=0.0))
    req = sim.requests(40_000)
    shown = np.zeros((40_000, 1), dtype=np.int64)
    p = sim.expected_reward(req)[:, 0]
    plays = sim.play(req, shown)
    assert abs(plays.stream30[:, 0].mean() - p.mean()) < 0.01
    np.testing.assert_allclose(plays.p_stream30[:, 0], p)


def test_logging_propensities_are_exact_plackett_luce() -> None:
    sim = Simulator(SimConfig(n_candidates=4, seed=4))
    req = sim.requests(1)
    many = req._replace(**{f: np.repeat(getattr(req, f), 20_000, axis=0) for f in req._fields})
    sl = sim.log_slates(many, 2)
    first = np.bincount(sl.shown[:, 0], minlength=4) / 20_000
    np.testing.assert_allclose(first, sim.logging_probs(req)[0], atol=0.015)
    assert ((sl.propensity > 0) & (sl.propensity <= 1)).all()


def test_marginals_are_in_the_documented_ranges() -> None:
    d = describe(Simulator(SimConfig(seed=0)), n_requests=5000)
    assert 0.27 < d["reward_random_top1"] < 0.33 and 0.68 < d["reward_oracle_top1"] < 0.76
    assert d["reward_random_top1"] < d["reward_logging_top1"] < d["reward_oracle_top1"]
    assert 0.0 < d["censored_rate"] < 0.03 and 0.0 < d["save_rate"] < 0.1
    assert d["skip_rate_5s"] < d["skip_rate_30s"] < d["skip_before_end_rate"]
    # Production-like candidates (a recall stage) land near the published skip figures.
    r = describe(Simulator(SimConfig(seed=0, candidate_source="recall")), n_requests=5000)
    assert 0.18 < r["skip_rate_5s"] < 0.30 and 0.40 < r["skip_before_end_rate"] < 0.55
    assert r["reward_logging_top1"] < r["reward_oracle_top1"]


def test_skips_come_in_runs() -> None:
    sim = Simulator(SimConfig(seed=5))
    req = sim.requests(20_000)
    plays = sim.play(req, sim.log_slates(req, 5).shown)
    heard = plays.heard[:, 1:]
    skipped = ~plays.stream30[:, 1:] & ~plays.censored[:, 1:]
    after_skip = skipped[heard & plays.prev_skipped[:, 1:]].mean()
    after_play = skipped[heard & ~plays.prev_skipped[:, 1:]].mean()
    assert after_skip > after_play + 0.05


@pytest.mark.slow
def test_drift_changes_tastes_over_time() -> None:
    sim = Simulator(SimConfig(seed=6, drift=3.0))
    early = sim.requests(10)
    sim.requests(200_000)
    late = sim.requests(10)
    late = late._replace(
        user_id=early.user_id,
        context=early.context,
        candidates=early.candidates,
        candidate_features=early.candidate_features,
        mood=early.mood,
    )
    assert not np.allclose(sim.affinity(early), sim.affinity(late))


def test_an_abrupt_change_replaces_the_taste_map_at_its_moment_and_only_then() -> None:
    cfg = SimConfig(seed=6, n_tracks=50, d_user=3, d_track=2, n_candidates=4, start_ms=10**12)
    changed = Simulator(dataclasses.replace(cfg, change_at_ms=60_000))
    req = changed.requests(4_000)  # about 200 simulated seconds at 50 ms between requests
    before = req.t_ms - cfg.start_ms < 60_000
    assert before.any() and (~before).any()
    u, t, w = (
        req.context.astype(np.float64),
        req.candidate_features.astype(np.float64),
        changed.world,
    )
    first = cfg.affinity_scale * np.einsum("nd,de,nke->nk", u, w.m0, t)
    after = cfg.affinity_scale * np.einsum("nd,de,nke->nk", u, w.m1, t)
    bilinear = np.where(before[:, None], first, after)
    rest = changed.affinity(req, with_mood=False) - bilinear
    # what remains is the same per-track terms before and after: popularity, quality, bias
    rest_at = {int(c): float(v) for c, v in zip(req.candidates.ravel(), rest.ravel(), strict=True)}
    np.testing.assert_allclose(
        rest.ravel(), [rest_at[int(c)] for c in req.candidates.ravel()], atol=1e-9
    )
    plain = Simulator(cfg).requests(4_000)
    np.testing.assert_array_equal(plain.t_ms, req.t_ms)  # the same draws otherwise
    with pytest.raises(ValueError, match="change_at_ms"):
        SimConfig(change_at_ms=10, drift=1.0)


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="n_candidates"):
        SimConfig(n_tracks=5, n_candidates=10)
    assert REASONS[0] == "trackdone"


def test_the_clock_starts_where_it_is_told_and_the_rest_follows() -> None:
    at_zero = Simulator(SimConfig(seed=3, request_gap_ms=1000)).requests(50)
    later = Simulator(SimConfig(seed=3, request_gap_ms=1000, start_ms=10**12)).requests(50)
    assert (later.t_ms - at_zero.t_ms == 10**12).all()
    assert (later.user_id == at_zero.user_id).all()
    with pytest.raises(ValueError, match="start_ms must be >= 0"):
        SimConfig(start_ms=-1)
