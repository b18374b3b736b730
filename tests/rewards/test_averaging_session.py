"""Iterate averaging (``average > 0``) and the session model's GRU and jit behaviour."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rewards import Outcomes, RewardModel, history_entries, pad, take
from rewards.model import AveragedState
from rewards.session import HISTORY_DIM, gru_encode, session_model
from rewards.survival import survival_model

pytestmark = pytest.mark.slow  # the session model compiled for several shapes

N_FEATURES = 6
AVERAGE = 0.9
PLAIN = survival_model(n_id_buckets=64)
AVERAGED = survival_model(n_id_buckets=64, average=AVERAGE)
SESSION = session_model(gru_units=4, n_id_buckets=64, average=AVERAGE)


def _leaves(tree: object) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_averaged_state_keeps_the_iterate_in_opt_state(key: jax.Array) -> None:
    plain, averaged = PLAIN.init(key, N_FEATURES), AVERAGED.init(key, N_FEATURES)
    assert isinstance(averaged.opt_state, AveragedState)
    for x, y in zip(_leaves(plain.params), _leaves(averaged.opt_state.raw), strict=True):
        np.testing.assert_array_equal(x, y)
    assert AVERAGED.spec.params["average"] == AVERAGE
    assert PLAIN.spec.params["average"] == 0.0


def test_iterates_are_those_of_the_plain_model_and_params_their_average(
    synth: Callable[..., Outcomes], key: jax.Array
) -> None:
    make = synth
    plain, averaged = PLAIN.init(key, N_FEATURES), AVERAGED.init(key, N_FEATURES)
    served = _leaves(averaged.params)
    for t in range(30):
        b = make(128, seed=100 + t)
        plain, mp = PLAIN.update(plain, b)
        averaged, ma = AVERAGED.update(averaged, b)
        np.testing.assert_allclose(float(mp.loss), float(ma.loss), rtol=1e-5)
        decay = min(AVERAGE, (1 + t) / (10 + t))
        raw = _leaves(plain.params)
        served = [s + (1 - decay) * (r - s) for s, r in zip(served, raw, strict=True)]
    assert isinstance(averaged.opt_state, AveragedState)
    for x, y in zip(_leaves(plain.params), _leaves(averaged.opt_state.raw), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    for x, y in zip(served, _leaves(averaged.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    assert int(averaged.step) == 30


@pytest.mark.parametrize("model", [AVERAGED, SESSION], ids=["survival", "session"])
def test_averaged_update_refuses_a_poisoned_batch(
    model: RewardModel, batch: Outcomes, key: jax.Array
) -> None:
    state, _ = model.update(model.init(key, N_FEATURES), batch)
    bad = batch._replace(features=np.full_like(np.asarray(batch.features), 1e30))
    new, m = model.update(state, bad)
    assert not bool(m.accepted)
    for x, y in zip(_leaves(state), _leaves(new), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("average", [-0.1, 1.0, 2.0])
def test_average_out_of_range_is_an_error(average: float) -> None:
    with pytest.raises(ValueError, match="average must be in"):
        survival_model(average=average)
    with pytest.raises(ValueError, match="average must be in"):
        session_model(average=average)


def _reference_gru(params: dict[str, jax.Array], history: np.ndarray) -> np.ndarray:
    """A plain per-row numpy GRU over the present entries (the textbook gate layout)."""
    wx, wh, b = (np.asarray(params[k], np.float64) for k in ("gru_wx", "gru_wh", "gru_b"))
    g_dim = wh.shape[0]
    out = np.zeros((history.shape[0], g_dim))
    for i, rows in enumerate(history.astype(np.float64)):
        g = np.zeros(g_dim)
        for x in rows:
            if x[-1] < 0.5:
                continue
            gx, gh = x @ wx + b, g @ wh
            z = 1 / (1 + np.exp(-(gx[:g_dim] + gh[:g_dim])))
            r = 1 / (1 + np.exp(-(gx[g_dim : 2 * g_dim] + gh[g_dim : 2 * g_dim])))
            cand = np.tanh(gx[2 * g_dim :] + r * gh[2 * g_dim :])
            g = (1 - z) * g + z * cand
        out[i] = g
    return out


def test_gru_encode_matches_a_per_row_reference(key: jax.Array) -> None:
    rng = np.random.default_rng(0)
    n, h = 12, 5
    present = rng.random((n, h)) < 0.7
    present[0] = False  # a listener with no history: the zero state
    history = history_entries(
        rng.integers(0, 200_000, (n, h)),
        np.full((n, h), 200_000),
        rng.integers(0, 4, (n, h)),
        rng.random((n, h)) < 0.1,
        rng.random((n, h)) < 0.2,
        present,
        extra=rng.normal(size=(n, h, 2)),
    )
    model = session_model(gru_units=5, history_dim=HISTORY_DIM + 2)
    params = model.init(key, N_FEATURES).params
    got = np.asarray(gru_encode(params, jnp.asarray(history)))
    np.testing.assert_allclose(got, _reference_gru(params, history), rtol=1e-4, atol=1e-5)
    assert not got[0].any()


def test_history_entries_extra_goes_before_present() -> None:
    no, yes = np.zeros(2, bool), np.ones(2, bool)
    e = history_entries(
        np.array([1_000, 5]),
        np.array([200_000, 9]),
        np.array([1, 1]),
        no,
        yes,
        np.array([True, False]),
        extra=np.array([[0.5, -2.0], [3.0, 3.0]]),
    )
    assert e.shape == (2, HISTORY_DIM + 2)
    assert e[0].tolist() == [1, 0, 0, 0, 0, 0, 0, 1, 0.5, -2.0, 1]
    assert not e[1].any()
    with pytest.raises(ValueError, match="extra has shape"):
        history_entries(no, no, no, no, no, yes, extra=np.ones((3, 1)))


def test_session_update_compiles_once_per_padded_shape(
    synth: Callable[..., Outcomes], key: jax.Array
) -> None:
    make = synth
    model = session_model(gru_units=4, average=AVERAGE)  # a fresh jit cache
    state = model.init(key, N_FEATURES)
    for seed, n in [(1, 100), (2, 37), (3, 128)]:
        b = make(n, seed=seed)
        state, _ = model.update(state, pad(b, 128))
        model.predict(state, pad(take(b, slice(0, n)), 128).inputs)
    assert model.update._cache_size() == 1  # type: ignore[attr-defined]
    assert model.predict._cache_size() == 1  # type: ignore[attr-defined]
