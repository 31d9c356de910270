"""The training log of a run: a JSONL file of metric records, its loss-curve PNG, plain progress lines for job
logs and, optionally, TensorBoard event files of the same numbers.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from core.errors import InputError
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


# The numbers of a record that are scalars over steps (TensorBoard tags `train/<key>`).
SCALARS = ("loss", "mse", "direction", "vb", "grad_norm", "lr", "it_s", "images_s", "images_s_per_device", "mfu",
           "max_mem_mb")
# GPU names (torch.cuda.get_device_name) -> rows of config/throughput.yaml (vendor dense peaks).
GPU_ROWS = (("H100", "H100-SXM5"), ("H200", "H100-SXM5"), ("H800", "H800-SXM5"), ("A100", "A100-SXM4-80GB"),
            ("4090", "RTX-4090"))
FLOP_CONVENTION = ("model FLOPs per image = 3 x the network's forward FLOPs, counted by "
                   "torch.utils.flop_counter (2 per multiply-add); MFU = images/s x that / (devices x the "
                   "device's dense peak for the precision, config/throughput.yaml)")


@dataclass(frozen=True)
class TrainingCost:
    """What a step costs and what the device could do: model FLOPs per image, the peak for the precision in use
    (None where no peak is known, e.g. a CPU) and where it comes from."""

    flops_per_image: float
    precision_key: str
    peak_flops: float | None
    device_row: str | None

    @classmethod
    def of(cls, network: Mapping[str, Any], precision: str, tf32: bool, device: torch.device) -> TrainingCost:
        from pipeline.budget.flops import train_flops_per_image
        from pipeline.budget.throughput import load_throughput

        spec = {key: value for key, value in network.items() if key != "grad_checkpointing"}
        flops = train_flops_per_image(spec, grad_checkpointing=bool(network.get("grad_checkpointing")))
        row = None
        if device.type == "cuda":
            name = torch.cuda.get_device_name(device)
            row = next((row for marker, row in GPU_ROWS if marker in name), None)
        if row is None:
            key = "bf16" if precision == "bf16" else "tf32" if tf32 and device.type == "cuda" else "fp32"
            return cls(flops, key, None, None)
        gpu = load_throughput().devices[row]
        key = gpu.precision_key(precision, tf32)
        return cls(flops, key, gpu.peak(key), row)

    def fields(self, images_s: float, world_size: int) -> dict[str, Any]:
        """The record's throughput fields (FLOP_CONVENTION)."""
        per_device = images_s / max(world_size, 1)
        out: dict[str, Any] = {"images_s_per_device": per_device, "train_tflop_per_image": self.flops_per_image / 1e12,
                               "precision_key": self.precision_key}
        if self.peak_flops:
            out.update(mfu=per_device * self.flops_per_image / self.peak_flops, peak_device=self.device_row)
        return out


def progress_line(record: Mapping[str, Any], start: int, stop: int, resumed_step: int) -> str:
    """One plain line per log window for a job log (no terminal, so no bar): step of the segment, loss terms,
    rates, the ETA of the segment from this window's rate and peak memory."""
    step = int(record["step"])
    done = (step - start) / max(stop - start, 1)
    eta = (stop - step) / record["it_s"] if record.get("it_s") else float("nan")
    terms = " ".join(f"{key} {record[key]:.4g}" for key in ("loss", "mse", "direction", "vb", "grad_norm")
                     if isinstance(record.get(key), int | float))
    return (f"train: step {step}/{stop} ({100 * done:.1f}% of {start}→{stop}"
            + (f", resumed at {resumed_step}" if resumed_step > start else "") + f") {terms} | "
            f"{record['it_s']:.3g} it/s, {record['images_s']:.4g} images/s"
            + (f" ({record['images_s_per_device']:.4g} per device)" if record.get("world_size", 1) > 1 else "")
            + (f", MFU {100 * record['mfu']:.1f}% of {record['peak_device']} {record['precision_key']}"
               if "mfu" in record else "")
            + f" | ETA {_duration(eta)} | peak memory {record['max_mem_mb']:.0f} MiB")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class TensorBoardLog:
    """TensorBoard event files of the records (``torch.utils.tensorboard``; tags ``train/<key>``). A resumed
    segment purges events after its resumed step, so the curves match the checkpointed state as train.jsonl
    does."""

    def __init__(self, folder: str | os.PathLike, resumed_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # the tensorboard package is missing
            raise InputError(f"--tensorboard needs the tensorboard package ({err}); pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=resumed_step + 1)

    def write(self, record: Mapping[str, Any]) -> None:
        for key in SCALARS:
            if isinstance(record.get(key), int | float):
                self.writer.add_scalar(f"train/{key}", record[key], int(record["step"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def max_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory so far: CUDA allocator peak on a GPU, else the process's peak resident set (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss"


def window_record(
    sums: Mapping[str, torch.Tensor], steps: int, began: float, step: int, *, global_batch: int, num_items: int,
    lr: float, device: torch.device, world_size: int, segment_began: float, cost: TrainingCost | None = None,
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
    if cost is not None:
        record.update(cost.fields(record["images_s"], world_size))
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
