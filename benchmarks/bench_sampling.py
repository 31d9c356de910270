"""Sampling throughput: samples/s and network function evaluations (NFE) per sample for each sampler.

Runs the sampling stage's own code path (:class:`pipeline.sample.SamplingSession`: per-sample noise and
labels, fixed micro-batches of the mini scale's ``sample_micro_batch``, per-sample adaptive dopri5, identity
decoding) on the mini scale:

* flow samplers (dopri5 at atol 1e-4 / rtol 1e-3, Heun, Euler) with the mini FasterDiT checkpoint that
  the train-vs-plain benchmark trains (``TRAIN_LONG`` steps) (raw weights: the EMA is still at its initial value);
* DDPM ancestral sampling with a DiT-T/2 of the DiT baseline recipe (learned σ; the NFE is fixed, so random
  weights time it faithfully);
* forward-only rates of the other mini networks, and of DiT-S/2 on a 32×32×4 latent plus the SD-VAE decoder
  (architecture of sd-vae-ft-ema, random weights; timed at 128 px and scaled to 256 px by the FLOP ratio)
  to extrapolate the cost of one paper-scale sample.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks import bench_train_vs_plain
from benchmarks.common import Context, Result, network_spec, rate, timed
from core.precision import matmul_tf32

NUM_SAMPLES = 250
MINI_SAMPLERS = (
    {"kind": "dopri5", "atol": 1e-4, "rtol": 1e-3, "label": "dopri5 (atol 1e-4, rtol 1e-3)"},
    {"kind": "heun", "steps": 4, "label": "heun-4 (smoke)"},
    {"kind": "euler", "steps": 20, "label": "euler-20"},
)
DDPM_STEPS = 100


def mini_micro_batch() -> int:
    """Network rows per call at the mini scale (``sample_micro_batch``; part of a sample set's identity)."""
    from pipeline.budget import load_scale_config

    config = load_scale_config("mini")
    return int(config["protocols"]["section4"].get("sample_micro_batch", 32))


def _session(ctx: Context, net: torch.nn.Module, run: dict[str, Any], sampler: Any, multiplier: float,
             micro_batch: int) -> Any:
    from pipeline.autoencoders import IdentityAutoencoder
    from pipeline.runconfig import build_schedule
    from pipeline.sample import SamplingSession

    return SamplingSession(net.to(ctx.device).eval(), build_schedule(run), run["prediction"], sampler,
                           IdentityAutoencoder(net.in_channels), multiplier, 0, net.num_classes,
                           micro_batch, ctx.device)


def _flow_model(ctx: Context) -> tuple[torch.nn.Module, dict[str, Any], float]:
    """The train-vs-plain benchmark's checkpoint (raw weights); trained here if that benchmark did not run."""
    from pipeline.checkpoints import load_network
    from pipeline.runconfig import input_multiplier

    if "checkpoint" not in ctx.shared:

        bench_train_vs_plain.time_train_segments(ctx, bench_train_vs_plain.mini_fasterdit_run(
            bench_train_vs_plain.digits_latents(ctx)))
    net, run, ckpt = load_network(ctx.shared["checkpoint"], use_ema=False, device=ctx.device)
    return net, run, input_multiplier(run, float(ckpt.get("data_std", 1.0)))


def sampler_runs(ctx: Context) -> list[dict[str, Any]]:
    from models.samplers import SamplerConfig
    from pipeline.runconfig import RunConfig

    entries = []
    net, run, multiplier = _flow_model(ctx)
    cases: list[tuple[dict[str, Any], torch.nn.Module, dict[str, Any], float]] = [
        (spec, net, run, multiplier) for spec in MINI_SAMPLERS]
    ddpm_run = {"network": network_spec("DiT-T/2", 8, 1, True, class_dropout_prob=0.1),
                "schedule": "ddpm-linear", "prediction": "noise", "seed": 0}
    cases.append(({"kind": "ddpm", "steps": DDPM_STEPS, "label": f"ddpm-{DDPM_STEPS} (learned σ)"},
                  RunConfig.from_json(ddpm_run).build_network(), ddpm_run, 1.0))
    indices = list(range(NUM_SAMPLES))
    micro = mini_micro_batch()
    for spec, model, model_run, mult in cases:
        config = SamplerConfig(kind=spec["kind"], steps=int(spec.get("steps", 250)), cfg_scale=1.0,
                               atol=float(spec.get("atol", 1e-6)), rtol=float(spec.get("rtol", 1e-3)))
        session = _session(ctx, model, model_run, config, mult, micro)
        session.generate(indices[:8])  # warm-up
        seconds, batch = timed(ctx, lambda s=session: s.generate(indices))
        nfe = batch.nfe.astype(float)
        entries.append({
            "sampler": spec["label"], "kind": spec["kind"], "network": model_run["network"],
            "num_samples": NUM_SAMPLES, "micro_batch": micro, "seconds": seconds,
            "samples_s": NUM_SAMPLES / seconds,
            "nfe_mean": float(nfe.mean()), "nfe_min": float(nfe.min()), "nfe_max": float(nfe.max()),
            "sample_forwards_s": float(nfe.sum()) / seconds,
            "weights": (f"trained {bench_train_vs_plain.TRAIN_LONG} steps (raw)" if spec["kind"] != "ddpm"
                        else "random init (NFE does not depend on weights)"),
            "atol": spec.get("atol"), "rtol": spec.get("rtol"),
        })
    return entries


def forward_rate(ctx: Context, spec: dict[str, Any], batch: int, min_seconds: float = 1.0) -> dict[str, Any]:
    """Forward passes (no grad) of a freshly initialised network: sample-forwards per second."""
    from pipeline.runconfig import build_network

    net = build_network(spec).to(ctx.device).eval()
    generator = torch.Generator(device=ctx.device).manual_seed(0)
    shape = (batch, net.in_channels, net.input_size, net.input_size)
    x = torch.randn(shape, generator=generator, device=ctx.device)
    t = torch.rand(batch, generator=generator, device=ctx.device)
    y = torch.randint(0, net.num_classes, (batch,), generator=generator, device=ctx.device)
    with torch.no_grad():
        timing = rate(ctx, lambda: net(x, t, y), min_seconds=min_seconds, max_calls=100)
    return {"network": spec, "batch": batch, "forward_s": timing["median_s"],
            "sample_forwards_s": batch / timing["median_s"]}


def vae_decode_seconds(ctx: Context, resolution: int = 128) -> dict[str, Any]:
    """One SD-VAE decode (sd-vae-ft-ema architecture, random weights) of a ``resolution``-px image."""
    from diffusers import AutoencoderKL

    from pipeline.budget import SD_VAE_ARCHITECTURE, vae_flops

    torch.manual_seed(0)
    vae = AutoencoderKL(**SD_VAE_ARCHITECTURE).to(ctx.device).eval()
    z = torch.randn(1, 4, resolution // 8, resolution // 8, device=ctx.device)
    with torch.no_grad():
        timing = rate(ctx, lambda: vae.decode(z).sample, min_seconds=0.0, max_calls=1, warmup=0)
    flops = vae_flops(resolution, "decode")
    at_256 = timing["median_s"] * vae_flops(256, "decode") / flops
    return {"resolution": resolution, "seconds_per_image": timing["median_s"], "flops_per_image": flops,
            "achieved_flops": flops / timing["median_s"], "seconds_per_image_256px_by_flops": at_256,
            "weights": "random (architecture of sd-vae-ft-ema)"}


def run(ctx: Context) -> Result:
    """Every sampling measurement, with TF32 matmuls on (pipeline.sample's default, ``--tf32``)."""
    with matmul_tf32(True):
        return _run(ctx, Result("sampling"))


def _run(ctx: Context, result: Result) -> Result:
    runs = sampler_runs(ctx)
    micro = mini_micro_batch()
    forwards = [forward_rate(ctx, network_spec(name, 8, 1, False, class_dropout_prob=0.1), micro)
                for name in ("DiT-Mini/2", "U-ViT-T/2", "LDM-UNet-T")]
    latent = forward_rate(ctx, network_spec("DiT-S/2", 32, 4, False, num_classes=1000), 8)
    decode = vae_decode_seconds(ctx)
    ddpm250_s = 250 / latent["sample_forwards_s"] + decode["seconds_per_image_256px_by_flops"]
    result.data = {"samplers": runs, "forward_rates": forwards, "latent_dit_s2": latent,
                   "sd_vae_decode": decode, "extrapolated_ddpm250_dit_s2_256px_seconds_per_sample": ddpm250_s}
    for e in runs:
        result.row(f"sample {e['sampler']}", e["samples_s"], f"samples/s, NFE {e['nfe_mean']:.1f} "
                   f"({e['nfe_min']:.0f}-{e['nfe_max']:.0f}), {e['sample_forwards_s']:.0f} forwards/s")
    for e in forwards:
        result.row(f"forward {e['network']['name']} 8x8x1 b{e['batch']}", e["sample_forwards_s"],
                   "sample-forwards/s")
    result.row("forward DiT-S/2 32x32x4 b8", latent["sample_forwards_s"], "sample-forwards/s")
    result.row("SD-VAE decode 128 px (random weights)", decode["seconds_per_image"],
               f"s/image ({decode['achieved_flops'] / 1e9:.0f} GFLOP/s; 256 px ≈ "
               f"{decode['seconds_per_image_256px_by_flops']:.1f} s)")
    result.row("DiT-S/2 DDPM-250 + decode, 256 px", ddpm250_s, "s/sample (extrapolated)")
    ctx.shared["sample_entries"] = runs
    ctx.shared["forward_entries"] = forwards
    return result
