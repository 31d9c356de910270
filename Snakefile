"""FasterDiT reproducibility harness: every figure and table of the paper as a target.

Scale: `--config scale=mini` (default: embedded digits, CPU, minutes), `smoke` (CI, seconds per job),
`paper` (ImageNet, SD-VAE, GPUs). A scale changes sizes and counts, never the DAG's structure.
Outputs go to the working directory (`--directory DIR` to put them elsewhere).
"""

from pathlib import Path

import yaml

BASE = Path(workflow.basedir)


configfile: BASE / "config" / "defaults.yaml"


SCALE = config.get("scale", "mini")
_scale_file = BASE / "config" / "scales" / f"{SCALE}.yaml"
if not _scale_file.exists():
    raise ValueError(f"unknown scale {SCALE!r}: no {_scale_file} (choose mini, smoke or paper)")
# Scale values fill in what the command line did not set.
for _key, _value in (yaml.safe_load(_scale_file.read_text()) or {}).items():
    config.setdefault(_key, _value)

report: "workflow/report/workflow.rst"


# Each rules file appends the final outputs it owns; `snakemake` with no target builds them all.
ALL_TARGETS = []


rule all:
    input:
        lambda wildcards: ALL_TARGETS,


include: "workflow/rules/common.smk"


for _rules in sorted((BASE / "workflow" / "rules").glob("*.smk")):
    if _rules.name != "common.smk":

        include: str(_rules)


onstart:
    # Missing data or weights stop the run with one line per problem before any job starts.
    # (`onstart` never runs in a dry run, so `-n` needs no data.)
    from pipeline.data import check_data_sources

    # Only when a job will read data or weights (`results/budget.csv`, figures from existing cells need none).
    _DATA_RULES = {"latents", "reference_npz", "dataset_npz", "inception_weights", "train_segment", "sample", "grids"}
    _needs_data = any(job.rule.name in _DATA_RULES for job in workflow.dag.needrun_jobs())
    _problems = check_data_sources(config) if _needs_data else []
    if _problems:
        for _line in _problems:
            print(f"error: {_line}", file=sys.stderr)
        raise SystemExit(1)
