"""``encore evaluate``'s command line."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import jax

from bandits.ope import (
    ESTIMATORS,
    NEEDS_Q_HAT,
    Estimate,
    InvalidLogError,
    InverseProbabilityWeighting,
    estimate_all,
    with_q_hat,
)
from streaming.evaluate.frames import UsageError, read_log
from streaming.evaluate.inputs import build_inputs, logging_policy_inputs
from streaming.evaluate.live import run_live
from streaming.evaluate.report import (
    estimator_set,
    markdown_report,
    plot_estimates,
    results_table,
    run_warnings,
)


class Steps:
    """Progress of a run on stderr, step by step.

    On a terminal it is a rich progress bar, redrawn in place. Anywhere else (a file, a pipe, a
    CI log) it is one plain line per finished step, ``encore evaluate: [i/total] what (12.3 s)``,
    with no carriage returns or escape codes. ``enabled=False`` shows nothing.

    Example:
        >>> import io
        >>> from rich.console import Console
        >>> out = io.StringIO()
        >>> with Steps(Console(file=out), total=2, clock=lambda: 0.0) as steps:
        ...     steps.done("read 10 rows")
        >>> print(out.getvalue(), end="")
        encore evaluate: [1/2] read 10 rows (0.0 s)
    """

    def __init__(
        self,
        console: Any,
        *,
        total: int,
        enabled: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._console = console
        self._total = total
        self._enabled = enabled
        self._bar = enabled and console.is_terminal and not console.is_dumb_terminal
        self._clock = clock
        self._start = clock()
        self._count = 0
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Steps:
        if self._bar:
            from rich.progress import Progress

            self._progress = Progress(console=self._console, transient=True)
            self._progress.start()
            self._task = self._progress.add_task("reading the log", total=self._total)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def doing(self, what: str) -> None:
        """What runs now: the bar's label (plain lines say only what finished)."""
        if self._progress is not None:
            self._progress.update(self._task, description=what)

    def done(self, what: str) -> None:
        """One step finished."""
        self._count += 1
        if self._progress is not None:
            self._progress.update(self._task, advance=1)
        elif self._enabled:
            elapsed = self._clock() - self._start
            self._console.file.write(
                f"encore evaluate: [{self._count}/{self._total}] {what} ({elapsed:.1f} s)\n"
            )
            self._console.file.flush()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="encore evaluate",
        allow_abbrev=False,
        description="Off-policy evaluation of a target policy on logged records.",
    )
    p.add_argument(
        "log",
        type=Path,
        nargs="?",
        default=None,
        help="Parquet or CSV of logged, joined rounds (or a daemon's log folder)",
    )
    p.add_argument(
        "--topic",
        default=None,
        help="evaluate live from this topic of joined records (the daemon publishes "
        "them with log.publish_joined): the anytime-valid confidence sequence "
        "is updated as events arrive",
    )
    p.add_argument(
        "--bootstrap-servers",
        default=None,
        help="Kafka for --topic (default: the local broker of `encore broker start`)",
    )
    p.add_argument("--batch-rows", type=int, default=2000, help="rows per live update")
    p.add_argument("--max-rows", type=int, default=None, help="stop --topic after this many rows")
    p.add_argument(
        "--idle-exit-ms",
        type=int,
        default=None,
        help="stop --topic once nothing arrived for this long",
    )
    p.add_argument(
        "--column-map",
        default=None,
        help="field=column pairs for action, reward, propensity (default: same names)",
    )
    p.add_argument("--n-actions", type=int, default=None, help="k (default: inferred)")
    p.add_argument(
        "--target-prob-columns", default=None, help="k target-probability columns (glob or list)"
    )
    p.add_argument("--target-action-column", default=None, help="action of a deterministic target")
    p.add_argument("--policy", default=None, help="bandits.registry policy to fit offline")
    p.add_argument(
        "--policy-checkpoint",
        type=Path,
        default=None,
        help="a daemon's checkpoint folder: evaluate the policy it learned",
    )
    p.add_argument(
        "--policy-snapshot",
        default=None,
        metavar="POLICY",
        help="evaluate the newest snapshot of this policy (e.g. linucb) published on "
        "--snapshots-topic",
    )
    p.add_argument("--snapshots-topic", default="encore.policy-snapshots")
    p.add_argument("--policy-param", action="append", help="key=value hyperparameter (repeat)")
    p.add_argument(
        "--train-fraction", type=float, default=0.5, help="share of rows to fit --policy on"
    )
    p.add_argument("--policy-samples", type=int, default=64, help="Monte Carlo draws per row")
    p.add_argument(
        "--context-columns",
        default=None,
        help="context feature columns (glob, list or one list column)",
    )
    p.add_argument(
        "--candidate-features-column",
        default=None,
        help="per-row candidate features (list of lists), e.g. candidate_features of the daemon log",
    )
    p.add_argument(
        "--estimators", default="all", help=f"comma list of {', '.join(ESTIMATORS)} or 'all'"
    )
    p.add_argument(
        "--interval", default="bootstrap", choices=["bootstrap", "normal", "bernstein", "cs"]
    )
    p.add_argument("--alpha", type=float, default=0.05, help="one minus the coverage")
    p.add_argument("--n-bootstrap", type=int, default=500)
    p.add_argument("--folds", type=int, default=2, help="cross-fitting folds of the reward model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="folder for report.md and estimates.png")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress on stderr (a bar on a terminal, else one line per step)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``encore evaluate``; returns the exit status (2 for input errors)."""
    from rich.console import Console

    args = build_parser().parse_args(argv)
    console = Console()
    err = Console(stderr=True)
    if args.topic is not None:
        try:
            return run_live(args, console)
        except (InvalidLogError, UsageError) as exc:
            print(f"encore evaluate: {exc}", file=sys.stderr)
            return 2
    if args.log is None:
        print("encore evaluate: give a LOG file or folder, or --topic", file=sys.stderr)
        return 2
    started = time.perf_counter()
    key = jax.random.key(args.seed)
    try:
        estimators = estimator_set(args.estimators)
        needs_q_hat = bool(NEEDS_Q_HAT & set(estimators))
        total = 3 + needs_q_hat + len(estimators)
        with Steps(err, total=total, enabled=not args.no_progress) as steps:
            frame = read_log(args.log)
            steps.done(f"read {len(frame):,} rows from {args.log}")
            steps.doing("building the target")
            inputs = build_inputs(frame, args, jax.random.fold_in(key, 1))
            del frame
            inputs.log.check()
            inputs.target.check(inputs.log)
            log = inputs.log
            steps.done(f"target ready, {inputs.target_name}: {log.n:,} rows to evaluate")
            if needs_q_hat and log.q_hat is None:
                steps.doing("fitting the reward model")
                log = with_q_hat(
                    log,
                    n_actions=inputs.n_actions,
                    key=jax.random.fold_in(key, 2),
                    folds=args.folds,
                )
                steps.done(f"reward model fitted ({args.folds} folds)")
            results: dict[str, Estimate] = {}
            for i, (name, est) in enumerate(estimators.items()):
                steps.doing(f"estimating {name}")
                results.update(
                    estimate_all(
                        {name: est},
                        log,
                        inputs.target,
                        interval=args.interval,
                        alpha=args.alpha,
                        key=jax.random.fold_in(key, 100 + i),
                        n_bootstrap=args.n_bootstrap,
                    )
                )
                steps.done(f"estimator {name} done ({i + 1} of {len(estimators)})")
            steps.doing("the logging policy's own value")
            bare, on_policy = logging_policy_inputs(log)
            reference = InverseProbabilityWeighting().estimate(
                bare,
                on_policy,
                interval=args.interval,
                alpha=args.alpha,
                key=jax.random.fold_in(key, 99),
                n_bootstrap=args.n_bootstrap,
            )
            steps.done("logging policy's own value done")
    except (InvalidLogError, UsageError) as exc:
        print(f"encore evaluate: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    warnings = run_warnings(results, inputs.overlap)
    console.print(results_table(results, args.alpha, args.interval, reference=reference))
    for line in warnings:
        print(f"encore evaluate: warning: {line}", file=sys.stderr)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        report = markdown_report(
            results,
            inputs=inputs,
            source=str(args.log),
            alpha=args.alpha,
            interval=args.interval,
            elapsed_s=elapsed,
            reference=reference,
            warnings=warnings,
        )
        (args.out / "report.md").write_text(report)
        plot_estimates(
            results,
            args.out / "estimates.png",
            target_name=inputs.target_name,
            n_rows=inputs.log.n,
            reference=reference,
        )
        console.print(f"wrote {args.out / 'report.md'} and {args.out / 'estimates.png'}")
    if any(math.isnan(e.value) for e in results.values()):
        return 1
    return 0
