"""Noise schedules on one continuous time axis (Eq. 1, 3, 9, 10; DDPM linear and cosine).

Convention (docs/conventions.md): ``t ∈ [0, 1]``, ``t = 0`` is pure noise and ``t = 1`` is data, and
``x_t = α_t·x + σ_t·ε``. DDPM's discrete index ``k`` (k = 0 least noisy, T = 1000 steps) sits at
``t_k = 1 − k/(T − 1)``; between grid points ``log ᾱ`` is linear in ``k``.

What a network is fed as its time (``model_time``) is the network's convention (``TIME_INPUTS``): on the DDPM
schedules always the index ``k`` (DiT, U-ViT's discrete models and the LDM UNet all take steps); on the flows
``unit`` feeds ``t`` itself (SiT's DiT) and ``steps`` feeds ``(1 − t)·999``, the continuous counterpart of ``k``
(U-ViT's ``sde.py`` feeds ``t·999`` with its t = 1 at noise; the LDM UNet is built for steps 0…999).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

Tensor = torch.Tensor


def interpolate(x: Tensor, noise: Tensor, t: Tensor, schedule: Schedule) -> Tensor:
    """Eq. 1: ``x_t = α_t·x + σ_t·ε`` with ``t`` of shape (B,)."""
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    return _bcast(alpha, x) * x + _bcast(sigma, x) * noise


def relative_snr(t: Tensor, schedule: Schedule) -> Tensor:
    """Eq. 3: the data-independent SNR ``α_t² / σ_t²`` (errata: α_t, not α_s)."""
    return schedule.alpha(t) ** 2 / schedule.sigma(t) ** 2


def _bcast(coef: Tensor, like: Tensor) -> Tensor:
    return coef.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


TIME_INPUTS = ("unit", "steps")
STEPS_SPAN = 999.0  # ``steps`` time input: (1 − t)·999, as U-ViT's ScoreModel.predict (t·999, t = 1 at noise)


class Schedule(ABC):
    """α_t, σ_t and their time derivatives on the common axis ``t ∈ [0, 1]``; ``time_input`` is what the
    network is fed on a continuous schedule (``unit`` or ``steps``, see the module docstring)."""

    name: str
    discrete: bool = False

    def __init__(self, time_input: str = "unit"):
        if time_input not in TIME_INPUTS:
            raise ValueError(f"time_input must be one of {TIME_INPUTS}, got {time_input!r}")
        self.time_input = time_input

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Data coefficient α_t."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """Noise coefficient σ_t."""

    @abstractmethod
    def d_alpha(self, t: Tensor) -> Tensor:
        """dα_t/dt."""

    @abstractmethod
    def d_sigma(self, t: Tensor) -> Tensor:
        """dσ_t/dt."""

    def log_snr(self, t: Tensor) -> Tensor:
        """Natural log of the relative SNR α_t²/σ_t² (Eq. 3)."""
        return 2 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def model_time(self, t: Tensor) -> Tensor:
        """What the network is fed on a flow: ``t`` itself (``unit``, as SiT feeds its DiT) or ``(1 − t)·999``
        (``steps``, as U-ViT's continuous-time ScoreModel feeds ``t·999`` with its t = 1 at noise)."""
        return t if self.time_input == "unit" else (1 - t) * STEPS_SPAN

    def discretize(self, t: Tensor) -> Tensor:
        """Snap training times to the schedule's grid (identity for continuous schedules)."""
        return t

    def t_range(self, prediction: str) -> tuple[float, float]:
        """Safe training/sampling time interval for a prediction target.

        Converting a noise or data prediction to a velocity divides by α_t or σ_t, so those targets keep
        SiT's ``1e-3`` margin at the singular end; velocity prediction on a flow uses the whole interval.
        """
        return (0.0, 1.0) if prediction == "velocity" else (1e-3, 1.0 - 1e-3)

    def describe(self) -> dict:
        return {"name": self.name} if self.time_input == "unit" else {"name": self.name, "time_input": self.time_input}


class FlowLinear(Schedule):
    """Eq. 9 (rectified flow): ``α_t = t``, ``σ_t = 1 − t``."""

    name = "flow-linear"

    def alpha(self, t: Tensor) -> Tensor:
        return t

    def sigma(self, t: Tensor) -> Tensor:
        return 1 - t

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)


class FlowCosine(Schedule):
    """Eq. 10 on the common axis (SiT's GVP path, see errata): ``α_t = sin(πt/2)``, ``σ_t = cos(πt/2)``."""

    name = "flow-cosine"

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t)

    def sigma(self, t: Tensor) -> Tensor:
        return torch.cos(0.5 * math.pi * t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM linear β schedule (Ho et al. 2020), float64."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def cosine_alphas_cumprod(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Improved-DDPM cosine schedule: ᾱ(u) = f(u)/f(0), f(u) = cos²((u + s)/(1 + s)·π/2), β ≤ max_beta."""
    u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = torch.clamp(1 - f[1:] / f[:-1], max=max_beta)
    return torch.cumprod(1 - betas, dim=0)


class DDPMSchedule(Schedule):
    """A discrete DDPM schedule (T steps) placed on the continuous axis.

    ``alphas_cumprod[k]`` is ᾱ_k with k = 0 the least noisy step. ``α_t = sqrt(ᾱ)``, ``σ_t = sqrt(1 − ᾱ)``,
    with ``log ᾱ`` linear in the fractional index ``k = (1 − t)(T − 1)``.
    """

    discrete = True

    def __init__(self, name: str, alphas_cumprod: Tensor, time_input: str = "unit"):
        super().__init__(time_input)
        self.name = name
        self.alphas_cumprod = alphas_cumprod.to(torch.float64)
        self.num_steps = len(alphas_cumprod)
        self._log_abar = torch.log(self.alphas_cumprod)
        self._slopes = torch.diff(self._log_abar)  # d log ᾱ / dk on each interval

    @property
    def betas(self) -> Tensor:
        prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        return 1 - self.alphas_cumprod / prev

    def index(self, t: Tensor) -> Tensor:
        """Fractional DDPM index ``k = (1 − t)(T − 1)``."""
        return (1 - t) * (self.num_steps - 1)

    def time_of_index(self, k: Tensor) -> Tensor:
        """Inverse of :meth:`index`: ``t = 1 − k/(T − 1)``."""
        return 1 - k / (self.num_steps - 1)

    def _interval(self, k: Tensor) -> tuple[Tensor, Tensor]:
        k64 = k.to(torch.float64).clamp(0, self.num_steps - 1)
        lo = torch.clamp(torch.floor(k64).long(), max=self.num_steps - 2)
        return lo.to(self._slopes.device), (k64 - lo).to(self._slopes.device)

    def log_alpha_bar(self, t: Tensor) -> Tensor:
        """log ᾱ at time ``t`` (linear interpolation in k between grid points)."""
        device, dtype = t.device, t.dtype
        lo, frac = self._interval(self.index(t).cpu())
        value = self._log_abar[lo] + frac * self._slopes[lo]
        return value.to(device=device, dtype=dtype if dtype.is_floating_point else torch.float32)

    def _d_log_alpha_bar_dt(self, t: Tensor) -> Tensor:
        lo, _ = self._interval(self.index(t).cpu())
        slope = -self._slopes[lo] * (self.num_steps - 1)  # dk/dt = −(T − 1)
        return slope.to(device=t.device, dtype=t.dtype)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(0.5 * self.log_alpha_bar(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(self.log_alpha_bar(t)))

    def d_alpha(self, t: Tensor) -> Tensor:
        return 0.5 * self.alpha(t) * self._d_log_alpha_bar_dt(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        abar = torch.exp(self.log_alpha_bar(t))
        return -0.5 * abar * self._d_log_alpha_bar_dt(t) / self.sigma(t)

    def log_snr(self, t: Tensor) -> Tensor:
        log_abar = self.log_alpha_bar(t)
        return log_abar - torch.log(-torch.expm1(log_abar))

    def model_time(self, t: Tensor) -> Tensor:
        """The DDPM index k ∈ [0, T − 1], whatever ``time_input``: DiT, U-ViT and LDM all feed steps here."""
        return self.index(t)

    def discretize(self, t: Tensor) -> Tensor:
        """Round to the nearest grid time t_k (DDPM trains on integer k)."""
        return self.time_of_index(torch.round(self.index(t)))

    def t_range(self, prediction: str) -> tuple[float, float]:
        return (0.0, 1.0)

    def describe(self) -> dict:
        return {"name": self.name, "num_steps": self.num_steps}


def ddpm_linear(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                time_input: str = "unit") -> DDPMSchedule:
    """DDPM with linear β from 1e-4 to 0.02 over 1000 steps (Fig. 2a)."""
    return DDPMSchedule("ddpm-linear", torch.cumprod(1 - linear_betas(num_steps, beta_start, beta_end), 0),
                        time_input)


def ddpm_cosine(num_steps: int = 1000, s: float = 0.008, time_input: str = "unit") -> DDPMSchedule:
    """DDPM with the Nichol & Dhariwal cosine schedule, s = 0.008 (Fig. 2b)."""
    return DDPMSchedule("ddpm-cosine", cosine_alphas_cumprod(num_steps, s), time_input)


SCHEDULES = {
    "ddpm-linear": ddpm_linear,
    "ddpm-cosine": ddpm_cosine,
    "flow-linear": FlowLinear,
    "flow-cosine": FlowCosine,
}


def get_schedule(name: str, time_input: str = "unit") -> Schedule:
    """Build a schedule by name: ``ddpm-linear``, ``ddpm-cosine``, ``flow-linear``, ``flow-cosine``; ``time_input``
    is the network's time convention on the flows (``unit`` or ``steps``)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](time_input=time_input)
