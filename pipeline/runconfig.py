"""A training run's recipe: the typed :class:`RunConfig` and the objects built from it.

A run config travels as a JSON-able dict (inside checkpoints and result files). Keys:

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

Every key but ``network`` has a default (:data:`RUN_DEFAULTS`, the only set of defaults).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from core.io import config_hash, derive_seed
from models.losses import LossConfig, rescale_data
from models.schedules import Schedule, get_schedule
from models.timesteps import LossWeight, TimestepSampling
from pipeline.run_defaults import RUN_DEFAULTS

RUN_KEYS: tuple[str, ...] = (*RUN_DEFAULTS, "network", "latents")
BLOCK_KEYS: dict[str, tuple[str, ...]] = {
    "input_scale": ("factor", "target_std"),
    "timesteps": ("kind", "mu", "sigma"),
    "loss_weight": ("kind", "gamma"),
    "optimizer": ("lr", "weight_decay", "betas", "grad_clip"),
}


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW settings; ``grad_clip`` is the gradient-norm limit (``None`` or 0: no clipping)."""

    lr: float
    weight_decay: float
    betas: tuple[float, ...]
    grad_clip: float | None


@dataclass(frozen=True)
class InputScale:
    """Algorithm 2 step 1: ``x·target_std/data_std`` when ``target_std`` is set, else ``x·factor``."""

    factor: float = 1.0
    target_std: float | None = None

    def multiplier(self, data_std: float) -> float:
        if self.target_std is not None:
            return rescale_data(1.0, self.target_std, float(data_std))
        return self.factor


@dataclass(frozen=True)
class RunConfig:
    """A complete, validated run config. Build it with :meth:`from_json` (only); :meth:`to_json` gives the dict
    back."""

    network: Mapping[str, Any]
    schedule: str
    prediction: str
    input_scale: InputScale
    timesteps: TimestepSampling
    loss_weight: LossWeight
    direction_loss: bool
    direction_weight: float
    optimizer: OptimizerConfig
    global_batch: int
    ema_decay: float
    seed: int
    flip: bool
    precision: str
    tf32: bool
    latents: str | None = None
    _json: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_json(cls, run: Mapping[str, Any]) -> RunConfig:
        """Read a run config dict: defaults filled in; unknown keys or a missing ``network`` raise ValueError."""
        full = _merge_defaults(run)
        net, opt, scale = full["network"], full["optimizer"], full["input_scale"]
        ts, lw = full["timesteps"], full["loss_weight"]
        latents = full.get("latents")
        config = cls(
            network=MappingProxyType(copy.deepcopy(dict(net))),
            schedule=full["schedule"],
            prediction=full["prediction"],
            input_scale=InputScale(
                float(scale.get("factor", 1.0)),
                float(scale["target_std"]) if scale.get("target_std") is not None else None),
            timesteps=TimestepSampling(ts["kind"], float(ts.get("mu", 0.0)), float(ts.get("sigma", 1.0))),
            loss_weight=LossWeight(lw["kind"], float(lw.get("gamma", 5.0))),
            direction_loss=bool(full["direction_loss"]),
            direction_weight=float(full["direction_weight"]),
            optimizer=OptimizerConfig(
                float(opt["lr"]), float(opt["weight_decay"]), tuple(float(b) for b in opt["betas"]),
                float(opt["grad_clip"]) if opt.get("grad_clip") is not None else None),
            global_batch=int(full["global_batch"]),
            ema_decay=float(full["ema_decay"]),
            seed=int(full["seed"]),
            flip=bool(full["flip"]),
            precision=full["precision"],
            tf32=bool(full["tf32"]),
            latents=None if latents is None else str(latents),
        )
        object.__setattr__(config, "_json", full)
        return config

    def to_json(self) -> dict[str, Any]:
        """Exactly the dict :meth:`from_json` read, defaults filled in (key order and number types kept, so run
        ids, resume hashes and checkpoints do not change). One serialisation only: build configs with
        :meth:`from_json`."""
        if self._json is None:
            raise TypeError("build a RunConfig with RunConfig.from_json(dict), not its constructor")
        return copy.deepcopy(self._json)

    def __reduce__(self) -> tuple[Any, ...]:  # pickle and deepcopy through the JSON form
        return (RunConfig.from_json, (self.to_json(),))

    def config_hash(self, length: int = 16) -> str:
        """Identity of the run for resuming (:func:`core.io.config_hash` of :meth:`to_json`)."""
        return config_hash(self.to_json(), length=length)

    @property
    def network_name(self) -> str:
        return str(self.network["name"])

    def build_network(self) -> nn.Module:
        """The run's network on the CPU, initialised from ``derive_seed(seed, "init")`` (same on every rank)."""
        return build_network(self.network, init_seed=derive_seed(self.seed, "init"))

    def build_schedule(self) -> Schedule:
        return get_schedule(self.schedule)

    def loss_config(self) -> LossConfig:
        """The objective of the run (Algorithm 2 and its Section 3 variants)."""
        return LossConfig(
            prediction=self.prediction,
            timesteps=self.timesteps,
            loss_weight=self.loss_weight,
            direction_loss=self.direction_loss,
            direction_weight=self.direction_weight,
            class_dropout=float(self.network.get("class_dropout_prob", 0.1)),
        )

    def input_multiplier(self, data_std: float) -> float:
        """The factor applied to stored latents before training (Algorithm 2, step 1), undone after sampling."""
        return self.input_scale.multiplier(data_std)


def _merge_defaults(run: Mapping[str, Any]) -> dict[str, Any]:
    """``run`` over :data:`RUN_DEFAULTS` (blocks merged one level deep), after checking its keys."""
    unknown = [key for key in run if key not in RUN_KEYS]
    if unknown:
        raise ValueError(f"unknown run config key(s) {', '.join(map(repr, unknown))}; known: {sorted(RUN_KEYS)}")
    full = copy.deepcopy(RUN_DEFAULTS)
    for key, value in run.items():
        if isinstance(value, dict) and isinstance(full.get(key), dict):
            full[key] = {**full[key], **value}
        else:
            full[key] = copy.deepcopy(value)
    if "network" not in full:
        raise ValueError("a run config needs a 'network' block")
    if not isinstance(full["network"], Mapping) or "name" not in full["network"]:
        raise ValueError("the run config's 'network' block needs a 'name'")
    for block, keys in BLOCK_KEYS.items():
        if not isinstance(full[block], Mapping):
            raise ValueError(f"run config key {block!r} must be a mapping, not {full[block]!r}")
        extra = [key for key in full[block] if key not in keys]
        if extra:
            raise ValueError(f"unknown key(s) {', '.join(f'{block}.{k}' for k in extra)} in the run config; "
                             f"{block} takes {list(keys)}")
    return full


def build_network(spec: Mapping[str, Any], init_seed: int | None = None) -> nn.Module:
    """Instantiate a network from its spec (``name`` + keyword arguments of the registry factory).

    With ``init_seed`` the initial weights depend on the seed alone. DiTs draw them from a generator of
    their own (their construction still advances the global RNG, as it always has: checkpoints store that
    state). U-ViT and LDM-UNet draw them from the global RNG, seeded inside a fork that leaves the caller's
    stream untouched; their ``init_generator`` would give other weights than every existing run started from.
    """
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
    if init_seed is None:
        return registry[name](**spec)
    if name.startswith("DiT-"):
        return registry[name](**spec, init_generator=torch.Generator().manual_seed(init_seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return registry[name](**spec)


# Helpers for callers holding a run config dict.


def with_defaults(run: Mapping[str, Any]) -> dict[str, Any]:
    """A complete run config dict: ``run`` over :data:`RUN_DEFAULTS` (``RunConfig.from_json(run).to_json()``)."""
    return RunConfig.from_json(run).to_json()


def build_schedule(run: Mapping[str, Any]) -> Schedule:
    return RunConfig.from_json(run).build_schedule()


def loss_config(run: Mapping[str, Any]) -> LossConfig:
    return RunConfig.from_json(run).loss_config()


def input_multiplier(run: Mapping[str, Any], data_std: float) -> float:
    return RunConfig.from_json(run).input_multiplier(data_std)
