"""The machine's matmul peak, measured in the same run: the denominator of every "fraction of peak"."""

from __future__ import annotations

import torch

from benchmarks.common import Context, Result, precisions, rate
from core.precision import matmul_tf32

# Square sizes tried per device; the best rate over sizes is the peak.
SIZES = {"cpu": (1024, 2048), "cuda": (4096, 8192)}


def matmul_rate(ctx: Context, n: int, dtype: torch.dtype, tf32: bool = False, seconds: float = 0.6) -> float:
    """Best FLOP/s of an n×n by n×n matmul (2n³ FLOPs) in ``dtype``."""
    generator = torch.Generator(device=ctx.device).manual_seed(0)
    a = torch.randn(n, n, device=ctx.device, generator=generator).to(dtype)
    b = torch.randn(n, n, device=ctx.device, generator=generator).to(dtype)
    with matmul_tf32(tf32):
        timing = rate(ctx, lambda: a @ b, min_seconds=seconds, max_calls=200)
    return 2 * n**3 / timing["best_s"]


def run(ctx: Context) -> Result:
    """The best matmul rate over :data:`SIZES` per precision, kept in ``ctx.peaks``."""
    result = Result("matmul_peak")
    for key, (dtype, tf32) in precisions(ctx).items():
        by_size = {n: matmul_rate(ctx, n, dtype, tf32) for n in SIZES[ctx.device.type]}
        ctx.peaks[key] = max(by_size.values())
        result.data[key] = {"peak_flops": ctx.peaks[key], "by_size": {str(n): v for n, v in by_size.items()}}
        result.row(f"matmul peak {key}", ctx.peaks[key] / 1e9, "GFLOP/s")
    return result
