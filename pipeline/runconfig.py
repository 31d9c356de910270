"""A training run's recipe: the typed :class:`RunConfig` and the objects built from it.

A run config travels as a JSON-able dict (inside checkpoints and result files). Keys:

- ``network``: ``{"name": "DiT-XL/2", "input_size": 32, "in_channels": 4, "num_classes": 1000,
  "learn_sigma": false, "class_dropout_prob": 0.1, "grad_checkpointing": false}``; optional ``time_input``
  (``unit`` | ``steps``: the time the network is fed on a flow; default its family's reference convention,
  :func:`models.families.reference_time_input`; not a factory argument)
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

Every key but ``network`` has a default (:data:`RUN_DEFAULTS`, the only set of defaults). The merged config is
checked against ``workflow/schemas/run.schema.yaml`` (types, ranges, enums; ``network.name`` against
``models.networks``); the first violation is one :class:`~core.errors.InputError` naming the key path, e.g.
``run config key 'optimizer.lr': expected a finite number > 0, got -1``.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError
from torch import nn

from core.errors import InputError
from core.io import config_hash, derive_seed
from models.families import reference_time_input
from models.losses import LossConfig, rescale_data
from models.schedules import Schedule, get_schedule
from models.timesteps import LossWeight, TimestepSampling
from pipeline.run_defaults import RUN_DEFAULTS

RUN_SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "run.schema.yaml"
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
        """Read a run config dict: defaults filled in, then checked (:func:`validate_run`); unknown keys, a
        missing ``network`` or a value of the wrong type or range raise :class:`~core.errors.InputError`."""
        if not isinstance(run, Mapping):
            raise InputError(f"a run config must be a mapping, not {type(run).__name__}")
        full = _merge_defaults(run)
        validate_run(full)
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

    @property
    def time_input(self) -> str:
        """What the network is fed as time on a flow: the ``network.time_input`` key, else its family's
        reference convention (``unit`` for DiT as SiT, ``steps`` for U-ViT and the LDM UNet)."""
        return str(self.network.get("time_input") or reference_time_input(self.network_name))

    def build_schedule(self) -> Schedule:
        return get_schedule(self.schedule, time_input=self.time_input)

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
        raise InputError(f"unknown run config key(s) {', '.join(map(repr, unknown))}; known: {sorted(RUN_KEYS)}")
    full = copy.deepcopy(RUN_DEFAULTS)
    for key, value in run.items():
        if isinstance(value, dict) and isinstance(full.get(key), dict):
            full[key] = {**full[key], **value}
        else:
            full[key] = copy.deepcopy(value)
    if "network" not in full:
        raise InputError("a run config needs a 'network' block")
    if not isinstance(full["network"], Mapping) or "name" not in full["network"]:
        raise InputError("the run config's 'network' block needs a 'name'")
    for block, keys in BLOCK_KEYS.items():
        if not isinstance(full[block], Mapping):
            raise InputError(f"run config key {block!r} must be a mapping, not {full[block]!r}")
        extra = [key for key in full[block] if key not in keys]
        if extra:
            raise InputError(f"unknown key(s) {', '.join(f'{block}.{k}' for k in extra)} in the run config; "
                             f"{block} takes {list(keys)}")
    return full


# Schema check: workflow/schemas/run.schema.yaml plus two keywords (``finite``, ``expected``) and a strict integer.


def _finite(validator: Any, wanted: bool, instance: Any, schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    if wanted and validator.is_type(instance, "number") and not math.isfinite(instance):
        yield ValidationError(f"{instance!r} is not finite")


def _is_integer(_checker: Any, instance: Any) -> bool:
    """A whole number written as one: ``8``, not ``8.0`` and not ``True`` (Python's bools are ints)."""
    return isinstance(instance, numbers.Integral) and not isinstance(instance, bool)


_RunValidator = validators.extend(
    Draft202012Validator, validators={"finite": _finite},
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer))


@cache
def _run_validator() -> Any:
    with open(RUN_SCHEMA) as handle:
        schema = yaml.safe_load(handle)
    _RunValidator.check_schema(schema)
    return _RunValidator(schema)


_TYPE_WORDS = {"integer": "an integer", "number": "a number", "boolean": "true or false", "string": "a string",
               "object": "a mapping", "array": "a list", "null": "null"}


def expected_text(schema: Mapping[str, Any]) -> str:
    """What a (sub)schema of run.schema.yaml asks for, in words: ``a finite number > 0``, ``one of 'fp32', ...``."""
    if "expected" in schema:
        return str(schema["expected"])
    if "enum" in schema:
        return "one of " + ", ".join(map(repr, schema["enum"]))
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    words = [_TYPE_WORDS[t] for t in types if t != "null"]
    text = " or ".join(words) or "a value"
    if schema.get("finite") and "number" in types:
        text = text.replace("a number", "a finite number")
    lo, lo_open = (schema["exclusiveMinimum"], True) if "exclusiveMinimum" in schema else (schema.get("minimum"), False)
    hi, hi_open = (schema["exclusiveMaximum"], True) if "exclusiveMaximum" in schema else (schema.get("maximum"), False)
    if lo is not None and hi is not None:
        text += f" in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        text += f" {'>' if lo_open else '>='} {lo:g}"
    elif hi is not None:
        text += f" {'<' if hi_open else '<='} {hi:g}"
    if "minLength" in schema and "string" in types:
        text = "a non-empty string"
    return f"null or {text}" if "null" in types else text


def key_path(parts: Any) -> str:
    """``optimizer.betas[1]`` from a jsonschema path ``['optimizer', 'betas', 1]``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def validate_run(full: Mapping[str, Any]) -> None:
    """Check a defaults-filled run config against workflow/schemas/run.schema.yaml and the network registry.

    The first violation (in schema order) raises one :class:`~core.errors.InputError` line naming its key path:
    ``run config key 'optimizer.lr': expected a finite number > 0, got -1``.
    """
    error = next(iter(_run_validator().iter_errors(full)), None)
    if error is not None:
        path = key_path(error.absolute_path)
        if error.validator in ("required", "additionalProperties"):
            where = f" key {path!r}" if path else ""
            raise InputError(f"run config{where}: {error.message}")
        raise InputError(f"run config key {path!r}: expected {expected_text(error.schema)}, "
                         f"got {_shown(error.instance)}")
    from models.networks import NETWORKS

    name = full["network"]["name"]
    if name not in NETWORKS:
        raise InputError(f"run config key 'network.name': expected a known network, got {name!r} "
                         f"(unknown network; known: {', '.join(sorted(NETWORKS))})")


def build_network(spec: Mapping[str, Any], init_seed: int | None = None) -> nn.Module:
    """Instantiate a network from its spec (``name`` + keyword arguments of the registry factory).

    With ``init_seed`` the initial weights depend on the seed alone. DiTs draw them from a generator of
    their own (their construction still advances the global RNG, as it always has: checkpoints store that
    state). U-ViT and LDM-UNet draw them from the global RNG, seeded inside a fork that leaves the caller's
    stream untouched; their ``init_generator`` would give other weights than every existing run started from.
    """
    spec = dict(spec)
    name = spec.pop("name")
    spec.pop("time_input", None)  # read by the schedule (RunConfig.time_input), not the factory
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
