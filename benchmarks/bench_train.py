"""Training-step throughput: it/s, images/s and achieved FLOP/s as a fraction of the measured matmul peak.

Each configuration runs the harness's own step (:func:`pipeline.train_step.train_step` with
:func:`pipeline.train_data.draw_step`: forward, Algorithm 2 loss, backward, AdamW, EMA) on random latents of
the right shape. By default: every distinct (network, batch, precision) of the mini-scale protocols, plus
DiT-S/2 on 32×32×4 latents (the 256-px geometry) in fp32 and bf16 autocast (CPU) or DiT-XL/2 / DiT-B/2 at
256 px (GPU). ``--train-config NAME:INPUT:CHANNELS:BATCH:PRECISION`` adds any other.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.common import Context, Result, budget_device, network_spec, rate
from core.precision import matmul_tf32


@dataclass
class TrainConfig:
    """One timed training configuration: a label, its run config and how long to time it."""

    label: str
    run: dict[str, Any]          # a run config (pipeline.runconfig keys; no latents needed)
    min_seconds: float = 1.5
    max_steps: int = 60
    compile: bool = False        # torch.compile the network (as `compile: true` trains at the paper scale)


def _base_run(network: dict[str, Any], batch: int, precision: str, tf32: bool) -> dict[str, Any]:
    """The FasterDiT recipe (flow linear, v-prediction, lognorm(0, 1), direction loss) on ``network``;
    the DiT baseline (DDPM linear, ε, learned σ) when the network learns σ."""
    run: dict[str, Any] = {
        "network": network, "global_batch": batch, "precision": precision, "tf32": tf32, "seed": 0,
        "optimizer": {"lr": 1e-4, "weight_decay": 0.0, "betas": [0.9, 0.999], "grad_clip": None},
        "ema_decay": 0.9999,
    }
    if network.get("learn_sigma"):
        run.update(schedule="ddpm-linear", prediction="noise", timesteps={"kind": "uniform"})
    else:
        run.update(schedule="flow-linear", prediction="velocity", timesteps={"kind": "lognorm", "mu": 0.0,
                                                                              "sigma": 1.0},
                   direction_loss=True)
    return run


def mini_scale_configs() -> list[TrainConfig]:
    """One configuration per distinct (network, global batch, precision) among the mini scale's runs."""
    from pipeline.budget import load_scale_config
    from pipeline.registry import load_registry

    registry, _ = load_registry(load_scale_config("mini"))
    seen: dict[tuple, TrainConfig] = {}
    for run in registry.runs.values():
        net = run["network"]
        key = (net["name"], net["input_size"], net["in_channels"], bool(net.get("learn_sigma")),
               run["global_batch"], run["precision"])
        if key not in seen:
            clean = {k: copy.deepcopy(v) for k, v in run.items() if k != "latents"}
            label = f"mini {net['name']}{' σ' if net.get('learn_sigma') else ''} b{run['global_batch']} " \
                    f"{run['precision']}"
            seen[key] = TrainConfig(label, clean)
    return list(seen.values())


def parse_config(text: str) -> TrainConfig:
    """``NAME:INPUT:CHANNELS:BATCH:PRECISION[:sigma]`` → a configuration (1000 classes)."""
    parts = text.split(":")
    if len(parts) not in (5, 6):
        raise ValueError(f"expected NAME:INPUT:CHANNELS:BATCH:PRECISION[:sigma], got {text!r}")
    name, size, channels, batch, precision = parts[:5]
    sigma = len(parts) == 6 and parts[5] == "sigma"
    tf32 = precision == "tf32"
    net = network_spec(name, int(size), int(channels), sigma, num_classes=1000, class_dropout_prob=0.1)
    run = _base_run(net, int(batch), "bf16" if precision == "bf16" else "fp32", tf32)
    label = f"{name} {size}x{size}x{channels} b{batch} {precision}"
    return TrainConfig(label, run, min_seconds=3.0, max_steps=30)


def default_configs(ctx: Context) -> list[TrainConfig]:
    """The configurations timed by default on this device type (see the module docstring)."""
    if ctx.device.type == "cuda":
        texts = ("DiT-XL/2:32:4:32:bf16", "DiT-XL/2:32:4:32:tf32", "DiT-B/2:32:4:64:bf16")
        return [parse_config(t) for t in texts]
    configs = mini_scale_configs()
    for precision in ("fp32", "bf16"):
        net = network_spec("DiT-S/2", 32, 4, False, num_classes=1000, class_dropout_prob=0.1)
        configs.append(TrainConfig(f"DiT-S/2 32x32x4 b8 {precision}", _base_run(net, 8, precision, False),
                                   min_seconds=3.0, max_steps=8))
    return configs


def precision_key(ctx: Context, run: dict[str, Any]) -> str:
    """The budget's precision key of ``run`` on this machine (:meth:`pipeline.budget.Device.precision_key`)."""
    return budget_device(ctx).precision_key(run["precision"], bool(run.get("tf32")))


def measure(ctx: Context, config: TrainConfig) -> dict[str, Any]:
    """Time the harness's training step on one configuration."""
    from models.ema import make_ema
    from pipeline.budget import train_flops_per_image
    from pipeline.runconfig import RunConfig
    from pipeline.train_data import draw_step
    from pipeline.train_state import build_optimizer
    from pipeline.train_step import train_step

    run_cfg = RunConfig.from_json(config.run)
    run = run_cfg.to_json()
    net_spec = run["network"]
    model = run_cfg.build_network().to(ctx.device).train()
    ema = make_ema(model)
    opt = build_optimizer(run_cfg, model)
    schedule, loss_cfg = run_cfg.build_schedule(), run_cfg.loss_config()
    batch = int(run["global_batch"])
    shape = (batch, model.in_channels, model.input_size, model.input_size)
    generator = torch.Generator(device=ctx.device).manual_seed(0)
    x = torch.randn(shape, generator=generator, device=ctx.device)
    y = torch.randint(0, model.num_classes, (batch,), generator=generator, device=ctx.device)
    step = [0]
    net_call = torch.compile(model) if config.compile else model
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)

    def one_step() -> None:
        draw = draw_step(0, step[0], shape, schedule, loss_cfg, False, ctx.device).draw
        train_step(net_call, model, ema, opt, x, y, draw, schedule, loss_cfg, run_cfg)
        step[0] += 1

    with matmul_tf32(bool(run.get("tf32")) and ctx.device.type == "cuda"):
        warmup = (3 if config.compile else 2) if config.max_steps > 10 else 1
        timing = rate(ctx, one_step, config.min_seconds, config.max_steps, warmup=warmup)
    peak_memory = torch.cuda.max_memory_allocated(ctx.device) if ctx.device.type == "cuda" else None
    key = precision_key(ctx, run)
    flops = batch * train_flops_per_image(net_spec, bool(net_spec.get("grad_checkpointing", False)))
    achieved = flops / timing["median_s"]
    peak = ctx.peaks.get(key)
    return {
        "label": config.label, "network": {k: net_spec[k] for k in ("name", "input_size", "in_channels",
                                                                     "learn_sigma", "num_classes")},
        "batch": batch, "precision": key, "recipe": f"{run['schedule']} {run['prediction']}",
        "it_s": 1 / timing["median_s"], "it_s_best": 1 / timing["best_s"],
        "images_s": batch / timing["median_s"],
        "steps_timed": timing["calls"], "flops_per_step": flops, "achieved_flops": achieved,
        "fraction_of_peak": achieved / peak if peak else None, "threads": ctx.threads,
        "compile": config.compile, "peak_memory_bytes": peak_memory,
    }


def run(ctx: Context, extra: list[str] | None = None) -> Result:
    """Time the default configurations plus ``extra`` (``--train-config`` texts)."""
    result = Result("train_step")
    configs = default_configs(ctx) + [parse_config(t) for t in (extra or [])]
    entries = [measure(ctx, config) for config in configs]
    result.data["configs"] = entries
    for e in entries:
        frac = f" ({100 * e['fraction_of_peak']:.0f}% of {e['precision']} peak)" \
            if e["fraction_of_peak"] else ""
        result.row(f"train {e['label']}", e["it_s"], f"it/s, {e['images_s']:.0f} img/s, "
                   f"{e['achieved_flops'] / 1e9:.1f} GFLOP/s{frac}")
    ctx.shared["train_entries"] = entries
    return result
