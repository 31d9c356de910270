"""Autoencoders that map images in [-1, 1] to the space the diffusion model learns, and back.

Convention (whole code base): ``encode`` returns **raw, unscaled** latents (the posterior sample or
mean of the SD-VAE, the pixels themselves for the identity) and ``decode`` takes raw latents;
``SDVAE.encode_distribution`` returns the posterior itself, ``(mean, logvar)``, for latent folders
in ``posterior: distribution`` mode (training draws a fresh sample each time it sees an image). The
``scale_factor`` attribute (0.18215 for SD-VAE, 1.0 for identity) is exposed for reference only:
the training side decides how to scale data, from the ``data_std`` recorded next to the latents
(Algorithm 2: ``data * (target_std / data_std)``; DiT's fixed ×0.18215 is one choice of that).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from pipeline.vae_weights import resolve_vae_location

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None
POSTERIOR_MODES = ("sample", "mean", "distribution")


@runtime_checkable
class Autoencoder(Protocol):
    """What every autoencoder offers (identity and SD-VAE alike)."""

    name: str
    latent_channels: int
    downsample: int
    scale_factor: float
    posterior: str

    def encode(self, x: torch.Tensor, generator: GeneratorArg = None) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in [-1, 1] → raw latents ``(B, c, H/downsample, W/downsample)`` float32."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents → images in [-1, 1], float32."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-ready identity (recorded in latent indices)."""
        ...


def standard_normal(shape: Sequence[int], generator: GeneratorArg, device: torch.device) -> torch.Tensor:
    """``N(0, I)`` noise of ``shape`` on ``device``; with a list of generators, row ``i`` comes from
    ``generator[i]`` alone, so an item's noise does not depend on its batch."""
    if generator is None or isinstance(generator, torch.Generator):
        source = generator.device if generator is not None else device
        return torch.randn(tuple(shape), generator=generator, device=source).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    rows = [torch.randn(tuple(shape[1:]), generator=g, device=g.device).to(device) for g in generator]
    return torch.stack(rows)


class IdentityAutoencoder:
    """Pixel space behind the autoencoder interface: the 'latents' are the images themselves."""

    name = "identity"
    downsample = 1
    scale_factor = 1.0
    posterior = "none"

    def __init__(self, channels: int = 3):
        self.latent_channels = int(channels)

    def encode(self, x: torch.Tensor, generator: GeneratorArg = None) -> torch.Tensor:
        if x.shape[1] != self.latent_channels:
            raise ValueError(f"identity autoencoder for {self.latent_channels} channels got {x.shape[1]}")
        return x.detach().float().clone()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.detach().float().clamp(-1.0, 1.0)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "latent_channels": self.latent_channels, "downsample": 1,
                "scale_factor": 1.0, "posterior": self.posterior}


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"bf16"``/... or a torch dtype → torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (one of {', '.join(_DTYPES)})")
    return _DTYPES[dtype]


class SDVAE:
    """Stable Diffusion's KL autoencoder (sd-vae-ft-ema / sd-vae-ft-mse) through diffusers.

    Loads from a local folder or the Hugging Face cache only (``local_files_only=True``): nothing
    is downloaded; missing weights raise :class:`core.io.DataSourceError` saying where they
    were expected and how to fetch them. ``posterior``: ``sample`` (one frozen draw per image),
    ``mean``, or ``distribution`` (the latent folder stores mean and log-variance; ``encode`` then
    returns a sample, as ``sample`` does).
    """

    def __init__(
        self,
        path_or_hub_id: str,
        posterior: str = "sample",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = torch.float32,
        weights_dir: str | None = None,
    ):
        from diffusers import AutoencoderKL

        if posterior not in POSTERIOR_MODES:
            raise ValueError(f"posterior must be one of {POSTERIOR_MODES}, got {posterior!r}")
        self.source = path_or_hub_id
        self.location = resolve_vae_location(path_or_hub_id, weights_dir)
        self.posterior = posterior
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = parse_dtype(dtype)
        self.vae = AutoencoderKL.from_pretrained(self.location, local_files_only=True, torch_dtype=self.dtype,
                                                 low_cpu_mem_usage=False)
        self.vae.to(self.device).eval().requires_grad_(False)
        config = self.vae.config
        self.name = str(path_or_hub_id)
        self.latent_channels = int(config.latent_channels)
        self.in_channels = int(config.in_channels)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self.scale_factor = float(config.scaling_factor)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: GeneratorArg = None) -> torch.Tensor:
        """Raw posterior sample (``mean + std·ε``, ε from ``generator``) or mean, float32."""
        dist = self._posterior(x)
        mean = dist.mean.float()
        if self.posterior == "mean":
            return mean
        return mean + dist.std.float() * standard_normal(mean.shape, generator, mean.device)

    @torch.no_grad()
    def encode_distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw posterior ``(mean, logvar)``, float32 (diffusers clamps ``logvar`` to [-30, 20])."""
        dist = self._posterior(x)
        return dist.mean.float(), dist.logvar.float()

    def _posterior(self, x: torch.Tensor) -> Any:
        """diffusers' ``DiagonalGaussianDistribution`` of images ``x`` in [-1, 1]."""
        if x.shape[1] != self.in_channels:
            raise ValueError(f"VAE {self.name} takes {self.in_channels}-channel images, got {x.shape[1]}")
        return self.vae.encode(x.to(self.device, self.dtype)).latent_dist

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents (not multiplied by ``scale_factor``) → images clamped to [-1, 1], float32."""
        images = self.vae.decode(latents.to(self.device, self.dtype)).sample
        return images.float().clamp(-1.0, 1.0)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "location": self.location, "latent_channels": self.latent_channels,
                "downsample": self.downsample, "scale_factor": self.scale_factor,
                "posterior": self.posterior, "dtype": str(self.dtype).removeprefix("torch.")}


def build_autoencoder(spec: Mapping[str, Any], device: str | torch.device | None = None) -> Autoencoder:
    """``{"name": "identity", "channels": 1}`` or ``{"name": "sd-vae-ft-ema" | hub id | folder,
    "posterior": "sample"|"mean"|"distribution", "dtype": "float32", "weights_dir": ...}`` → an :class:`Autoencoder`."""
    name = spec.get("name")
    if not name:
        raise ValueError("autoencoder spec needs a name (identity, sd-vae-ft-ema, sd-vae-ft-mse, a folder)")
    if name == "identity":
        return IdentityAutoencoder(int(spec.get("channels", 3)))
    return SDVAE(str(name), posterior=spec.get("posterior", "sample"), device=device,
                 dtype=spec.get("dtype", "float32"), weights_dir=spec.get("weights_dir"))
