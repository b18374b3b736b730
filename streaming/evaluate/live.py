"""Live mode: fold joined records from a topic into anytime-valid confidence sequences."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import pandas as pd

from bandits.ope import (
    NEEDS_Q_HAT,
    AbstractSingleActionEstimator,
    Estimate,
    InvalidLogError,
    InverseProbabilityWeighting,
    LoggedFeedback,
    OnlineEvaluation,
    TargetProbs,
    online_init,
    online_intervals,
    online_update,
    with_q_hat,
)
from streaming.evaluate.frames import UsageError, topic_from_start
from streaming.evaluate.inputs import build_inputs, logging_policy_inputs
from streaming.evaluate.report import estimator_set, results_table, run_warnings
from streaming.evaluate.targets import Overlap


@dataclass
class LiveResult:
    """What ``live_consume`` leaves behind: the state and every rejected batch with its reason."""

    state: OnlineEvaluation
    rejects: list[str]
    batches: int


def live_consume(
    batches: Iterable[tuple[LoggedFeedback, TargetProbs]],
    estimators: Sequence[AbstractSingleActionEstimator],
    *,
    alpha: float = 0.05,
    t_star: float | int = 100_000,
    on_update: Callable[[list[Estimate]], None] | None = None,
    state: OnlineEvaluation | None = None,
) -> LiveResult:
    """Fold a stream of array batches into the anytime-valid evaluation.

    Args:
        batches: ``(log, target)`` pairs as the shell decodes them (for example from Kafka);
            estimators needing ``q_hat`` need it in each batch.
        estimators: the estimators to run, in a fixed order.
        alpha: the confidence sequence covers the value at every time with prob. ``1 - alpha``.
        t_star: rows at which the sequence is tuned to be tightest.
        on_update: called with the current estimates after every accepted batch (a live table).
        state: a state to resume from (a checkpoint), else a fresh one.

    Returns:
        The final state, the reasons of rejected batches (malformed ones are skipped, not fatal),
        and the number of batches seen.
    """
    current = state if state is not None else online_init(len(estimators))
    rejects: list[str] = []
    seen = 0
    for log, target in batches:
        seen += 1
        try:
            current = online_update(current, estimators, log, target)
        except (InvalidLogError, TypeError) as exc:
            rejects.append(f"batch {seen}: {exc}")
            continue
        if on_update is not None:
            on_update(online_intervals(current, estimators, alpha=alpha, t_star=t_star))
    return LiveResult(current, rejects, seen)


def topic_frames(args: argparse.Namespace) -> Iterable[pd.DataFrame]:
    """Frames of ``--batch-rows`` joined records from ``--topic`` (JSON rows of the log's columns)."""
    import msgspec

    consumer, _ = topic_from_start(args.bootstrap_servers, args.topic, "--topic")
    rows: list[dict[str, Any]] = []
    total = 0
    last = time.monotonic()
    try:
        while args.max_rows is None or total < args.max_rows:
            polled = consumer.poll(timeout_ms=200, max_records=args.batch_rows)
            for recs in polled.values():
                rows.extend(msgspec.json.decode(r.value) for r in recs if r.value)
            if polled:
                last = time.monotonic()
            idle = (
                args.idle_exit_ms is not None
                and (time.monotonic() - last) * 1000 >= args.idle_exit_ms
            )
            while len(rows) >= args.batch_rows or (rows and idle):
                chunk, rows = rows[: args.batch_rows], rows[args.batch_rows :]
                total += len(chunk)
                yield pd.DataFrame(chunk)
            if idle:
                return
    finally:
        consumer.close(autocommit=False)


def run_live(args: argparse.Namespace, console: Any) -> int:
    """``encore evaluate --topic``: fold joined records into the confidence sequence as they come.

    The final table ends with the logging policy's own value (its mean logged reward, in its
    own confidence sequence); the warnings (the target learned from the evaluated rows, too
    small an effective sample size) go to stderr once, at the end.
    """
    if args.policy:
        raise UsageError(
            "--topic needs a fixed target (--policy-checkpoint, --target-prob-columns "
            "or --target-action-column); --policy fits on a split of a finished log"
        )
    estimators = estimator_set(args.estimators)
    names = list(estimators)
    key = jax.random.key(args.seed)
    rows = 0
    on_policy = [InverseProbabilityWeighting()]
    reference = online_init(1)
    overlap: Overlap | None = None

    def batches() -> Iterable[tuple[LoggedFeedback, TargetProbs]]:
        nonlocal rows, reference, overlap
        for i, frame in enumerate(topic_frames(args)):
            inputs = build_inputs(frame, args, jax.random.fold_in(key, i))
            log = inputs.log
            if inputs.overlap is not None:
                overlap = inputs.overlap if overlap is None else overlap.plus(inputs.overlap)
            try:  # a batch live_consume rejects is left out of the reference too
                inputs.target.check(log.check())
                reference = online_update(reference, on_policy, *logging_policy_inputs(log))
            except InvalidLogError:
                pass
            if NEEDS_Q_HAT & set(estimators) and log.q_hat is None:
                log = with_q_hat(
                    log,
                    n_actions=inputs.n_actions,
                    key=jax.random.fold_in(key, 10_000 + i),
                    folds=args.folds,
                )
            rows += log.n
            yield log, inputs.target

    def show(estimates: list[Estimate]) -> None:
        parts = [
            f"{n} {e.value:.4f} [{e.lower:.4f}, {e.upper:.4f}]"
            for n, e in zip(names, estimates, strict=True)
        ]
        console.print(f"{rows:>9,} rows  " + "  ".join(parts))

    result = live_consume(batches(), list(estimators.values()), alpha=args.alpha, on_update=show)
    for reason in result.rejects:
        console.print(f"skipped {reason}")
    if result.batches == 0:
        raise UsageError(f"no joined records arrived on {args.topic!r}")
    final = online_intervals(
        result.state, list(estimators.values()), alpha=args.alpha, t_star=100_000
    )
    results = dict(zip(names, final, strict=True))
    (ref,) = online_intervals(reference, on_policy, alpha=args.alpha, t_star=100_000)
    console.print(results_table(results, args.alpha, "cs", reference=ref))
    for line in run_warnings(results, overlap):
        print(f"encore evaluate: warning: {line}", file=sys.stderr)
    return 0
