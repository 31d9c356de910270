"""Where every DAG file lives: one table of path templates, used by the rules, the registry and the budget.

Every output of a scale lives under that scale's own folders, ``work/<scale>/``, ``results/<scale>/`` and
``paper_figures/<scale>/``, so scales never overwrite each other (a smoke run leaves every mini file as it was)
and the committed snapshot of a scale is simply its outputs. :func:`at_scale` puts a path into a scale's
folders; :class:`ScalePaths` is the table for one scale. Templates take Snakemake's wildcard syntax
(``{run}``, ``{step}``, ...). All paths are relative to the working directory of the run
(``snakemake --directory``).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from functools import cache

ROOTS = ("work", "results", "paper_figures")   # the top-level folders a scale's outputs live under

TEMPLATES: dict[str, str] = {
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
    "paper_table": "results/{experiment}.{ext}",          # md / tex / html: the paper's row/column shape
    "figure": "paper_figures/{experiment}.{ext}",
}

_SCALE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


def at_scale(relative: str, scale: str) -> str:
    """``work/x`` -> ``work/<scale>/x`` (likewise ``results/``, ``paper_figures/``): a path in a scale's folders."""
    if not _SCALE_NAME.fullmatch(scale):
        raise ValueError(f"scale: {scale!r} is not a folder name (lower-case letters, digits, '-' and '_')")
    root, sep, rest = relative.partition("/")
    if root not in ROOTS or not sep:
        raise ValueError(f"{relative!r} is not under {', '.join(r + '/' for r in ROOTS)}")
    return f"{root}/{scale}/{rest}"


def scale_of_path(target: str, scales: Collection[str]) -> str | None:
    """The scale of ``scales`` whose folders hold ``target`` (``results/paper/table1.csv`` -> ``paper``), or None."""
    parts = [part for part in target.replace("\\", "/").split("/") if part not in ("", ".")]
    if len(parts) >= 3 and parts[0] in ROOTS and parts[1] in scales:
        return parts[1]
    return None


class ScalePaths:
    """The path table of one scale: ``paths["checkpoint"]`` is a template, ``paths("checkpoint", run=r, step=400)``
    a path."""

    def __init__(self, scale: str) -> None:
        self.scale = scale
        self.templates = {kind: at_scale(template, scale) for kind, template in TEMPLATES.items()}

    def __getitem__(self, kind: str) -> str:
        return self.templates[kind]

    def __call__(self, kind: str, **values: object) -> str:
        return self.templates[kind].format(**values)

    def at(self, relative: str) -> str:
        """Any other file of the scale: :func:`at_scale` of ``relative``."""
        return at_scale(relative, self.scale)


@cache
def paths_for(scale: str) -> ScalePaths:
    """The (shared) path table of ``scale``: what cells and the registry call per file."""
    return ScalePaths(scale)
