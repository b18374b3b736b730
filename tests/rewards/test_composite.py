"""The composite reward: kinds, declaration round trip, delayed (provisional/final) rewards."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from rewards import (
    REWARD_VERSION,
    CompositeReward,
    Outcomes,
    Predictions,
    completion_model,
    expected_listen_fraction,
    skip_model,
)
from rewards.survival import survival_model
from rewards.types import FWDBTN, LOGOUT, TRACKDONE

D = 200_000


def outcomes() -> Outcomes:
    # complete+saved, skip at 3 s, skip at 60 s, censored at 10 s
    return Outcomes(
        features=np.zeros((4, 1), np.float32),
        ms_played=np.array([D, 3_000, 60_000, 10_000]),
        duration_ms=np.full(4, D),
        reason_end=np.array([TRACKDONE, FWDBTN, FWDBTN, LOGOUT], np.int8),
        saved=np.array([True, False, False, False]),
        position=np.zeros(4, np.int32),
        censored=np.array([False, False, False, True]),
        mask=np.ones(4, bool),
    )


def predictions() -> Predictions:
    skip = jnp.array([[0.1, 0.2, 0.6]] * 4, jnp.float32)
    return Predictions(skip=skip, complete=1.0 - skip[:, 2])


def test_raw_rewards_of_each_kind() -> None:
    o = outcomes()
    np.testing.assert_allclose(CompositeReward(kind="stream30").raw(o), [1, 0, 1, 0])
    np.testing.assert_allclose(CompositeReward(kind="linear").raw(o), [3.0, -0.5, 0.0, 0.0])
    np.testing.assert_allclose(
        CompositeReward(kind="listen_fraction").raw(o), [1.0, 0.015, 0.3, 0.05], rtol=1e-6
    )


def test_censored_rows_keep_the_provisional_reward() -> None:
    r = CompositeReward(kind="linear")
    p = predictions()
    final = np.asarray(r.final(p, outcomes()))
    prov = np.asarray(r.provisional(p, outcomes().duration_ms))
    np.testing.assert_allclose(final[:3], [3.0, -0.5, 0.0])
    np.testing.assert_allclose(final[3], prov[3])
    # Without predictions a censored play keeps its raw reward (it is not a skip).
    assert float(r.final(None, outcomes())[3]) == 0.0


def test_provisional_is_the_expected_linear_reward() -> None:
    r = CompositeReward(
        kind="linear", w_complete=1.0, w_skip_30s=-0.5, w_saved=2.0, p_save_given_complete=0.1
    )
    prov = np.asarray(r.provisional(predictions(), np.full(4, D)))
    np.testing.assert_allclose(prov, 0.4 - 0.5 * 0.2 + 2.0 * 0.1 * 0.4, rtol=1e-6)
    assert float(CompositeReward(kind="stream30").provisional(predictions(), np.full(4, D))[0]) == (
        pytest.approx(0.8)
    )


def test_denoised_mixes_model_and_outcome_by_shrink() -> None:
    o, p = outcomes(), predictions()
    model_only = CompositeReward(kind="denoised", shrink=0.0)
    prov = np.asarray(model_only.provisional(p, o.duration_ms))
    np.testing.assert_allclose(model_only.final(p, o), prov, rtol=1e-6)
    half = CompositeReward(kind="denoised", shrink=0.5)
    raw = np.asarray(CompositeReward(kind="linear").raw(o))
    expected = np.where(o.censored, prov, 0.5 * raw + 0.5 * prov)
    np.testing.assert_allclose(half.final(p, o), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="needs the model's predictions"):
        model_only.final(None, o)


def test_spec_round_trip_and_strictness() -> None:
    r = CompositeReward(kind="denoised", w_saved=1.5, shrink=0.25)
    spec = r.to_spec()
    assert spec["reward_version"] == REWARD_VERSION
    assert CompositeReward.from_spec(spec) == r
    with pytest.raises(ValueError, match="unknown keys \\['w_skiped'\\]"):
        CompositeReward.from_spec({**spec, "w_skiped": 1.0})
    with pytest.raises(ValueError, match="reward_version 999"):
        CompositeReward.from_spec({**spec, "reward_version": 999})
    with pytest.raises(ValueError, match="kind must be one of"):
        CompositeReward(kind="clicks")
    with pytest.raises(ValueError, match="shrink must be in"):
        CompositeReward(kind="denoised", shrink=1.5)


def test_check_refuses_a_model_without_the_needed_heads() -> None:
    CompositeReward(kind="listen_fraction").check(survival_model().spec)
    CompositeReward(kind="linear").check(skip_model().spec)
    with pytest.raises(ValueError, match="needs heads \\['skip_2'\\]"):
        CompositeReward(kind="linear").check(completion_model().spec)


def test_bounds() -> None:
    assert CompositeReward(kind="linear").bounds() == (-0.5, 3.0)
    assert CompositeReward(kind="stream30").bounds() == (0.0, 1.0)
    o, p = outcomes(), predictions()
    for kind in ("stream30", "linear", "listen_fraction", "denoised"):
        r = CompositeReward(kind=kind)
        lo, hi = r.bounds()
        for v in (r.final(p, o), r.provisional(p, o.duration_ms)):
            assert np.all((np.asarray(v) >= lo - 1e-6) & (np.asarray(v) <= hi + 1e-6))


def test_expected_listen_fraction() -> None:
    d = np.full(3, D)
    sure_complete = Predictions(jnp.zeros((3, 3)), jnp.ones(3))
    np.testing.assert_allclose(expected_listen_fraction(sure_complete, d), 1.0)
    sure_early = Predictions(jnp.ones((3, 3)), jnp.zeros(3))
    np.testing.assert_allclose(expected_listen_fraction(sure_early, d), 2_500 / D, rtol=1e-6)
    f = np.asarray(expected_listen_fraction(predictions(), np.full(4, D)))
    assert np.all((f > 0) & (f < 1))
