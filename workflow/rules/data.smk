# Data: reference sets, dataset npz files and precomputed latents. Everything comes from the scale
# config (keys documented in pipeline/data_config.py): datasets, autoencoders, references, and the optional
# weights_dir and latents {shard_size, batch_size, num_workers, seed}.
#
# work/<scale>/reference/<reference>.npz (+ .json)      ADM npz the metrics compare against: built from the
#                                                   data set, or a symlink to the configured ADM batch
# work/<scale>/data/<dataset>-<split>.npz (+ .json)     a digits split as an ADM-format npz (train/reference/all)
# work/<scale>/latents/<dataset>-<res>px-<ae>-<flip>/     shard-XXXXX.safetensors + index.json (flip: flip|noflip);
#                                                   shards are resumable and survive a failed job

import os
import re
import sys
from pathlib import Path

from pipeline.data_config import latents_cli_args, reference_cli_args
from pipeline.paths import at_scale
from pipeline.runtime import attempt_runtime

# As common.smk: jobs run `python` of the environment that runs Snakemake (also when this file is included
# on its own, as tests/test_data_rules.py does).
if not os.environ.get("PATH", "").startswith(str(Path(sys.executable).parent) + os.pathsep):
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def data_path(relative):
    """A file of this scale's work folder (work/<scale>/...; pipeline.paths)."""
    return at_scale(relative, config["scale"])


def alternatives(names):
    """A wildcard constraint matching exactly the configured names."""
    names = sorted(names, key=len, reverse=True)
    return "|".join(re.escape(str(n)) for n in names) or "(?!)"


def digits_datasets():
    return [n for n, d in (config.get("datasets") or {}).items() if (d or {}).get("kind") == "digits"]


def _latents_protocol_resources(wildcards):
    """The `resources.latents` block of a protocol that uses this latent folder ({} if none does)."""
    registry = globals().get("REG")
    for protocol in (registry.protocols.values() if registry is not None else []):
        key = (protocol["dataset"], str(protocol["resolution"]), protocol["autoencoder"],
               "flip" if protocol["flip"] else "noflip")
        if key == (wildcards.dataset, wildcards.res, wildcards.ae, wildcards.flip):
            return protocol.get("resources", {}).get("latents", {})
    return {}


def latents_resource(key, default):
    def get(wildcards, attempt=1):
        res = _latents_protocol_resources(wildcards)
        value = res.get(key, default)
        return attempt_runtime(value, attempt, res.get("max_runtime")) if key == "runtime" else value
    return get


def latents_command(wildcards):
    """`python` or `torchrun` (several GPUs) + `-m pipeline.latents` and its arguments, as a list (quoted by
    the rule, `{params.command:q}`)."""
    res = _latents_protocol_resources(wildcards)
    gpus = int(res.get("gpu", 0))
    cpus = int(res.get("cpus_per_task", res.get("threads", 1)))
    workers = max(0, cpus // max(gpus, 1) - 1)
    args = latents_cli_args(config, wildcards.dataset, int(wildcards.res), wildcards.ae,
                            wildcards.flip == "flip", num_workers=workers)
    launch = ["python"] if gpus <= 1 else ["python", "-m", "torch.distributed.run", "--standalone",
                                          "--nnodes=1", f"--nproc_per_node={gpus}"]
    return [*launch, "-m", "pipeline.latents", *map(str, args)]


def reference_command(wildcards):
    """`python -m pipeline.data` and its arguments for one reference, as a list (quoted by the rule)."""
    return ["python", "-m", "pipeline.data", *map(str, reference_cli_args(config, wildcards.reference))]


def reference_is_built_from_images(wildcards):
    return "imagefolder" in reference_cli_args(config, wildcards.reference)


rule reference_npz:
    output:
        npz=data_path("work/reference/{reference}.npz"),
        meta=data_path("work/reference/{reference}.json"),
    wildcard_constraints:
        reference=alternatives(config.get("references") or {}),
    params:
        command=reference_command,
    log:
        data_path("work/logs/reference/{reference}.log"),
    threads: 1
    resources:
        cpus_per_task=lambda wc: 8 if reference_is_built_from_images(wc) else 1,
        mem_mb=lambda wc: 32000 if reference_is_built_from_images(wc) else 2000,
        runtime=lambda wc, attempt: attempt_runtime("2h" if reference_is_built_from_images(wc) else "10m", attempt),
    shell:
        "{params.command:q} --out {output.npz:q} 2>&1 | tee {log:q}"


rule dataset_npz:
    output:
        npz=data_path("work/data/{dataset}-{split}.npz"),
        meta=data_path("work/data/{dataset}-{split}.json"),
    wildcard_constraints:
        dataset=alternatives(digits_datasets()),
        split="train|reference|all",
    log:
        data_path("work/logs/data/{dataset}-{split}.log"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=lambda wc, attempt: attempt_runtime("10m", attempt),
    shell:
        "python -m pipeline.data reference --dataset digits --split {wildcards.split:q}"
        " --out {output.npz:q} 2>&1 | tee {log:q}"


rule latents:
    output:
        data_path("work/latents/{dataset}-{res}px-{ae}-{flip}/index.json"),
    wildcard_constraints:
        dataset=alternatives(config.get("datasets") or {}),
        ae=alternatives(config.get("autoencoders") or {}),
        res=r"\d+",
        flip="flip|noflip",
    params:
        command=latents_command,
        out=lambda wc, output: os.path.dirname(output[0]),
    log:
        data_path("work/logs/latents/{dataset}-{res}px-{ae}-{flip}.log"),
    threads: 1
    resources:
        gpu=latents_resource("gpu", 0),
        nodes=latents_resource("nodes", 1),
        cpus_per_task=latents_resource("cpus_per_task", 1),
        mem_mb=latents_resource("mem_mb", 2000),
        runtime=latents_resource("runtime", "30m"),
    shell:
        "OMP_NUM_THREADS={threads} {params.command:q} --out {params.out:q} 2>&1 | tee {log:q}"
