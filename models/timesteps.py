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
    """f_l(t): per-time loss weight (factor of Eq. 6), multiplied onto the MSE of the training target.

    - ``none``: 1.
    - ``min-snr``: Min-SNR-γ (Hang et al. 2023): min(SNR, γ) on the x₀-MSE, carried over to the target's MSE,
      i.e. min(SNR, γ) for x₀-prediction, min(SNR, γ)/SNR for ε-prediction, and min(SNR, γ)·σ²/(σ′α − σα′)²
      for velocity (dx_t/dt) prediction, which is min(SNR, γ)/(SNR + 1) for DDPM's v = αε − σx and
      min(SNR, γ)·t² on the linear flow. SNR is α²/σ² (Eq. 3).
    - ``snr``: SNR(t) itself, multiplied onto the target's MSE whatever the target (on an ε-MSE that is an
      x₀-MSE weighted by SNR²). Not integrable against Eq. 6 on most schedules; kept for analysis.
    """

    kind: str = "none"
    gamma: float = 5.0

    def __post_init__(self) -> None:
        if self.kind not in ("none", "min-snr", "snr"):
            raise ValueError(f"loss weight must be 'none', 'min-snr' or 'snr', not {self.kind!r}")


def x0_mse_factor(t: Tensor, schedule: Schedule, prediction: str) -> Tensor:
    """c(t) with ‖x̂₀ − x₀‖² = c(t)·‖target error‖² for a prediction of ``data``, ``noise`` or ``velocity``.

    x_t = αx₀ + σε: an ε error δ gives an x₀ error σδ/α (c = 1/SNR); a velocity (α′x₀ + σ′ε) error δ gives
    x₀ = (σ′x_t − σv)/(σ′α − σα′), so c = σ²/(σ′α − σα′)².
    """
    if prediction == "data":
        return torch.ones_like(t)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    if prediction == "noise":
        return (sigma / alpha) ** 2
    if prediction == "velocity":
        return sigma**2 / (schedule.d_sigma(t) * alpha - sigma * schedule.d_alpha(t)) ** 2
    raise ValueError(f"prediction must be 'data', 'noise' or 'velocity', not {prediction!r}")


def loss_weight(t: Tensor, weight: LossWeight, schedule: Schedule, prediction: str = "data") -> Tensor:
    """Evaluate f_l(t) for a schedule and the training target ``prediction`` (factor of Eq. 6)."""
    if weight.kind == "none":
        return torch.ones_like(t)
    snr = torch.exp(schedule.log_snr(t))
    if weight.kind == "snr":
        return snr
    return torch.clamp(snr, max=weight.gamma) * x0_mse_factor(t, schedule, prediction)
