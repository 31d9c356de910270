"""Latent encoding throughput (images/s).

* identity autoencoder: :func:`pipeline.latents.precompute_latents` on the digits train split with flipped
  copies, end to end (shards, index, statistics) — the mini-scale "latents";
* a tiny random diffusers ``AutoencoderKL`` (as tests/test_data_helpers.py builds) loaded through
  :class:`pipeline.autoencoders.SDVAE` (the real ``from_pretrained`` path), encoding 32-px images;
* the sd-vae-ft-ema *architecture* with random weights at 128 px, with achieved GFLOP/s and the 256-px cost
  scaled by the FLOP ratio.

Speed does not depend on weight values, but real SD-VAE figures (JPEG decoding, ADM centre crop, the real
checkpoint) need the real weights: run ``python -m pipeline.latents`` on your data with
``stabilityai/sd-vae-ft-ema`` fetched once (README, "Data, references and latents").
"""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks.common import Context, Result, rate, timed

TINY_VAE_IMAGES = 64
TINY_VAE_SIZE = 32
SD_VAE_RESOLUTION = 128


def identity_digits(ctx: Context) -> dict[str, Any]:
    from pipeline.latents import precompute_latents

    folder = ctx.scratch / "latents-digits-flip"
    began = time.perf_counter()
    index = precompute_latents({"dataset": "digits", "split": "train"}, {"name": "identity"}, folder,
                               flip=True, progress=False)
    seconds = time.perf_counter() - began
    images = int(index["num_items"])
    return {"autoencoder": "identity", "images": images, "encodes": 2 * images, "seconds": seconds,
            "images_s": images / seconds, "note": "end to end, flipped copies included"}


def tiny_vae(ctx: Context) -> dict[str, Any]:
    from diffusers import AutoencoderKL

    from pipeline.autoencoders import SDVAE

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16)
    folder = ctx.scratch / "tiny-vae"
    vae.save_pretrained(folder)
    encoder = SDVAE(str(folder), posterior="sample", device=ctx.device)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(TINY_VAE_IMAGES, 3, TINY_VAE_SIZE, TINY_VAE_SIZE, generator=generator) * 2 - 1
    timing = rate(ctx, lambda: encoder.encode(images, generator), min_seconds=0.5, max_calls=20)
    return {"autoencoder": "tiny random AutoencoderKL (block_out_channels 8, 16)",
            "resolution": TINY_VAE_SIZE, "batch": TINY_VAE_IMAGES,
            "images_s": TINY_VAE_IMAGES / timing["median_s"]}


def sd_vae_architecture(ctx: Context) -> dict[str, Any]:
    from diffusers import AutoencoderKL

    from pipeline.budget import SD_VAE_ARCHITECTURE, vae_flops

    torch.manual_seed(0)
    vae = AutoencoderKL(**SD_VAE_ARCHITECTURE).to(ctx.device).eval()
    images = torch.rand(2, 3, SD_VAE_RESOLUTION, SD_VAE_RESOLUTION, device=ctx.device) * 2 - 1
    with torch.no_grad():
        vae.encode(images[:1])
        seconds, _ = timed(ctx, lambda: vae.encode(images).latent_dist.sample())
    flops = vae_flops(SD_VAE_RESOLUTION, "encode") * len(images)
    at_256 = seconds / len(images) * vae_flops(256, "encode") / vae_flops(SD_VAE_RESOLUTION, "encode")
    return {"autoencoder": "sd-vae-ft-ema architecture, random weights", "resolution": SD_VAE_RESOLUTION,
            "batch": len(images), "images_s": len(images) / seconds, "achieved_flops": flops / seconds,
            "seconds_per_image_256px_by_flops": at_256}


def run(ctx: Context) -> Result:
    result = Result("latents")
    entries = [identity_digits(ctx), tiny_vae(ctx), sd_vae_architecture(ctx)]
    result.data = {"encoders": entries, "note": "real SD-VAE figures need the real weights and data "
                   "(python -m pipeline.latents); speed does not depend on weight values"}
    result.row("latents identity (digits, +flips, end to end)", entries[0]["images_s"], "images/s")
    result.row(f"encode tiny AutoencoderKL {TINY_VAE_SIZE} px", entries[1]["images_s"], "images/s")
    sd = entries[2]
    result.row(f"encode SD-VAE arch {SD_VAE_RESOLUTION} px (random weights)", sd["images_s"],
               f"images/s ({sd['achieved_flops'] / 1e9:.0f} GFLOP/s; 256 px ≈ "
               f"{sd['seconds_per_image_256px_by_flops']:.1f} s/image)")
    ctx.shared["identity_latents_images_s"] = entries[0]["images_s"]
    return result
