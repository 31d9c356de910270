"""Adaptive Dormand–Prince 5(4) with per-sample step-size control, for sample sets that do not depend on
the batch they are computed in.

torchdiffeq's dopri5 (used by :func:`models.samplers.sample`) adapts one step size for the whole batch, so a
sample's trajectory depends on its batch mates. Here each sample has its own step size, error norm and
accept/reject decision (vectorised over the batch), so its result and NFE are the same alone or in any batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import torch
from torch import nn

from models.guidance import guided_forward
from models.samplers import SamplerConfig
from models.schedules import Schedule
from models.targets import to_velocity

Tensor = torch.Tensor


_F = Fraction
# Dormand & Prince (1980) 5(4) tableau; row s gives the weights of k_1..k_s for stage s + 1.
DOPRI_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DOPRI_A_EXACT = (
    (_F(1, 5),),
    (_F(3, 40), _F(9, 40)),
    (_F(44, 45), _F(-56, 15), _F(32, 9)),
    (_F(19372, 6561), _F(-25360, 2187), _F(64448, 6561), _F(-212, 729)),
    (_F(9017, 3168), _F(-355, 33), _F(46732, 5247), _F(49, 176), _F(-5103, 18656)),
    (_F(35, 384), _F(0), _F(500, 1113), _F(125, 192), _F(-2187, 6784), _F(11, 84)),  # = 5th-order weights
)
_DOPRI_B4_EXACT = (_F(5179, 57600), _F(0), _F(7571, 16695), _F(393, 640), _F(-92097, 339200),
                   _F(187, 2100), _F(1, 40))
DOPRI_A = tuple(tuple(float(a) for a in row) for row in _DOPRI_A_EXACT)
DOPRI_E = tuple(float(b5 - b4) for b5, b4 in zip((*_DOPRI_A_EXACT[-1], _F(0)), _DOPRI_B4_EXACT))
SAFETY, MAX_GROWTH, MAX_SHRINK, ERROR_EXPONENT = 0.9, 10.0, 0.2, 1 / 5

Velocity = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x, t float64 (n,), rows (n,)) -> dx/dt


def _row_rms(values: Tensor) -> Tensor:
    """Root mean square of each row, in float64 (the error norm of one sample)."""
    flat = values.double().flatten(1)
    return (flat * flat).mean(1).sqrt()


def _elementwise_pow(values: Tensor, exponent: float) -> Tensor:
    """``values ** exponent`` through Python's ``math.pow``, one element at a time.

    torch's vectorised ``pow`` and its scalar tail loop can differ in the last bit, so a sample's
    step size would depend on its position in the batch; the controller works on a handful of numbers
    per step, so exactness costs nothing.
    """
    result = [math.pow(v, exponent) for v in values.tolist()]
    return torch.tensor(result, dtype=torch.float64, device=values.device)


def _per_row(h: Tensor, like: Tensor) -> Tensor:
    return h.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def _weighted_sum(weights: Sequence[float], ks: Sequence[Tensor]) -> Tensor:
    total = torch.zeros_like(ks[0])
    for w, k in zip(weights, ks):
        if w != 0.0:
            total = total + w * k
    return total


def initial_step_size(
    velocity: Velocity, y0: Tensor, t0: Tensor, f0: Tensor, rows: Tensor, atol: float, rtol: float
) -> Tensor:
    """Starting step of each sample (Hairer, Nørsett & Wanner, Solving ODEs I, Sec. II.4); one evaluation."""
    scale = atol + rtol * y0.abs()
    d0, d1 = _row_rms(y0 / scale), _row_rms(f0 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-300))
    f1 = velocity(y0 + _per_row(h0, y0) * f0, t0 + h0, rows)
    d2 = _row_rms((f1 - f0) / scale) / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(dmax <= 1e-15, torch.clamp_min(h0 * 1e-3, 1e-6),
                     _elementwise_pow(0.01 / dmax.clamp_min(1e-300), ERROR_EXPONENT))
    return torch.minimum(100 * h0, h1)


def _next_step_size(h: Tensor, ratio: Tensor, accepted: Tensor) -> Tensor:
    """Standard controller: ``h·clip(0.9·ratio^(−1/5))``, never shrinking after an accepted step."""
    factor = SAFETY * _elementwise_pow(ratio.clamp_min(1e-10), -ERROR_EXPONENT)
    factor = torch.where(ratio == 0, torch.full_like(factor, MAX_GROWTH), factor)
    low = torch.where(accepted, torch.ones_like(factor), torch.full_like(factor, MAX_SHRINK))
    return h * torch.minimum(torch.maximum(factor, low), torch.full_like(factor, MAX_GROWTH))


def dopri5_per_sample(
    velocity: Velocity, x0: Tensor, t0: float, t1: float, atol: float, rtol: float,
    max_attempts: int = 100_000,
) -> tuple[Tensor, Tensor]:
    """Integrate ``dx/dt = velocity(x, t)`` from ``t0`` to ``t1 > t0`` with adaptive Dormand–Prince 5(4).

    Vectorised over the batch, but each sample has its own step size, RMS error norm
    (``err / (atol + rtol·max(|y_old|, |y_new|))``) and accept/reject decision, so its result and its
    evaluation count do not depend on the other samples. Returns ``(x(t1), nfe)`` with ``nfe`` per sample
    (2 for the start, 6 per attempted step thanks to first-same-as-last).
    """
    n, device = x0.shape[0], x0.device
    rows = torch.arange(n, device=device)
    y = x0.clone()
    t = torch.full((n,), float(t0), dtype=torch.float64, device=device)
    k_first = velocity(y, t, rows)
    h = initial_step_size(velocity, y, t, k_first, rows, atol, rtol)
    nfe = torch.full((n,), 2, dtype=torch.int64, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    for _ in range(max_attempts):
        active = (~done).nonzero().squeeze(1)
        if active.numel() == 0:
            return y, nfe
        ya, ta, k1 = y[active], t[active], k_first[active]
        remaining = t1 - ta
        ha = torch.minimum(h[active], remaining)
        lands = ha >= remaining
        ks = [k1]
        stage_y = ya
        for a_row, c in zip(DOPRI_A, DOPRI_C[1:]):
            stage_y = ya + _per_row(ha, ya) * _weighted_sum(a_row, ks)
            ks.append(velocity(stage_y, ta + c * ha, active))
        y_new = stage_y  # the last stage is evaluated at the 5th-order solution (FSAL)
        nfe[active] += 6
        err = _per_row(ha, ya) * _weighted_sum(DOPRI_E, ks)
        tolerance = atol + rtol * torch.maximum(ya.abs(), y_new.abs())
        ratio = _row_rms(err / tolerance)
        if not torch.isfinite(ratio).all():
            raise FloatingPointError("non-finite values while integrating the sampling ODE "
                                     f"(batch rows {active[~torch.isfinite(ratio)].tolist()})")
        accepted = ratio <= 1.0
        keep = active[accepted]
        y[keep] = y_new[accepted]
        k_first[keep] = ks[-1][accepted]
        t[keep] = torch.where(lands, torch.full_like(ta, float(t1)), ta + ha)[accepted]
        done[keep] = lands[accepted]
        h[active] = _next_step_size(ha, ratio, accepted)
    raise RuntimeError(f"dopri5 did not reach t = {t1} within {max_attempts} attempted steps")


def guided_velocity(
    net: nn.Module, schedule: Schedule, prediction: str, y: Tensor, cfg: SamplerConfig
) -> Velocity:
    """The guided network as an ODE drift with a time per row: ``v(x, t, rows)`` for labels ``y[rows]``."""

    def velocity(x: Tensor, t: Tensor, rows: Tensor) -> Tensor:
        t_x = t.to(x.dtype)
        out = guided_forward(net, x, schedule.model_time(t_x).to(x.dtype), y[rows], cfg.cfg_scale,
                             cfg.legacy_cfg_channels)
        pred = out.chunk(2, dim=1)[0] if net.learn_sigma else out
        return to_velocity(pred, prediction, x, t_x, schedule)

    return velocity
