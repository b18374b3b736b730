"""``python -m streaming`` is the ``encore`` console script."""

import sys

from streaming.cli import main

sys.exit(main())
