"""FasterDiT reproducibility harness: every figure and table of the paper as a target.

Scale: `--config scale=mini` (default: embedded digits, CPU, minutes), `smoke` (CI, seconds per job),
`paper` (ImageNet, SD-VAE, GPUs). A scale changes sizes and counts, never the DAG's structure.
Outputs go to the working directory (`--directory DIR` to put them elsewhere).
"""

from pathlib import Path

from pipeline.config import ConfigError, config_error_exit, load_scale

BASE = Path(workflow.basedir)


configfile: BASE / "config" / "defaults.yaml"


# config/defaults.yaml + config/protocols.yaml + config/scales/<scale>.yaml, merged and schema-checked by
# pipeline.config.load_scale; what --config / --configfile set (in `config` now) replaces the scale's keys.
# A config that does not load ends Snakemake with one line `error: <key path>: <problem>` (config_error_exit).
try:
    _loaded = load_scale(config.get("scale", "mini"), overrides=config)
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


for _rules in sorted((BASE / "workflow" / "rules").glob("*.smk")):
    if _rules.name != "common.smk":

        include: str(_rules)


onstart:
    _require_reachable_slurm()  # the executor is known only once Snakemake starts executing
    # Missing data or weights stop the run with one line per problem before any job starts.
    # (`onstart` never runs in a dry run, so `-n` needs no data.)
    from pipeline.data_config import check_data_sources

    # Only when a job will read data or weights (`results/budget.csv`, figures from existing cells need none).
    _DATA_RULES = {"latents", "reference_npz", "dataset_npz", "inception_weights", "train_segment", "sample", "grids"}
    _needs_data = any(job.rule.name in _DATA_RULES for job in workflow.dag.needrun_jobs())
    _problems = check_data_sources(config) if _needs_data else []
    if _problems:
        for _line in _problems:
            print(f"error: {_line}", file=sys.stderr)
        raise SystemExit(1)
