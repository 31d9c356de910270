"""Where VAE weights are found (a local diffusers folder or the Hugging Face cache), never downloading.

No torch here, so the DAG-time checks (:mod:`pipeline.data_config`) can call it; loading the weights
lives in :mod:`pipeline.autoencoders`.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.io import DataSourceError

VAE_HUB_IDS = {"sd-vae-ft-ema": "stabilityai/sd-vae-ft-ema", "sd-vae-ft-mse": "stabilityai/sd-vae-ft-mse"}
VAE_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
DEFAULT_WEIGHTS_DIR = "weights"


def _is_diffusers_dir(path: Path) -> bool:
    """True for a folder holding a diffusers ``config.json`` and one of :data:`VAE_WEIGHT_FILES`."""
    return (path / "config.json").is_file() and any((path / name).is_file() for name in VAE_WEIGHT_FILES)


def _hub_cached(hub_id: str) -> bool:
    """True when the Hugging Face cache already holds the config and weights of ``hub_id`` (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = [try_to_load_from_cache(hub_id, name) for name in ("config.json", *VAE_WEIGHT_FILES)]
    return isinstance(found[0], str) and any(isinstance(f, str) for f in found[1:])


def weights_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The folder holding local weight copies: ``explicit``, else $FASTERDIT_WEIGHTS_DIR, else ``weights``."""
    return Path(explicit or os.environ.get("FASTERDIT_WEIGHTS_DIR") or DEFAULT_WEIGHTS_DIR)


def resolve_vae_location(name: str, weights_directory: str | os.PathLike | None = None) -> str:
    """Where to load the VAE ``name`` from, without downloading anything.

    ``name`` is a local diffusers folder, a short name (``sd-vae-ft-ema``/``sd-vae-ft-mse``, looked
    up as ``<weights_dir>/<name>``) or a hub id (``stabilityai/sd-vae-ft-ema``, looked up as
    ``<weights_dir>/<last part>`` and then in the Hugging Face cache). Raises
    :class:`DataSourceError` naming the expected location and the download command.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if _is_diffusers_dir(path):
            return str(path)
        raise DataSourceError(f"VAE folder {path} is not a diffusers AutoencoderKL folder "
                              f"(needs config.json and {' or '.join(VAE_WEIGHT_FILES)})")
    hub_id = VAE_HUB_IDS.get(name, name)
    looks_like_hub_id = hub_id.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise DataSourceError(f"VAE folder {path} does not exist (known names: {', '.join(VAE_HUB_IDS)})")
    local = weights_dir(weights_directory) / hub_id.split("/")[-1]
    if _is_diffusers_dir(local):
        return str(local)
    if _hub_cached(hub_id):
        return hub_id
    raise DataSourceError(
        f"VAE weights {name!r} not found: expected a diffusers folder at {local} (config.json + "
        f"{VAE_WEIGHT_FILES[0]}) or {hub_id} in the Hugging Face cache; nothing is downloaded at run "
        f"time, fetch them once with `hf download {hub_id} --local-dir {local}`")
