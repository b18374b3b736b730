"""``python -m benchmarks NAME [--quick] [--out DIR]``: run one suite, or ``all``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks._runner import SUITES, run_suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("name", choices=[*SUITES, "all"], help="suite to run")
    parser.add_argument("--quick", action="store_true", help="small sizes, under two minutes")
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="output folder")
    args = parser.parse_args(argv)
    names = list(SUITES) if args.name == "all" else [args.name]
    for name in names:
        run_suite(name, quick=args.quick, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
