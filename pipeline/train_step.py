"""One optimizer step of a rank: Algorithm 2 loss (bf16 autocast if asked), backward, clip, AdamW, EMA."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.ema import update_ema
from models.losses import LossConfig, TrainingDraw, training_losses
from models.schedules import Schedule
from pipeline.runconfig import RunConfig


class NetCall:
    """What ``training_losses`` needs from a network, for a DDP-wrapped or compiled forward."""

    def __init__(self, forward: Any, net: nn.Module):
        self.forward = forward
        self.num_classes = net.num_classes
        self.learn_sigma = net.learn_sigma

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        return self.forward(*args)


def train_step(
    net_call: NetCall | nn.Module, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
    y: torch.Tensor, draw: TrainingDraw, schedule: Schedule, cfg: LossConfig, run: RunConfig,
) -> dict[str, torch.Tensor]:
    """One optimizer step on this rank's slice; returns detached device scalars (no host sync)."""
    params = opt.param_groups[0]["params"]
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=run.precision == "bf16")
    with autocast:
        terms = training_losses(net_call, x, y, draw, schedule, cfg)
    terms["loss"].mean().backward()
    clip = run.optimizer.grad_clip
    if clip:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    opt.step()
    opt.zero_grad(set_to_none=True)
    update_ema(ema, model, run.ema_decay)
    stats = {key: value.detach().float().mean() for key, value in terms.items()}
    stats["grad_norm"] = grad_norm.detach().float()
    return stats


def check_precision(run: RunConfig) -> None:
    """Training runs in ``fp32`` (TF32 matmuls on GPUs when the run says so) or ``bf16`` autocast."""
    if run.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', not {run.precision!r}")
