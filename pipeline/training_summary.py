"""Training throughput of every run of a scale, from the runs' ``train.jsonl``: one CSV row per run.

    python -m pipeline.training_summary --run-logs RUN=LOG_DIR ... --out results/<scale>/training.csv

Per run: the protocol, network, precision, world size, the last logged step, and over its log windows the
median it/s, images/s, images/s per device and MFU (where the device's peak is known: a recognised GPU), and
the largest peak memory. The same numbers the job logs print (pipeline.train_log); the report shows the table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import InputError, run_cli
from core.io import atomic_write_csv, portable_path, provenance
from pipeline.train_log import LOG_NAME, read_log

COLUMNS = ("run", "last_step", "windows", "world_size", "precision_key", "it_s", "images_s",
           "images_s_per_device", "mfu", "peak_memory_mb", "memory_kind", "train_tflop_per_image")


def _median(records: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in records if isinstance(r.get(key), int | float)]
    return statistics.median(values) if values else None


def summarise(run_id: str, log_dir: Path) -> dict[str, Any]:
    """One run's row (:data:`COLUMNS`) from its log folder."""
    path = log_dir / LOG_NAME
    if not path.is_file():
        raise InputError(f"{path}: no training log (train the run first)")
    records = read_log(path)
    if not records:
        raise InputError(f"{path}: the training log holds no record")
    last = records[-1]
    memory = [float(r["max_mem_mb"]) for r in records if isinstance(r.get("max_mem_mb"), int | float)]
    return {"run": run_id, "last_step": int(last["step"]), "windows": len(records),
            "world_size": last.get("world_size", 1), "precision_key": last.get("precision_key", ""),
            "it_s": _median(records, "it_s"), "images_s": _median(records, "images_s"),
            "images_s_per_device": _median(records, "images_s_per_device"), "mfu": _median(records, "mfu"),
            "peak_memory_mb": max(memory) if memory else None, "memory_kind": last.get("mem_kind", ""),
            "train_tflop_per_image": last.get("train_tflop_per_image")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.training_summary", description=__doc__.splitlines()[0])
    parser.add_argument("--run-logs", nargs="+", required=True, metavar="RUN=LOG_DIR")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    pairs = []
    for item in args.run_logs:
        run_id, sep, folder = item.partition("=")
        if not sep or not run_id or not folder:
            raise InputError(f"--run-logs: expected RUN=LOG_DIR, got {item!r}")
        pairs.append((run_id, Path(folder)))
    rows = [summarise(run_id, folder) for run_id, folder in sorted(pairs)]
    prov = provenance(config={"logs": [portable_path(folder) for _, folder in sorted(pairs)]}, seed=None)
    atomic_write_csv(args.out, rows, COLUMNS, prov)
    print(f"wrote {args.out}: {len(rows)} runs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
