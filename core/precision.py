"""Precision switches of CUDA matmuls and convolutions (TF32), in one place; no effect on the CPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def set_tf32(enabled: bool, deterministic_kernels: bool = False) -> None:
    """TF32 matmuls/convolutions on or off (the paper trains and samples with TF32, Tables 4-7).

    ``deterministic_kernels`` also switches cuDNN autotuning off, so the same shapes always run the same
    kernels (sampling needs that; training does not ask for it, as DiT's and SiT's loops).
    """
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)
    if deterministic_kernels:
        torch.backends.cudnn.benchmark = False


@contextlib.contextmanager
def matmul_tf32(enabled: bool) -> Iterator[None]:
    """CUDA matmuls with TF32 ``enabled`` inside the block; the previous setting is restored after."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


@contextlib.contextmanager
def tf32_disabled() -> Iterator[None]:
    """Full-precision float32 convolutions and matmuls (TF32 off) inside the block; restores the flags after."""
    backends = torch.backends
    if hasattr(backends.cudnn, "conv") and hasattr(backends.cudnn.conv, "fp32_precision"):
        targets = [backends.cudnn.conv, backends.cuda.matmul]
        saved = [target.fp32_precision for target in targets]
        for target in targets:
            target.fp32_precision = "ieee"
        try:
            yield
        finally:
            for target, value in zip(targets, saved):
                target.fp32_precision = value
    else:  # PyTorch < 2.9: legacy flags
        saved_flags = (backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32)
        backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = saved_flags
