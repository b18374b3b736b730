"""``python -m streaming.evaluate``: the same as ``encore evaluate``."""

import sys

from streaming.evaluate.cli import main

sys.exit(main())
