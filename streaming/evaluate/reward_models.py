"""``encore rewards report``: prequential log loss, AUC and calibration of the reward models.

Two sources:

- the daemon's own log folder (``log.dir``): the daemon writes every play its reward model
  learns from, with the model's prediction for it just before the update that learned it, to
  ``<log.dir>/reward-plays`` (``log.reward_plays``); rows written again after a restart are read
  once;
- a file (Parquet or CSV) of joined plays with stored predictions: outcome columns as
  :func:`rewards.fit.outcomes_from_frame` reads them (``ms_played``, ``duration_ms`` or
  ``track_duration_ms``, ``reason_end``, optional ``censored``) plus prediction columns
  ``p_skip_1``, ``p_skip_2``, ``p_skip_3``, ``p_complete`` (any subset) and an optional ``model``
  column naming the model of each row (long format);
- or ``simulate_plays > 0``: that many simulated plays under the logging policy, on which every
  reward model is run prequentially (predict each batch with the state before it, then update).

It prints one rich table (model x head: plays, base rate, log loss, AUC, ECE, Brier) and writes a
reliability plot to ``out_png``: one panel per head with the same limits, one colour per model in
every panel and one legend, each model's ECE in its panel, and the plays per bin in a strip under
each panel. The prequential pass reports its progress (plays done of the total) on stderr: one
line rewritten in place on a terminal, whole lines otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

import jax
import numpy as np

import rewards as R
from rewards.calibration import (
    ReliabilityTable,
    head_labels,
    plot_reliability_panels,
    prequential,
    reliability_table,
)
from rewards.calibration import score as score_one
from rewards.fit import outcomes_from_frame
from rewards.session import HISTORY_DIM, history_entries, push_history, session_model, slate_history
from rewards.survival import survival_model
from rewards.types import HEADS
from streaming.sim.simulator import SimConfig, Simulator

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BATCH = 1024
REQUESTS_PER_CHUNK = 200

HEAD_TITLES = {
    "skip_1": "p_skip_1: skipped within 5 s",
    "skip_2": "p_skip_2: skipped before 30 s",
    "skip_3": "p_skip_3: skipped before the end",
    "complete": "p_complete: played to the end",
}
"""Panel titles of the reliability plot: the file's column and what the head predicts."""

ProgressFn = Callable[[str, int, int], None]
"""``progress(label, done, total)``: ``done`` of ``total`` plays of the phase ``label``."""


class Progress:
    """Plays done of a total, per phase, written to a text stream (stderr by default).

    On a terminal the phase's line is rewritten in place (carriage return) and ended when the
    phase completes. Anywhere else (a pipe, a log file) every report is a whole line, at the
    start of a phase, at each ``1 / steps`` of it and at its end, with no carriage returns.

    Args:
        stream: where to write (default ``sys.stderr``, looked up when a line is written).
        steps: whole lines per phase off a terminal, besides the first.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> progress = Progress(out, steps=2)
        >>> for done in (0, 20, 50, 70, 100):
        ...     progress("pass", done, 100)
        >>> print(out.getvalue(), end="")
        pass: 0 / 100 plays
        pass: 50 / 100 plays
        pass: 100 / 100 plays
    """

    def __init__(self, stream: IO[str] | None = None, *, steps: int = 10) -> None:
        if steps <= 0:
            raise ValueError(f"steps must be positive, got {steps}")
        self._stream, self.steps = stream, steps
        self._label: str | None = None
        self._step = -1
        self._width = 0

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stderr

    def __call__(self, label: str, done: int, total: int) -> None:
        if label != self._label:
            self._label, self._step, self._width = label, -1, 0
        total = max(total, 1)
        done = min(max(done, 0), total)
        text = f"{label}: {done:,} / {total:,} plays"
        out = self.stream
        if out.isatty():
            self._width = max(self._width, len(text))
            out.write("\r" + text.ljust(self._width) + ("\n" if done == total else ""))
        else:
            step = done * self.steps // total
            if step <= self._step:
                return
            self._step = step
            out.write(text + "\n")
        out.flush()


class SimBatch(NamedTuple):
    """Heard plays of a chunk of requests, flattened in (request, position) order."""

    outcomes: R.Outcomes  # with track_id and history
    user_id: np.ndarray  # (m,)
    p_stream30: np.ndarray  # (m,) true P(stream >= 30 s) of each play
    prev_skipped: np.ndarray  # (m,)


class SimStream:
    """Simulated plays under the logging policy, with per-listener play histories.

    Each :meth:`next` draws requests, logs slates, plays them and returns the heard plays with
    features (:func:`rewards.interaction_features`), track ids and each listener's previous
    ``history_len`` plays (earlier requests, then earlier slate positions), as the daemon keeps
    them.
    """

    def __init__(self, config: SimConfig, *, slate_size: int = 5, history_len: int = 8) -> None:
        self.sim = Simulator(config)
        self.slate_size = slate_size
        self.buffer = np.zeros((config.n_users, history_len, HISTORY_DIM), np.float32)

    def next(self, n_requests: int) -> SimBatch:
        sim = self.sim
        req = sim.requests(n_requests)
        slates = sim.log_slates(req, self.slate_size)
        plays = sim.play(req, slates.shown)
        n, s = plays.heard.shape
        entries = history_entries(
            plays.ms_played,
            np.maximum(plays.duration_ms, 1),
            plays.reason_end,
            plays.censored,
            plays.saved,
            plays.heard,
        )
        hist = slate_history(self.buffer[req.user_id], entries)  # (n, s, h, e)
        heard = plays.heard.reshape(-1)
        users = np.repeat(req.user_id, s)[heard]
        self.buffer = push_history(self.buffer, users, entries.reshape(n * s, -1)[heard])

        def flat(a: np.ndarray) -> np.ndarray:
            return a.reshape(n * s, *a.shape[2:])[heard]

        track = flat(plays.track_id)
        user = np.repeat(req.context, s, axis=0)[heard]
        position = flat(plays.position)
        x = R.interaction_features(user, sim.world.track_features[track], position)
        outcomes = R.Outcomes(
            features=x,
            ms_played=flat(plays.ms_played),
            duration_ms=flat(plays.duration_ms),
            reason_end=flat(plays.reason_end),
            saved=flat(plays.saved),
            position=position.astype(np.int32),
            censored=flat(plays.censored),
            mask=np.ones(int(heard.sum()), bool),
            track_id=track,
            history=flat(hist),
        )
        return SimBatch(outcomes, users, flat(plays.p_stream30), flat(plays.prev_skipped))


def concat_outcomes(batches: list[R.Outcomes]) -> R.Outcomes:
    """Rows of several numpy batches as one (None fields stay None)."""
    return R.Outcomes._make(
        None if batches[0][i] is None else np.concatenate([np.asarray(b[i]) for b in batches])
        for i in range(len(batches[0]))
    )


def simulated_predictions(
    n_plays: int, *, seed: int = 0, progress: ProgressFn | None = None
) -> tuple[dict[str, np.ndarray], R.Outcomes]:
    """Prequential predictions of every model on ``n_plays`` simulated plays.

    Args:
        n_plays: plays to simulate (whole chunks of requests: a few more may come).
        seed: simulator and model seed.
        progress: called as ``progress(phase, plays done, plays in the phase)`` while the plays
            are simulated and after every batch of each model's prequential pass.

    Returns:
        ``({model name: (n, 4) predictions}, the outcomes of the same rows)``.
    """
    report_progress: ProgressFn = progress or (lambda label, done, total: None)
    stream = SimStream(SimConfig(seed=seed))
    chunks: list[R.Outcomes] = []
    n = 0
    report_progress("simulating", 0, n_plays)
    while n < n_plays:
        o = stream.next(REQUESTS_PER_CHUNK).outcomes
        chunks.append(o)
        n += int(np.size(o.mask))
        report_progress("simulating", n, n_plays)
    ids = 2048
    models = {
        "skip (direct)": R.skip_model(n_id_buckets=ids),
        "survival": survival_model(n_id_buckets=ids),
        "session (GRU)": session_model(n_id_buckets=ids),
    }
    d = int(np.shape(chunks[0].features)[1])
    sizes = [int(np.size(c.mask)) for c in chunks]
    preds: dict[str, np.ndarray] = {}
    for i, (name, model) in enumerate(models.items()):
        state = model.init(jax.random.key(seed), d)
        label = f"prequential {name} [{i + 1}/{len(models)}]"
        padded = _padded(chunks, label, report_progress)
        _, cols, _ = prequential(model, state, padded)
        parts = np.split(cols, np.arange(1, len(chunks)) * BATCH)
        preds[name] = np.concatenate([p[:k] for p, k in zip(parts, sizes, strict=True)])
    return preds, concat_outcomes(chunks)


def _padded(chunks: list[R.Outcomes], label: str, progress: ProgressFn) -> Iterator[R.Outcomes]:
    """Each chunk padded to :data:`BATCH`, reporting the plays done once the consumer (the
    prequential pass) has predicted and learned from it and asks for the next one."""
    total = sum(int(np.size(c.mask)) for c in chunks)
    done = 0
    progress(label, 0, total)
    for c in chunks:
        yield R.pad(c, BATCH)
        done += int(np.size(c.mask))
        progress(label, done, total)


def file_predictions(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, R.Outcomes]]:
    """Stored predictions and outcomes from a Parquet or CSV file, grouped by ``model``."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        frame = read_plays(path)
    elif path.suffix in (".csv", ".tsv"):
        frame = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    else:
        frame = pd.read_parquet(path)
    pcols = [f"p_{h}" for h in HEADS]
    if not any(c in frame.columns for c in pcols):
        raise ValueError(f"{path}: no prediction columns; expected some of {pcols}")
    groups = frame.groupby("model", sort=True) if "model" in frame.columns else [("model", frame)]
    preds: dict[str, np.ndarray] = {}
    outs: dict[str, R.Outcomes] = {}
    for name, part in groups:
        part = part.reset_index(drop=True)
        cols = np.stack(
            [
                part[c].to_numpy(np.float64) if c in part.columns else np.full(len(part), np.nan)
                for c in pcols
            ],
            axis=1,
        )
        with_features = part.assign(features=[np.zeros(0, np.float32)] * len(part))
        preds[str(name)] = cols
        outs[str(name)] = outcomes_from_frame(with_features, feature_columns=[])
    return preds, outs


PLAYS_DIR = "reward-plays"  # inside the daemon's log folder (streaming.worker.parquet_log)
PLAY_KEY = ["request_key", "position", "ts_ms"]  # one play; a restart writes identical copies


def read_plays(folder: str | Path) -> Any:
    """The reward model's plays the daemon logged, in the order it learned them, each once.

    ``folder``: the daemon's ``log.dir`` (its ``reward-plays`` folder is read) or that folder
    itself.

    Raises:
        ValueError: no committed file of plays there (with what to set).
    """
    import pandas as pd

    folder = Path(folder)
    where = folder / PLAYS_DIR if (folder / PLAYS_DIR).is_dir() else folder
    files = sorted(where.glob("part-*.parquet"))
    if not files:
        raise ValueError(
            f"{folder}: no reward-model plays (part-*.parquet in {where}); the daemon writes "
            "them into <log.dir>/reward-plays while log.reward_plays is true, once its reward "
            "model has learned from its first plays"
        )
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    if all(c in frame.columns for c in PLAY_KEY):
        frame = frame.drop_duplicates(subset=PLAY_KEY, keep="first", ignore_index=True)
    return frame


def score_table(
    preds: dict[str, np.ndarray], outcomes: dict[str, R.Outcomes], n_bins: int
) -> tuple[list[dict[str, Any]], dict[tuple[str, str], ReliabilityTable]]:
    rows: list[dict[str, Any]] = []
    tables: dict[tuple[str, str], ReliabilityTable] = {}
    for name, cols in preds.items():
        y, k = head_labels(outcomes[name])
        for j, head in enumerate(HEADS):
            if np.all(np.isnan(cols[:, j])):
                continue
            use = k[:, j] & np.isfinite(cols[:, j])
            s = score_one(cols[use, j], y[use, j], n_bins)
            rows.append(
                {
                    "model": name,
                    "head": head,
                    "plays": s.n,
                    "base_rate": s.base_rate,
                    "log_loss": s.log_loss,
                    "auc": s.auc,
                    "ece": s.ece,
                    "brier": s.brier,
                }
            )
            tables[(name, head)] = reliability_table(cols[use, j], y[use, j], n_bins)
    return rows, tables


def report(
    path: str | Path | None,
    *,
    out_png: str | Path,
    simulate_plays: int = 0,
    n_bins: int = 15,
    seed: int = 0,
    console: Any = None,
    progress: ProgressFn | None = None,
) -> list[dict[str, Any]]:
    """Score stored (or simulated) predictions, print a table and write a reliability PNG.

    Args:
        path: a Parquet or CSV file of joined plays with stored predictions, or None with
            ``simulate_plays > 0``.
        out_png: where to write the reliability plot.
        simulate_plays: if > 0 (and ``path`` is None), simulate this many plays and run every
            model prequentially on them.
        n_bins: equal-width bins for the ECE and the plot.
        seed: simulator and model seed.
        console: a ``rich.console.Console`` (default: a new one on stdout).
        progress: reports the plays done of the prequential pass (default: :class:`Progress`
            on stderr).

    Returns:
        One dict per (model, head): plays, base_rate, log_loss, auc, ece, brier.

    Raises:
        ValueError: if neither or both sources are given, or the file lacks columns.
    """
    from rich.console import Console
    from rich.table import Table

    if (path is None) == (simulate_plays <= 0):
        raise ValueError("give either a file path or simulate_plays > 0 (not both)")
    if path is None:
        preds, sim_outcomes = simulated_predictions(
            simulate_plays, seed=seed, progress=progress or Progress()
        )
        outcomes = dict.fromkeys(preds, sim_outcomes)
        source = f"{simulate_plays:,} simulated plays (prequential)"
    else:
        preds, outcomes = file_predictions(path)
        source = str(path)
    rows, tables = score_table(preds, outcomes, n_bins)
    console = console or Console()
    # No outer edge, and names kept whole: a row stays one line in the 80 columns rich uses
    # off a terminal (headers wrap instead).
    table = Table(title=f"reward models on {source}", show_edge=False)
    for col in ("model", "head", "plays", "base rate", "log loss", "AUC", "ECE", "Brier"):
        name = col in ("model", "head")
        table.add_column(col, justify="left" if name else "right", no_wrap=name)
    for r in rows:
        table.add_row(
            r["model"],
            r["head"],
            f"{r['plays']:,}",
            f"{r['base_rate']:.3f}",
            f"{r['log_loss']:.4f}",
            f"{r['auc']:.3f}",
            f"{r['ece']:.4f}",
            f"{r['brier']:.4f}",
        )
    console.print(table)
    _plot(tables, Path(out_png), source)
    console.print(f"reliability plot written to {out_png}")
    return rows


def reliability_figure(tables: dict[tuple[str, str], ReliabilityTable], source: str = "") -> Figure:
    """The report's plot: one reliability panel per head (in :data:`rewards.HEADS` order), with
    the plays per bin under it, a colour per model and one legend.

    Args:
        tables: ``(model, head)`` -> :func:`rewards.reliability_table`.
        source: what was scored, for the title.
    """
    from matplotlib.figure import Figure

    heads = [h for h in HEADS if any(k[1] == h for k in tables)]
    by_head = {h: {m: t for (m, hh), t in tables.items() if hh == h} for h in heads}
    fig = Figure(figsize=(3.6 * max(len(heads), 1) + 0.4, 5.0), layout="constrained")
    plot_reliability_panels(fig, by_head, titles=HEAD_TITLES)
    fig.suptitle(
        "Reliability of the reward models"
        + (f" on {source}" if source else "")
        + ": observed frequency against mean prediction per bin, plays per bin below"
    )
    return fig


def _plot(tables: dict[tuple[str, str], ReliabilityTable], out: Path, source: str = "") -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    reliability_figure(tables, source).savefig(out, dpi=110)


__all__ = [
    "HEAD_TITLES",
    "Progress",
    "SimBatch",
    "SimStream",
    "concat_outcomes",
    "reliability_figure",
    "report",
    "simulated_predictions",
]


def main(argv: Sequence[str] | None = None) -> int:
    """``encore rewards report [LOG] [--simulate-plays N] [--out PNG]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="encore rewards", description="reward-model tools", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser(
        "report",
        allow_abbrev=False,
        help="prequential log loss, AUC and ECE per model and horizon, and a reliability plot",
    )
    p.add_argument(
        "log",
        nargs="?",
        default=None,
        help="the daemon's log folder (log.dir: its reward-plays), or a Parquet/CSV of "
        "joined plays with stored predictions (p_skip_1, p_skip_2, p_skip_3, p_complete); "
        "omit it with --simulate-plays",
    )
    p.add_argument(
        "--simulate-plays",
        type=int,
        default=0,
        help="run the models prequentially on this many simulated plays instead",
    )
    p.add_argument("--out", default="reliability.png", help="reliability plot (PNG)")
    p.add_argument("--bins", type=int, default=15, help="reliability bins")
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.log is None and args.simulate_plays <= 0:
        parser.error("give a LOG file or --simulate-plays N")
    try:
        report(
            args.log,
            out_png=args.out,
            simulate_plays=args.simulate_plays,
            n_bins=args.bins,
            seed=args.seed,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"encore rewards report: {exc}", file=sys.stderr)
        return 2
    return 0
