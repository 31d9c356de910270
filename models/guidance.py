"""Classifier-free guidance shared by every network (class dropout is drawn in `models.losses`)."""

from __future__ import annotations

import torch
from torch import nn


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


class GuidedNetwork(nn.Module):
    """Base of every network: ``forward_with_cfg`` (DiT's name) is :func:`guided_forward` on ``self``."""

    def forward_with_cfg(
        self, x: torch.Tensor, t_model: torch.Tensor, y: torch.Tensor, cfg_scale: float,
        legacy_channels: int | None = None,
    ) -> torch.Tensor:
        """Classifier-free guided prediction; see :func:`guided_forward`."""
        return guided_forward(self, x, t_model, y, cfg_scale, legacy_channels=legacy_channels)
