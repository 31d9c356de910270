"""A cell: one figure point or table entry, its metrics over seeds with their uncertainty, the paper's value.

Uncertainty of a cell's value (the mean over its seeds' sample sets), per metric (:func:`cell_summary`):

* ``se_seeds``: training-seed variation, ``sd(values) / √n`` (``None`` with one seed);
* ``se_metric``: finite-sample noise of the metric, ``√(Σ bᵢ²) / n`` from each seed's bootstrap standard error
  ``bᵢ`` (:mod:`eval.bootstrap`: 200 seeded resamples of the sample set's features, the reference fixed; ``None``
  for precision/recall and for metrics files without a bootstrap);
* ``se = √(se_seeds² + se_metric²)``: conservative, since the seeds' spread already contains sampling noise
  (at most √2 too wide); ``df = n − 1`` with several seeds (Student t), else normal;
* ``low``/``high``: the 95 % interval ``mean ∓ q·se`` (q the t or normal quantile).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from core.errors import InputError, one_line, run_cli
from core.io import atomic_write_json, provenance
from pipeline.registry import Cell

# Registry metric names -> keys of eval.evaluate's metrics JSON.
METRIC_KEYS = {"fid": "fid", "sfid": "sfid", "is": "inception_score", "precision": "precision", "recall": "recall"}
LEVEL = 0.95


def quantile(level: float, df: int | None) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom (normal for ``None``)."""
    from scipy import stats  # here, not at the top: scipy.stats takes a second to import

    return float(stats.norm.ppf(0.5 + level / 2) if df is None else stats.t.ppf(0.5 + level / 2, df))


def cell_summary(values: Sequence[float], metric_ses: Sequence[float | None] | None = None,
                 level: float = LEVEL) -> dict[str, float | int | None]:
    """Mean over seeds and its uncertainty (module docstring): ``se_seeds``, ``se_metric``, ``se``, ``df`` and the
    ``level`` interval ``low``/``high`` (all ``None`` where they cannot be computed)."""
    n = len(values)
    mean = sum(values) / n
    se_seeds = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n >= 2 else None
    ses = list(metric_ses or [])
    se_metric = math.sqrt(sum(b * b for b in ses)) / n if len(ses) == n and all(b is not None for b in ses) else None
    parts = [se for se in (se_seeds, se_metric) if se is not None]
    se = math.sqrt(sum(p * p for p in parts)) if parts else None
    df = n - 1 if n >= 2 else None
    half = None if se is None else quantile(level, df) * se
    return {"mean": mean, "n": n, "se_seeds": se_seeds, "se_metric": se_metric, "se": se, "df": df,
            "low": None if half is None else mean - half, "high": None if half is None else mean + half,
            "level": level}


def write_cell(cells: Sequence[Cell], metrics_files: Sequence[str], out: str, scale: str) -> dict[str, Any]:
    """Gather a cell's per-seed metrics into ``out`` (JSON, atomic) and return the record."""
    if not cells:
        raise InputError("--specs: a cell needs at least one seed's spec")
    if len(cells) != len(metrics_files):
        raise InputError(f"--metrics: {len(metrics_files)} file(s) for {len(cells)} seed spec(s)")
    first = cells[0]
    per_seed: dict[str, dict[str, float]] = {}
    per_seed_se: dict[str, dict[str, float | None]] = {}
    sources = []
    for cell, path in zip(cells, metrics_files, strict=True):
        record, per_seed[str(cell.seed)] = _read_metrics(path, cell.metrics)
        per_seed_se[str(cell.seed)] = _bootstrap_ses(record, cell.metrics)
        sources.append({"seed": cell.seed, "run": cell.run_id, "metrics_file": path,
                        "samples": cell.samples_path, "settings": record.get("settings", {}),
                        "bootstrap": {k: v for k, v in (record.get("bootstrap") or {}).items() if k != "se"},
                        **({"checkpoint_source": record["checkpoint_source"]} if "checkpoint_source" in record
                           else {})})
    summary = {m: cell_summary([per_seed[s][m] for s in per_seed], [per_seed_se[s][m] for s in per_seed])
               for m in first.metrics}
    difference = {m: summary[m]["mean"] - first.paper[m] for m in first.metrics if m in first.paper}
    spec = asdict(first)
    spec.pop("seed")
    spec.pop("run_id")
    result = {
        "experiment": first.experiment,
        "cell": first.id,
        "scale": scale,
        "spec": spec,
        "seeds": sorted(int(s) for s in per_seed),
        "per_seed": per_seed,
        "per_seed_se_metric": per_seed_se,
        "summary": summary,
        "paper": first.paper,
        "paper_also": first.paper_also,
        "judged_against": "paper",
        "difference": difference,
        "sources": sources,
        "provenance": provenance(config={"cell": spec, "scale": scale}, seed=None),
    }
    atomic_write_json(out, result)
    return result


def _read_metrics(path: str, metrics: Sequence[str]) -> tuple[dict[str, Any], dict[str, float]]:
    """One metrics JSON (eval.evaluate's) and the cell's metrics from it, each finite; one line naming a bad
    file."""
    try:
        record = json.loads(Path(path).read_text())
        picked = {m: float(record["metrics"][METRIC_KEYS[m]]) for m in metrics}
    except FileNotFoundError:
        raise InputError(f"{path}: metrics file not found") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: not a metrics JSON of eval.evaluate ({one_line(err)})") from None
    bad = [m for m, v in picked.items() if not math.isfinite(v)]
    if bad:
        raise InputError(f"{path}: non-finite {', '.join(bad)}")
    return record, picked


def _bootstrap_ses(record: dict[str, Any], metrics: Sequence[str]) -> dict[str, float | None]:
    """Each metric's bootstrap standard error in a metrics JSON (``None`` where there is none)."""
    ses = (record.get("bootstrap") or {}).get("se") or {}
    out: dict[str, float | None] = {}
    for metric in metrics:
        value = ses.get(METRIC_KEYS[metric])
        out[metric] = float(value) if isinstance(value, int | float) and math.isfinite(value) else None
    return out


def cells_to_json(cells: Sequence[Cell]) -> str:
    """The specs of a cell's seeds as JSON (what the ``cell`` rule hands to :func:`main`)."""
    return json.dumps([asdict(c) for c in cells], sort_keys=True)


def cells_from_json(text: str) -> list[Cell]:
    """The seed specs of :func:`cells_to_json`; text that is not such a list is one :class:`InputError`."""
    try:
        return [Cell(**{**spec, "metrics": tuple(spec["metrics"])}) for spec in json.loads(text)]
    except (ValueError, TypeError, KeyError) as err:
        raise InputError(f"--specs: not a JSON list of cell specs ({one_line(err)})") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.cells", description=__doc__.splitlines()[0])
    parser.add_argument("--specs", required=True, help="JSON list of the cell's per-seed specs")
    parser.add_argument("--metrics", nargs="+", required=True, help="metrics JSON per seed, in spec order")
    parser.add_argument("--scale", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    record = write_cell(cells_from_json(args.specs), args.metrics, args.out, args.scale)
    print(f"cell {record['experiment']}/{record['cell']}: " + ", ".join(
        f"{m} {s['mean']:.4g}" for m, s in record["summary"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
