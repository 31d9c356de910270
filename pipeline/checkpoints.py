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

from core.io import atomic_save_torch
from pipeline.runconfig import RunConfig, build_network

FORMAT = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (a crash never leaves a truncated file)."""
    atomic_save_torch({"format": FORMAT, **state}, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check its format."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a harness checkpoint (format {FORMAT})")
    return ckpt


def load_network(
    path: str | os.PathLike, use_ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Build the run's network from a checkpoint with its EMA (default) or raw weights, in eval mode.

    Returns ``(network, run_config, checkpoint)``; the run config is a dict with its defaults filled in.
    """
    ckpt = load_checkpoint(path, map_location="cpu")
    run = RunConfig.from_json(ckpt["config"])
    net = build_network(run.network)
    net.load_state_dict(ckpt["ema" if use_ema else "model"])
    return net.to(device).eval(), run.to_json(), ckpt
