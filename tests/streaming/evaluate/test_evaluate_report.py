"""What ``encore evaluate`` tells its user beyond the estimates: the logging policy's own value,
too small an effective sample size, a target that learned from the rows it evaluates, a plot
title without paths, and progress on stderr (streaming/evaluate/)."""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from rich.console import Console

from bandits import save
from bandits.ope import ESTIMATORS, LoggedFeedback, TargetProbs, estimate_all
from bandits.registry import POLICIES
from streaming.evaluate import cli, main
from streaming.evaluate.cli import Steps, build_parser
from streaming.evaluate.frames import read_log
from streaming.evaluate.inputs import build_inputs, logging_policy_inputs
from streaming.evaluate.live import run_live
from streaming.evaluate.report import ess_floor, plot_estimates, run_warnings
from streaming.evaluate.targets import split_overlap
from streaming.join import MAX_TIME_MS
from streaming.worker import checkpoint
from streaming.worker.parquet_log import ParquetLog, example_records

N = 2_000
K = 3
COLUMNS = ["--column-map", "action=item,reward=click,propensity=pscore"]


def _frame(target: str, seed: int = 0) -> pd.DataFrame:
    """Uniform logging over ``K`` actions, rewards with mean 0.2, 0.5, 0.8 per action.

    ``target="soft"``: a target close to the logger (ESS near ``N``); ``"rare"``: a target that
    only plays action 0, which the logger played 0.5% of the time (ESS near 10).
    """
    rng = np.random.default_rng(seed)
    if target == "soft":
        p = np.full((N, K), 1.0 / K)
        action = rng.integers(0, K, N)
        tp = np.tile([0.2, 0.3, 0.5], (N, 1))
    else:
        p = np.tile([0.005, 0.4975, 0.4975], (N, 1))
        action = (p.cumsum(axis=1) > rng.random((N, 1))).argmax(axis=1)
        tp = np.tile([1.0, 0.0, 0.0], (N, 1))
    reward = (rng.random(N) < np.array([0.2, 0.5, 0.8])[action]).astype(np.float64)
    return pd.DataFrame(
        {
            "item": action,
            "click": reward,
            "pscore": p[np.arange(N), action],
            **{f"tp_{a}": tp[:, a] for a in range(K)},
        }
    )


@pytest.fixture
def soft_log(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    frame = _frame("soft")
    path = tmp_path / "soft.parquet"
    frame.to_parquet(path)
    return path, frame


@pytest.fixture
def rare_log(tmp_path: Path) -> Path:
    path = tmp_path / "rare.parquet"
    _frame("rare").to_parquet(path)
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _capture_plots(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures ``main`` plots, by wrapping the real ``plot_estimates``."""
    figures: list[Figure] = []

    def capture(*args: Any, **kwargs: Any) -> Figure:
        figures.append(plot_estimates(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(cli, "plot_estimates", capture)
    return figures


# ------------------------------------------------------------------ the logging policy's own value
def test_table_report_and_plot_show_the_logging_policy_value(
    soft_log: tuple[Path, pd.DataFrame],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, frame = soft_log
    figures = _capture_plots(monkeypatch)
    out_dir = tmp_path / "out"
    argv = [str(path), *COLUMNS, "--target-prob-columns", "tp_*", "--estimators", "ips,snips"]
    code, out, _ = _run([*argv, "--interval", "normal", "--out", str(out_dir)], capsys)
    assert code == 0
    click = frame["click"].to_numpy(np.float64)
    mean, sd = float(click.mean()), float(click.std()) / np.sqrt(N)

    row = next(line for line in out.splitlines() if "logging policy" in line)
    value, lower, upper = (float(x) for x in row.split("│")[2:5])
    assert value == pytest.approx(mean, abs=1e-4)
    assert lower == pytest.approx(mean - 1.959964 * sd, abs=2e-4)
    assert upper == pytest.approx(mean + 1.959964 * sd, abs=2e-4)
    assert "2,000" in row  # its ESS: every weight is 1

    report = (out_dir / "report.md").read_text()
    ref = next(line for line in report.splitlines() if line.startswith("| logging policy"))
    assert ref.startswith(f"| logging policy (reference) | {mean:.4f} | {lower:.4f} | {upper:.4f}")
    assert "| 2,000 | the mean logged reward |" in ref

    (fig,) = figures
    ax = fig.axes[0]
    assert ax.get_title() == "target tp_*: 2,000 rows"
    labelled = [ln for ln in ax.get_lines() if not str(ln.get_label()).startswith("_")]
    assert len(labelled) == 1
    (line,) = labelled
    assert np.asarray(line.get_xdata(), float) == pytest.approx([value, value], abs=1e-4)
    assert np.asarray(line.get_ydata(), float).tolist() == [0.0, 1.0]  # the whole axis: vertical
    assert line.get_label() == f"logging policy (mean logged reward) {mean:.4f}"
    legend = ax.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == [
        line.get_label(),
        f"its interval [{lower:.4f}, {upper:.4f}]",
    ]
    w = frame[[f"tp_{a}" for a in range(K)]].to_numpy()[np.arange(N), frame["item"]] * K
    ess = w.sum() ** 2 / (w**2).sum()
    assert 1_500 < ess < N
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        f"{name}\nESS {ess:,.0f}" for name in ("ips", "snips")
    ]


def test_the_logging_policy_value_is_the_mean_reward_whatever_the_propensities() -> None:
    from bandits.ope import InverseProbabilityWeighting

    rng = np.random.default_rng(1)
    log = LoggedFeedback(
        action=rng.integers(0, 4, 500),
        reward=rng.random(500),
        propensity=rng.uniform(0.01, 1.0, 500),
    )
    bare, target = logging_policy_inputs(log)
    e = InverseProbabilityWeighting().estimate(bare, target, interval="normal")
    assert e.value == pytest.approx(float(log.reward.mean()), rel=1e-12)
    assert e.diagnostics.ess == pytest.approx(500.0)
    assert e.diagnostics.max_weight == 1.0 and not e.diagnostics.warning


# ------------------------------------------------------------------------ effective sample size
def test_a_small_effective_sample_size_is_warned_with_its_threshold_and_source(
    rare_log: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    figures = _capture_plots(monkeypatch)
    out_dir = tmp_path / "out"
    argv = [str(rare_log), *COLUMNS, "--target-prob-columns", "tp_*", "--estimators", "ips,snips"]
    code, _, err = _run([*argv, "--interval", "normal", "--out", str(out_dir)], capsys)
    assert code == 0
    warnings = [ln for ln in err.splitlines() if ln.startswith("encore evaluate: warning: ")]
    assert len(warnings) == 1
    (line,) = warnings
    ess = float(np.asarray(_frame("rare")["item"] == 0).sum())  # weights 200 on action 0 only
    assert f"effective sample size {ess:,.0f} of 2,000 rows is below 30 = max(30, 1% of" in line
    assert "ESS = (sum w)^2 / sum w^2, Kong 1992" in line and line.endswith(
        "ips, snips rest on a few heavily weighted rows"
    )
    report = (out_dir / "report.md").read_text()
    assert "## Warnings" in report and line.removeprefix("encore evaluate: warning: ") in report
    assert "- effective sample size: warned below 30. ESS = (sum w)^2 / sum w^2" in report
    assert "Owen, Monte Carlo theory, 2013, sec. 9.3" in report
    assert "| ips | " in report and f"| {ess:,.0f} | effective sample size" in report

    (fig,) = figures
    ticks = fig.axes[0].get_yticklabels()
    assert [t.get_text() for t in ticks] == [f"ips\nESS {ess:,.0f}", f"snips\nESS {ess:,.0f}"]
    assert all(to_rgba(t.get_color()) == to_rgba("tab:red") for t in ticks)
    assert "ESS in red: below 30" in fig.axes[0].get_xlabel()


def test_no_warning_when_the_effective_sample_size_is_large(
    soft_log: tuple[Path, pd.DataFrame], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = soft_log
    argv = [str(path), *COLUMNS, "--target-prob-columns", "tp_*", "--estimators", "ips"]
    code, _, err = _run([*argv, "--interval", "normal"], capsys)
    assert code == 0
    assert "warning:" not in err


def test_the_threshold_is_the_one_bandits_diagnostics_applies() -> None:
    """The report's floor and the estimator's own warning agree, on both sides of the floor."""
    for n, ess_share in ((1_000, 0.02), (1_000, 0.04), (200_000, 0.009), (200_000, 0.011)):
        heavy = int(ess_share * n)  # rows the target plays; weights 1/p there, 0 elsewhere
        action = np.r_[np.zeros(heavy, np.int64), np.ones(n - heavy, np.int64)]
        log = LoggedFeedback(action, np.ones(n), np.full(n, 0.5))
        target = TargetProbs(np.tile([1.0, 0.0], (n, 1)))
        results = estimate_all({"ips": ESTIMATORS["ips"]()}, log, target, interval="normal")
        e = results["ips"]
        assert e.diagnostics.ess == pytest.approx(heavy)
        low = e.diagnostics.ess < ess_floor(n)
        assert low == ("effective sample size" in e.diagnostics.reason)
        assert low == any("effective sample size" in w for w in run_warnings(results, None))


# ------------------------------------------------------- a target fitted on the rows it evaluates
def _daemon_log(folder: Path) -> None:
    with ParquetLog(folder, clock=lambda: 0) as log:
        log.append(example_records(400, d_user=3, k=5, s=2, d_track=4, ts0_ms=1_000))


def _checkpoint(folder: Path, arrays: dict[str, np.ndarray], header: dict[str, Any]) -> None:
    policy = POLICIES["uniform"]()
    blob = save(policy, policy.init(3, 4))
    spec = {"name": policy.spec.name, "version": policy.spec.version, "params": {}}
    checkpoint.write(
        folder,
        {"policy_blob": np.frombuffer(blob, np.uint8), **arrays},
        {"policy_spec": spec, **header},
    )


DAEMON_COLUMNS = [
    "--column-map",
    "action=shown[0],reward=reward[0],propensity=propensity[0]",
    "--context-columns",
    "context",
    "--candidate-features-column",
    "candidate_features",
    "--policy-samples",
    "2",
]


def _inputs(log_dir: Path, target: list[str], frame: pd.DataFrame | None = None) -> Any:
    args = build_parser().parse_args([str(log_dir), *DAEMON_COLUMNS, *target])
    return build_inputs(read_log(log_dir) if frame is None else frame, args, jax.random.key(0))


def test_a_checkpoint_that_learned_the_evaluated_rows_is_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _daemon_log(tmp_path / "log")  # event times 1,000 .. 1,399 ms
    ckpt = tmp_path / "ckpt"
    _checkpoint(
        ckpt,
        {
            "join/0/watermark_ms": np.array(1_250, np.int64),
            "join/1/watermark_ms": np.array(1_100, np.int64),
        },
        {"config": {"join": {"window_ms": 50}}},
    )
    inputs = _inputs(tmp_path / "log", ["--policy-checkpoint", str(ckpt)])
    assert (inputs.overlap.rows, inputs.overlap.total) == (201, 400)  # ts_ms <= 1,250 - 50
    assert inputs.overlap.message() == (
        "the target was fitted on rows it evaluates: 201 of 400 evaluated rows (50%) have "
        "ts_ms <= 1200 (1970-01-01T00:00:01Z), up to which checkpoint 1 had closed and learned "
        "every impression (its newest join watermark less the reward window); evaluate rows "
        "with ts_ms > 1200"
    )
    target = ["--policy-checkpoint", str(ckpt), "--estimators", "ips", "--interval", "normal"]
    code, _, err = _run([str(tmp_path / "log"), *DAEMON_COLUMNS, *target, "--no-progress"], capsys)
    assert code == 0
    warnings = [ln for ln in err.splitlines() if "warning:" in ln]
    assert warnings == [f"encore evaluate: warning: {inputs.overlap.message()}"]


def test_a_flushed_checkpoint_learned_every_row_it_read(tmp_path: Path) -> None:
    _daemon_log(tmp_path / "log")
    ckpt = tmp_path / "ckpt"
    _checkpoint(ckpt, {"join/0/watermark_ms": np.array(MAX_TIME_MS, np.int64)}, {})
    inputs = _inputs(tmp_path / "log", ["--policy-checkpoint", str(ckpt)])
    assert (inputs.overlap.rows, inputs.overlap.total) == (400, 400)
    assert inputs.overlap.message() == (
        "the target was fitted on rows it evaluates: 400 of 400 evaluated rows (100%) are within "
        "what checkpoint 1 learned: it flushed its join, so it learned every impression it read; "
        "evaluate rows logged after it"
    )


def test_a_checkpoint_before_the_evaluated_rows_is_not_warned(tmp_path: Path) -> None:
    _daemon_log(tmp_path / "log")
    ckpt = tmp_path / "ckpt"
    _checkpoint(ckpt, {"join/0/watermark_ms": np.array(900, np.int64)}, {})
    inputs = _inputs(tmp_path / "log", ["--policy-checkpoint", str(ckpt)])
    assert inputs.overlap.rows == 0
    assert run_warnings({}, inputs.overlap) == []


@pytest.mark.parametrize(
    ("arrays", "drop_ts", "why"),
    [
        ({}, False, "the checkpoint holds no join watermark"),
        ({"join/0/watermark_ms": np.array(1_250, np.int64)}, True, "the log has no ts_ms column"),
    ],
)
def test_a_checkpoint_overlap_that_cannot_be_checked_is_a_note(
    tmp_path: Path, arrays: dict[str, np.ndarray], drop_ts: bool, why: str
) -> None:
    _daemon_log(tmp_path / "log")
    ckpt = tmp_path / "ckpt"
    _checkpoint(ckpt, arrays, {})
    frame = read_log(tmp_path / "log")
    if drop_ts:
        frame = frame.drop(columns="ts_ms")
    inputs = _inputs(tmp_path / "log", ["--policy-checkpoint", str(ckpt)], frame)
    assert inputs.overlap is None
    assert f"overlap with the rows the target learned from: not checked ({why})" in inputs.notes


def test_a_snapshot_published_after_the_evaluated_rows_may_have_learned_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot records no training range: only its publish time bounds what it learned."""
    from streaming.evaluate import targets

    _daemon_log(tmp_path / "log")
    policy = POLICIES["uniform"]()
    blob = save(policy, policy.init(3, 4))

    def newest_snapshot(args: argparse.Namespace) -> tuple[bytes, int]:
        return blob, 1_300  # published at ts 1,300 ms

    monkeypatch.setattr(targets, "newest_snapshot", newest_snapshot)
    inputs = _inputs(tmp_path / "log", ["--policy-snapshot", "uniform"])
    assert (inputs.overlap.rows, inputs.overlap.total) == (300, 400)  # ts_ms 1,000 .. 1,299
    message = inputs.overlap.message()
    assert message.startswith(
        "the target may have been fitted on rows it evaluates: 300 of 400 evaluated rows (75%) "
        "have ts_ms before the snapshot was published at 1300"
    )
    assert "a snapshot does not record which events it learned from" in message
    assert message.endswith("evaluate rows with ts_ms >= 1300")
    assert inputs.target_name == "uniform, newest snapshot"


def test_a_policy_fitted_here_is_warned_about_request_ids_in_both_parts() -> None:
    ids = np.array([f"r{i}" for i in range(10)])
    ids[7] = ids[2]  # a duplicated row: once in the fitted part, once in the evaluated part
    ids[9] = ids[0]
    overlap = split_overlap(ids, 5)
    assert overlap is not None
    assert overlap.message() == (
        "the target was fitted on rows it evaluates: 2 of 5 evaluated rows (40%) repeat a "
        "request_id of the first 5 rows, which --policy was fitted on; keep one row per "
        "request_id in the log"
    )
    distinct = split_overlap(np.array([f"r{i}" for i in range(10)]), 5)
    assert distinct is not None and distinct.rows == 0
    assert split_overlap(None, 5) is None


@pytest.mark.slow
def test_evaluate_with_a_fitted_policy_warns_about_duplicated_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = _frame("soft").iloc[:400].reset_index(drop=True)
    frame["request_id"] = [f"r{i}" for i in range(400)]
    frame.loc[200:239, "request_id"] = [f"r{i}" for i in range(40)]  # 40 rows logged twice
    path = tmp_path / "dup.csv"
    frame.to_csv(path, index=False)
    argv = [str(path), *COLUMNS, "--policy", "linucb", "--policy-samples", "2"]
    code, _, err = _run([*argv, "--estimators", "ips", "--interval", "normal"], capsys)
    assert code == 0
    assert (
        "encore evaluate: warning: the target was fitted on rows it evaluates: 40 of 200 "
        "evaluated rows (20%) repeat a request_id of the first 200 rows, which --policy was "
        "fitted on; keep one row per request_id in the log"
    ) in err.splitlines()


def test_target_columns_say_that_their_overlap_is_not_checked(
    soft_log: tuple[Path, pd.DataFrame],
) -> None:
    path, frame = soft_log
    args = build_parser().parse_args([str(path), *COLUMNS, "--target-prob-columns", "tp_*"])
    inputs = build_inputs(frame, args, jax.random.key(0))
    assert inputs.overlap is None
    assert any("not checked (per-row target columns carry no record" in n for n in inputs.notes)


# --------------------------------------------------------------------------------- the plot title
def test_the_plot_title_is_the_target_and_the_rows_not_a_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _daemon_log(tmp_path / "log")
    ckpt = tmp_path / "deep" / "state" / "ckpt"
    _checkpoint(ckpt, {"join/0/watermark_ms": np.array(900, np.int64)}, {})
    figures = _capture_plots(monkeypatch)
    target = ["--policy-checkpoint", str(ckpt), "--estimators", "ips", "--interval", "normal"]
    code, _, _ = _run(
        [str(tmp_path / "log"), *DAEMON_COLUMNS, *target, "--out", str(tmp_path / "o")], capsys
    )
    assert code == 0
    (fig,) = figures
    assert fig.axes[0].get_title() == "uniform, checkpoint 1: 400 rows"
    assert str(ckpt) in (tmp_path / "o" / "report.md").read_text()  # the report names it


# ------------------------------------------------------------------------------------- progress
def test_progress_off_a_terminal_is_one_plain_line_per_step(
    soft_log: tuple[Path, pd.DataFrame], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = soft_log
    argv = [str(path), *COLUMNS, "--target-prob-columns", "tp_*", "--estimators", "ips,snips,dm"]
    code, _, err = _run([*argv, "--interval", "normal"], capsys)
    assert code == 0
    assert "\r" not in err and "\x1b" not in err
    steps = [ln.split("] ", 1)[1].rsplit(" (", 1)[0] for ln in err.splitlines()]
    assert steps == [
        f"read 2,000 rows from {path}",
        "target ready, target tp_*: 2,000 rows to evaluate",
        "reward model fitted (2 folds)",
        "estimator ips done (1 of 3)",
        "estimator snips done (2 of 3)",
        "estimator dm done (3 of 3)",
        "logging policy's own value done",
    ]
    assert [ln.split("] ")[0] for ln in err.splitlines()] == [
        f"encore evaluate: [{i}/7" for i in range(1, 8)
    ]
    code, _, err = _run([*argv, "--interval", "normal", "--no-progress"], capsys)
    assert code == 0 and err == ""


def test_progress_on_a_terminal_is_a_bar_not_lines() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=80)
    with Steps(console, total=2) as steps:
        steps.doing("reading")
        steps.done("read 10 rows")
        steps.done("estimated")
    assert "encore evaluate: [" not in buf.getvalue()


# ------------------------------------------------------------------------------------ live mode
def test_live_mode_ends_with_the_reference_and_warns_once(
    rare_log: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from streaming.evaluate import live

    frame = pd.read_parquet(rare_log)
    batches = [frame.iloc[lo : lo + 500].reset_index(drop=True) for lo in range(0, N, 500)]

    def topic_frames(args: argparse.Namespace) -> Iterator[pd.DataFrame]:
        return iter(batches)

    monkeypatch.setattr(live, "topic_frames", topic_frames)
    args = build_parser().parse_args(
        ["--topic", "joined", *COLUMNS, "--target-prob-columns", "tp_*", "--estimators", "ips"]
    )
    assert run_live(args, Console(width=200)) == 0
    captured = capsys.readouterr()
    row = next(ln for ln in captured.out.splitlines() if "logging policy" in ln)
    mean = float(frame["click"].to_numpy(np.float64).mean())
    assert float(row.split("│")[2]) == pytest.approx(mean, abs=1e-4)
    warnings = [ln for ln in captured.err.splitlines() if "warning:" in ln]
    assert len(warnings) == 1 and "effective sample size" in warnings[0]
