# Sampling + metrics (one job per sample set) and cells.
# work/samples/<run>/step<N>/<tag>.npz     ADM sample batch (arr_0 uint8 NHWC, arr_1 labels) + .json sidecar
# work/metrics/<run>/step<N>/<tag>.json    FID / sFID / IS / precision / recall with every setting
#                                          (`python -m eval.evaluate REF NPZ` re-scores any npz by hand)
# results/cells/<experiment>/<cell>.json   one table entry or figure point: metrics of every seed, the
#                                          paper's value, provenance. Delete one and re-run its target
#                                          to re-run only that cell.

from pipeline.cells import cells_to_json

EXTRACTOR = config["extractor"]
EXTRACTOR_WEIGHTS = "work/extractors/digits-classifier.pt" if EXTRACTOR["kind"] == "digits" \
    else "work/extractors/inception.pth"


def metrics_reference(wildcards):
    from pipeline.registry import reference_path

    return reference_path(protocol_of(wildcards.run))


def sampler_args(wildcards):
    spec = parse_sample_tag(wildcards.tag)
    sampler = protocol_of(wildcards.run)["samplers"]["ddpm" if spec["kind"] == "ddpm" else "flow"]
    args = f"--sampler {spec['kind']} --cfg-scale {spec['cfg']:g} --num-samples {spec['n']} --seed {spec['seed']}"
    if spec["kind"] != "dopri5":
        args += f" --steps {spec['steps']}"
    else:
        args += f" --atol {sampler['atol']} --rtol {sampler['rtol']}"
    return args


rule sample:
    """Sample a milestone checkpoint into an ADM npz and score it in the same process (one torch start-up)."""
    input:
        ckpt="work/runs/{run}/ckpt/step{step}.pt",
        latents=latents_index,
        reference=metrics_reference,
        extractor=EXTRACTOR_WEIGHTS,
    output:
        samples="work/samples/{run}/step{step}/{tag}.npz",
        metrics="work/metrics/{run}/step{step}/{tag}.json",
    log:
        "work/logs/sample/{run}/step{step}/{tag}.log",
    params:
        launcher=launcher("sample", "pipeline.sample"),
        sampler=sampler_args,
        batch=lambda wc: protocol_of(wc.run)["sample_batch"],
        micro=lambda wc: protocol_of(wc.run)["sample_micro_batch"],
        kind=EXTRACTOR["kind"],
    threads: 1
    resources:
        gpu=stage_resource("sample", "gpu", 0),
        nodes=stage_resource("sample", "nodes", 1),
        cpus_per_task=stage_resource("sample", "cpus_per_task", 1),
        mem_mb=stage_resource("sample", "mem_mb", 2000),
        runtime=stage_resource("sample", "runtime", "30m"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} --ckpt {input.ckpt} {params.sampler}"
        " --batch-size {params.batch} --micro-batch {params.micro} --latents-index {input.latents}"
        " --out {output.samples} --shard-dir work/samples/{wildcards.run}/step{wildcards.step}/{wildcards.tag}.shards"
        " --metrics-out {output.metrics} --reference {input.reference} --extractor {params.kind}"
        " --extractor-weights {input.extractor} > {log} 2>&1"


def cell_specs(wildcards):
    cells = REG.cell_groups(wildcards.experiment).get(wildcards.cell)
    if not cells:
        raise ValueError(f"no cell {wildcards.cell!r} in {wildcards.experiment}")
    return cells


rule cell:
    input:
        lambda wc: [c.metrics_path for c in cell_specs(wc)],
    output:
        "results/cells/{experiment}/{cell}.json",
    params:
        specs=lambda wc: cells_to_json(cell_specs(wc)),
    localrule: True
    shell:
        "{PY} -m pipeline.cells --specs {params.specs:q} --metrics {input} --scale {config[scale_name]} --out {output}"


rule digits_extractor:
    input:
        train="work/data/digits-train.npz",
        test="work/reference/digits-8.npz",
    output:
        "work/extractors/digits-classifier.pt",
    log:
        "work/logs/extractors/digits-classifier.log",
    shell:
        "OMP_NUM_THREADS={threads} {PY} -m eval.digits_classifier --train {input.train} --test {input.test}"
        " --out {output} --report work/extractors/digits-classifier.json > {log} 2>&1"


rule inception_weights:
    output:
        "work/extractors/inception.pth",
    params:
        source=EXTRACTOR.get("weights", ""),
    localrule: True
    shell:
        "test -f '{params.source}' || {{ echo 'error: Inception weights not found at {params.source}"
        " (set extractor.weights in config/scales/paper.yaml to torch-fidelity inception-v3-compat weights)' >&2;"
        " exit 1; }}; ln -sfn \"$(realpath '{params.source}')\" {output}"


rule grids:
    """Figs. 8-10: sample grids of FasterDiT at 1000k (scaled), cfg 4.0, for the paper's classes."""
    input:
        ckpt=f"work/runs/{GRID['run_id']}/ckpt/step{GRID['step']}.pt",
        latents=f"{REG.runs[GRID['run_id']]['latents']}/index.json",
    output:
        report("paper_figures/fig8.png", category="fig8-10"),
    log:
        "work/logs/grids.log",
    params:
        classes=" ".join(map(str, GRID["classes"])),
        micro=protocol_of(GRID["run_id"])["sample_micro_batch"],
        sampler=(f"--sampler {GRID['sampler']['kind']}"
                 + (f" --steps {GRID['sampler']['steps']}" if "steps" in GRID["sampler"] else "")
                 + (f" --atol {GRID['sampler']['atol']} --rtol {GRID['sampler']['rtol']}" if "atol" in GRID["sampler"] else "")),
    resources:
        gpu=stage_resource("sample", "gpu", 0, GRID["run_id"]),
        nodes=stage_resource("sample", "nodes", 1, GRID["run_id"]),
        cpus_per_task=stage_resource("sample", "cpus_per_task", 1, GRID["run_id"]),
        mem_mb=stage_resource("sample", "mem_mb", 2000, GRID["run_id"]),
        runtime=stage_resource("sample", "runtime", "30m", GRID["run_id"]),
    shell:
        "OMP_NUM_THREADS={threads} {PY} -m pipeline.sample_grid --ckpt {input.ckpt} --classes {params.classes}"
        " --per-class {GRID[per_class]} --cfg-scale {GRID[cfg]} {params.sampler} --seed {GRID[seed]}"
        " --micro-batch {params.micro}"
        " --latents-index {input.latents} --out {output} > {log} 2>&1"


ALL_TARGETS.append("paper_figures/fig8.png")
