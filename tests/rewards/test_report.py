"""The ``encore rewards report`` entry point: simulated (prequential) and file sources."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from rewards import REASONS
from streaming.evaluate.reward_models import SimStream, report
from streaming.sim.simulator import SimConfig

pytestmark = pytest.mark.slow  # a prequential report over simulated plays


def test_sim_stream_histories_follow_each_listener() -> None:
    stream = SimStream(SimConfig(n_users=20, n_tracks=200, seed=3), history_len=4)
    first = stream.next(30)
    second = stream.next(30)
    o = second.outcomes
    assert o.history is not None and o.history.shape[1:] == (4, 9)
    assert np.all(np.asarray(o.history)[:, :, :6].sum(axis=-1) == np.asarray(o.history)[:, :, 8])
    # Slate position p > 0 sees the previous position of its own slate as its latest entry.
    pos = np.asarray(o.position)
    later = np.flatnonzero(pos > 0)
    assert later.size and np.all(np.asarray(o.history)[later, -1, 8] == 1.0)
    assert first.outcomes.features.shape[1] == second.outcomes.features.shape[1]


def test_report_on_simulated_plays(tmp_path: Path) -> None:
    buf = io.StringIO()
    png = tmp_path / "reliability.png"
    rows = report(None, out_png=png, simulate_plays=3_000, console=Console(file=buf, width=140))
    assert png.stat().st_size > 0
    models = {r["model"] for r in rows}
    assert models == {"skip (direct)", "survival", "session (GRU)"}
    for r in rows:
        assert 0 < r["log_loss"] < 1.5 and 0 <= r["ece"] <= 1 and r["plays"] > 1_000
    assert "log loss" in buf.getvalue() and "session (GRU)" in buf.getvalue()


def test_report_on_a_file_of_stored_predictions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 400
    p_complete = rng.uniform(0.05, 0.6, n)
    complete = rng.random(n) < p_complete
    frame = pd.DataFrame(
        {
            "model": np.where(np.arange(n) % 2 == 0, "a", "b"),
            "ms_played": np.where(complete, 200_000, 10_000),
            "track_duration_ms": 200_000,
            "reason_end": [REASONS[0] if c else REASONS[1] for c in complete],
            "p_complete": p_complete,
        }
    )
    path = tmp_path / "joined.csv"
    frame.to_csv(path, index=False)
    rows = report(path, out_png=tmp_path / "r.png", console=Console(file=io.StringIO()))
    assert [(r["model"], r["head"]) for r in rows] == [("a", "complete"), ("b", "complete")]
    assert all(r["plays"] == 200 for r in rows)
    with pytest.raises(ValueError, match="either a file path or simulate_plays"):
        report(path, out_png=tmp_path / "r.png", simulate_plays=10)
    frame.drop(columns=["p_complete"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match="no prediction columns"):
        report(path, out_png=tmp_path / "r.png")
