# Compute budget (pipeline.budget): estimated wall-clock hours and GPU-hours of every job, figure and table,
# before anything runs. Not a default target; ask for it:
#   snakemake results/paper/budget.csv --config scale=paper [budget_gpu=H100-SXM5] \
#       [budget_throughput=benchmarks/results/<host>.json] [budget_cpu=<device>]
# budget_gpu: a device of config/throughput.yaml for jobs that ask for GPUs; budget_throughput: a benchmark
# file (python -m benchmarks.run_all) whose measured device and rates take precedence over the table.
# The job sees this run's whole config (scale + --config overrides) as JSON.
# Uses BASE (Snakefile), json (common.smk) and config.


rule budget:
    input:
        table=str(BASE / "config" / "throughput.yaml"),
        registry=str(BASE / "config" / "experiments.yaml"),
        protocols=str(BASE / "config" / "protocols.yaml"),
        scale=str(BASE / "config" / "scales" / f"{config['scale']}.yaml"),
        measured=[config["budget_throughput"]] if config.get("budget_throughput") else [],
    output:
        in_scale("results/budget.csv"),
    params:
        config_json=json.dumps(config, sort_keys=True, default=str),
        options=budget_options(),
    log:
        in_scale("work/logs/budget.log"),
    localrule: True
    shell:
        "python -m pipeline.budget --config-json {params.config_json:q} --table {input.table:q}"
        " {params.options:q} --out {output:q} 2>&1 | tee {log:q}"
