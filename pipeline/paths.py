"""Where every DAG file lives: one table of path templates, used by the rules, the registry and the budget.

Templates take Snakemake's wildcard syntax (``{run}``, ``{step}``, ...); :func:`path` fills them in Python.
All paths are relative to the working directory of the run (``snakemake --directory``).
"""

from __future__ import annotations

PATHS: dict[str, str] = {
    "run_config": "work/runs/{run}/run.json",
    "checkpoint": "work/runs/{run}/ckpt/step{step}.pt",
    "official_checkpoint": "work/official/{run}.pt",      # a published file (link) or a stand-in in its layout
    "imported_checkpoint": "work/imported/{run}/step{step}.pt",
    "rolling_dir": "work/runs/{run}/rolling",
    "train_log_dir": "work/runs/{run}/log",
    "tensorboard_dir": "work/runs/{run}/log/tensorboard",
    "train_log": "work/logs/train/{run}/step{step}.log",
    "samples": "work/samples/{run}/step{step}/{tag}.npz",
    "sample_shards": "work/samples/{run}/step{step}/{tag}.shards",
    "metrics": "work/metrics/{run}/step{step}/{tag}.json",
    "sample_log": "work/logs/sample/{run}/step{step}/{tag}.log",
    "cell": "results/cells/{experiment}/{cell}.json",
    "table": "results/{experiment}.csv",
    "paper_table": "results/{experiment}.{ext}",          # md / tex: the paper's row/column shape
    "figure": "paper_figures/{experiment}.{ext}",
}


def path(kind: str, **values: object) -> str:
    """The path of ``kind`` with its wildcards filled, e.g. ``path("checkpoint", run=r, step=400)``."""
    return PATHS[kind].format(**values)
