"""Toy stages for the SLURM test workflow: deterministic, cheap, and resumable like real training.

``train`` applies one integer "training step" per ``--step-seconds``, saves a rolling checkpoint
after every step (atomically, to an undeclared side directory) and, when started again, resumes
from that checkpoint. Each start leaves an ``attempt-<id>.json`` record beside the checkpoint so
tests can see which SLURM job ran which steps.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from core.io import atomic_write_json

MODULUS = 1_000_003


def training_step(value: int, step: int, data_total: int) -> int:
    """One deterministic update of the toy model state."""
    return (value * 31 + data_total + step) % MODULUS


def expected_value(steps: int, data_total: int) -> int:
    """The state after ``steps`` uninterrupted steps from 0 (what any resumed run must reach)."""
    value = 0
    for step in range(steps):
        value = training_step(value, step, data_total)
    return value


def prepare(out: Path, count: int) -> None:
    """Write the toy data set: the numbers 1..count."""
    atomic_write_json(out, {"numbers": list(range(1, count + 1))})


def load_rolling(state_path: Path, data_total: int) -> tuple[int, int]:
    """Return (step, value) of the rolling checkpoint, or (0, 0) if there is none for this data."""
    if not state_path.exists():
        return 0, 0
    state = json.loads(state_path.read_text())
    if state.get("data_total") != data_total:
        return 0, 0
    return int(state["step"]), int(state["value"])


def train(data: Path, out: Path, rolling_dir: Path, steps: int, step_seconds: float, gpus: int,
          runtime_min: int) -> None:
    """Run (or resume) the toy training up to ``steps`` and write the final state to ``out``."""
    data_total = sum(json.loads(data.read_text())["numbers"])
    state_path = rolling_dir / "state.json"
    start_step, value = load_rolling(state_path, data_total)
    job_id = os.environ.get("SLURM_JOB_ID", "")
    attempt_id = job_id or f"pid{os.getpid()}"
    atomic_write_json(rolling_dir / f"attempt-{attempt_id}.json", {
        "slurm_job_id": job_id, "resumed_from": start_step, "gpus": gpus,
        "runtime_min": runtime_min, "started": time.time(),
    })
    print(f"job {attempt_id}: starting at step {start_step} of {steps}", flush=True)
    for step in range(start_step, steps):
        time.sleep(step_seconds)
        value = training_step(value, step, data_total)
        atomic_write_json(state_path, {"step": step + 1, "value": value, "data_total": data_total})
    atomic_write_json(out, {
        "steps": steps, "value": value, "data_total": data_total,
        "resumed_from": start_step, "slurm_job_id": job_id,
    })
    print(f"job {attempt_id}: finished at step {steps}", flush=True)


def summarize(data: Path, model: Path, out: Path) -> None:
    """Check the trained state against an uninterrupted run and write a summary."""
    data_total = sum(json.loads(data.read_text())["numbers"])
    final = json.loads(model.read_text())
    atomic_write_json(out, {
        "data_total": data_total, "steps": final["steps"], "value": final["value"],
        "matches_uninterrupted": final["value"] == expected_value(final["steps"], data_total),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
    })


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--rolling-dir", type=Path, required=True)
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("--step-seconds", type=float, default=1.0)
    t.add_argument("--gpus", type=int, default=0)
    t.add_argument("--runtime-min", type=int, default=0)
    s = sub.add_parser("summarize")
    s.add_argument("--data", type=Path, required=True)
    s.add_argument("--model", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.stage == "prepare":
        prepare(args.out, args.count)
    elif args.stage == "train":
        train(args.data, args.out, args.rolling_dir, args.steps, args.step_seconds, args.gpus,
              args.runtime_min)
    else:
        summarize(args.data, args.model, args.out)


if __name__ == "__main__":
    main()
