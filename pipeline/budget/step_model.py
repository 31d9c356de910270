"""The time of one data-parallel training step on GPUs, fitted to published DiT-XL/2 throughputs.

One step of ``P`` processes (``G`` GPUs per node × ``N`` nodes), each with ``b = global_batch / P`` images:

* **compute**: ``b × train FLOPs per image / (peak[precision] × u(precision, T))``, where ``T = b × tokens``
  is the tokens per GPU and ``u(key, T) = u_key × min(1, max(T, T_min) / T_ref) ** alpha`` for the
  tensor-core precisions (small per-GPU batches use the tensor cores less well; fp32 CUDA-core GEMMs are
  taken as size-independent). ``T_min`` (default: the calibrations' smallest tokens per GPU) keeps the
  power law inside the range it was fitted on;
* **encode** (when the latents are encoded on the fly, as DiT's ``train.py`` does): ``b × SD-VAE encoder
  FLOPs / (peak[tf32] × u_conv)`` (a float32 VAE: cuDNN convolutions run TF32 by default);
* **all-reduce** (DDP, ``P > 1``): a ring all-reduce of the float32 gradients, ``2 (P-1)/P × 4 × params /
  bandwidth`` (NVLink bus bandwidth inside a node, the network's per GPU across nodes); DDP overlaps it with
  the backward pass bucket by bucket, so only what outlasts the backward pass, and at least the last
  bucket, is exposed;
* **optimizer + EMA**: memory-bound passes over the parameters (AdamW reads parameters, gradients and two
  moments and writes three: 28 bytes per parameter, +4 for the gradient norm when clipping; the EMA update
  12) at ``memory bandwidth × memory_efficiency``.

``u_fp32, u_tf32, u_bf16, alpha, u_conv`` are fitted (:func:`fit_step_model`, least squares on the log of
predicted ÷ published step time) to the ``calibration`` entries of config/throughput.yaml; bandwidths are
datasheet or typical measured figures with their sources. The model is eager PyTorch: ``torch.compile``'s
speed-up is not modelled (the published runs are eager), so compiled runs are over-estimated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.budget.flops import network_parameters, train_flops_per_image, vae_flops

PRECISIONS = ("fp32", "tf32", "bf16")
TENSOR_CORE = ("tf32", "bf16")          # the token exponent applies to these; fp32 GEMMs saturate early
FITTED = ("u_fp32", "u_tf32", "u_bf16", "alpha", "u_conv")


@dataclass(frozen=True)
class StepModel:
    """Fitted utilisations, the token exponent, and the fixed assumptions they were fitted with."""

    utilisation: dict[str, float]       # per precision key, at T >= reference_tokens
    alpha: float
    conv_utilisation: float
    reference_tokens: float
    min_tokens: float                   # below this, u is held at u(min_tokens): no extrapolation
    memory_efficiency: float
    bucket_bytes: float
    internode_gbps: float
    residual_rms: float = 0.0

    def compute_utilisation(self, key: str, tokens_per_gpu: float | None) -> float:
        """``u(key, T)``; ``tokens_per_gpu=None`` (a convolution network): the convolution utilisation."""
        if tokens_per_gpu is None:
            return self.conv_utilisation
        if key not in TENSOR_CORE:
            return self.utilisation[key]
        tokens = max(tokens_per_gpu, self.min_tokens)
        return self.utilisation[key] * min(1.0, tokens / self.reference_tokens) ** self.alpha


def tokens_per_image(spec: Mapping[str, Any]) -> int | None:
    """Tokens a transformer sees per image (``(input / patch)²``); ``None`` for a convolution network."""
    name = str(spec["name"])
    if "/" not in name:
        return None
    patch = int(name.rsplit("/", 1)[1])
    return (int(spec["input_size"]) // patch) ** 2


@dataclass(frozen=True)
class StepSetting:
    """What a training step's time depends on."""

    network: Mapping[str, Any]
    global_batch: int
    gpus_per_node: int
    nodes: int
    key: str
    grad_checkpointing: bool = False
    vae_encode_resolution: int | None = None
    grad_clip: bool = False

    @property
    def processes(self) -> int:
        """Data-parallel processes (one per GPU)."""
        return max(self.gpus_per_node, 1) * max(self.nodes, 1)

    @property
    def tokens_per_gpu(self) -> float | None:
        """Tokens each GPU processes per step (``None``: a convolution network)."""
        tokens = tokens_per_image(self.network)
        return None if tokens is None else self.global_batch / self.processes * tokens

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> StepSetting:
        """A setting from a calibration or check entry of config/throughput.yaml."""
        return cls(network=entry["network"], global_batch=int(entry["global_batch"]),
                   gpus_per_node=int(entry["gpus"]) // int(entry.get("nodes", 1)),
                   nodes=int(entry.get("nodes", 1)), key=str(entry["precision"]),
                   grad_checkpointing=bool(entry.get("grad_checkpointing", False)),
                   vae_encode_resolution=entry.get("vae_encode_resolution"),
                   grad_clip=bool(entry.get("grad_clip", False)))


def step_time(setting: StepSetting, device: Any, model: StepModel,
              utilisation: float | None = None) -> dict[str, float]:
    """Seconds of one step by part (``compute``, ``encode``, ``allreduce``, ``optimizer``) and ``total``.

    ``utilisation``: a measured compute utilisation of this device (a benchmark file) in place of the fitted
    ``u(key, T)``. A device without an all-reduce or memory bandwidth leaves that part out (0)."""
    per_gpu = setting.global_batch / setting.processes
    util = model.compute_utilisation(setting.key, setting.tokens_per_gpu) if utilisation is None else utilisation
    compute = per_gpu * train_flops_per_image(setting.network, setting.grad_checkpointing) / (
        device.peak(setting.key) * util)
    encode = 0.0
    if setting.vae_encode_resolution:
        encode = per_gpu * vae_flops(int(setting.vae_encode_resolution), "encode") / (
            device.peak(device.precision_key("fp32", tf32=True)) * model.conv_utilisation)
    params = network_parameters(setting.network)
    allreduce = 0.0
    bandwidth = device.allreduce_gbps if setting.nodes == 1 else min(device.allreduce_gbps, model.internode_gbps)
    if setting.processes > 1 and bandwidth > 0:
        grad_bytes = 4.0 * params
        ring = 2 * (setting.processes - 1) / setting.processes * grad_bytes / (bandwidth * 1e9)
        backward = compute * (3.0 / 4.0 if setting.grad_checkpointing else 2.0 / 3.0)
        allreduce = max(ring - backward, ring * min(1.0, model.bucket_bytes / grad_bytes))
    optimizer = 0.0
    if device.memory_gbps:
        bytes_per_param = 28.0 + (4.0 if setting.grad_clip else 0.0) + 12.0
        optimizer = bytes_per_param * params / (device.memory_gbps * 1e9 * model.memory_efficiency)
    parts = {"compute": compute, "encode": encode, "allreduce": allreduce, "optimizer": optimizer}
    return {**parts, "total": sum(parts.values()), "utilisation": util}


def _model_from(values: Mapping[str, float], fixed: Mapping[str, float]) -> StepModel:
    """A model from the parameters by name (``FITTED``: utilisations, ``alpha``) and the fixed inputs."""
    return StepModel(utilisation={k: values[f"u_{k}"] for k in PRECISIONS}, alpha=values["alpha"],
                     conv_utilisation=values["u_conv"],
                     **{k: v for k, v in fixed.items() if k not in FITTED})


def fit_step_model(entries: Sequence[Mapping[str, Any]], devices: Mapping[str, Any],
                   fixed: Mapping[str, float]) -> StepModel:
    """Least-squares fit of ``FITTED`` to the entries' published it/s (log of predicted ÷ published step time).

    A parameter named in ``fixed`` (e.g. ``alpha: 0``) is held at that value and the others are fitted.
    Utilisations are bounded to (0.01, 1], ``alpha`` to [0, 1.5]; the start point and solver are fixed, so
    the fit is deterministic. With no entries the start values are returned."""
    import numpy as np
    from scipy.optimize import least_squares

    fixed = {k: float(v) for k, v in fixed.items()}
    settings = [(StepSetting.from_entry(e), devices[e["device"]], float(e["it_s"])) for e in entries]
    if "min_tokens" not in fixed:
        seen = [s.tokens_per_gpu for s, _, _ in settings if s.tokens_per_gpu is not None]
        fixed["min_tokens"] = min(seen, default=0.0)
    # Utilisations are fitted as logarithms (bounded to [log 0.01, 0]); alpha as itself ([0, 1.5]).
    start = {"u_fp32": 0.5, "u_tf32": 0.3, "u_bf16": 0.3, "alpha": 0.5, "u_conv": 0.3}
    free = [name for name in FITTED if name not in fixed]

    def values(theta: Sequence[float]) -> dict[str, float]:
        out = {name: fixed[name] for name in FITTED if name in fixed}
        for name, value in zip(free, theta):
            out[name] = float(value) if name == "alpha" else math.exp(value)
        return out

    theta0 = np.array([start[n] if n == "alpha" else math.log(start[n]) for n in free])
    if not entries or not free:
        return _model_from(values(theta0), fixed)

    def residuals(theta: np.ndarray) -> list[float]:
        model = _model_from(values(theta), fixed)
        return [math.log(step_time(s, d, model)["total"] * it_s) for s, d, it_s in settings]

    lower = [0.0 if n == "alpha" else math.log(0.01) for n in free]
    upper = [1.5 if n == "alpha" else 0.0 for n in free]
    result = least_squares(residuals, theta0, bounds=(lower, upper), method="trf", x_scale=1.0)
    rms = float(np.sqrt(np.mean(np.square(result.fun))))
    return StepModel(**{**_model_from(values(result.x), fixed).__dict__, "residual_rms": rms})


def predicted_it_s(entry: Mapping[str, Any], devices: Mapping[str, Any], model: StepModel) -> float:
    """The model's it/s for a calibration or check entry."""
    return 1.0 / step_time(StepSetting.from_entry(entry), devices[entry["device"]], model)["total"]


def published_and_predicted(entry: Mapping[str, Any], devices: Mapping[str, Any],
                            model: StepModel) -> tuple[float, float, str]:
    """(published, predicted, unit) for an entry: it/s, or hours / GPU-hours for a whole run."""
    it_s = predicted_it_s(entry, devices, model)
    if "it_s" in entry:
        return float(entry["it_s"]), it_s, "it/s"
    hours = int(entry["steps"]) / it_s / 3600
    if "reported_gpu_hours" in entry:
        return float(entry["reported_gpu_hours"]), hours * int(entry["gpus"]), "GPU-h"
    return float(entry["reported_hours"]), hours, "h"


def time_ratio(published: float, predicted: float, unit: str) -> float:
    """Predicted ÷ published *time* (> 1: the model is slower than the source): it/s ratios are inverted."""
    return published / predicted if unit == "it/s" else predicted / published

