"""One contract battery for every reward model (river's check_estimator, as an explicit list)."""

from __future__ import annotations

import io
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rewards
from rewards import (
    Inputs,
    ModelState,
    Outcomes,
    RewardModel,
    completion_model,
    direct_model,
    pad,
    skip_model,
    take,
)
from rewards.fit import fit
from rewards.session import session_model
from rewards.survival import survival_model

N_FEATURES = 6  # conftest.synthetic_outcomes' default width

# Built once per test session, so jit caches are shared by the tests of one model.
MODELS: list[tuple[str, RewardModel]] = [
    ("skip", skip_model()),
    ("completion", completion_model()),
    ("direct_hidden_ids", direct_model(hidden=8, n_id_buckets=64)),
    ("survival", survival_model()),
    ("survival_free_hidden_ids", survival_model(proportional=False, hidden=8, n_id_buckets=64)),
    ("session", session_model(gru_units=4, n_id_buckets=64)),
]
IDS = [name for name, _ in MODELS]
FACTORIES = [lambda m=m: m for _, m in MODELS]
SURVIVAL_FREE = survival_model(proportional=False, hidden=4)
SESSION_SMALL = session_model(gru_units=3)


def test_every_registered_model_is_in_the_battery() -> None:
    assert {model.spec.name for _, model in MODELS} == set(rewards.MODELS)


@pytest.mark.parametrize("name", sorted(rewards.MODELS))
def test_the_registry_builds_each_model_by_its_name(name: str) -> None:
    factory = rewards.MODELS[name]
    assert getattr(rewards, f"{name}_model") is factory and "MODELS" in rewards.__all__
    assert factory().spec.name == name


@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_raw_arrays_are_refused_with_a_type_error(
    factory: Callable[[], RewardModel], key: jax.Array, batch: Outcomes
) -> None:
    model = factory()
    state = model.init(key, N_FEATURES)
    x = np.asarray(batch.features)
    for raw in (x, jnp.asarray(x)):
        with pytest.raises(
            TypeError,
            match=r"^predict takes rewards\.Inputs, got an array of shape \(256, 6\); "
            r"build it with rewards\.Inputs\(features=",
        ):
            model.predict(state, raw)  # type: ignore[arg-type]
        with pytest.raises(
            TypeError,
            match=r"^update takes rewards\.Outcomes, got an array of shape \(256, 6\); "
            r"build it with rewards\.Outcomes\(features, .*rewards\.pad\(outcomes, size\)$",
        ):
            model.update(state, raw)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"got a rewards\.types\.Outcomes; .*outcomes\.inputs"):
        model.predict(state, batch)  # type: ignore[arg-type]


def _leaves(state: ModelState) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(state)]


def _modelled(model: RewardModel) -> list[int]:
    return [
        i for i, h in enumerate(("skip_1", "skip_2", "skip_3", "complete")) if h in model.spec.heads
    ]


def _columns(model: RewardModel, state: ModelState, inputs: Inputs) -> np.ndarray:
    p = model.predict(state, inputs)
    return np.concatenate([np.asarray(p.skip), np.asarray(p.complete)[:, None]], axis=1)


@pytest.mark.slow
@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_update_lowers_loss_on_a_fixed_batch(
    factory: Callable[[], RewardModel], batch: Outcomes, key: jax.Array
) -> None:
    model = factory()
    state = model.init(key, N_FEATURES)
    state, first = model.update(state, batch)
    for _ in range(40):
        state, _ = model.update(state, batch)
    _, last = model.update(state, batch)
    assert bool(first.accepted) and bool(last.accepted)
    assert float(last.loss) < 0.95 * float(first.loss)
    assert int(state.step) == 41


@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_predictions_are_probabilities(
    factory: Callable[[], RewardModel], batch: Outcomes, key: jax.Array
) -> None:
    model = factory()
    state = model.init(key, N_FEATURES)
    for _ in range(5):
        state, _ = model.update(state, batch)
    cols = _columns(model, state, batch.inputs)
    assert cols.shape == (256, 4)
    used = cols[:, _modelled(model)]
    assert np.all(np.isfinite(used)) and np.all((used >= 0) & (used <= 1))
    np.testing.assert_allclose(cols[:, 2], 1.0 - cols[:, 3], atol=1e-6)
    unmodelled = [i for i in range(4) if i not in _modelled(model)]
    assert np.all(np.isnan(cols[:, unmodelled]))


@pytest.mark.slow
@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_fit_equals_repeated_update(
    factory: Callable[[], RewardModel], batch: Outcomes, key: jax.Array
) -> None:
    model = factory()
    start = model.init(key, N_FEATURES)
    result = fit(
        model,
        start,
        batch,
        key=key,
        batch_size=64,
        epochs=1,
        validation_fraction=0.0,
        shuffle=False,
    )
    state = start
    for lo in range(0, 256, 64):
        state, _ = model.update(state, pad(take(batch, slice(lo, lo + 64)), 64))
    for a, b in zip(_leaves(result.state), _leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_padding_does_not_change_the_update(
    factory: Callable[[], RewardModel], batch: Outcomes, key: jax.Array
) -> None:
    model = factory()
    state = model.init(key, N_FEATURES)
    a, ma = model.update(state, batch)
    b, mb = model.update(state, pad(batch, 300))
    assert int(ma.n_used) == int(mb.n_used) == 256
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_state_survives_a_checkpoint_round_trip(
    factory: Callable[[], RewardModel], batch: Outcomes, key: jax.Array
) -> None:
    model = factory()
    state, _ = model.update(model.init(key, N_FEATURES), batch)
    leaves, treedef = jax.tree.flatten(state)
    buf = io.BytesIO()
    np.savez(buf, *[np.asarray(x) for x in leaves])
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        loaded = jax.tree.unflatten(
            treedef, [jnp.asarray(z[f"arr_{i}"]) for i in range(len(leaves))]
        )
    np.testing.assert_array_equal(
        _columns(model, state, batch.inputs), _columns(model, loaded, batch.inputs)
    )
    s1, _ = model.update(state, batch)
    s2, _ = model.update(loaded, batch)
    for x, y in zip(_leaves(s1), _leaves(s2), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_same_key_same_state(factory: Callable[[], RewardModel], key: jax.Array) -> None:
    model = factory()
    for x, y in zip(_leaves(model.init(key, 5)), _leaves(model.init(key, 5)), strict=True):
        np.testing.assert_array_equal(x, y)


def _corrupt(batch: Outcomes, kind: str) -> Outcomes:
    rows = np.arange(0, 256, 7)
    o = Outcomes(*(None if a is None else np.array(a, copy=True) for a in batch))
    if kind == "nan_features":
        o.features[rows, 0] = np.nan
    elif kind == "inf_features":
        o.features[rows, 1] = -np.inf
    elif kind == "negative_duration":
        o.duration_ms[rows] = -1000
    elif kind == "ms_far_beyond_duration":
        o.ms_played[rows] = o.duration_ms[rows] * 100
    elif kind == "unknown_reason":
        o.reason_end[rows] = 42
    elif kind == "nan_history":
        assert o.history is not None
        o.history[rows] = np.nan
    else:
        raise AssertionError(kind)
    return o


BAD = [
    "nan_features",
    "inf_features",
    "negative_duration",
    "ms_far_beyond_duration",
    "unknown_reason",
    "nan_history",
]


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_bad_rows_are_dropped_not_learned(
    factory: Callable[[], RewardModel], kind: str, batch: Outcomes, key: jax.Array
) -> None:
    model = factory()
    state = model.init(key, N_FEATURES)
    bad = _corrupt(batch, kind)
    rows = np.arange(0, 256, 7)
    s_bad, m = model.update(state, bad)
    assert int(m.n_dropped) == rows.size and int(m.n_used) == 256 - rows.size
    assert bool(m.accepted) and np.isfinite(float(m.loss))
    # Exactly the update on the good rows alone.
    keep = np.setdiff1d(np.arange(256), rows)
    s_good, _ = model.update(state, pad(take(batch, keep), 256))
    for x, y in zip(_leaves(s_bad), _leaves(s_good), strict=True):
        assert np.all(np.isfinite(x))
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_a_poisoned_batch_leaves_the_state_unchanged(
    factory: Callable[[], RewardModel], batch: Outcomes, key: jax.Array
) -> None:
    model = factory()
    state, _ = model.update(model.init(key, N_FEATURES), batch)
    # Finite but absurd features overflow the gradient: the step is refused.
    huge = batch._replace(features=np.full_like(np.asarray(batch.features), 3e38))
    s1, m1 = model.update(state, huge)
    assert not bool(m1.accepted)
    # A batch with no valid row at all: nothing to learn, nothing changes.
    empty = batch._replace(features=np.full_like(np.asarray(batch.features), np.nan))
    s2, m2 = model.update(state, empty)
    assert not bool(m2.accepted) and int(m2.n_used) == 0 and int(m2.n_dropped) == 256
    for s in (s1, s2):
        for x, y in zip(_leaves(s), _leaves(state), strict=True):
            np.testing.assert_array_equal(x, y)
    # And the model keeps learning afterwards.
    s3, m3 = model.update(s2, batch)
    assert bool(m3.accepted) and int(s3.step) == int(state.step) + 1


def test_models_needing_inputs_say_so(batch: Outcomes, key: jax.Array) -> None:
    model = session_model(gru_units=4)
    state = model.init(key, N_FEATURES)
    with pytest.raises(ValueError, match="needs history"):
        model.predict(state, batch.inputs._replace(history=None))
    ids = MODELS[4][1]
    with pytest.raises(ValueError, match="needs track_id"):
        ids.update(ids.init(key, N_FEATURES), batch._replace(track_id=None))


@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_learns_the_synthetic_process(
    factory: Callable[[], RewardModel], key: jax.Array, synth: Callable[..., Outcomes]
) -> None:
    """Trained on plays from a known hazard process, the model ranks held-out plays well."""
    from rewards.calibration import score_heads

    model = factory()
    train, test = synth(4096, seed=2), synth(256, seed=3)
    state = fit(
        model,
        model.init(key, N_FEATURES),
        train,
        key=key,
        batch_size=256,
        epochs=4,
        validation_fraction=0.0,
    ).state
    scores = score_heads(_columns(model, state, test.inputs), test)
    assert scores["complete"].auc > 0.75


@pytest.mark.slow
@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.01, 30.0),
    duration=st.integers(1_000, 900_000),
)
def test_survival_predictions_are_consistent(seed: int, scale: float, duration: int) -> None:
    """For any parameters and inputs: P(skip_1) <= P(skip_2) <= P(skip_3) and
    P(complete) = 1 - P(skip_3) <= 1 - P(skip_2)."""
    for model in (SURVIVAL_FREE, SESSION_SMALL):
        state = model.init(jax.random.key(seed), 4)
        leaves, treedef = jax.tree.flatten(state.params)
        noise = jax.random.key(seed + 1)
        params = jax.tree.unflatten(
            treedef, [scale * jax.random.normal(noise, p.shape, p.dtype) for p in leaves]
        )
        rng = np.random.default_rng(seed)
        history = np.zeros((16, 2, 9), np.float32)
        history[..., 8] = 1.0
        inputs = Inputs(
            rng.normal(size=(16, 4)).astype(np.float32), np.full(16, duration), None, history
        )
        p = model.predict(state._replace(params=params), inputs)
        skip, complete = np.asarray(p.skip, np.float64), np.asarray(p.complete, np.float64)
        assert np.all(np.diff(skip, axis=1) >= -1e-6)
        assert np.all(complete <= 1.0 - skip[:, 1] + 1e-6)
        np.testing.assert_allclose(complete, 1.0 - skip[:, 2], atol=1e-6)
        assert np.all((skip >= 0) & (skip <= 1))
        assert np.all((complete >= 0) & (complete <= 1))
