# Shared by every rule file: the registry expanded for this scale, and path helpers.
# Included first by the Snakefile.
import json
import sys

from snakemake.utils import validate

from pipeline.registry import EXPERIMENTS_FILE, load_experiments, load_registry, parse_sample_tag

validate(config, "../schemas/config.schema.yaml")
validate(load_experiments(EXPERIMENTS_FILE), "../schemas/experiments.schema.yaml")
REG, GRID = load_registry(config)
PY = sys.executable  # jobs run with the interpreter that runs Snakemake (the harness environment)


wildcard_constraints:
    run=r"[A-Za-z0-9._+-]+",
    step=r"\d+",
    tag=r"[a-z0-9]+-cfg[0-9.]+-n\d+-seed\d+",
    experiment=r"[a-z0-9]+",
    cell=r"[A-Za-z0-9._+-]+",


def protocol_of(run_id):
    return REG.protocols[REG.run_protocol[run_id]]


def stage_resource(stage, key, default, run_id=None):
    """One resource of a stage for the run in the wildcards (or the fixed ``run_id``), else ``default``."""
    def get(wildcards, attempt=1):
        return protocol_of(run_id or wildcards.run)["resources"][stage].get(key, default)
    return get


def launcher(stage, module):
    """`python -m MODULE` for one process; torchrun over the job's GPUs for several (`--` ends torchrun's flags)."""
    def get(wildcards):
        gpus = int(protocol_of(wildcards.run)["resources"][stage].get("gpu", 0))
        if gpus > 1:
            return f"{PY} -m torch.distributed.run --standalone --nproc_per_node {gpus} -m {module} --"
        return f"{PY} -m {module}"
    return get


def latents_index(wildcards):
    return f"{REG.runs[wildcards.run]['latents']}/index.json"
