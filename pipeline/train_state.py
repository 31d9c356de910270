"""The trainable state of a segment (model, EMA, AdamW, global RNG, step) and where it starts from.

The network is initialised from ``derive_seed(seed, "init")`` on the CPU, identically on every rank
(:meth:`pipeline.runconfig.RunConfig.build_network`). A segment resumes from a rolling save inside it
when one matches, else from the milestone at its start (:func:`choose_start_point`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import InputError
from core.io import provenance
from models.ema import make_ema
from pipeline.checkpoints import load_checkpoint
from pipeline.runconfig import RunConfig


def build_optimizer(run: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (paper Tables 4–5: lr 1e-4, weight decay 0, betas 0.9/0.999).

    PyTorch's fused kernel (same update, one kernel for all parameters; on CPU ~4x faster than the
    per-parameter loop) whenever every parameter is on a CPU or CUDA device.
    """
    opt = run.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None  # None: PyTorch's default elsewhere
    return torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay, betas=opt.betas, fused=fused)


def rng_state() -> dict[str, Any]:
    """The global CPU and CUDA RNG states (checkpoints keep them)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and len(state.get("cuda", [])) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_state(
    step: int, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, config: dict[str, Any],
    seed: int, data_std: float, world_size: int, global_batch: int, latents_settings: str | None = None,
) -> dict[str, Any]:
    """What a checkpoint at ``step`` holds (see :mod:`pipeline.checkpoints`); ``config`` is the run's JSON;
    ``latents_settings`` the settings hash of the latent folder it trained on (checked on resume)."""
    state = {"step": step, "model": model.state_dict(), "ema": ema.state_dict(),
             "opt": opt.state_dict(), "rng": rng_state(), "data_position": step * global_batch,
             "config": config, "data_std": data_std, "world_size": world_size,
             "provenance": provenance(config, seed)}
    if latents_settings is not None:
        state["latents_settings_sha256"] = latents_settings
    return state


def check_same_latents(ckpt: dict[str, Any], source: Path, latents_settings: str | None) -> None:
    """Refuse to resume ``ckpt`` on a latent folder encoded with other settings (e.g. another posterior mode under
    the same folder name): the run's hash holds the folder's path only."""
    theirs = ckpt.get("latents_settings_sha256")
    if theirs is not None and latents_settings is not None and theirs != latents_settings:
        raise InputError(f"{source} was trained on latents with settings {theirs[:12]}, but the latent folder now "
                         f"holds settings {latents_settings[:12]} (re-encoded?); restart the run from step 0 or "
                         f"restore those latents")


def choose_start_point(
    run: RunConfig, start: int, stop: int, init: Path | None, rolling: Path
) -> tuple[dict[str, Any] | None, Path | None]:
    """What to resume from: a matching rolling save in ``(start, stop]``, else ``init``, else nothing."""
    ours = run.config_hash()
    if rolling.exists():
        ckpt = load_checkpoint(rolling)
        theirs = RunConfig.from_json(ckpt["config"]).config_hash()
        if start < ckpt["step"] <= stop and theirs == ours:
            return ckpt, rolling
        print(f"train: ignoring {rolling} (step {ckpt['step']}, config {theirs}; "
              f"this segment is {start}→{stop}, config {ours})", file=sys.stderr)
    if init is not None:
        ckpt = load_checkpoint(init)
        if ckpt["step"] != start:
            raise InputError(f"--init {init} is at step {ckpt['step']}, but this segment starts at {start}")
        theirs = RunConfig.from_json(ckpt["config"]).config_hash()
        if theirs != ours:
            raise InputError(f"--init {init} was trained with another run config ({theirs} ≠ {ours})")
        return ckpt, init
    if start != 0:
        raise InputError(f"segment starts at step {start} but neither --init nor a usable {rolling} exists")
    return None, None


def init_or_restore(
    run: RunConfig, ckpt: dict[str, Any] | None, device: torch.device
) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, int]:
    """Model, EMA (initially equal to the model, as DiT's first update with decay 0), AdamW and step."""
    model = run.build_network()
    ema = make_ema(model)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
    model.to(device).train()
    ema.to(device)
    opt = build_optimizer(run, model)
    if ckpt is None:
        return model, ema, opt, 0
    opt.load_state_dict(ckpt["opt"])
    restore_rng(ckpt["rng"])
    step = int(ckpt["step"])
    if int(ckpt["data_position"]) != step * run.global_batch:
        raise InputError(f"checkpoint data position {ckpt['data_position']} ≠ step {step} × global batch")
    return model, ema, opt, step
