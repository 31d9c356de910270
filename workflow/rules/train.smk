# Training: one job per segment between consecutive milestones of a run (paths: pipeline/paths.py).
# work/<scale>/runs/<run>/run.json            the recipe (pipeline.runconfig keys) as the registry expanded it,
#                                     written by each segment job (identical every time: the run id hashes it)
# work/<scale>/runs/<run>/ckpt/step<N>.pt     milestone checkpoints (segment k+1 starts from segment k's)
# work/<scale>/runs/<run>/rolling/            undeclared: rolling checkpoints survive failures and retries
# work/<scale>/runs/<run>/log/                train.jsonl and loss.png (+ tensorboard/ and grids/ where the protocol asks)


rule train_segment:
    input:
        latents=latents_index,
        init=previous_checkpoint,
    output:
        PATHS["checkpoint"],
    log:
        PATHS["train_log"],
    params:
        launcher=launcher("train", "pipeline.train"),
        run_json=lambda wc: json.dumps(REG.runs[wc.run], sort_keys=True),
        run_config=lambda wc: path("run_config", run=wc.run),
        rolling=lambda wc: path("rolling_dir", run=wc.run),
        log_dir=lambda wc: path("train_log_dir", run=wc.run),
        start=lambda wc: REG.previous_milestone(wc.run, int(wc.step)) or 0,
        init=lambda wc, input: ["--init", input.init[0]] if input.init else [],
        plot=lambda wc: [] if protocol_of(wc.run).get("loss_plot", True) else ["--no-loss-plot"],
        tensorboard=lambda wc: ["--tensorboard", path("tensorboard_dir", run=wc.run)]
        if protocol_of(wc.run).get("tensorboard", False) else [],
        compile=lambda wc: ["--compile"] if protocol_of(wc.run).get("compile", False) else [],
        grids=lambda wc: ["--grid-every", str(protocol_of(wc.run)["sample_grid_every"])]
        if protocol_of(wc.run).get("sample_grid_every", 0) > 0 else [],
    threads: 1
    resources:
        **stage_resources("train"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher:q} --run-json {params.run_json:q}"
        " --save-run-config {params.run_config:q} --start {params.start:q} --stop {wildcards.step:q} {params.init:q}"
        " --out {output:q} --rolling-dir {params.rolling:q} --log-dir {params.log_dir:q} {params.plot:q}"
        " {params.tensorboard:q} {params.compile:q} {params.grids:q}"
        # Under SLURM, stop cleanly (exit 75, rolling checkpoint) before the job's time limit; the retry resumes.
        # (resources.runtime is Snakemake's minutes, an integer; quoted all the same.)
        ' $([ -n "${{SLURM_JOB_ID:-}}" ] && echo --time-budget-minutes {resources.runtime:q})'
        " > {log:q} 2>&1"
