"""The one set of run-config defaults (torch-free: the registry reads it at Snakefile parse time)."""

from __future__ import annotations

from typing import Any

RUN_DEFAULTS: dict[str, Any] = {
    "schedule": "flow-linear",
    "prediction": "velocity",
    "input_scale": {"factor": 1.0},
    "timesteps": {"kind": "uniform"},
    "loss_weight": {"kind": "none"},
    "direction_loss": False,
    "direction_weight": 1.0,
    "optimizer": {"lr": 1e-4, "weight_decay": 0.0, "betas": [0.9, 0.999], "grad_clip": None},
    "global_batch": 256,
    "ema_decay": 0.9999,
    "seed": 0,
    "flip": False,
    "precision": "fp32",
    "tf32": True,
}
