"""Tables 1-3 (and the calibration) in the paper's own row/column shape, as Markdown and LaTeX.

Read from an experiment's long CSV (:mod:`pipeline.report`); the shape is the experiment's ``layout`` block in
config/experiments.yaml:

* ``{rows: [{label, cell}, ...], metrics: [fid, sfid, ...]}``: one row per cell, one column pair per metric
  (Table 1, the calibration); the paper's quoted rows (``cited``) come first, shown and never run;
* ``{rows: [{label, cells: [id, ...]}, ...], columns: [label, ...], metric: fid}``: a grid of cells, one column
  pair per column label (Tables 2 and 3).

Each column pair is the paper's value beside the reproduced one, ``mean ± half-width`` of its 95 % interval
(``ci_high − mean``; ``mean`` alone for a cell without uncertainty), at the scale the CSV was made at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from pipeline.audit import finite_number

METRIC_NAMES = {"fid": "FID", "sfid": "sFID", "is": "IS", "precision": "Prec.", "recall": "Rec."}
NOT_RUN = "–"


def _fmt(value: float | None, digits: int = 2) -> str:
    return NOT_RUN if value is None else f"{value:.{digits}f}"


def reproduced_text(row: Mapping[str, Any] | None) -> str:
    """``mean ± half-width`` of a CSV row's reproduced value (``–`` for a cell that is not in the CSV)."""
    if row is None:
        return NOT_RUN
    mean, high = finite_number(row.get("reproduced")), finite_number(row.get("ci_high"))
    if mean is None:
        return NOT_RUN
    return _fmt(mean) if high is None else f"{_fmt(mean)} ± {_fmt(high - mean)}"


def _lookup(table: pd.DataFrame) -> dict[tuple[str, str], dict[str, Any]]:
    run = table[table["status"] == "run"]
    return {(str(r["cell"]), str(r["metric"])): dict(r) for _, r in run.iterrows()}


def shape(table: pd.DataFrame, spec: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the paper-shaped table: a label column, then a (paper, reproduced) pair per column."""
    layout, cells = spec["layout"], _lookup(table)
    scale = next((str(s) for s in table.get("scale", pd.Series(dtype=str)).dropna()), "")
    here = f"here ({scale})" if scale else "here"
    def pair(cell: str, metric: str) -> list[str]:
        found = cells.get((cell, metric))
        return [_fmt(finite_number(found.get("paper")) if found else None), reproduced_text(found)]

    if "metrics" in layout:
        metrics = list(layout["metrics"])
        header = ["Method"] + [f"{METRIC_NAMES[m]} {part}" for m in metrics for part in ("paper", here)]
        rows = [[f"{entry['method']} (quoted)"] + [part for m in metrics for part in (_fmt(entry.get(m)), NOT_RUN)]
                for entry in spec.get("cited", [])]
        rows += [[row["label"], *(v for m in metrics for v in pair(row["cell"], m))] for row in layout["rows"]]
        return header, rows
    metric = layout.get("metric", "fid")
    header = ["Method"] + [f"{column} {part}" for column in layout["columns"] for part in ("paper", here)]
    return header, [[row["label"], *(v for cell in row["cells"] for v in pair(cell, metric))] for row in layout["rows"]]


def to_markdown(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_html(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A standalone HTML page of the table (what the Snakemake report shows)."""
    from html import escape

    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    style = ("body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse} "
             "th,td{border:1px solid #bbb;padding:3px 8px;text-align:right} td:first-child{text-align:left}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{style}"
            f"</style></head><body><p><b>{escape(title)}</b></p><table><tr>{head}</tr>{body}</table></body></html>\n")


def _latex_escape(text: str) -> str:
    for plain, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                           ("±", r"$\pm$"), ("–", "--"), ("×", r"$\times$")):
        text = text.replace(plain, escaped)
    return text


def to_latex(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A ``tabular`` (booktabs) with the caption as a comment: paste it into a paper or a report."""
    lines = [f"% {title}", r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(_latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
