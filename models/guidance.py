"""Classifier-free guidance and class dropout, shared by every network."""

from __future__ import annotations

import torch
from torch import nn


def drop_labels(
    y: torch.Tensor, prob: float, num_classes: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace each label by the null class ``num_classes`` with probability ``prob``.

    Training calls this with the run's own generator (never the global RNG), so the same labels are
    dropped whatever the world size.
    """
    if prob <= 0:
        return y
    u = torch.rand(y.shape, generator=generator, device="cpu" if generator is None else generator.device)
    drop = (u < prob).to(y.device)
    return torch.where(drop, torch.full_like(y, num_classes), y)


def guided_forward(
    net: nn.Module,
    x: torch.Tensor,
    t_model: torch.Tensor,
    y: torch.Tensor,
    scale: float,
    legacy_channels: int | None = None,
) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale·(cond − uncond)``.

    By default every output channel that carries the prediction is guided. ``legacy_channels=3``
    reproduces DiT's released ``forward_with_cfg``, which guides only the first three channels and
    leaves the rest conditional (DiT issue #41). For learned-σ networks the variance channels (the
    second half) are never guided; they are taken from the conditional pass.
    ``scale == 1`` returns the conditional prediction without the extra pass.
    """
    if scale == 1.0:
        return net(x, t_model, y)
    null = torch.full_like(y, net.num_classes)
    out = net(torch.cat([x, x]), torch.cat([t_model, t_model]), torch.cat([y, null]))
    cond, uncond = out.chunk(2)
    n_pred = net.in_channels
    guided_channels = n_pred if legacy_channels is None else min(legacy_channels, n_pred)
    guided = uncond[:, :guided_channels] + scale * (cond[:, :guided_channels] - uncond[:, :guided_channels])
    return torch.cat([guided, cond[:, guided_channels:]], dim=1)
