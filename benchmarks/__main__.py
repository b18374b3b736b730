"""``python -m benchmarks NAME [--quick] [--out DIR]``: run one suite, or ``all``.

``python -m benchmarks report DIR [--to PATH]`` renders the suites' JSON files in DIR as one
markdown page (``all`` does that at its end, into ``DIR/README.md``).

The suites that need a Kafka broker (``BROKER_SUITES``) start a local one each, unless
``ENCORE_BENCH_BOOTSTRAP`` names one; ``all`` starts one local broker for all of them, so a run
pays the broker's start-up once.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
from collections.abc import Generator
from pathlib import Path

from benchmarks._runner import SUITES, command_line, run_suite
from benchmarks.report import write_report

BROKER_SUITES = ("kafka", "bandits", "daemon", "soak")
"""The suites that produce to and consume from a broker
(``benchmarks.kafka_raw.broker_for_bench``)."""

# The peers each suite runs beside encore (module names), from the `bench` extra.
PEER_MODULES: dict[str, tuple[str, ...]] = {
    "bandits": ("vowpalwabbit", "mabwiser"),
    "rewards": ("river", "sklearn"),
}


def missing_peers(names: list[str]) -> list[str]:
    """The peer modules the suites ``names`` need that are not installed."""
    wanted = dict.fromkeys(m for n in names for m in PEER_MODULES.get(n, ()))
    return [m for m in wanted if importlib.util.find_spec(m) is None]


@contextlib.contextmanager
def shared_broker(names: list[str]) -> Generator[None]:
    """One local broker for the suites ``names`` while they run, where more than one of them
    needs a broker and ``ENCORE_BENCH_BOOTSTRAP`` names none (the suites then use it)."""
    if sum(n in BROKER_SUITES for n in names) < 2 or os.environ.get("ENCORE_BENCH_BOOTSTRAP"):
        yield
        return
    from benchmarks.kafka_raw import broker_for_bench

    with broker_for_bench() as servers:
        os.environ["ENCORE_BENCH_BOOTSTRAP"] = servers
        try:
            yield
        finally:
            del os.environ["ENCORE_BENCH_BOOTSTRAP"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    commands = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    for name in [*SUITES, "all"]:
        sub = commands.add_parser(
            name, help="every suite" if name == "all" else f"the {name} suite"
        )
        sub.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
        sub.add_argument("--out", type=Path, default=Path("bench-out"), help="output folder")
    report = commands.add_parser("report", help="render DIR's suite JSON files as markdown")
    report.add_argument("dir", type=Path, help="a folder that `--out` wrote")
    report.add_argument("--to", type=Path, default=None, help="markdown file (DIR/README.md)")
    args = parser.parse_args(argv)
    if args.name == "report":
        path = write_report(args.dir, to=args.to)
        print(f"wrote {path}")
        return 0
    names = list(SUITES) if args.name == "all" else [args.name]
    missing = missing_peers(names)
    if missing:
        print(
            f"python -m benchmarks: {', '.join(missing)} not installed; the suites compare encore "
            "with these peers in the same run: pip install -e '.[bench]' (`make bench` does)",
            file=sys.stderr,
        )
        return 2
    command = command_line(args.name, quick=args.quick, out=args.out)
    with shared_broker(names):
        for name in names:
            run_suite(name, quick=args.quick, out=args.out, command=command)
    if args.name == "all":
        print(f"wrote {write_report(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
