"""The training log of a run: a JSONL file of metric records and its loss-curve PNG.

One record per ``log_every`` steps (``{"step": ..., "loss": ..., "mse": ..., ...}``), appended and
flushed line by line (a whole-file atomic rewrite every few steps would cost O(n²) on long runs). A
killed process can leave a torn last line: readers skip lines that are not valid JSON, and
:func:`truncate_log`, called when a segment resumes, rewrites the file atomically without them and
without records past the resumed step, so the log always matches the checkpointed state.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from core.io import atomic_write, atomic_write_text

LOG_NAME = "train.jsonl"
PLOT_NAME = "loss.png"
PLOTTED_TERMS = ("loss", "mse", "direction", "vb")


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All well-formed records of a JSONL log (a missing file is an empty log)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def truncate_log(path: str | os.PathLike, last_step: int) -> int:
    """Keep only records with ``step ≤ last_step`` (atomic rewrite); returns how many were kept."""
    path = Path(path)
    if not path.exists():
        return 0
    kept = [record for record in read_log(path) if record["step"] <= last_step]
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in kept))
    return len(kept)


def append_record(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one record as a JSON line and flush it to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(dict(record)) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def max_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory so far: CUDA allocator peak on a GPU, else the process's peak resident set (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss"


def window_record(
    sums: Mapping[str, torch.Tensor], steps: int, began: float, step: int, *, global_batch: int, num_items: int,
    lr: float, device: torch.device, world_size: int, segment_began: float,
) -> dict[str, Any]:
    """Average a window's per-step means over its steps and the ranks into one record (one host sync)."""
    keys = sorted(sums)
    values = torch.stack([sums[k] for k in keys]) / max(steps, 1)
    if world_size > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values = values / world_size
    means = dict(zip(keys, values.tolist()))
    seconds = max(time.monotonic() - began, 1e-9)
    memory, memory_kind = max_memory_mb(device)
    record: dict[str, Any] = {"step": step, "epoch": step * global_batch / num_items}
    for key in ("loss", "mse", "direction", "vb", "grad_norm"):
        if key in means:
            record[key] = means[key]
    record.update({
        "lr": lr, "it_s": steps / seconds, "images_s": steps * global_batch / seconds, "max_mem_mb": memory,
        "mem_kind": memory_kind, "world_size": world_size, "elapsed_s": time.monotonic() - segment_began,
    })
    return record


def plot_loss_curve(
    records: Sequence[Mapping[str, Any]], png_path: str | os.PathLike, title: str | None = None
) -> None:
    """Write the loss terms (total, MSE, direction, VB; log scale) against step as a PNG (atomic)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: its import costs a second per job
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for term in PLOTTED_TERMS:
        points = [(r["step"], r[term]) for r in records if isinstance(r.get(term), int | float)]
        points = [(s, v) for s, v in points if math.isfinite(v) and v > 0]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, label=term, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (window mean)")
    if ax.lines:
        ax.set_yscale("log")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no records yet", ha="center", va="center", transform=ax.transAxes)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "training loss")
    fig.tight_layout()
    with atomic_write(png_path) as handle:
        fig.savefig(handle, format="png")
