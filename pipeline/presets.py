"""The published checkpoints the harness knows: their key layout, network, protocol and training steps.

Cheap to import (no torch): the registry reads it at DAG time (a calibration block's ``checkpoint``), and
:mod:`pipeline.import_checkpoint` turns the files into harness checkpoints.
"""

from __future__ import annotations

from typing import Any

LAYOUTS = ("dit", "sit", "uvit", "ldm")
LDM_PREFIX = "model.diffusion_model."
LDM_CLASS_EMBEDDER = {"cond_stage_model.embedding.weight": "class_embedder.embedding.weight"}


def _latent_dit(name: str, size: int, schedule: str, prediction: str) -> dict[str, Any]:
    return {"network": {"name": name, "input_size": size, "in_channels": 4, "num_classes": 1000, "learn_sigma": True,
                        "class_dropout_prob": 0.1},
            "schedule": schedule, "prediction": prediction, "input_scale": {"factor": 0.18215}}


# The published models: layout, the run config their protocol implies, and the steps they were trained for.
PRESETS: dict[str, dict[str, Any]] = {
    # DiT (Peebles & Xie): DDPM linear, epsilon, learned sigma, SD-VAE latents x 0.18215; 7M steps (DiT README).
    "dit-xl-2-256": {"layout": "dit", "step": 7_000_000,
                     "run": _latent_dit("DiT-XL/2", 32, "ddpm-linear", "noise")},
    "dit-xl-2-512": {"layout": "dit", "step": 3_000_000,
                     "run": _latent_dit("DiT-XL/2", 64, "ddpm-linear", "noise")},
    # SiT (Ma et al.): linear interpolant, velocity, the DiT backbone with learn_sigma (its sampler drops the
    # sigma channels); 7M steps (SiT README).
    "sit-xl-2-256": {"layout": "sit", "step": 7_000_000,
                     "run": _latent_dit("DiT-XL/2", 32, "flow-linear", "velocity")},
}

# `official_checkpoints.<preset>: stand-in` (mini/smoke): a stand-in network trained here, written in the preset's
# layout and imported back, in place of the published file.
STAND_IN = "stand-in"
