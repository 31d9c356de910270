"""One registry for every network of the paper: DiT (Tables 1–2), U-ViT and the LDM UNet (Table 3).

Every entry is a factory ``factory(**kwargs) -> nn.Module`` whose network follows the interface of
``docs/conventions.md``: ``net(x, t_model, y) -> (B, out_channels, H, W)``; attributes
``in_channels``, ``out_channels``, ``learn_sigma``, ``num_classes``, ``input_size``; class id
``num_classes`` is the null class; ``forward_with_cfg`` guides through ``models.guidance``. All accept
the run config's network keys (``input_size``, ``in_channels``, ``num_classes``, ``learn_sigma``,
``class_dropout_prob``, ``grad_checkpointing``) and ``init_generator``.

Names (defaults are each model's published configuration):

* ``DiT-{XL,L,B,S}/{2,4,8}`` — DiT; ``DiT-Mini/{2,4}``, ``DiT-T/{2,4}`` are this harness's small sizes.
  Table 2 runs ``DiT-B/2`` and ``DiT-L/2`` with ``input_size=64`` (512 px).
* ``U-ViT-{L,H}/{2,4}`` — U-ViT's ImageNet latent models (Table 3: ``U-ViT-L/2``); no learned σ.
  ``U-ViT-Mini/2``, ``U-ViT-T/2`` are small.
* ``LDM-UNet`` — LDM-4's class-conditional ImageNet UNet (Table 3: "LDM-UNet"); ``LDM-UNet-Mini``,
  ``LDM-UNet-T`` are small.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from models.dit import DiT_models
from models.unet import UNet_models
from models.uvit import UViT_models

FAMILIES: dict[str, dict[str, Callable[..., nn.Module]]] = {
    "DiT": DiT_models,
    "U-ViT": UViT_models,
    "LDM-UNet": UNet_models,
}
LEARNED_SIGMA_SUPPORT: dict[str, bool] = {"DiT": True, "U-ViT": False, "LDM-UNet": True}

NETWORKS: dict[str, Callable[..., nn.Module]] = {
    name: factory for registry in FAMILIES.values() for name, factory in registry.items()
}

# The paper's networks per table. What a scale trains in their place is the scale's config
# (config/scales/<scale>.yaml `stand_ins.networks`; pipeline.config.network_for_scale / STAND_INS).
PAPER_NETWORKS: dict[str, tuple[str, ...]] = {
    "table1": ("DiT-XL/2",),
    "table2": ("DiT-B/2", "DiT-L/2"),
    "table3": ("U-ViT-L/2", "LDM-UNet"),
}


def family(name: str) -> str:
    """The architecture family (``DiT``, ``U-ViT`` or ``LDM-UNet``) of a registered network name."""
    for family_name, registry in FAMILIES.items():
        if name in registry:
            return family_name
    raise ValueError(f"unknown network {name!r}; known: {sorted(NETWORKS)}")


def supports_learned_sigma(name: str) -> bool:
    """Whether the network can output learned-σ channels (``learn_sigma=True``)."""
    return LEARNED_SIGMA_SUPPORT[family(name)]


def build(name: str, **kwargs) -> nn.Module:
    """Instantiate a registered network."""
    family(name)
    return NETWORKS[name](**kwargs)


def parameter_count(name: str, **kwargs) -> int:
    """Number of parameters (frozen ones included) of ``build(name, **kwargs)``, built on the meta
    device so no memory is allocated and no weights are drawn."""
    with torch.device("meta"):
        net = build(name, **kwargs)
    return sum(p.numel() for p in net.parameters())
