"""Exponential moving average of weights (decay 0.9999, as DiT, SiT and the paper use)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` to hold the EMA weights (starts equal to the model)."""
    ema = copy.deepcopy(model)
    ema.requires_grad_(False)
    ema.eval()
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float = 0.9999) -> None:
    """``ema ← decay·ema + (1 − decay)·model`` for every parameter; buffers are copied."""
    ema_params = dict(ema.named_parameters())
    for name, param in model.named_parameters():
        ema_params[name].mul_(decay).add_(param.detach(), alpha=1 - decay)
    ema_buffers = dict(ema.named_buffers())
    for name, buf in model.named_buffers():
        ema_buffers[name].copy_(buf)
