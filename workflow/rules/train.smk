# Training: one job per segment between consecutive milestones of a run.
# work/runs/<run>/run.json            the recipe (pipeline.runconfig keys), written from the registry by
#                                     each segment job (identical every time: the run id hashes it)
# work/runs/<run>/ckpt/step<N>.pt     milestone checkpoints (segment k+1 starts from segment k's)
# work/runs/<run>/rolling/            undeclared: rolling checkpoints survive failures and retries
# work/runs/<run>/log/                train.jsonl and loss.png


def previous_checkpoint(wildcards):
    prev = REG.previous_milestone(wildcards.run, int(wildcards.step))
    return [] if prev is None else [f"work/runs/{wildcards.run}/ckpt/step{prev}.pt"]


rule train_segment:
    input:
        latents=latents_index,
        init=previous_checkpoint,
    output:
        "work/runs/{run}/ckpt/step{step}.pt",
    log:
        "work/logs/train/{run}/step{step}.log",
    params:
        launcher=launcher("train", "pipeline.train"),
        run_json=lambda wc: json.dumps(REG.runs[wc.run], sort_keys=True),
        start=lambda wc: REG.previous_milestone(wc.run, int(wc.step)) or 0,
        init=lambda wc, input: f"--init {input.init[0]}" if input.init else "",
        plot=lambda wc: "" if protocol_of(wc.run).get("loss_plot", True) else "--no-loss-plot",
    threads: 1
    resources:
        gpu=stage_resource("train", "gpu", 0),
        nodes=stage_resource("train", "nodes", 1),
        cpus_per_task=stage_resource("train", "cpus_per_task", 1),
        mem_mb=stage_resource("train", "mem_mb", 2000),
        runtime=stage_resource("train", "runtime", "30m"),
    shell:
        "mkdir -p work/runs/{wildcards.run} && printf '%s\\n' {params.run_json:q} > work/runs/{wildcards.run}/run.json.tmp"
        " && mv work/runs/{wildcards.run}/run.json.tmp work/runs/{wildcards.run}/run.json"
        " && OMP_NUM_THREADS={threads} {params.launcher} --run-config work/runs/{wildcards.run}/run.json"
        " --start {params.start} --stop {wildcards.step} {params.init} --out {output}"
        " --rolling-dir work/runs/{wildcards.run}/rolling --log-dir work/runs/{wildcards.run}/log {params.plot}"
        # Under SLURM, stop cleanly (exit 75, rolling checkpoint) before the job's time limit; the retry resumes.
        ' $([ -n "${{SLURM_JOB_ID:-}}" ] && echo --time-budget-minutes {resources.runtime})'
        " > {log} 2>&1"
