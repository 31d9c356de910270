"""``python -m pipeline.budget``: estimate the budget of a scale and write results/<scale>/budget.csv.

``--config-json`` is what the Snakemake rule (workflow/rules/budget.smk) passes: the run's whole merged
config. Without it the config is :func:`load_scale_config` of ``--scale`` (+ ``--config-file``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.budget.estimate import estimate_budget
from pipeline.budget.rows import calibration_table, summary_table, validation_markdown, write_budget_csv
from pipeline.budget.throughput import THROUGHPUT_FILE, load_throughput
from pipeline.paths import at_scale


def load_scale_config(scale: str, extra: Sequence[str | Path] = ()) -> dict[str, Any]:
    """:func:`pipeline.config.load_scale` of ``scale`` with ``extra`` YAML files over the defaults (as the Snakefile).

    Also used by benchmarks (bench_train, bench_sampling, bench_train_vs_plain, bench_dag) and tests.
    """
    from pipeline.config import load_scale

    return load_scale(scale, extra_files=extra)


def _parser() -> argparse.ArgumentParser:
    """The CLI's flags (``prog`` stays ``python -m pipeline.budget``)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.budget",
        description="Estimated GPU-hours per job, figure and table (results/<scale>/budget.csv).")
    parser.add_argument("--scale", default="paper", help="mini, smoke or paper (default: paper)")
    parser.add_argument("--config-json", help="the whole merged config as JSON (the Snakemake rule passes "
                                              "its config; replaces --scale and --config-file)")
    parser.add_argument("--config-file", action="append", default=[],
                        help="extra YAML merged over the defaults")
    parser.add_argument("--gpu", help="GPU type for GPU jobs (a device of config/throughput.yaml)")
    parser.add_argument("--cpu", help="device for CPU jobs (default: a measured CPU, else cpu)")
    parser.add_argument("--throughput",
                        help="benchmark file (benchmarks/results/<host>.json) with measured rates")
    parser.add_argument("--table", default=str(THROUGHPUT_FILE),
                        help="throughput table (config/throughput.yaml)")
    parser.add_argument("--out", help="the CSV (default: results/<scale>/budget.csv)")
    parser.add_argument("--explain", action="store_true", help="print the fitted step model and its validation")
    parser.add_argument("--validate", action="store_true",
                        help="print only the validation table (markdown, as in docs/benchmarks.md) and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Estimate, write the CSV, print the totals (and with ``--explain`` the calibration); returns 0."""
    args = _parser().parse_args(argv)
    if args.validate:
        print(validation_markdown(load_throughput(args.table, args.throughput)))
        return 0
    from pipeline.registry import load_registry

    config = json.loads(args.config_json) if args.config_json else load_scale_config(args.scale,
                                                                                        args.config_file)
    registry, grid = load_registry(config)
    out = args.out or at_scale("results/budget.csv", registry.scale)
    tp = load_throughput(args.table, args.throughput)
    budget = estimate_budget(registry, grid, config, tp, gpu=args.gpu, cpu=args.cpu)
    rows = write_budget_csv(budget, out)
    if args.explain:
        print(calibration_table(tp))
    print(summary_table(budget, rows))
    print(f"wrote {out}")
    return 0
