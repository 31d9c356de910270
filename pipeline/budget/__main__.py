"""``python -m pipeline.budget``: see :mod:`pipeline.budget.cli`."""

import sys

from core.errors import run_cli
from pipeline.budget.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
