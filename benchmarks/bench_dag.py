"""Snakemake DAG build time for the full paper-scale target set (and the registry expansion behind it).

Runs ``snakemake -n --forceall --quiet rules --config scale=paper`` (every default target: all figures,
tables and the audit; ``--forceall`` so that outputs already in the working tree do not shrink the DAG) in
the repository, as a subprocess with ``--workflow-profile none`` and no ``SNAKEMAKE_PROFILE``, so a user's
profile cannot change what is measured. A dry run needs no data, weights or GPUs and writes no
outputs. Also times :func:`pipeline.registry.load_registry` for the paper scale in this process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, Context, Result


def snakemake_dry_run(scale: str = "paper", targets: tuple[str, ...] = ()) -> dict[str, Any]:
    snakemake = Path(sys.executable).with_name("snakemake")
    command = [str(snakemake) if snakemake.exists() else "snakemake", "-n", "--forceall", "--quiet", "rules",
               "--workflow-profile", "none", "--config", f"scale={scale}", *targets]
    env = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"}
    began = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    output = proc.stdout + proc.stderr
    totals = re.findall(r"^total\s+(\d+)\s*$", output, flags=re.MULTILINE)
    return {"command": " ".join(["snakemake", *command[1:]]), "returncode": proc.returncode,
            "seconds": seconds,
            "jobs": int(totals[-1]) if totals else None,
            "error": None if proc.returncode == 0 else output[-2000:]}


def registry_seconds(scale: str = "paper") -> dict[str, Any]:
    from pipeline.budget import load_scale_config
    from pipeline.registry import load_registry

    began = time.perf_counter()
    registry, _ = load_registry(load_scale_config(scale))
    return {"seconds": time.perf_counter() - began, "runs": len(registry.runs),
            "cells": len(registry.all_cells())}


def run(ctx: Context) -> Result:
    result = Result("dag")
    dry = snakemake_dry_run()
    registry = registry_seconds()
    result.data = {"snakemake_dry_run": dry, "registry": registry}
    jobs = f"{dry['jobs']} jobs" if dry["jobs"] is not None else f"failed (exit {dry['returncode']})"
    result.row("snakemake -n, paper scale, all targets", dry["seconds"], f"s ({jobs})")
    result.row("registry expansion, paper scale", registry["seconds"],
               f"s ({registry['runs']} runs, {registry['cells']} cells)")
    return result
