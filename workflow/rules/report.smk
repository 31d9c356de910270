# One rule per figure and table, made by one loop: cells -> results/<scale>/<name>.csv (+ paper_figures/<scale>/<name>.pdf/png).

for _name in FIGURES + TABLES + ALTERNATIVES:

    rule:
        name:
            _name
        input:
            cells_of(_name),
        output:
            **report_outputs(_name),
        log:
            in_scale(f"work/logs/report/{_name}.log"),
        params:
            experiment=_name,
            figure=["--figure", path("figure", experiment=_name, ext="pdf")] if _name in FIGURES else [],
            tables=paper_table_flags(_name),
            title=REG.experiments[_name]["title"],
        localrule: True
        shell:
            "python -m pipeline.report {params.experiment:q} --cells {input:q} --csv {output.csv:q}"
            " {params.figure:q} {params.tables:q} > {log:q} 2>&1"


ALL_TARGETS.extend(
    [path("table", experiment=name) for name in FIGURES + TABLES]
    + [path("paper_table", experiment=name, ext=ext) for name in TABLES for ext in ("md", "tex", "html")
       if "layout" in REG.experiments[name]]
    + [path("figure", experiment=name, ext=ext) for name in FIGURES for ext in ("pdf", "png")]
)


# The audit reads the default tables and, where the scale lists them (`audit_alternatives`), the alternative
# readings' tables, so claims with `readings` get one row per reading.
_unknown_alternatives = [name for name in config.get("audit_alternatives") or [] if name not in ALTERNATIVES]
if _unknown_alternatives:
    config_error_exit(ConfigError(f"audit_alternatives: {_unknown_alternatives} are not alternative experiments "
                                  f"of config/experiments.yaml ({', '.join(ALTERNATIVES)})"))
AUDIT_TABLES = [path("table", experiment=name) for name in FIGURES + TABLES] + [
    path("table", experiment=name) for name in config.get("audit_alternatives") or []]


rule audit:
    input:
        tables=AUDIT_TABLES,
        claims=BASE / "config" / "claims.yaml",
        fig3=BASE / "config" / "figures" / "fig3.yaml",
    output:
        report(in_scale("results/audit.csv"), category="audit", caption="../report/audit.rst"),
    log:
        in_scale("work/logs/report/audit.log"),
    params:
        results=in_scale("results/"),
    localrule: True
    shell:
        "python -m pipeline.audit --results {params.results:q} --tables {input.tables:q} --claims {input.claims:q}"
        " --fig3-config {input.fig3:q} --out {output:q} > {log:q} 2>&1"


ALL_TARGETS.append(in_scale("results/audit.csv"))


# Training throughput per run (it/s, images/s per device, MFU, peak memory) from the runs' train.jsonl, shown in
# the report: the same numbers the job logs print. Runs: those `all` trains anyway (the figures, tables, the
# audit's alternative readings and the sample grid); inputs: each one's last milestone (its log is then
# complete; the log folders themselves are undeclared outputs of train_segment).
TRAINED_RUNS = sorted(
    {c.run_id for name in FIGURES + TABLES + tuple(config.get("audit_alternatives") or ()) for c in REG.cells[name]
     if REG.is_trained(c.run_id)} | {GRID["run_id"]})


rule training_summary:
    input:
        [path("checkpoint", run=run, step=REG.milestones[run][-1]) for run in TRAINED_RUNS],
    output:
        report(in_scale("results/training.csv"), category="training", caption="../report/training.rst"),
    params:
        run_logs=[f"{run}={path('train_log_dir', run=run)}" for run in TRAINED_RUNS],
    log:
        in_scale("work/logs/report/training.log"),
    localrule: True
    shell:
        "python -m pipeline.training_summary --run-logs {params.run_logs:q} --out {output:q} > {log:q} 2>&1"


ALL_TARGETS.append(in_scale("results/training.csv"))
