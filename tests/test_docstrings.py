"""Every example in a docstring runs as written (``>>>`` blocks, checked with doctest)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import bandits
import rewards
import streaming

# Modules whose import needs what a unit test does not have, or that start a program.
SKIP = {"streaming.__main__", "streaming.evaluate.__main__"}


def _modules() -> list[str]:
    names: list[str] = []
    for pkg in (rewards, bandits, streaming):
        names.append(pkg.__name__)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}."):
            if info.name not in SKIP:
                names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
