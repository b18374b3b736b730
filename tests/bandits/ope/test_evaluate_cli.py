"""``encore evaluate`` end to end on small files (streaming/evaluate/; OPE math is tested elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bandits.ope import InverseProbabilityWeighting, LoggedFeedback, SelfNormalizedIPS, TargetProbs
from streaming.evaluate import live_consume, main

from ._logs import K, single_action_log


@pytest.fixture
def logged(tmp_path: Path) -> tuple[Path, float]:
    case = single_action_log(3_000, 0, logging="softmax", target="close")
    frame = pd.DataFrame(
        {
            "item": case.log.action,
            "click": case.log.reward,
            "pscore": case.log.propensity,
            **{f"ctx_{j}": case.log.context[:, j] for j in range(case.log.context.shape[1])},
            **{f"tp_{a}": case.target.target_prob[:, a] for a in range(K)},
            "greedy": case.target.target_prob.argmax(axis=1),
        }
    )
    path = tmp_path / "log.parquet"
    frame.to_parquet(path)
    frame.to_csv(tmp_path / "log.csv", index=False)
    return path, case.truth


def test_evaluate_writes_table_report_and_plot(logged, tmp_path: Path, capsys) -> None:
    path, truth = logged
    out = tmp_path / "report"
    code = main(
        [
            str(path),
            "--column-map",
            "action=item,reward=click,propensity=pscore",
            "--target-prob-columns",
            "tp_*",
            "--context-columns",
            "ctx_*",
            "--estimators",
            "ips,snips,dr,dm",
            "--interval",
            "normal",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    for name in ("ips", "snips", "dr", "dm"):
        assert name in printed
    report = (out / "report.md").read_text()
    assert "3,000 rounds, 4 actions" in report
    row = next(line for line in report.splitlines() if line.startswith("| dr |"))
    value, lower, upper = (float(x) for x in row.split("|")[2:5])
    assert lower <= truth <= upper and abs(value - truth) < 0.05
    assert (out / "estimates.png").stat().st_size > 1000


def test_evaluate_csv_and_deterministic_target(logged, capsys) -> None:
    path, _ = logged
    code = main(
        [
            str(path.with_suffix(".csv")),
            "--column-map",
            "action=item,reward=click,propensity=pscore",
            "--target-action-column",
            "greedy",
            "--estimators",
            "ips,replay",
            "--interval",
            "cs",
            "--no-progress",
        ]
    )
    assert code == 0
    assert "ips" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--column-map", "action=item,reward=click"],
            "missing column 'propensity' for LoggedFeedback.propensity; available columns: ",
        ),
        (
            ["--column-map", "action=item,reward=click,propensity=pscore", "--estimators", "ipw"],
            "unknown estimator(s) ['ipw']",
        ),
        (
            [
                "--column-map",
                "action=item,reward=click,propensity=pscore",
                "--target-prob-columns",
                "tq_*",
            ],
            "--target-prob-columns 'tq_*': missing column(s) (no match)",
        ),
        (
            ["--column-map", "action=item,reward=click,propensity=ctx_0"],
            "LoggedFeedback.propensity must be in (0, 1] at rows [",
        ),
    ],
)
def test_evaluate_input_errors(logged, capsys, extra: list[str], message: str) -> None:
    path, _ = logged
    args = [str(path), "--no-progress", *extra]
    if "--target-prob-columns" not in extra:
        args += ["--target-prob-columns", "tp_*"]
    assert main(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_fits_a_registry_policy(logged, tmp_path: Path) -> None:
    path, _ = logged
    code = main(
        [
            str(path),
            "--column-map",
            "action=item,reward=click,propensity=pscore",
            "--policy",
            "linucb",
            "--context-columns",
            "ctx_*",
            "--policy-samples",
            "8",
            "--estimators",
            "ips,snips",
            "--interval",
            "normal",
            "--out",
            str(tmp_path / "p"),
            "--no-progress",
        ]
    )
    assert code == 0
    report = (tmp_path / "p" / "report.md").read_text()
    assert "fitted on the first 1,500 rows" in report


def test_live_consume_skips_bad_batches_and_reports() -> None:
    case = single_action_log(2_000, 3, logging="softmax", target="close")
    ests = (InverseProbabilityWeighting(), SelfNormalizedIPS())
    batches = []
    for lo in range(0, 2_000, 500):
        sl = slice(lo, lo + 500)
        batches.append(
            (
                LoggedFeedback(case.log.action[sl], case.log.reward[sl], case.log.propensity[sl]),
                TargetProbs(case.target.target_prob[sl]),
            )
        )
    bad_log, bad_target = batches[1]
    bad_prop = bad_log.propensity.copy()
    bad_prop[7] = 0.0
    batches.insert(2, (bad_log._replace(propensity=bad_prop), bad_target))
    seen: list[float] = []
    result = live_consume(
        batches, ests, t_star=2_000, on_update=lambda e: seen.append(e[0].upper - e[0].lower)
    )
    assert result.batches == 5
    assert result.rejects == [
        "batch 3: LoggedFeedback.propensity must be in (0, 1] at rows [7] (1 of 500)"
    ]
    assert len(seen) == 4 and seen[-1] < seen[0]
    assert result.state.n.tolist() == [2_000.0, 2_000.0]


def test_evaluate_reads_the_daemon_log_folder(tmp_path: Path, capsys) -> None:
    """The daemon's joined-records log: list columns picked by element, candidate features per row."""
    from streaming.worker.parquet_log import ParquetLog, example_records

    folder = tmp_path / "joined"
    writer = ParquetLog(folder, clock=lambda: 0)
    writer.append(example_records(400, d_user=3, k=5, s=2, d_track=4))
    writer.close()
    code = main(
        [
            str(folder),
            "--column-map",
            "action=shown[0],reward=reward[0],propensity=propensity[0]",
            "--context-columns",
            "context",
            "--candidate-features-column",
            "candidate_features",
            "--policy",
            "linucb",
            "--policy-samples",
            "4",
            "--estimators",
            "ips,dr",
            "--interval",
            "normal",
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = (tmp_path / "r" / "report.md").read_text()
    assert "200 rounds, 5 actions" in report
    assert (
        main(
            [
                str(folder),
                "--column-map",
                "action=shown[2]",
                "--target-action-column",
                "n_outcomes[0]",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "column 'shown' has no element [2] at rows [0, 1, 2" in capsys.readouterr().err
