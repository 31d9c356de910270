"""Per-sample randomness and fixed-shape evaluation: why sample ``i`` never depends on its batch mates.

See :mod:`pipeline.sample` for the determinism rule these pieces implement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.errors import InputError
from core.io import derive_seed

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------
# Per-sample randomness
# --------------------------------------------------------------------------------------------


def _generator(seed: int, stream: str, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, stream, int(index)))


def sample_labels(seed: int, indices: Iterable[int], num_classes: int) -> Tensor:
    """Label of each sample index: ``randint(num_classes)`` from its own generator ``(seed, "label", i)``."""
    return torch.tensor([int(torch.randint(num_classes, (1,), generator=_generator(seed, "label", i)))
                         for i in indices], dtype=torch.int64)


def sample_noise(seed: int, indices: Iterable[int], shape: Sequence[int]) -> Tensor:
    """Initial noise ``(n, *shape)`` float32 on CPU; row ``i`` from the generator ``(seed, "noise", i)``."""
    return torch.stack([torch.randn(tuple(shape), generator=_generator(seed, "noise", i)) for i in indices])


class PerSampleStepNoise:
    """DDPM step noise: each call stacks one fresh draw per sample from that sample's own generator.

    ``models.samplers.ddpm_sample`` calls it once per ancestral step, so sample ``i`` receives the
    same sequence of draws whatever batch it is in.
    """

    def __init__(self, seed: int, indices: Iterable[int], shape: Sequence[int], device: torch.device):
        self.generators = [_generator(seed, "steps", i) for i in indices]
        self.shape, self.device = tuple(shape), device

    def __call__(self, _step: int) -> Tensor:
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators]).to(self.device)


# --------------------------------------------------------------------------------------------
# Fixed-shape evaluation
# --------------------------------------------------------------------------------------------


def _pad_rows(tensor: Tensor, rows: int) -> Tensor:
    if rows == 0:
        return tensor
    return torch.cat([tensor, tensor[:1].expand(rows, *tensor.shape[1:])])


def in_fixed_batches(fn: Callable[..., Tensor], tensors: Sequence[Tensor], size: int) -> Tensor:
    """``fn(*tensors)`` computed in calls of exactly ``size`` rows (the last padded, its padding dropped)."""
    n = tensors[0].shape[0]
    outputs = []
    for start in range(0, n, size):
        parts = [t[start:start + size] for t in tensors]
        rows = parts[0].shape[0]
        out = fn(*(_pad_rows(p, size - rows) for p in parts))
        outputs.append(out[:rows])
    return torch.cat(outputs) if outputs else fn(*tensors)


class FixedBatchNetwork(nn.Module):
    """A network that always runs on exactly ``micro_batch`` rows, so a row's output does not depend on
    how many other rows share its call (see the module docstring). Same interface and attributes."""

    def __init__(self, net: nn.Module, micro_batch: int):
        super().__init__()
        if micro_batch < 1:
            raise ValueError("micro_batch must be >= 1")
        self.net, self.micro_batch = net, int(micro_batch)
        for name in ("in_channels", "out_channels", "learn_sigma", "num_classes", "input_size"):
            setattr(self, name, getattr(net, name))

    def forward(self, x: Tensor, t_model: Tensor, y: Tensor) -> Tensor:
        return in_fixed_batches(self.net, (x, t_model, y), self.micro_batch)


# --------------------------------------------------------------------------------------------
# One batch: labels + noise -> model samples -> decoded uint8 images
# --------------------------------------------------------------------------------------------


class NonFiniteSamplesError(InputError):
    """Generated samples hold NaN or ±inf: they are never quantised (NaN would become 0, ±inf 0 or 255) nor written."""


def non_finite_rows(values: Tensor) -> list[int]:
    """Rows (dim 0) of ``values`` holding NaN or ±inf anywhere."""
    if values.ndim == 0 or values.shape[0] == 0:
        return []
    return (~torch.isfinite(values.reshape(values.shape[0], -1)).all(1)).nonzero().flatten().tolist()


def check_finite(values: Tensor, indices: Sequence[int], where: str, source: str = "") -> None:
    """Raise one :class:`NonFiniteSamplesError` line naming the sample indices whose rows are not finite."""
    rows = non_finite_rows(values)
    if not rows:
        return
    named = [int(indices[r]) for r in rows]
    shown = ", ".join(map(str, named[:8])) + (f", ... ({len(named)} of {len(indices)})" if len(named) > 8 else "")
    prefix = f"{source}: " if source else ""
    raise NonFiniteSamplesError(f"{prefix}sample(s) {shown} hold NaN or inf {where}; stopped before quantising "
                                f"to uint8, nothing written for them")


def to_uint8(images: Tensor) -> Tensor:
    """Images in [-1, 1] ``(B, C, H, W)`` → uint8 NHWC with DiT's ``clamp(127.5·x + 128, 0, 255)``.

    Non-finite values are refused (:class:`NonFiniteSamplesError`, batch rows named): the cast would turn NaN
    into 0 and ±inf into 0/255 without a trace.
    """
    check_finite(images, range(images.shape[0]), "(batch rows) at quantisation")
    return torch.clamp(127.5 * images.float() + 128.0, 0, 255).to(torch.uint8).permute(0, 2, 3, 1)


@dataclass
class Batch:
    """Samples of some indices: uint8 NHWC images, int64 labels, per-sample NFE (numpy, CPU)."""

    images: np.ndarray
    labels: np.ndarray
    nfe: np.ndarray
