"""Checkpoint files: one format for milestones and rolling saves, loaded with ``weights_only=True``.

A checkpoint is a dict of tensors and JSON-like values::

    {"format": 1, "step": int, "model": state_dict, "ema": state_dict, "opt": optimizer state_dict,
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor, ...]}, "data_position": int (items consumed),
     "config": run config (dict), "data_std": float, "provenance": core.io.provenance(...)}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import InputError, safe_torch_load
from core.io import atomic_save_torch
from pipeline.runconfig import RunConfig, build_network

FORMAT = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (a crash never leaves a truncated file)."""
    atomic_save_torch({"format": FORMAT, **state}, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (:func:`core.errors.safe_torch_load`) and check its format.

    A missing, truncated, corrupt or hostile file, or one that is not a harness checkpoint, is one
    :class:`~core.errors.InputError` naming ``path``.
    """
    path = Path(path)
    ckpt = safe_torch_load(path, what="checkpoint", map_location=map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"{path} is not a harness checkpoint (format {FORMAT})")
    return ckpt


def first_non_finite(state: dict[str, Any]) -> str | None:
    """The name of the first floating-point tensor of ``state`` that holds NaN or ±inf (None if all are finite)."""
    for name, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return str(name)
    return None


def load_network(
    path: str | os.PathLike, use_ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Build the run's network from a checkpoint with its EMA (default) or raw weights, in eval mode.

    Returns ``(network, run_config, checkpoint)``; the run config is a dict with its defaults filled in.
    Weights holding NaN or ±inf are refused (:class:`~core.errors.InputError` naming the file and the first bad
    tensor): nothing sampled from them would be an image.
    """
    ckpt = load_checkpoint(path, map_location="cpu")
    weights = "ema" if use_ema else "model"
    missing = [key for key in ("config", weights) if key not in ckpt]
    if missing:
        raise InputError(f"{path}: harness checkpoint without {' or '.join(map(repr, missing))}")
    try:
        run = RunConfig.from_json(ckpt["config"])
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    state = ckpt[weights]
    if not isinstance(state, dict):
        raise InputError(f"{path}: checkpoint key {weights!r} is not a state dict")
    bad = first_non_finite(state)
    if bad is not None:
        raise InputError(f"{path}: the {'EMA' if use_ema else 'raw'} weights hold NaN or inf "
                         f"(first: {bad!r}); refusing to sample from them")
    net = build_network(run.network)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise InputError(f"{path}: the {weights!r} weights do not fit the run's network "
                         f"{run.network_name} ({detail})") from None
    return net.to(device).eval(), run.to_json(), ckpt
