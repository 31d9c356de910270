"""``python -m pipeline.budget``: see :mod:`pipeline.budget.cli`."""

import sys

from pipeline.budget.cli import main

if __name__ == "__main__":
    sys.exit(main())
