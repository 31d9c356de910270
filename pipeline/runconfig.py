"""A training run's recipe as data, and the objects built from it (network, schedule, loss, scaling).

A run config is a plain JSON-able dict (it travels inside checkpoints and result files). Keys:

- ``network``: ``{"name": "DiT-XL/2", "input_size": 32, "in_channels": 4, "num_classes": 1000,
  "learn_sigma": false, "class_dropout_prob": 0.1, "grad_checkpointing": false}``
- ``schedule``: ``ddpm-linear`` | ``ddpm-cosine`` | ``flow-linear`` | ``flow-cosine``
- ``prediction``: ``noise`` | ``velocity`` | ``data``
- ``input_scale``: ``{"target_std": 0.82}`` (Algorithm 2 step 1: x·target_std/data_std) or
  ``{"factor": 0.18215}`` (a fixed multiplier, as DiT/SiT scale SD-VAE latents)
- ``timesteps``: ``{"kind": "uniform"}`` or ``{"kind": "lognorm", "mu": 0.0, "sigma": 1.0}``
- ``loss_weight``: ``{"kind": "none"}`` (or ``min-snr`` with ``gamma``, or ``snr``)
- ``direction_loss``: bool (Eq. 8), ``direction_weight``: float
- ``optimizer``: ``{"lr": 1e-4, "weight_decay": 0.0, "betas": [0.9, 0.999], "grad_clip": null}``
- ``global_batch``: int, ``ema_decay``: float, ``seed``: int, ``flip``: bool (random horizontal flips)
- ``precision``: ``fp32`` | ``bf16``; ``tf32``: bool
- ``latents``: folder holding ``index.json`` (from ``pipeline.latents``)
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from models.losses import LossConfig, rescale_data
from models.schedules import Schedule, get_schedule
from models.timesteps import LossWeight, TimestepSampling

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


def with_defaults(run: dict[str, Any]) -> dict[str, Any]:
    """A complete run config: ``run`` over :data:`RUN_DEFAULTS` (nested dicts merged one level deep)."""
    full = copy.deepcopy(RUN_DEFAULTS)
    for key, value in run.items():
        if isinstance(value, dict) and isinstance(full.get(key), dict):
            full[key] = {**full[key], **value}
        else:
            full[key] = copy.deepcopy(value)
    if "network" not in full:
        raise ValueError("a run config needs a 'network' block")
    return full


def build_network(spec: dict[str, Any]) -> nn.Module:
    """Instantiate a network from its spec (``name`` + keyword arguments of the registry factory)."""
    spec = dict(spec)
    name = spec.pop("name")
    if name.startswith("DiT-"):
        from models.dit import DiT_models

        registry = DiT_models
    else:
        from models import networks

        registry = networks.NETWORKS
    if name not in registry:
        raise ValueError(f"unknown network {name!r}; known: {sorted(registry)}")
    return registry[name](**spec)


def build_schedule(run: dict[str, Any]) -> Schedule:
    return get_schedule(run["schedule"])


def loss_config(run: dict[str, Any]) -> LossConfig:
    """The objective of a run (Algorithm 2 and its Section 3 variants)."""
    ts = run["timesteps"]
    lw = run["loss_weight"]
    return LossConfig(
        prediction=run["prediction"],
        timesteps=TimestepSampling(ts["kind"], float(ts.get("mu", 0.0)), float(ts.get("sigma", 1.0))),
        loss_weight=LossWeight(lw["kind"], float(lw.get("gamma", 5.0))),
        direction_loss=bool(run["direction_loss"]),
        direction_weight=float(run["direction_weight"]),
        class_dropout=float(run["network"].get("class_dropout_prob", 0.1)),
    )


def input_multiplier(run: dict[str, Any], data_std: float) -> float:
    """The factor applied to stored latents before training (Algorithm 2, step 1), undone after sampling."""
    scale = run["input_scale"]
    if "target_std" in scale:
        return rescale_data(1.0, float(scale["target_std"]), float(data_std))
    return float(scale.get("factor", 1.0))
