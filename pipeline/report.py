"""Tables and figures from cell JSONs: ``results/<experiment>.csv`` and ``paper_figures/<experiment>.{pdf,png}``.

One long-format CSV per experiment: one row per (cell, metric) with the paper's value (``paper``, what the row
is judged against; ``paper_also``: other values the paper prints for the same sample set, with their source),
the reproduced mean over seeds, its 95 % interval (``ci_low``/``ci_high``) and standard errors (``se``, of which
``se_seeds`` from training seeds and ``se_metric`` from the metric's bootstrap: :mod:`pipeline.cells`), the
difference, the scale and the seeds. Rows the paper quotes from other papers (Table 1) are included with
``status = cited`` and never run.

A table with a ``layout`` also comes in the paper's own shape (:mod:`pipeline.paper_tables`): Markdown and
LaTeX, their first line the CSV's provenance.

CLI (one rule per figure/table calls it)::

    python -m pipeline.report EXPERIMENT --cells C1.json C2.json ... --csv results/EXP.csv \
        [--figure paper_figures/EXP.pdf] [--markdown results/EXP.md --latex results/EXP.tex]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import InputError, run_cli
from core.io import atomic_write, atomic_write_csv, atomic_write_text, provenance
from pipeline.registry import load_experiments

COLUMNS = [
    "experiment", "block", "cell", "status", "schedule", "prediction", "timesteps", "std", "milestone", "step",
    "cfg", "num_samples", "metric", "paper", "paper_also", "reproduced", "ci_low", "ci_high", "se", "se_seeds",
    "se_metric", "difference", "n_seeds", "seeds", "scale", "note",
]


def cell_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of one cell JSON (one per metric)."""
    spec, coords = record["spec"], record["spec"]["coords"]
    rows = []
    for metric, summary in record["summary"].items():
        paper = record["paper"].get(metric)
        rows.append({
            "experiment": record["experiment"], "block": spec["block"], "cell": record["cell"], "status": "run",
            "schedule": coords.get("schedule", ""), "prediction": coords.get("prediction", ""),
            "timesteps": coords.get("timesteps", ""), "std": coords.get("std", ""),
            "milestone": spec["milestone"], "step": spec["step"], "cfg": spec["cfg"],
            "num_samples": spec["num_samples"], "metric": metric, "paper": "" if paper is None else paper,
            "paper_also": paper_also_text(record.get("paper_also", []), metric),
            "reproduced": summary["mean"], "ci_low": _blank(summary["low"]), "ci_high": _blank(summary["high"]),
            "se": _blank(summary.get("se")), "se_seeds": _blank(summary.get("se_seeds")),
            "se_metric": _blank(summary.get("se_metric")),
            "difference": "" if paper is None else summary["mean"] - paper, "n_seeds": summary["n"],
            "seeds": " ".join(map(str, record["seeds"])), "scale": record["scale"],
            "note": spec.get("citation") or ("" if paper is not None
                                             else "paper value not stated in the text (figure only)"),
        })
    return rows


def paper_also_text(entries: Sequence[dict[str, Any]], metric: str) -> str:
    """The CSV's ``paper_also`` cell: the paper's other values of ``metric`` for this sample set, each with its
    source (``18.5 (Fig. 7 none-400k ...)``, joined by ``; ``); the row is judged against ``paper`` only."""
    return "; ".join(f"{entry[metric]:g} ({entry['source']})" for entry in entries if metric in entry)


def _blank(value: Any) -> Any:
    return "" if value is None else value


def cited_rows(experiment: str, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows quoted from other papers (never run)."""
    rows = []
    for entry in spec.get("cited", []):
        for metric in ("fid", "sfid", "is", "precision", "recall"):
            if metric in entry:
                rows.append({col: "" for col in COLUMNS} | {
                    "experiment": experiment, "block": "cited", "cell": entry["method"], "status": "cited",
                    "metric": metric, "paper": entry[metric],
                    "note": f"quoted by the paper from other work ({entry.get('iters', 'n/a')}); not run"})
    return rows


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path, experiment: str, cell_files: Sequence[str]) -> dict:
    """The experiment's CSV; its first line records provenance (``# provenance: {json}``), returned."""
    prov = provenance(config={"experiment": experiment, "cells": list(cell_files)}, seed=None)
    atomic_write_csv(path, [{k: row.get(k, "") for k in COLUMNS} for row in rows], COLUMNS, prov)
    return prov


def write_paper_shaped(csv_path: str | Path, spec: dict[str, Any], prov: dict, markdown: str | Path,
                       latex: str | Path, html: str | Path | None = None) -> None:
    """The table in the paper's shape (:mod:`pipeline.paper_tables`) as Markdown and LaTeX (and HTML)."""
    import pandas as pd

    from pipeline.paper_tables import shape, to_html, to_latex, to_markdown

    table = pd.read_csv(csv_path, comment="#", keep_default_na=False, na_values=[""])
    header, rows = shape(table, spec)
    stamp = json.dumps(prov, sort_keys=True)
    atomic_write_text(markdown, f"<!-- provenance: {stamp} -->\n" + to_markdown(spec["title"], header, rows))
    atomic_write_text(latex, f"% provenance: {stamp}\n" + to_latex(spec["title"], header, rows))
    if html:
        atomic_write_text(html, f"<!-- provenance: {stamp} -->\n" + to_html(spec["title"], header, rows))


def build(experiment: str, cell_files: Sequence[str], csv_path: str, figure_path: str | None,
          markdown: str | None = None, latex: str | None = None, html: str | None = None) -> list[dict]:
    """Write the experiment's CSV, its paper-shaped tables and its figure (those asked for); return the rows."""
    records = [json.loads(Path(f).read_text()) for f in cell_files]
    spec = load_experiments()["experiments"][experiment]
    rows = [row for record in records for row in cell_rows(record)] + cited_rows(experiment, spec)
    prov = write_csv(rows, csv_path, experiment, cell_files)
    if markdown or latex:
        if "layout" not in spec or not (markdown and latex):
            raise InputError(f"{experiment}: --markdown and --latex go together, for an experiment with a `layout`")
        write_paper_shaped(csv_path, spec, prov, markdown, latex, html)
    if figure_path:
        from pipeline.figures.experiments import render

        fig = render(experiment, spec, records)
        save_figure(fig, figure_path)
    return rows


def save_figure(fig: Any, pdf_path: str | Path) -> None:
    """Save ``fig`` as PDF at ``pdf_path`` and as PNG beside it, atomically."""
    import matplotlib.pyplot as plt

    pdf_path = Path(pdf_path)
    for path, fmt in ((pdf_path, "pdf"), (pdf_path.with_suffix(".png"), "png")):
        with atomic_write(path) as handle:
            fig.savefig(handle, format=fmt, dpi=150, bbox_inches="tight")
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--cells", nargs="+", required=True)
    parser.add_argument("--csv", required=True)
    parser.add_argument("--figure")
    parser.add_argument("--markdown", help="the paper-shaped table as Markdown (experiments with a layout)")
    parser.add_argument("--latex", help="the same as a LaTeX tabular")
    parser.add_argument("--html", help="the same as an HTML page (the Snakemake report shows it)")
    args = parser.parse_args(argv)
    rows = build(args.experiment, args.cells, args.csv, args.figure, args.markdown, args.latex, args.html)
    print(f"{args.experiment}: {len(rows)} rows -> {args.csv}" + (f", {args.figure}" if args.figure else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
