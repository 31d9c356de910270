"""Prediction targets (noise ε, velocity v, data x) and exact conversions between them.

With ``x_t = α·x + σ·ε`` and ``v = α̇·x + σ̇·ε`` (the time derivative of Eq. 1), any one prediction and
``x_t`` determine the other two: the 2×2 system ``[[α, σ], [α̇, σ̇]]·[x, ε]ᵀ = [x_t, v]ᵀ``.
For flow linear ``v = x − ε`` (Algorithm 2, step 3).
"""

from __future__ import annotations

import torch

from models.schedules import Schedule, _bcast

Tensor = torch.Tensor
PREDICTIONS = ("noise", "velocity", "data")


def velocity_target(x: Tensor, noise: Tensor, t: Tensor, schedule: Schedule) -> Tensor:
    """The velocity ``v = α̇_t·x + σ̇_t·ε``; for flow linear this is ``x − ε``."""
    return _bcast(schedule.d_alpha(t), x) * x + _bcast(schedule.d_sigma(t), x) * noise


def training_target(kind: str, x: Tensor, noise: Tensor, t: Tensor, schedule: Schedule) -> Tensor:
    """Regression target for a prediction kind: ε (noise), v (velocity) or x (data)."""
    if kind == "noise":
        return noise
    if kind == "data":
        return x
    if kind == "velocity":
        return velocity_target(x, noise, t, schedule)
    raise ValueError(f"prediction must be one of {PREDICTIONS}, not {kind!r}")


def to_data_and_noise(
    pred: Tensor, kind: str, x_t: Tensor, t: Tensor, schedule: Schedule
) -> tuple[Tensor, Tensor]:
    """Recover (x̂, ε̂) from a prediction of ``kind`` at ``(x_t, t)``."""
    a, s = _bcast(schedule.alpha(t), x_t), _bcast(schedule.sigma(t), x_t)
    if kind == "noise":
        return (x_t - s * pred) / a, pred
    if kind == "data":
        return pred, (x_t - a * pred) / s
    if kind == "velocity":
        da, ds = _bcast(schedule.d_alpha(t), x_t), _bcast(schedule.d_sigma(t), x_t)
        det = a * ds - s * da
        return (ds * x_t - s * pred) / det, (a * pred - da * x_t) / det
    raise ValueError(f"prediction must be one of {PREDICTIONS}, not {kind!r}")


def to_velocity(pred: Tensor, kind: str, x_t: Tensor, t: Tensor, schedule: Schedule) -> Tensor:
    """Convert any prediction to the ODE drift ``v(x_t, t)``."""
    if kind == "velocity":
        return pred
    data, noise = to_data_and_noise(pred, kind, x_t, t, schedule)
    return velocity_target(data, noise, t, schedule)


def to_noise(pred: Tensor, kind: str, x_t: Tensor, t: Tensor, schedule: Schedule) -> Tensor:
    """Convert any prediction to ε̂."""
    return pred if kind == "noise" else to_data_and_noise(pred, kind, x_t, t, schedule)[1]
