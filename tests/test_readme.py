"""The README runs as written: its Python blocks, its command table and its links.

Every fenced ``python`` block of README.md runs in order in one namespace, so a later block can
use what an earlier one defined: a block with ``>>>`` prompts runs as a doctest (its shown
output must match), any other block is executed. The ``encore`` command table must name every
subcommand the CLI has, and every relative link in README.md and docs/ must point at a file.
"""

from __future__ import annotations

import doctest
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_CODE = re.compile(r"^```.*?^```|`[^`\n]*`", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, source)`` of every fenced ``python`` block, in order."""
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in _FENCE.finditer(text)]


def test_readme_has_python_blocks() -> None:
    assert len(python_blocks(README.read_text(encoding="utf-8"))) >= 3


def test_readme_python_blocks_run_as_written() -> None:
    namespace: dict[str, Any] = {"__name__": "readme"}
    parser = doctest.DocTestParser()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    for line, source in python_blocks(README.read_text(encoding="utf-8")):
        if ">>>" in source:
            test = parser.get_doctest(source, namespace, f"README.md:{line}", str(README), line)
            runner = doctest.DocTestRunner(optionflags=flags)
            out: list[str] = []
            runner.run(test, out=out.append, clear_globs=False)
            namespace.update(test.globs)  # DocTest runs on a copy; carry its names forward
            assert runner.failures == 0, f"README.md block at line {line}:\n" + "".join(out)
        else:
            exec(compile(source, f"README.md:{line}", "exec"), namespace)


def test_readme_command_table_names_every_subcommand() -> None:
    from streaming.cli import build_parser

    parser = build_parser()
    actions = [a for a in parser._actions if a.choices and isinstance(a.choices, dict)]  # pyright: ignore[reportPrivateUsage]
    assert actions, "encore has no subcommands?"
    commands = sorted(actions[0].choices)
    rows = [
        line
        for line in README.read_text(encoding="utf-8").splitlines()
        if line.startswith("| `encore ")
    ]
    missing = [c for c in commands if not any(row.startswith(f"| `encore {c}") for row in rows)]
    assert not missing, f"README's command table lacks: {missing}"
    listed = {re.match(r"\| `encore ([a-z-]+)", row).group(1) for row in rows}  # type: ignore[union-attr]
    unknown = sorted(listed - set(commands))
    assert not unknown, f"README's command table lists commands the CLI does not have: {unknown}"


@pytest.mark.parametrize(
    "doc",
    [README, *sorted((ROOT / "docs").glob("*.md"))],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_relative_links_point_at_files(doc: Path) -> None:
    broken = []
    for target in _LINK.findall(_CODE.sub("", doc.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)} links to missing files: {broken}"
