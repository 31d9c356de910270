"""Samplers with classifier-free guidance: DDPM ancestral (N respaced steps), Euler, Heun, adaptive dopri5, and
SiT's SDE sampler (Euler–Maruyama, :func:`sde_sample`).

All integrate from noise (t = t0 ≈ 0) to data (t = t1 ≈ 1) on the common time axis. Each returns the
final sample and the number of network function evaluations (NFE, counting a guided pair as one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from models.ddpm import FIXED_VARIANCES, DDPMChain, ancestral_step
from models.guidance import guided_forward
from models.schedules import DDPMSchedule, Schedule
from models.targets import to_noise, to_velocity

Tensor = torch.Tensor
SAMPLERS = ("ddpm", "euler", "heun", "dopri5", "sde")
SDE_LAST_STEP_SIZE = 0.04  # SiT's --last-step-size: the last 0.04 of time is one deterministic "Mean" step


@dataclass(frozen=True)
class SamplerConfig:
    """Sampler settings; ``steps`` is ignored by dopri5 (adaptive; tolerances ``atol``/``rtol``); ``ddpm_variance``
    is the DDPM sampler's variance for networks without learned σ (``fixed-large``: DiT's default)."""

    kind: str = "dopri5"
    steps: int = 250
    cfg_scale: float = 1.0
    legacy_cfg_channels: int | None = None
    atol: float = 1e-6
    rtol: float = 1e-3
    ddpm_variance: str = "fixed-large"

    def __post_init__(self) -> None:
        if self.kind not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, not {self.kind!r}")
        if self.ddpm_variance not in FIXED_VARIANCES:
            raise ValueError(f"ddpm_variance must be one of {FIXED_VARIANCES}, not {self.ddpm_variance!r}")
        if self.kind != "dopri5" and self.steps < 1:
            raise ValueError("steps must be >= 1")


class _Model:
    """The guided network seen as a function of (x, t); counts evaluations."""

    def __init__(self, net: nn.Module, schedule: Schedule, prediction: str, y: Tensor, cfg: SamplerConfig):
        self.net, self.schedule, self.prediction, self.y, self.cfg = net, schedule, prediction, y, cfg
        self.nfe = 0

    def raw(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor | None]:
        self.nfe += 1
        t_model = self.schedule.model_time(t).to(x.dtype)
        out = guided_forward(self.net, x, t_model, self.y, self.cfg.cfg_scale, self.cfg.legacy_cfg_channels)
        if self.net.learn_sigma:
            pred, var = out.chunk(2, dim=1)
            return pred, var
        return out, None

    def velocity(self, t_scalar: Tensor | float, x: Tensor) -> Tensor:
        t = torch.full((x.shape[0],), float(t_scalar), device=x.device, dtype=x.dtype)
        pred, _ = self.raw(x, t)
        return to_velocity(pred, self.prediction, x, t, self.schedule)


def euler_sample(model: _Model, x: Tensor, t0: float, t1: float, steps: int) -> Tensor:
    """Explicit Euler on dx/dt = v(x, t) with ``steps`` uniform steps."""
    ts = torch.linspace(t0, t1, steps + 1, dtype=torch.float64)
    for a, b in zip(ts[:-1], ts[1:]):
        x = x + (b - a).item() * model.velocity(a, x)
    return x


def heun_sample(model: _Model, x: Tensor, t0: float, t1: float, steps: int) -> Tensor:
    """Heun's second-order method (2 evaluations per step) with ``steps`` uniform steps."""
    ts = torch.linspace(t0, t1, steps + 1, dtype=torch.float64)
    for a, b in zip(ts[:-1], ts[1:]):
        h = (b - a).item()
        d1 = model.velocity(a, x)
        x_pred = x + h * d1
        d2 = model.velocity(b, x_pred)
        x = x + 0.5 * h * (d1 + d2)
    return x


def score_from_velocity(v: Tensor, x: Tensor, t: Tensor, schedule: Schedule) -> Tensor:
    """∇ log p_t(x) from the velocity on the path ``x_t = α_t·x + σ_t·ε`` (SiT's ``get_score_from_velocity``):
    ``s = ((α/α̇)·v − x) / (σ² − (α/α̇)·σ̇·σ)``, ``t`` of shape (B,)."""
    shape = (-1, *([1] * (x.ndim - 1)))
    alpha, sigma, d_sigma = schedule.alpha(t), schedule.sigma(t), schedule.d_sigma(t)
    ratio = (alpha / schedule.d_alpha(t)).reshape(shape)
    sigma, d_sigma = sigma.reshape(shape), d_sigma.reshape(shape)
    return ((ratio * v - x) / (sigma**2 - ratio * d_sigma * sigma)).to(x.dtype)


def sde_sample(model: _Model, x: Tensor, t0: float, steps: int, step_noise: Callable[[int], Tensor],
               last_step_size: float = SDE_LAST_STEP_SIZE) -> Tensor:
    """SiT's default SDE sampler (``sample_sde``: Euler, ``diffusion_form="sigma"``, norm 1, ``last_step="Mean"``,
    ``last_step_size=0.04``) on this harness's axis (t = 1 at data, as SiT's): the grid is ``steps`` points from
    ``t0`` to ``1 − last_step_size``; each of the first ``steps − 1`` is an Euler–Maruyama step of
    ``dx = (v + w_t·s) dt + √(2·w_t) dW`` with ``w_t = σ_t`` and the score ``s`` from the velocity
    (:func:`score_from_velocity`), its noise ``step_noise(i)``; the last is the noise-free ``x + drift·0.04``.
    ``steps`` network evaluations in all."""
    if steps < 2:
        raise ValueError("the SDE sampler needs steps >= 2")
    schedule = model.schedule
    ts = torch.linspace(t0, 1.0 - last_step_size, steps, dtype=torch.float64)
    dt = float(ts[1] - ts[0])

    def drift(t_scalar: float, x: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.full((x.shape[0],), t_scalar, device=x.device, dtype=x.dtype)
        v = model.velocity(t_scalar, x)
        w = schedule.sigma(t).reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return v + w * score_from_velocity(v, x, t, schedule), w

    for i, t in enumerate(ts[:-1].tolist()):
        f, w = drift(t, x)
        x = x + f * dt + torch.sqrt(2 * w * dt) * step_noise(i)
    f, _ = drift(float(ts[-1]), x)
    return x + f * last_step_size


def dopri5_sample(model: _Model, x: Tensor, t0: float, t1: float, atol: float, rtol: float) -> Tensor:
    """Adaptive Dormand–Prince (torchdiffeq) from t0 to t1, as SiT samples its flows."""
    from torchdiffeq import odeint

    times = torch.tensor([t0, t1], dtype=x.dtype, device=x.device)
    return odeint(model.velocity, x, times, method="dopri5", atol=atol, rtol=rtol)[-1]


def ddpm_sample(
    model: _Model,
    x: Tensor,
    schedule: DDPMSchedule,
    steps: int,
    step_noise: Callable[[int], Tensor],
    fixed_variance: str = "fixed-large",
) -> Tensor:
    """DDPM ancestral sampling over ``steps`` respaced indices; learned σ when the network has it, else
    ``fixed_variance``."""
    chain = DDPMChain.from_schedule(schedule, steps)
    for i in reversed(range(len(chain.ks))):
        k = chain.ks[i].to(torch.float64)
        t = schedule.time_of_index(k).to(x.dtype).expand(x.shape[0]).to(x.device)
        pred, var = model.raw(x, t)
        eps = to_noise(pred, model.prediction, x, t, schedule)
        x = ancestral_step(chain, x, i, eps, var, step_noise(i) if i > 0 else None, fixed_variance)
    return x


@torch.no_grad()
def sample(
    net: nn.Module,
    schedule: Schedule,
    prediction: str,
    noise: Tensor,
    y: Tensor,
    cfg: SamplerConfig,
    step_noise: Callable[[int], Tensor] | None = None,
) -> tuple[Tensor, int]:
    """Generate from initial ``noise`` with labels ``y``; returns (samples, NFE).

    ``step_noise(i)`` supplies the fresh noise of DDPM or SDE step i (the sampling stage derives it per sample
    so results do not depend on batch size); by default it is drawn from the global RNG.
    """
    model = _Model(net, schedule, prediction, y, cfg)
    t0, t1 = schedule.t_range(prediction)
    if cfg.kind == "ddpm":
        if not isinstance(schedule, DDPMSchedule):
            raise ValueError("the ddpm sampler needs a DDPM schedule; use euler/heun/dopri5 for flows")
        step_noise = step_noise or (lambda i: torch.randn_like(noise))
        x = ddpm_sample(model, noise, schedule, cfg.steps, step_noise, cfg.ddpm_variance)
    elif cfg.kind == "sde":
        if isinstance(schedule, DDPMSchedule):
            raise ValueError("the sde sampler integrates a flow; use ddpm for the DDPM schedules")
        step_noise = step_noise or (lambda i: torch.randn_like(noise))
        x = sde_sample(model, noise, t0, cfg.steps, step_noise)
    elif cfg.kind == "euler":
        x = euler_sample(model, noise, t0, t1, cfg.steps)
    elif cfg.kind == "heun":
        x = heun_sample(model, noise, t0, t1, cfg.steps)
    else:
        x = dopri5_sample(model, noise, t0, t1, cfg.atol, cfg.rtol)
    return x, model.nfe
