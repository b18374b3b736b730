"""The ``benchmarks`` package sits at the repository root and is not installed (the project
installs ``rewards``, ``bandits`` and ``streaming``): put the root on the import path, as
``python -m pytest`` run from the root does."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
