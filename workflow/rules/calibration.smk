# Calibration: published checkpoints in (paths: pipeline/paths.py). The sample and cell rules are the usual ones;
# only where the checkpoint comes from differs.
# work/<scale>/official/<run>.pt         the published file (a link to the scale's official_checkpoints entry) or,
#                                        for a stand-in, the trained run's EMA weights in the official layout
# work/<scale>/imported/<run>/step<N>.pt         the harness checkpoint imported from it (strict key/shape check, the
#                                        file's SHA-256 recorded), which the calibration cells sample

rule official_checkpoint_link:
    """A published file from the scale's official_checkpoints, linked as is (never downloaded)."""
    output:
        PATHS["official_checkpoint"],
    wildcard_constraints:
        run=imported_runs(stand_in=False),
    log:
        in_scale("work/logs/official/{run}.log"),
    params:
        source=lambda wc: REG.imported[wc.run]["source"],
        key=lambda wc: f"official_checkpoints.{REG.imported[wc.run]['preset']}",
    localrule: True
    # The configured path is data, never code: shell-quoted into a variable and used only as "$source".
    shell:
        "source={params.source:q}; key={params.key:q}; test -f \"$source\" || {{ echo \"error: $key: no file at '$source'"
        " (README: Calibrate first)\" >&2; exit 1; }}; ln -sfn -- \"$(realpath -- \"$source\")\" {output:q} 2> {log:q}"


rule official_checkpoint_export:
    """A calibration stand-in (mini/smoke): the trained run's EMA weights written in the published file's layout."""
    input:
        stand_in_checkpoint,
    output:
        PATHS["official_checkpoint"],
    wildcard_constraints:
        run=imported_runs(stand_in=True),
    log:
        in_scale("work/logs/official/{run}.log"),
    params:
        layout=lambda wc: REG.imported[wc.run]["layout"],
    resources:
        mem_mb=2000,
    shell:
        "python -m pipeline.import_checkpoint {input:q} --export --layout {params.layout:q} --out {output:q}"
        " > {log:q} 2>&1"


rule import_official:
    """The harness checkpoint of a published file: its network from the registry's run, its layout the preset's."""
    input:
        PATHS["official_checkpoint"],
    output:
        PATHS["imported_checkpoint"],
    log:
        in_scale("work/logs/imported/{run}/step{step}.log"),
    params:
        run_json=lambda wc: json.dumps(REG.runs[wc.run], sort_keys=True),
        layout=lambda wc: REG.imported[wc.run]["layout"],
    resources:
        mem_mb=16000,  # DiT-XL/2: 2.7 GB of weights, read, checked and written once
        runtime=lambda wc, attempt: attempt_runtime("30m", attempt),
    shell:
        "python -m pipeline.import_checkpoint {input:q} --run-json {params.run_json:q} --layout {params.layout:q}"
        " --step {wildcards.step:q} --out {output:q} > {log:q} 2>&1"


rule calibration_audit:
    """The calibration-* claims alone (config/claims.yaml), so that calibrating needs only results/<scale>/calibration.csv."""
    input:
        table=path("table", experiment="calibration"),
        claims=BASE / "config" / "claims.yaml",
        fig3=BASE / "config" / "figures" / "fig3.yaml",
    output:
        in_scale("results/calibration-audit.csv"),
    log:
        in_scale("work/logs/report/calibration-audit.log"),
    params:
        results=in_scale("results/"),
    localrule: True
    shell:
        "python -m pipeline.audit --results {params.results:q} --tables {input.table:q} --claims {input.claims:q}"
        " --fig3-config {input.fig3:q} --only calibration- --out {output:q} > {log:q} 2>&1"
