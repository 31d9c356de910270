"""Tiny networks and analytic 'networks' with the harness's network interface, for tests."""

from __future__ import annotations

import torch
from torch import nn


class TinyConvNet(nn.Module):
    """A small conditional conv net: forward(x, t_model, y) like every harness network."""

    def __init__(self, channels: int = 1, num_classes: int = 10, learn_sigma: bool = False, width: int = 16):
        super().__init__()
        self.in_channels, self.num_classes, self.learn_sigma = channels, num_classes, learn_sigma
        self.out_channels = 2 * channels if learn_sigma else channels
        self.input_size = 8
        self.label = nn.Embedding(num_classes + 1, width)
        self.time = nn.Linear(1, width)
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.out = nn.Conv2d(width, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cond = self.label(y) + self.time(t.float().view(-1, 1) / 1000)
        h = torch.nn.functional.silu(self.inp(x) + cond[:, :, None, None])
        return self.out(h)


class GaussianFlowOracle(nn.Module):
    """Exact prediction for data ~ N(mean, std²) (per dimension) under any schedule.

    E[x | x_t] for Gaussian data is linear in x_t; the module returns the chosen target (noise,
    velocity or data) so samplers can be checked against the known data distribution.
    """

    def __init__(self, schedule, prediction: str, mean: float, std: float, channels: int = 1,
                 learn_sigma: bool = False, num_classes: int = 10, class_shift: float = 0.0):
        super().__init__()
        self.schedule, self.prediction = schedule, prediction
        self.mean, self.std, self.class_shift = mean, std, class_shift
        self.in_channels, self.num_classes, self.learn_sigma = channels, num_classes, learn_sigma
        self.out_channels = 2 * channels if learn_sigma else channels
        self.input_size = 8

    def time_from_model_time(self, t_model: torch.Tensor) -> torch.Tensor:
        s = self.schedule
        return s.time_of_index(t_model.double()) if getattr(s, "discrete", False) else t_model.double()

    def forward(self, x: torch.Tensor, t_model: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from models.targets import velocity_target

        t = self.time_from_model_time(t_model).to(x.device)
        s = self.schedule
        a = s.alpha(t).view(-1, 1, 1, 1).to(x.dtype)
        sg = s.sigma(t).view(-1, 1, 1, 1).to(x.dtype)
        cond = (y < self.num_classes).to(x.dtype).view(-1, 1, 1, 1)
        m = self.mean + self.class_shift * cond
        var = a**2 * self.std**2 + sg**2
        x_hat = m + a * self.std**2 / var * (x - a * m)
        eps_hat = sg / var * (x - a * m)
        if self.prediction == "noise":
            out = eps_hat
        elif self.prediction == "data":
            out = x_hat
        else:
            out = velocity_target(x_hat, eps_hat, t.to(x.dtype), s)
        if self.learn_sigma:
            out = torch.cat([out, torch.zeros_like(out)], dim=1)
        return out
