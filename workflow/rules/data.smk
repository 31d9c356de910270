# Data: reference sets, dataset npz files and precomputed latents. Everything comes from the scale
# config (keys documented in pipeline/data.py): datasets, autoencoders, references, and the optional
# weights_dir and latents {shard_size, batch_size, num_workers, seed}.
#
# work/reference/<reference>.npz (+ .json)          ADM npz the metrics compare against: built from the
#                                                   data set, or a symlink to the configured ADM batch
# work/data/<dataset>-<split>.npz (+ .json)         a digits split as an ADM-format npz (train/reference/all)
# work/latents/<dataset>-<res>px-<ae>-<flip>/       shard-XXXXX.safetensors + index.json (flip: flip|noflip);
#                                                   shards are resumable and survive a failed job
import os as _os
import re as _re
import shlex as _shlex
import sys as _sys

from pipeline.data import latents_cli_args, reference_cli_args

_DATA_PY = _sys.executable  # the interpreter that runs Snakemake (the harness environment)


def _alternatives(names):
    """A wildcard constraint matching exactly the configured names."""
    names = sorted(names, key=len, reverse=True)
    return "|".join(_re.escape(str(n)) for n in names) or "(?!)"


def _digits_datasets():
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


def _latents_resource(key, default):
    def get(wildcards, attempt=1):
        return _latents_protocol_resources(wildcards).get(key, default)
    return get


def _latents_command(wildcards):
    """`python` or `torchrun` (several GPUs) + `-m pipeline.latents` and its arguments."""
    res = _latents_protocol_resources(wildcards)
    gpus = int(res.get("gpu", 0))
    cpus = int(res.get("cpus_per_task", res.get("threads", 1)))
    workers = max(0, cpus // max(gpus, 1) - 1)
    args = latents_cli_args(config, wildcards.dataset, int(wildcards.res), wildcards.ae,
                            wildcards.flip == "flip", num_workers=workers)
    launch = [_DATA_PY] if gpus <= 1 else [_DATA_PY, "-m", "torch.distributed.run", "--standalone",
                                          "--nnodes=1", f"--nproc_per_node={gpus}"]
    return " ".join(_shlex.quote(a) for a in [*launch, "-m", "pipeline.latents", *args])


def _reference_command(wildcards):
    args = reference_cli_args(config, wildcards.reference)
    return " ".join(_shlex.quote(a) for a in [_DATA_PY, "-m", "pipeline.data", *args])


def _reference_is_built_from_images(wildcards):
    return "imagefolder" in reference_cli_args(config, wildcards.reference)


rule reference_npz:
    output:
        npz="work/reference/{reference}.npz",
        meta="work/reference/{reference}.json",
    wildcard_constraints:
        reference=_alternatives(config.get("references") or {}),
    params:
        command=_reference_command,
    log:
        "work/logs/reference/{reference}.log",
    threads: 1
    resources:
        cpus_per_task=lambda wc: 8 if _reference_is_built_from_images(wc) else 1,
        mem_mb=lambda wc: 32000 if _reference_is_built_from_images(wc) else 2000,
        runtime=lambda wc: "2h" if _reference_is_built_from_images(wc) else "10m",
    shell:
        "{params.command} --out {output.npz} 2>&1 | tee {log}"


rule dataset_npz:
    output:
        npz="work/data/{dataset}-{split}.npz",
        meta="work/data/{dataset}-{split}.json",
    wildcard_constraints:
        dataset=_alternatives(_digits_datasets()),
        split="train|reference|all",
    params:
        python=_DATA_PY,
    log:
        "work/logs/data/{dataset}-{split}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime="10m",
    shell:
        "{params.python} -m pipeline.data reference --dataset digits --split {wildcards.split}"
        " --out {output.npz} 2>&1 | tee {log}"


rule latents:
    output:
        "work/latents/{dataset}-{res}px-{ae}-{flip}/index.json",
    wildcard_constraints:
        dataset=_alternatives(config.get("datasets") or {}),
        ae=_alternatives(config.get("autoencoders") or {}),
        res=r"\d+",
        flip="flip|noflip",
    params:
        command=_latents_command,
        out=lambda wc, output: _os.path.dirname(output[0]),
    log:
        "work/logs/latents/{dataset}-{res}px-{ae}-{flip}.log",
    threads: 1
    resources:
        gpu=_latents_resource("gpu", 0),
        nodes=_latents_resource("nodes", 1),
        cpus_per_task=_latents_resource("cpus_per_task", 1),
        mem_mb=_latents_resource("mem_mb", 2000),
        runtime=_latents_resource("runtime", "30m"),
    shell:
        "OMP_NUM_THREADS={threads} {params.command} --out {params.out} 2>&1 | tee {log}"
