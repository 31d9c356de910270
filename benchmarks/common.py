"""Shared pieces of the benchmark suite: the run context, timers, a peak-memory sampler, result records."""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from pipeline.budget import Device

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Context:
    """What every benchmark uses: device, thread count, mode flags, a scratch folder, shared artefacts."""

    device: torch.device
    threads: int
    scratch: Path
    quick: bool = False       # skip the 50k-sample metric runs
    full: bool = False        # also re-time the Fréchet distances at 50k (their cost does not depend on N)
    peaks: dict[str, float] = field(default_factory=dict)     # measured matmul peak, FLOP/s per precision
    shared: dict[str, Any] = field(default_factory=dict)      # artefacts one benchmark leaves for another

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@dataclass
class Result:
    """One benchmark's measurements plus the rows of its stdout table (label, value, unit)."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)
    table: list[tuple[str, float | str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def row(self, label: str, value: float | str, unit: str = "") -> None:
        self.table.append((label, value, unit))


def timed(ctx: Context, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of one call (device work included) and its return value."""
    ctx.sync()
    began = time.perf_counter()
    out = fn()
    ctx.sync()
    return time.perf_counter() - began, out


def rate(ctx: Context, fn: Callable[[], Any], min_seconds: float, max_calls: int,
         warmup: int = 1) -> dict[str, float]:
    """Call ``fn`` until ``min_seconds`` have passed (at most ``max_calls``) after ``warmup`` calls.

    Returns the median and best seconds per call and the number of timed calls. The median is robust to the
    other processes that share a small machine; the best is what the hardware can do undisturbed.
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    began = time.perf_counter()
    while len(samples) < max_calls and (time.perf_counter() - began < min_seconds or len(samples) < 2):
        seconds, _ = timed(ctx, fn)
        samples.append(seconds)
    return {"median_s": statistics.median(samples), "best_s": min(samples), "calls": len(samples)}


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import psutil  # installed with snakemake

        return int(psutil.Process().memory_info().rss)


@contextlib.contextmanager
def peak_memory(ctx: Context, interval_s: float = 0.002) -> Iterator[dict[str, float]]:
    """Peak resident memory while the block runs: sampled every ``interval_s`` (CPU), or the CUDA allocator's.

    Fills ``peak_mb`` (absolute) and ``extra_mb`` (peak minus the level when the block started).
    """
    stats: dict[str, float] = {}
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
        torch.cuda.reset_peak_memory_stats(ctx.device)
        base = torch.cuda.memory_allocated(ctx.device)
        yield stats
        torch.cuda.synchronize(ctx.device)
        peak = torch.cuda.max_memory_allocated(ctx.device)
        stats.update(peak_mb=peak / 2**20, extra_mb=(peak - base) / 2**20, kind="cuda allocator")
        return
    base = _rss_bytes()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            stop.wait(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield stats
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], _rss_bytes())
        stats.update(peak_mb=peak[0] / 2**20, extra_mb=(peak[0] - base) / 2**20, kind="process RSS")


def precisions(ctx: Context) -> dict[str, tuple[torch.dtype, bool]]:
    """pipeline.budget's precision keys this machine runs: key → (dtype, TF32 matmuls on); tf32 on CUDA only."""
    keys = {"fp32": (torch.float32, False), "bf16": (torch.bfloat16, False)}
    if ctx.device.type == "cuda":
        keys["tf32"] = (torch.float32, True)
    return keys


def budget_device(ctx: Context) -> Device:
    """This machine as a :class:`pipeline.budget.Device` (peaks measured so far, 0 where not yet measured)."""
    from pipeline.budget import Device

    return Device(name="this machine", kind="gpu" if ctx.device.type == "cuda" else "cpu",
                  peak_tflops={key: ctx.peaks.get(key, 0.0) / 1e12 for key in precisions(ctx)})


def network_spec(name: str, input_size: int, in_channels: int, learn_sigma: bool,
                 num_classes: int = 10, **extra: Any) -> dict[str, Any]:
    """A run config ``network`` block."""
    return {"name": name, "input_size": int(input_size), "in_channels": int(in_channels),
            "num_classes": int(num_classes), "learn_sigma": bool(learn_sigma), **extra}
