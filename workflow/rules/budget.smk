# Compute budget (pipeline.budget): estimated wall-clock hours and GPU-hours of every job, figure and table,
# before anything runs. Not a default target; ask for it:
#   snakemake results/budget.csv --config scale=paper [budget_gpu=H100-SXM5] \
#       [budget_throughput=benchmarks/results/<host>.json] [budget_cpu=<device>]
# budget_gpu: a device of config/throughput.yaml for jobs that ask for GPUs; budget_throughput: a benchmark
# file (python -m benchmarks.run_all) whose measured device and rates take precedence over the table.
# The job sees this run's whole config (scale + --config overrides) as JSON. Uses PY and config.
import json as _budget_json
from pathlib import Path as _BudgetPath

_BUDGET_BASE = _BudgetPath(workflow.basedir)


def _budget_options():
    options = []
    for flag, key in (("--gpu", "budget_gpu"), ("--cpu", "budget_cpu"), ("--throughput", "budget_throughput")):
        if config.get(key):
            options += [flag, str(config[key])]
    return options


rule budget:
    input:
        table=str(_BUDGET_BASE / "config" / "throughput.yaml"),
        registry=str(_BUDGET_BASE / "config" / "experiments.yaml"),
        scale=str(_BUDGET_BASE / "config" / "scales" / f"{config['scale']}.yaml"),
        measured=[config["budget_throughput"]] if config.get("budget_throughput") else [],
    output:
        "results/budget.csv",
    params:
        config_json=_budget_json.dumps(config, sort_keys=True, default=str),
        options=_budget_options(),
    log:
        "work/logs/budget.log",
    localrule: True
    shell:
        "{PY} -m pipeline.budget --config-json {params.config_json:q} --table {input.table}"
        " {params.options:q} --out {output} 2>&1 | tee {log}"
