"""Network families and what each family's reference code feeds as time (torch-free: the registry reads it).

* ``unit``: ``t ∈ [0, 1]`` on a flow schedule (SiT feeds its DiT this; ``t = 1`` at data in both codes).
* ``steps``: ``(1 − t)·999`` on a flow schedule, the continuous counterpart of the DDPM index ``k``: U-ViT's
  ``sde.py`` (``ScoreModel.predict``: ``nnet(xt, t * 999)``, its ``t = 1`` at noise) and the LDM UNet, built for
  the steps 0…999.

On the DDPM schedules every family is fed the step index ``k`` (models.schedules).
"""

from __future__ import annotations

FAMILY_PREFIXES: dict[str, str] = {"DiT-": "DiT", "U-ViT-": "U-ViT", "LDM-UNet": "LDM-UNet"}
TIME_INPUT: dict[str, str] = {"DiT": "unit", "U-ViT": "steps", "LDM-UNet": "steps"}


def family_of(name: str) -> str:
    """The family (``DiT``, ``U-ViT``, ``LDM-UNet``) a network name belongs to, from its prefix."""
    for prefix, family in FAMILY_PREFIXES.items():
        if name.startswith(prefix):
            return family
    raise ValueError(f"network {name!r} belongs to no known family ({', '.join(FAMILY_PREFIXES)}...)")


def reference_time_input(name: str) -> str:
    """The time input (``unit`` or ``steps``) the reference code of ``name``'s family feeds on a flow."""
    return TIME_INPUT[family_of(name)]
