"""``encore``: one console script for the broker, topics, simulator, daemon, demo and tools.

Each subcommand imports what it needs when it runs, so ``encore --help`` and a mistyped
command line answer at once, without loading JAX. Configuration comes from ``--config FILE``,
``ENCORE_<SECTION>__<KEY>`` variables and ``--set section.key=value`` flags, in that order (see
``streaming.config``).

Exit statuses: 0 done; 2 a mistake the user can fix (an argument, the configuration, a broker
that does not answer, a policy that does not exist), told in one line on stderr (``-v`` adds
the traceback); 130 interrupted (Ctrl-C); 73 and 74 as ``EXIT_SIDE_REFUSED`` and
``EXIT_CHECKPOINT_WRITE`` say.

Why one long module: every subcommand's parser and its few lines of glue sit side by side, so
the command line reads as one table; the work of each command lives in its own package.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
import threading
import traceback

# OpenBLAS's thread pool oversubscribes small machines (a 289 x 289 Cholesky spends its time
# waiting on threads that contend for the same cores); encore's matrices are small, so one
# thread each is faster. Set before numpy loads; an explicit setting in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

Handler = Callable[[argparse.Namespace], int]

EXIT_CHECKPOINT_WRITE = 74
"""``encore run``'s exit status when checkpoint.dir cannot take a checkpoint, or log.dir more
rows (unwritable, full): sysexits' EX_IOERR. The newest good checkpoint is left as it was."""

EXIT_SIDE_REFUSED = 73
"""``encore run``'s exit status when the broker refused more output records for good (dead
letters, late rows, joined records, snapshots, deltas, handoffs) than ``kafka.side_max_refused``
allows: sysexits' EX_CANTCREAT. No checkpoint is written after the refusal that crossed the
limit, so a restart (once the topic takes the records) reads those events again."""

EXIT_USAGE = 2
"""Exit status of a mistake the user can fix; argparse uses it for argument errors too."""

EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (KeyboardInterrupt): 128 + SIGINT, as shells report it."""

CONNECT_TIMEOUT_S = 2.0
"""How long the commands that talk to Kafka wait for a TCP connection to one of the bootstrap
servers before saying that no broker answers (kafka-python's own clients would wait a minute)."""

EPILOG = (
    "Configuration: --config FILE (TOML), then ENCORE_<SECTION>__<KEY> environment variables "
    "(e.g. ENCORE_KAFKA__BOOTSTRAP_SERVERS), then --set section.key=value."
)


class CommandError(Exception):
    """A mistake the user can fix; ``main`` prints the message as one line and exits 2."""


class _Parser(argparse.ArgumentParser):
    """A parser that takes long options only as written: ``--request`` is an error, not
    ``--requests``, so that adding an option never changes what an existing command line means."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


class _CommandParser(_Parser):
    """A subcommand's parser: an argument it does not know is an error shown with its own usage
    (argparse would hand it up to ``encore``'s parser, whose usage does not list the options)."""

    def parse_known_args(  # pyright: ignore[reportIncompatibleMethodOverride]
        self, args: Iterable[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        parsed, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed, extra


def _config(args: argparse.Namespace) -> Any:
    from streaming.config import Config

    overrides = list(getattr(args, "set", None) or [])
    if getattr(args, "bootstrap_servers", None):
        overrides.append(f"kafka.bootstrap_servers={args.bootstrap_servers}")
    return Config.load(getattr(args, "config", None), overrides=overrides)


def _servers(args: argparse.Namespace, config: Any) -> str:
    from streaming.kafka.clients import bootstrap_servers

    return bootstrap_servers(config.kafka, Path(args.state_dir) if args.state_dir else None)


def _broker(args: argparse.Namespace, config: Any) -> str:
    """The bootstrap servers, once one of them accepts a connection.

    Raises:
        CommandError: none of them answers within ``CONNECT_TIMEOUT_S``.
    """
    from streaming.kafka.clients import reachable

    servers = _servers(args, config)
    if not reachable(servers, timeout_s=CONNECT_TIMEOUT_S):
        raise CommandError(_no_broker_message(servers))
    return servers


def _no_broker_message(servers: str) -> str:
    """What to say when no broker answers at ``servers``, and what to do about it."""
    return (
        f"no Kafka broker answers at {servers}; start one with `encore broker start` "
        "or pass --bootstrap-servers HOST:PORT"
    )


def _check_policy(config: Any) -> None:
    """Raises CommandError if ``policy.name`` is not in ``bandits.registry.POLICIES``."""
    from bandits.registry import POLICIES

    name = str(config.policy.name)
    if name not in POLICIES:
        close = difflib.get_close_matches(name, list(POLICIES), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise CommandError(
            f"unknown policy {name!r} in policy.name{hint}; known: {', '.join(sorted(POLICIES))}"
        )


def _add_common(p: argparse.ArgumentParser, *, kafka: bool = True) -> None:
    p.add_argument("--config", type=Path, help="TOML config file")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable)",
    )
    if kafka:
        p.add_argument(
            "--bootstrap-servers",
            metavar="HOST:PORT[,...]",
            help="an existing Kafka cluster (env ENCORE_KAFKA__BOOTSTRAP_SERVERS); "
            "default: the local broker from `encore broker start`",
        )
        p.add_argument(
            "--state-dir", help="local broker state folder (env ENCORE_STATE_DIR; default .encore)"
        )


# ------------------------------------------------------------------------------ broker
def cmd_broker(args: argparse.Namespace) -> int:
    from streaming.kafka.broker import LocalBroker, default_state_dir

    broker = LocalBroker(state_dir=Path(args.state_dir) if args.state_dir else default_state_dir())
    if args.action == "start":
        info = broker.start()
        print(
            f"broker running: bootstrap {info.bootstrap_servers} (pid {info.pid}, Kafka {info.version}); "
            f"log {info.log_file}"
        )
    elif args.action == "stop":
        print("broker stopped" if broker.stop() else "no broker running")
    else:
        info = broker.info()
        if info is None:
            print("no broker running")
            return 3
        print(
            f"broker running: bootstrap {info.bootstrap_servers} (pid {info.pid}, Kafka {info.version})"
        )
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from streaming.kafka.clients import ensure_topics, topic_specs

    config = _config(args)
    servers = _broker(args, config)
    result = ensure_topics(config, servers)
    specs = topic_specs(config.topics)
    for name, what in result.items():
        spec = specs[name]
        extra = ", compacted" if spec["configs"].get("cleanup.policy") == "compact" else ""
        print(f"{what:8s} {name} ({spec['num_partitions']} partitions{extra})")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from streaming.sim.simulator import SimConfig, Simulator, describe

    if args.describe:
        from rich.console import Console
        from rich.table import Table

        prod = describe(
            Simulator(SimConfig(seed=args.seed, drift=args.drift, candidate_source="recall")),
            n_requests=args.requests,
            slate_size=args.slate_size,
        )
        unif = describe(
            Simulator(SimConfig(seed=args.seed, drift=args.drift)),
            n_requests=args.requests,
            slate_size=args.slate_size,
        )
        table = Table(
            title=f"Simulated listening (seed {args.seed}, {args.requests:,} requests, "
            f"slates of {args.slate_size} from 20 candidates, logging policy)"
        )
        table.add_column("marginal")
        table.add_column("recall candidates\n(production-like)", justify="right")
        table.add_column("uniform candidates\n(bandit benchmark)", justify="right")
        table.add_column("published reference")
        refs = {
            "skip_rate_5s": "0.24 skipped within 5 s (Lamere 2014, 1B plays)",
            "skip_before_end_rate": "0.49 skipped before the end (Lamere 2014)",
            "skip_rate_30s": "about 0.35-0.5 skipped (Lamere 2014; MSSD, Brost et al. 2019)",
            "reward_random_top1": "uniform: 0.304 (the default simulator)",
            "reward_oracle_top1": "uniform: 0.725 (the default simulator)",
        }
        for k, v in prod.items():
            pattern = "{:,.0f}" if k == "plays" else "{:.3f}"
            table.add_row(k, pattern.format(v), pattern.format(unif[k]), refs.get(k, ""))
        Console(width=140).print(table)
        return 0
    from streaming.demo import newest_event_ms, produce_simulated

    config = _config(args)
    servers = _broker(args, config)
    newest = newest_event_ms(config, servers)
    if args.start_ms is None:  # continue the stream: a running daemon counts nothing late
        start = 0 if newest is None else newest + 1_000
    else:
        start = args.start_ms
        if newest is not None and start <= newest:
            print(
                f"encore simulate: warning: the topics' newest event is at {newest} ms and these "
                f"start at {start} ms: a daemon that has read the stream counts the ones behind "
                "its watermark late (leave --start-ms out to continue the stream)",
                file=sys.stderr,
            )
    n = produce_simulated(
        config,
        servers,
        n_requests=args.requests,
        slate_size=args.slate_size,
        seed=args.seed,
        run_id=f"sim{start}",  # request ids of their own: never duplicates of an earlier run's
        start_ms=start,
        progress=lambda done, events: print(
            f"encore simulate: {done:,} of {args.requests:,} requests ({events:,} events)",
            file=sys.stderr,
            flush=True,
        ),
    )
    print(f"produced {n:,} events from event time {start} ms")
    return 0


def cmd_catalogue(args: argparse.Namespace) -> int:
    from streaming.serving.catalogue import (
        TrackTable,
        publish_tracks,
        read_track_table,
        withdraw_tracks,
    )

    config = _config(args)
    servers = _broker(args, config)
    if args.action == "withdraw":
        if not args.target:
            raise SystemExit("encore catalogue withdraw: name at least one track id")
        n = withdraw_tracks(config, servers, args.target)
        print(f"withdrew {n:,} tracks from {config.topics.catalogue}")
        return 0
    if args.action == "simulated":
        from streaming.sim.simulator import SimConfig, Simulator
        from streaming.sim.traffic import track_id

        world = Simulator(
            SimConfig(seed=args.seed, d_user=config.events.d_user, d_track=config.events.d_track)
        ).world
        n = world.track_features.shape[0]
        table = TrackTable([track_id(i) for i in range(n)], world.track_features, world.duration_ms)
    else:
        if len(args.target) != 1:
            raise SystemExit("encore catalogue load: name one Parquet or CSV file")
        table = read_track_table(
            Path(args.target[0]),
            id_column=args.id_column,
            features_column=args.features_column,
            feature_prefix=args.feature_prefix if args.features_column is None else None,
            duration_column=args.duration_column,
        )
    counts = publish_tracks(config, servers, table, embedding_version=args.embedding_version)
    print(
        f"published {len(table.ids):,} tracks to {config.topics.catalogue} at embedding version "
        f"{args.embedding_version} ({counts['new']:,} new, {counts['updated']:,} updated, "
        f"{counts['restored']:,} back after a withdrawal)"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import signal

    config = _config(args)
    _check_policy(config)
    servers = _broker(args, config)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()  # the loop finishes its batch, checkpoints and closes

    # Ctrl-C and SIGTERM stop the daemon the same way; the handlers before are back on return.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _run_daemon(config, servers, stop, args.exit_when_idle_ms)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_daemon(
    config: Any, servers: str, stop: threading.Event, exit_when_idle_ms: int | None
) -> int:
    from streaming.worker.checkpoint import CheckpointWriteError
    from streaming.worker.daemon import Daemon
    from streaming.worker.deltas import WorkerIdConflictError
    from streaming.worker.membership import GroupSharedError
    from streaming.worker.outbound import SideOutputRefusedError
    from streaming.worker.parquet_log import LogWriteError
    from streaming.worker.stats import summary_line

    try:
        daemon = Daemon(config, servers=servers)
    except (CheckpointWriteError, LogWriteError) as exc:
        print(f"encore: {exc}", file=sys.stderr)
        return EXIT_CHECKPOINT_WRITE
    print(
        f"encore run: group {config.kafka.group_id}, policy {config.policy.name}, "
        f"checkpoints in {config.checkpoint.dir}, bootstrap {servers}"
    )

    def tick(d: Daemon) -> None:
        print(summary_line(d.stats, d.clock()), flush=True)

    try:
        daemon.run(stop, on_tick=tick, exit_when_idle_ms=exit_when_idle_ms)
    except (WorkerIdConflictError, GroupSharedError) as exc:  # closed; the config must change
        print(f"encore: {exc}", file=sys.stderr)
        return 2
    except (CheckpointWriteError, LogWriteError) as exc:  # the newest checkpoint is untouched
        print(f"encore: {exc}", file=sys.stderr)
        return EXIT_CHECKPOINT_WRITE
    except SideOutputRefusedError as exc:  # closed; no checkpoint past the refused records
        print(f"encore: {exc}", file=sys.stderr)
        return EXIT_SIDE_REFUSED
    print("stopped: " + summary_line(daemon.stats, daemon.clock()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streaming.demo import DemoOptions, run_demo

    config = _config(args)
    _check_policy(config)
    if config.kafka.bootstrap_servers:
        _broker(args, config)
    return run_demo(
        config,
        DemoOptions(
            duration_s=args.duration_s,
            rate=args.rate,
            slate_size=args.slate_size,
            seed=args.seed,
            bootstrap_servers=config.kafka.bootstrap_servers or None,
            out=Path(args.out),
            state_dir=Path(args.state_dir) if args.state_dir else None,
        ),
    )


def cmd_config(args: argparse.Namespace) -> int:
    from streaming.config import reference_markdown

    sys.stdout.write(reference_markdown())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="encore",
        description="Reward signals and contextual bandits for music personalization, "
        "learned live from Kafka.",
        epilog=EPILOG,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)

    p = sub.add_parser(
        "demo",
        help="the main job end to end: local broker, simulated listeners, "
        "the daemon learning live, a report",
        epilog=EPILOG,
    )
    _add_common(p)
    p.add_argument(
        "--duration-s", type=float, default=60.0, help="how long listeners produce (default 60)"
    )
    p.add_argument(
        "--rate", type=int, default=800, help="requests per second produced (default 800)"
    )
    p.add_argument("--slate-size", type=int, default=5, help="tracks shown per request (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="demo-out", help="report folder (default demo-out)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "broker", help="start, stop or inspect the local Apache Kafka (KRaft) broker"
    )
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument(
        "--state-dir", help="broker state folder (env ENCORE_STATE_DIR; default .encore)"
    )
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("config", help="`config reference`: every config key, as Markdown")
    p.add_argument("action", choices=["reference"])
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("topics", help="create encore's topics (idempotent)", epilog=EPILOG)
    p.add_argument("action", choices=["create"])
    _add_common(p)
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser(
        "simulate", help="simulated listeners: describe the marginals, or produce events"
    )
    _add_common(p)
    p.add_argument(
        "--describe", action="store_true", help="print skip/completion marginals and exit"
    )
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--slate-size", type=int, default=5)
    p.add_argument("--drift", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--start-ms",
        type=int,
        default=None,
        help="event time of the first request (default: just after the newest event in the "
        "topics, or 0 when they are empty)",
    )
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "catalogue",
        help="the track catalogue: `load FILE` publishes a Parquet/CSV track table, "
        "`simulated` the simulator's tracks, `withdraw ID...` withdraws tracks",
        epilog=EPILOG,
    )
    p.add_argument("action", choices=["load", "simulated", "withdraw"])
    p.add_argument("target", nargs="*", help="load: the file; withdraw: track ids")
    _add_common(p)
    p.add_argument("--id-column", default="track_id", help="the track id column (load)")
    p.add_argument(
        "--features-column",
        default=None,
        help="one column of number lists holding each track's features (load, Parquet)",
    )
    p.add_argument(
        "--feature-prefix",
        default="f",
        help="features in columns PREFIX0, PREFIX1, ... (load; default f)",
    )
    p.add_argument("--duration-column", default=None, help="track durations in ms (load)")
    p.add_argument("--embedding-version", type=int, default=1, help="the version of these features")
    p.add_argument("--seed", type=int, default=0, help="the simulated world's seed (simulated)")
    p.set_defaults(func=cmd_catalogue)

    p = sub.add_parser(
        "run",
        help="the streaming daemon: join, learn, checkpoint, publish snapshots",
        epilog=EPILOG,
    )
    _add_common(p)
    p.add_argument(
        "--exit-when-idle-ms",
        type=int,
        default=None,
        help="stop once every partition is read to its end and nothing came for this long",
    )
    p.set_defaults(func=cmd_run)

    for command in sub.choices.values():
        # -v after the command too (the commands below take their own flags as they are)
        command.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
        )

    _optional(
        sub,
        "streaming.worker.metrics",
        "status",
        "the daemon's live numbers as a table (from its status file)",
    )
    _optional(
        sub,
        "streaming.serving.service",
        "rerank",
        "the re-ranking service: follows the newest snapshot, ranks over HTTP, logs impressions",
        precheck=_precheck_rerank,
    )
    _optional(
        sub, "streaming.evaluate", "evaluate", "off-policy evaluation of a policy on logged records"
    )
    _optional(
        sub,
        "streaming.evaluate.reward_models",
        "rewards",
        "reward models: prequential report (log loss, AUC, calibration)",
    )
    return parser


def _optional(
    sub: Any,
    module: str,
    name: str,
    help_text: str,
    *,
    precheck: Callable[[Sequence[str]], None] | None = None,
) -> None:
    """A subcommand whose implementation lives in its own module, imported only when it runs.

    The module offers ``main(argv) -> int``, or ``add_parser(subparsers)`` that sets ``func``.
    ``precheck(argv)``, if given, runs first, before the module (and JAX) loads: it raises
    CommandError for a mistake it can tell from the arguments and configuration alone.
    """
    p = sub.add_parser(name, help=help_text, add_help=False, prefix_chars="\0")
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def run(args: argparse.Namespace) -> int:
        import importlib

        if precheck is not None and not {"-h", "--help"} & set(args.rest):
            precheck(list(args.rest))
        mod = importlib.import_module(module)
        if hasattr(mod, "main"):
            return int(mod.main(list(args.rest)) or 0)
        inner = _Parser(prog="encore")
        inner_sub = inner.add_subparsers(dest="command", required=True, parser_class=_CommandParser)
        mod.add_parser(inner_sub)
        inner_args = inner.parse_args([name, *args.rest])
        return int(inner_args.func(inner_args) or 0)

    p.set_defaults(func=run)


class _PrecheckSkipped(Exception):
    """The arguments do not parse here; the command's own parser will say why."""


class _LenientParser(_Parser):
    """A parser whose errors skip a precheck instead of ending the process."""

    def error(self, message: str) -> NoReturn:
        raise _PrecheckSkipped(message)


def _precheck_rerank(argv: Sequence[str]) -> None:
    """``encore rerank``: the configuration loads, its policy exists and a broker answers."""
    pre = _LenientParser(prog="encore rerank", add_help=False)
    _add_common(pre)
    for flag in ("--host", "--port", "--refresh-ms"):  # its other flags, taken as they are
        pre.add_argument(flag)
    try:
        args = pre.parse_args(argv)
    except _PrecheckSkipped:  # any other argument: `encore rerank`'s own parser says why
        return
    config = _config(args)
    _check_policy(config)
    _broker(args, config)


# The errors a user can fix by changing a flag, the configuration or the machine, by module and
# name: each is matched only if its module has been imported, so matching imports nothing.
_USER_ERRORS = (
    ("streaming.config", "ConfigError"),
    ("streaming.kafka.broker", "BrokerError"),
    ("streaming.kafka.clients", "NoClusterError"),
    ("streaming.worker.checkpoint", "CheckpointError"),
    ("streaming.worker.lock", "InUseError"),
)


def _user_error(exc: BaseException) -> str | None:
    """The line to print for an error the user can fix, or None for one that is a bug."""
    if isinstance(exc, CommandError):
        return str(exc)
    for module, name in _USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return str(exc)
    errors = sys.modules.get("kafka.errors")
    if errors is not None and isinstance(
        exc, (errors.KafkaConnectionError, errors.KafkaTimeoutError)
    ):
        return (
            f"Kafka stopped answering ({type(exc).__name__}: {exc}); check the broker "
            "(`encore broker status`) or --bootstrap-servers, then run again"
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``encore`` command; returns its exit status.

    With no command, the list of commands goes to stderr and the status is 2: a script that
    forgets the command fails, as it does for any other missing argument.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        if args.verbose:
            traceback.print_exc()
        print("encore: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        message = _user_error(exc)
        if message is None:
            raise
        if args.verbose:
            traceback.print_exc()
        print(f"encore: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
