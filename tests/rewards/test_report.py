"""The ``encore rewards report`` entry point: simulated (prequential) and file sources."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from rewards import REASONS, reliability_table
from streaming.evaluate.reward_models import (
    HEAD_TITLES,
    Progress,
    SimStream,
    reliability_figure,
    report,
)
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


def test_report_on_simulated_plays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    buf = io.StringIO()  # not a terminal: rich's 80 columns, and each table row on one line
    err = io.StringIO()  # not a terminal: whole progress lines
    png = tmp_path / "reliability.png"
    rows = report(
        None, out_png=png, simulate_plays=3_000, console=Console(file=buf), progress=Progress(err)
    )
    assert png.stat().st_size > 0
    models = {r["model"] for r in rows}
    assert models == {"skip (direct)", "survival", "session (GRU)"}
    for r in rows:
        assert 0 < r["log_loss"] < 1.5 and 0 <= r["ece"] <= 1 and r["plays"] > 1_000
    table = buf.getvalue()
    assert "log" in table and "loss" in table and "AUC" in table
    assert all(table.count(f"{m} ") == 4 for m in models)  # one row per head, names whole
    # Progress: plain lines "<phase>: done / total plays", each phase from 0 to its total.
    assert "\r" not in err.getvalue()
    phases: dict[str, list[tuple[int, int]]] = {}
    for line in err.getvalue().splitlines():
        m = re.fullmatch(r"(.+): ([\d,]+) / ([\d,]+) plays", line)
        assert m is not None, line
        done, total = (int(g.replace(",", "")) for g in m.group(2, 3))
        phases.setdefault(m.group(1), []).append((done, total))
    assert list(phases) == [
        "simulating",
        "prequential skip (direct) [1/3]",
        "prequential survival [2/3]",
        "prequential session (GRU) [3/3]",
    ]
    plays = rows[0]["plays"]
    for name, seen in phases.items():
        dones = [d for d, _ in seen]
        assert dones[0] == 0 and dones == sorted(dones) and len(seen) <= 11
        assert dones[-1] == seen[-1][1]  # ends at its total
        if name != "simulating":
            assert seen[-1][1] >= plays  # every play simulated is predicted


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_writes_whole_lines_off_a_terminal() -> None:
    out = io.StringIO()
    progress = Progress(out, steps=4)
    for done in range(0, 1_001, 50):
        progress("pass", done, 1_000)
    progress("next", 0, 10)
    assert out.getvalue().splitlines() == [
        "pass: 0 / 1,000 plays",
        "pass: 250 / 1,000 plays",
        "pass: 500 / 1,000 plays",
        "pass: 750 / 1,000 plays",
        "pass: 1,000 / 1,000 plays",
        "next: 0 / 10 plays",
    ]
    assert "\r" not in out.getvalue()


def test_progress_rewrites_one_line_on_a_terminal() -> None:
    out = _Terminal()
    progress = Progress(out)
    for done in (0, 5, 10):
        progress("pass", done, 10)
    assert out.getvalue() == ("\rpass: 0 / 10 plays\rpass: 5 / 10 plays\rpass: 10 / 10 plays\n")


def test_reliability_figure_has_a_panel_per_head_and_one_legend() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(500)
    y = rng.random(500) < p
    tables = {
        (model, head): reliability_table(q, y, 10)
        for model, q in (("a", p), ("b", p**2))
        for head in ("complete", "skip_1")
    }
    fig = reliability_figure(tables, "a test")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [HEAD_TITLES["skip_1"], HEAD_TITLES["complete"]]
    assert len(fig.axes) == 4  # a panel and a strip of plays per bin for each head
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["perfect calibration", "a", "b"]
    title = fig.get_suptitle()
    assert "a test" in title and "plays per bin" in title


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
