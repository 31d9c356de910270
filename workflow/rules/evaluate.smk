# Sampling + metrics (one job per sample set) and cells (paths: pipeline/paths.py).
# work/<scale>/samples/<run>/step<N>/<tag>.npz     ADM sample batch (arr_0 uint8 NHWC, arr_1 labels) + .json sidecar
# work/<scale>/metrics/<run>/step<N>/<tag>.json    FID / sFID / IS / precision / recall with every setting
#                                          (`python -m eval.evaluate REF NPZ` re-scores any npz by hand)
# results/<scale>/cells/<experiment>/<cell>.json  one table entry or figure point: metrics of every seed, the
#                                          paper's value, provenance. Delete one and re-run its target
#                                          to re-run only that cell.
# A sample job's settings come from the registry cell that asked for its file (`sample_set`), never from
# its file name.

from pipeline.cells import cells_to_json
from pipeline.known_files import DIGITS_WEIGHTS

EXTRACTOR = config["extractor"]
# The digits CNN is shipped (eval/weights/README.md: the same weights on every machine); Inception is linked.
EXTRACTOR_WEIGHTS = str(BASE / DIGITS_WEIGHTS) if EXTRACTOR["kind"] == "digits" else in_scale("work/extractors/inception.pth")


rule sample:
    """Sample a milestone checkpoint into an ADM npz and score it in the same process (one torch start-up)."""
    input:
        ckpt=sample_checkpoint,
        latents=sample_latents,
        reference=metrics_reference,
        extractor=EXTRACTOR_WEIGHTS,
    output:
        samples=PATHS["samples"],
        metrics=PATHS["metrics"],
    log:
        PATHS["sample_log"],
    params:
        launcher=launcher("sample", "pipeline.sample"),
        flags=sample_flags,
        decoder=sample_decoder,
        batch=lambda wc: protocol_of(wc.run)["sample_batch"],
        micro=lambda wc: protocol_of(wc.run)["sample_micro_batch"],
        shards=lambda wc: path("sample_shards", run=wc.run, step=wc.step, tag=wc.tag),
        kind=EXTRACTOR["kind"],
    threads: 1
    resources:
        **stage_resources("sample"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher:q} --ckpt {input.ckpt:q} {params.flags:q}"
        " --batch-size {params.batch:q} --micro-batch {params.micro:q} {params.decoder:q}"
        " --out {output.samples:q} --shard-dir {params.shards:q}"
        " --metrics-out {output.metrics:q} --reference {input.reference:q} --extractor {params.kind:q}"
        " --extractor-weights {input.extractor:q} > {log:q} 2>&1"


rule cell:
    input:
        lambda wc: [c.metrics_path for c in cell_specs(wc)],
    output:
        PATHS["cell"],
    log:
        in_scale("work/logs/cells/{experiment}/{cell}.log"),
    params:
        specs=lambda wc: cells_to_json(cell_specs(wc)),
        scale=config["scale_name"],
    localrule: True
    shell:
        "python -m pipeline.cells --specs {params.specs:q} --metrics {input:q} --scale {params.scale:q}"
        " --out {output:q} > {log:q} 2>&1"


rule inception_weights:
    output:
        in_scale("work/extractors/inception.pth"),
    log:
        in_scale("work/logs/extractors/inception.log"),
    params:
        source=EXTRACTOR.get("weights", ""),
    localrule: True
    # The configured path is data, never code: it reaches the shell once, shell-quoted into a variable
    # assignment, and is used only as "$source" (an empty path fails `test -f`; `--` stops option parsing).
    shell:
        "source={params.source:q}; test -f \"$source\" || {{ echo \"error: Inception weights not found at"
        " '$source' (set extractor.weights in config/scales/paper.yaml to torch-fidelity inception-v3-compat"
        " weights)\" >&2; exit 1; }}; ln -sfn -- \"$(realpath -- \"$source\")\" {output:q} 2> {log:q}"


rule grids:
    """Figs. 8-10: sample grids of FasterDiT at 1000k (scaled), cfg 4.0, for the paper's classes."""
    input:
        ckpt=path("checkpoint", run=GRID["run_id"], step=GRID["step"]),
        latents=f"{REG.runs[GRID['run_id']]['latents']}/index.json",
    output:
        report(in_scale("paper_figures/fig8.png"), category="fig8-10"),
    log:
        in_scale("work/logs/grids.log"),
    params:
        classes=[str(c) for c in GRID["classes"]],
        per_class=GRID["per_class"],
        guidance=guidance_flags(GRID["cfg"], GRID["cfg_channels"]),
        seed=GRID["seed"],
        micro=protocol_of(GRID["run_id"])["sample_micro_batch"],
        sampler=sampler_flags(GRID["sampler"]),
    resources:
        **single_process_resources("sample", GRID["run_id"]),  # one process: one GPU, not the stage's eight
    shell:
        "OMP_NUM_THREADS={threads} python -m pipeline.sample_grid --ckpt {input.ckpt:q} --classes {params.classes:q}"
        " --per-class {params.per_class:q} {params.guidance:q} {params.sampler:q} --seed {params.seed:q}"
        " --micro-batch {params.micro:q} --latents-index {input.latents:q} --out {output:q} > {log:q} 2>&1"


ALL_TARGETS.append(in_scale("paper_figures/fig8.png"))
