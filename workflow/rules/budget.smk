# Compute budget (pipeline.budget): estimated wall-clock hours and GPU-hours of every job, figure and table,
# before anything runs. Not a default target; ask for it:
#   snakemake results/budget.csv --config scale=paper [budget_gpu=H100-SXM5] \
#       [budget_throughput=benchmarks/results/<host>.json] [budget_cpu=<device>]
# budget_gpu: a device of config/throughput.yaml for jobs that ask for GPUs; budget_throughput: a benchmark
# file (python -m benchmarks.run_all) whose measured device and rates take precedence over the table.
# Uses REG, GRID (common.smk) and config.
from pathlib import Path as _BudgetPath

_BUDGET_BASE = _BudgetPath(workflow.basedir)


rule budget:
    input:
        table=str(_BUDGET_BASE / "config" / "throughput.yaml"),
        registry=str(EXPERIMENTS_FILE),
        scale=str(_BUDGET_BASE / "config" / "scales" / f"{config['scale']}.yaml"),
        measured=[config["budget_throughput"]] if config.get("budget_throughput") else [],
    output:
        "results/budget.csv",
    params:
        scale=config["scale"],
        gpu=config.get("budget_gpu"),
        cpu=config.get("budget_cpu"),
        throughput=config.get("budget_throughput"),
    localrule: True
    run:
        from pipeline.budget import estimate_budget, load_throughput, summary_table, write_budget_csv

        _tp = load_throughput(input.table, params.throughput)
        _budget = estimate_budget(REG, GRID, config, _tp, gpu=params.gpu, cpu=params.cpu)
        write_budget_csv(_budget, output[0], config={"command_scale": params.scale})
        print(summary_table(_budget))
