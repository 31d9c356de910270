"""Timestep sampling f_s(t) and loss weights f_l(t) (Algorithm 2 step 2; the two factors of Eq. 6)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from models.schedules import Schedule

Tensor = torch.Tensor


@dataclass(frozen=True)
class TimestepSampling:
    """How training times are drawn: ``uniform`` or ``lognorm`` (logit-normal with ``mu``, ``sigma``).

    ``mu`` and ``sigma`` are in this code base's time direction (t = 1 data), as in Algorithm 2.
    """

    kind: str = "uniform"
    mu: float = 0.0
    sigma: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("uniform", "lognorm"):
            raise ValueError(f"timestep sampling must be 'uniform' or 'lognorm', not {self.kind!r}")
        if self.kind == "lognorm" and self.sigma <= 0:
            raise ValueError("lognorm sigma must be positive")

    def label(self) -> str:
        return "uniform" if self.kind == "uniform" else f"lognorm({self.mu:g}, {self.sigma:g})"


def sample_logit_normal(
    n: int, mu: float, sigma: float, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> Tensor:
    """Algorithm 2's ``lognorm(mu, sigma)``: ``t = sigmoid(u)``, ``u ~ N(mu, sigma²)``, from torch's seeded RNG."""
    u = torch.randn(n, generator=generator, device=device) * sigma + mu
    return torch.sigmoid(u)


def sample_timesteps(
    n: int,
    sampling: TimestepSampling,
    schedule: Schedule,
    t_range: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Draw ``n`` training times in ``t_range`` and snap them to the schedule's grid (Algorithm 2, step 2).

    Uniform sampling draws directly in ``t_range`` (on a DDPM grid: every step with probability 1/T, as
    DiT's ``randint``); logit-normal draws on (0, 1), is affinely mapped into ``t_range`` (as LightningDiT
    does) and, on a DDPM grid, rounded to the nearest step.
    """
    lo, hi = t_range
    if sampling.kind == "uniform":
        u = torch.rand(n, generator=generator, device=device)
        if schedule.discrete:  # every DDPM step equally likely, as DiT's randint(0, T)
            k = torch.clamp(torch.floor(u * schedule.num_steps), max=schedule.num_steps - 1)
            return schedule.time_of_index(k)
    else:
        u = sample_logit_normal(n, sampling.mu, sampling.sigma, generator, device)
    return schedule.discretize(lo + (hi - lo) * u)


def timestep_density(t: Tensor, sampling: TimestepSampling) -> Tensor:
    """f_s(t): the density of the training-time distribution on (0, 1) (factor of Eq. 6)."""
    if sampling.kind == "uniform":
        return torch.ones_like(t)
    logit = torch.log(t) - torch.log1p(-t)
    z = (logit - sampling.mu) / sampling.sigma
    return torch.exp(-0.5 * z**2) / (sampling.sigma * math.sqrt(2 * math.pi) * t * (1 - t))


@dataclass(frozen=True)
class LossWeight:
    """f_l(t): per-time loss weight (factor of Eq. 6).

    ``none`` (1), ``min-snr`` (min(SNR, gamma), Hang et al. 2023, relative SNR of Eq. 3),
    ``snr`` (SNR itself, i.e. an x-prediction weighting of an ε loss).
    """

    kind: str = "none"
    gamma: float = 5.0

    def __post_init__(self) -> None:
        if self.kind not in ("none", "min-snr", "snr"):
            raise ValueError(f"loss weight must be 'none', 'min-snr' or 'snr', not {self.kind!r}")


def loss_weight(t: Tensor, weight: LossWeight, schedule: Schedule) -> Tensor:
    """Evaluate f_l(t) for a schedule (factor of Eq. 6)."""
    if weight.kind == "none":
        return torch.ones_like(t)
    snr = torch.exp(schedule.log_snr(t))
    if weight.kind == "snr":
        return snr
    return torch.clamp(snr, max=weight.gamma)
