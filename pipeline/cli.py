"""``fasterdit <stage> [flags]``: one console entry point for the stage CLIs that the rules call.

``fasterdit train --help`` is ``python -m pipeline.train --help``; every stage keeps its own flags, and a bad input
ends in one ``error:`` line as with ``python -m`` (``--debug`` shows the traceback).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from core.errors import run_cli

STAGES: dict[str, str] = {
    "data": "pipeline.data",
    "latents": "pipeline.latents",
    "train": "pipeline.train",
    "import-checkpoint": "pipeline.import_checkpoint",
    "sample": "pipeline.sample",
    "grid": "pipeline.sample_grid",
    "evaluate": "eval.evaluate",
    "digits-classifier": "eval.digits_classifier",
    "snr-pdf": "pipeline.snr_pdf",
    "fig3": "pipeline.figures.fig3",
    "cells": "pipeline.cells",
    "report": "pipeline.report",
    "audit": "pipeline.audit",
    "budget": "pipeline.budget",
}


def _usage() -> str:
    width = max(map(len, STAGES))
    lines = [f"  {name:<{width}}  python -m {module}" for name, module in STAGES.items()]
    return "usage: fasterdit <stage> [flags]   (fasterdit <stage> --help for its flags)\nstages:\n" + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stage named by the first argument with the remaining arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    stage, rest = args[0], args[1:]
    if stage not in STAGES:
        print(f"error: unknown stage {stage!r}; stages: {', '.join(STAGES)} (fasterdit --help)", file=sys.stderr)
        return 2
    return run_cli(importlib.import_module(STAGES[stage]).main, rest)  # bad input: one line, exit 2


if __name__ == "__main__":
    sys.exit(main())
