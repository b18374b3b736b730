"""Offline fit: frames and Parquet, early stopping, determinism, callbacks, errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

from rewards import REASONS, Outcomes, skip_model
from rewards.fit import EpochReport, fit, outcomes_from_frame
from rewards.survival import survival_model

MODEL = survival_model(n_id_buckets=64)


def to_frame(o: Outcomes) -> pd.DataFrame:
    x = np.asarray(o.features)
    frame = pd.DataFrame({f"x_{i}": x[:, i] for i in range(x.shape[1])})
    frame["ms_played"] = o.ms_played
    frame["track_duration_ms"] = o.duration_ms
    frame["reason_end"] = [REASONS[c] for c in np.asarray(o.reason_end)]
    frame["saved"] = o.saved
    frame["position"] = o.position
    frame["track_id"] = o.track_id
    return frame


def test_frame_round_trip(batch: Outcomes) -> None:
    back = outcomes_from_frame(to_frame(batch))
    for name in (
        "features",
        "ms_played",
        "duration_ms",
        "reason_end",
        "saved",
        "position",
        "track_id",
    ):
        np.testing.assert_array_equal(getattr(back, name), getattr(batch, name), err_msg=name)
    # Without a censored column, a logout is the censoring.
    np.testing.assert_array_equal(back.censored, batch.censored)
    assert back.history is None


def test_frame_errors_name_the_columns(batch: Outcomes) -> None:
    frame = to_frame(batch)
    with pytest.raises(ValueError, match="missing columns: \\['ms_played'"):
        outcomes_from_frame(frame.drop(columns=["ms_played"]))
    with pytest.raises(ValueError, match="duration_ms or track_duration_ms"):
        outcomes_from_frame(frame.drop(columns=["track_duration_ms"]))
    bad = frame.copy()
    bad.loc[3, "reason_end"] = "teleported"
    with pytest.raises(ValueError, match="unknown values \\['teleported'\\]"):
        outcomes_from_frame(bad)
    with pytest.raises(ValueError, match="validation_fraction"):
        fit(
            MODEL,
            MODEL.init(jax.random.key(0), 6),
            frame,
            key=jax.random.key(0),
            validation_fraction=1.0,
        )


@pytest.mark.slow
def test_fit_on_parquet_equals_fit_on_the_frame(batch: Outcomes, tmp_path: Path) -> None:
    frame = to_frame(batch)
    path = tmp_path / "plays.parquet"
    frame.to_parquet(path)
    key = jax.random.key(3)
    start = MODEL.init(key, 6)
    a = fit(MODEL, start, frame, key=key, batch_size=64, epochs=2)
    b = fit(MODEL, start, str(path), key=key, batch_size=64, epochs=2)
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert a.history == b.history


def test_fit_is_deterministic_and_reports_every_epoch(synth: Callable[..., Outcomes]) -> None:
    data = synth(1024, seed=5)
    reports: list[EpochReport] = []
    batches: list[tuple[int, int]] = []
    key = jax.random.key(1)
    r1 = fit(
        MODEL,
        MODEL.init(key, 6),
        data,
        key=key,
        batch_size=128,
        epochs=3,
        on_epoch=reports.append,
        on_batch=lambda i, n: batches.append((i, n)),
    )
    r2 = fit(MODEL, MODEL.init(key, 6), data, key=key, batch_size=128, epochs=3)
    assert r1.history == r2.history == reports
    assert [r.epoch for r in reports] == [0, 1, 2]
    assert batches[-1] == (8, 8) and len(batches) == 24  # 922 training rows -> 8 batches/epoch
    assert all(np.isfinite(r.val_loss) for r in reports)
    r3 = fit(MODEL, MODEL.init(key, 6), data, key=jax.random.key(2), batch_size=128, epochs=3)
    assert r3.history != r1.history


def test_early_stopping_keeps_the_best_state(synth: Callable[..., Outcomes]) -> None:
    """A large step size overfits a small training set: validation loss turns up, fit stops
    after ``patience`` worse epochs and returns the best epoch's state."""
    model = skip_model(n_id_buckets=512, learning_rate=0.3)
    data = synth(600, seed=6, n_tracks=400)
    key = jax.random.key(0)
    result = fit(
        model,
        model.init(key, 6),
        data,
        key=key,
        batch_size=64,
        epochs=30,
        validation_fraction=0.3,
        patience=2,
    )
    h = result.history
    best = min(h, key=lambda r: r.val_loss)
    assert len(h) < 30 and h[-1].epoch - best.epoch == 2
    assert all(r.best_epoch == best.epoch for r in h[best.epoch :])
    again = fit(
        model,
        model.init(key, 6),
        data,
        key=key,
        batch_size=64,
        epochs=best.epoch + 1,
        validation_fraction=0.3,
        patience=100,
    )
    for x, y in zip(jax.tree.leaves(result.state), jax.tree.leaves(again.state), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_fit_survives_bad_rows(batch: Outcomes) -> None:
    bad = Outcomes(*(None if a is None else np.array(a, copy=True) for a in batch))
    bad.features[::5, 0] = np.nan
    bad.duration_ms[1::9] = 0
    key = jax.random.key(0)
    result = fit(MODEL, MODEL.init(key, 6), bad, key=key, batch_size=64, epochs=2)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(result.state))
    assert all(np.isfinite(r.train_loss) and r.n_rejected == 0 for r in result.history)
