"""FasterDiT reproducibility harness: every figure and table of the paper as a target.

Scale: `--config scale=mini` (default: embedded digits, CPU, minutes), `smoke` (CI, seconds per job),
`paper` (ImageNet, SD-VAE, GPUs). A scale changes sizes and counts, never the DAG's structure.
Each scale's outputs live in its own folders under the working directory (`--directory DIR` to put them
elsewhere): work/<scale>/, results/<scale>/, paper_figures/<scale>/ (pipeline.paths), so scales never
overwrite each other.
"""

import sys
from pathlib import Path

from pipeline.config import ConfigError, config_error_exit, load_scale, scale_names
from pipeline.paths import ROOTS, scale_of_path

BASE = Path(workflow.basedir)
LAST_SCALE = Path("work") / "last-scale"   # the scale of the last run here: what `--report` reports


configfile: BASE / "config" / "defaults.yaml"


def _requested_scale():
    """The scale of this run: `--config scale=NAME`; for `--report` without one, the scale of the last run in
    this directory (LAST_SCALE), so the report describes the DAG that ran; else defaults.yaml's."""
    given = (getattr(workflow.config_settings, "overwrite_config", None) or {}).get("scale")
    reporting = any(arg == "--report" or arg.startswith("--report=") for arg in sys.argv)
    if given is None and reporting and LAST_SCALE.is_file():
        last = LAST_SCALE.read_text().strip()
        if last in scale_names():
            print(f"report: scale {last}, the last run in this directory (--config scale=NAME for another)",
                  file=sys.stderr)
            return last
    return config.get("scale", "mini")


# config/defaults.yaml + config/protocols.yaml + config/scales/<scale>.yaml, merged and schema-checked by
# pipeline.config.load_scale; what --config / --configfile set (in `config` now) replaces the scale's keys.
# A config that does not load ends Snakemake with one line `error: <key path>: <problem>` (config_error_exit).
try:
    _scale = _requested_scale()
    _loaded = load_scale(_scale, overrides={**config, "scale": _scale})
except ConfigError as _err:
    config_error_exit(_err)
config.clear()
config.update(_loaded)
SCALE = config["scale"]


def _require_reachable_slurm():
    """`--profile slurm` (the slurm executor) without SLURM on this machine: one line, before anything is
    submitted (otherwise every job's sbatch fails and is retried)."""
    import shutil

    plugin = workflow.executor_plugin
    name = getattr(plugin, "name", "") if plugin is not None else ""
    if name.removeprefix("snakemake-executor-plugin-") == "slurm" and not workflow.dryrun \
            and not workflow.remote_exec and shutil.which("sbatch") is None:
        config_error_exit(ConfigError("the slurm executor (--profile slurm) needs SLURM, but there is no `sbatch` "
                                      "on PATH here: run on a SLURM login node, or drop --profile slurm to run "
                                      "locally (--cores N)"))


report: "workflow/report/workflow.rst"


# Each rules file appends the final outputs it owns; `snakemake` with no target builds them all.
ALL_TARGETS = []


rule all:
    input:
        lambda wildcards: ALL_TARGETS,


include: "workflow/rules/common.smk"


def _misplaced(wildcards):
    """A requested file in another scale's folders, or in no scale's folder (the layout before per-scale
    folders), ends the run with one line saying which target or option was meant (also in a dry run)."""
    target = f"{wildcards.root}/{wildcards.rest}"
    owner = scale_of_path(target, scale_names())
    if owner is None:
        config_error_exit(ConfigError(f"target {target}: outputs live in their scale's folder, e.g. "
                                      f"{wildcards.root}/{SCALE}/{wildcards.rest} (this run's scale: {SCALE})"))
    config_error_exit(ConfigError(f"target {target} is a {owner}-scale output, but this run's scale is {SCALE}: "
                                  f"add --config scale={owner}"))


# Lint (`snakemake --lint`: "No log directive defined"), justified: this rule never runs; its input function
# ends the run while the DAG is built.
rule misplaced_target:
    """Matches only paths outside this scale's folders; its input function stops the run (it never runs)."""
    input:
        _misplaced,
    output:
        "{root}/{rest}",
    wildcard_constraints:
        root="|".join(ROOTS),
        rest=rf"(?!{SCALE}/).+",
    localrule: True
    shell:
        "exit 1"


for _rules in sorted((BASE / "workflow" / "rules").glob("*.smk")):
    if _rules.name != "common.smk":

        include: str(_rules)


onstart:
    _require_reachable_slurm()  # the executor is known only once Snakemake starts executing
    from core.io import atomic_write_text

    LAST_SCALE.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(LAST_SCALE, SCALE + "\n")
    # Missing data or weights stop the run with one line per problem before any job starts.
    # (`onstart` never runs in a dry run, so `-n` needs no data.)
    from pipeline.data_config import check_data_sources

    # Only what the pending jobs read (`results/budget.csv`, figures from existing cells need nothing; a
    # calibration-only run needs no ImageNet): pipeline.data_config's parts per rule.
    # References and published checkpoints: only those a pending job links.
    _PARTS = {"latents": {"datasets", "autoencoders"}, "dataset_npz": {"datasets"},
              "train_segment": {"datasets", "autoencoders"}, "reference_npz": {"references"},
              "inception_weights": {"extractor"}, "sample": {"autoencoders", "extractor"},
              "grids": {"autoencoders"}, "official_checkpoint_link": {"official_checkpoints"}}
    _pending = list(workflow.dag.needrun_jobs())
    _needs = set().union(*(_PARTS.get(job.rule.name, set()) for job in _pending))
    _linked = {(job.rule.name, value) for job in _pending for value in job.wildcards_dict.values()}
    _checked = {**config,
                "references": {name: entry for name, entry in (config.get("references") or {}).items()
                               if ("reference_npz", name) in _linked},
                "official_checkpoints": {spec["preset"]: spec["source"] for run, spec in REG.imported.items()
                                         if ("official_checkpoint_link", run) in _linked}}
    _problems = check_data_sources(_checked, needs=_needs) if _needs else []
    if _problems:
        for _line in _problems:
            print(f"error: {_line}", file=sys.stderr)
        raise SystemExit(1)
