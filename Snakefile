"""FasterDiT reproducibility harness: every figure and table of the paper as a target.

Scale: `--config scale=mini` (default: embedded digits, CPU, minutes), `smoke` (CI, seconds per job),
`paper` (ImageNet, SD-VAE, GPUs). A scale changes sizes and counts, never the DAG's structure.
"""

from pathlib import Path

import yaml

configfile: "config/defaults.yaml"

SCALE = config.get("scale", "mini")
_scale_file = Path("config/scales") / f"{SCALE}.yaml"
if not _scale_file.exists():
    raise ValueError(f"unknown scale {SCALE!r}: no {_scale_file} (choose mini, smoke or paper)")
with open(_scale_file) as _fh:
    _scale_cfg = yaml.safe_load(_fh) or {}
# Scale values fill in what the command line did not set.
for _key, _value in _scale_cfg.items():
    config.setdefault(_key, _value)

# Each rules file appends the final outputs it owns; `snakemake` with no target builds them all.
ALL_TARGETS = []


rule all:
    input:
        lambda wildcards: ALL_TARGETS,


include: "workflow/rules/common.smk"


for _rules in sorted(Path("workflow/rules").glob("*.smk")):
    if _rules.name != "common.smk":
        include: str(_rules)
