"""Claims audit: each claim of the paper (config/claims.yaml) checked against the reproduced results.

``results/audit.csv`` has one row per claim: the paper's evidence, the reproduced evidence and a verdict:
``reproduced``, ``not reproduced``, or ``not run at this scale`` (the cells it needs are missing). Where a
cell has several seeds, ``robust`` says whether the seed intervals separate the compared values.

CLI: ``python -m pipeline.audit --results results --claims config/claims.yaml --out results/audit.csv``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from core.errors import run_cli
from core.io import atomic_write_csv, git_commit, portable_path, provenance
from pipeline.config import load_claims, load_fig3

REPRODUCED, NOT_REPRODUCED, NOT_RUN = "reproduced", "not reproduced", "not run at this scale"
COLUMNS = ["claim", "text", "verdict", "reproduced_evidence", "robust", "scale", "git_commit"]


@dataclass
class Verdict:
    verdict: str
    evidence: str
    robust: str = ""


def _rows(results: Mapping[str, pd.DataFrame], experiment: str, metric: str = "fid") -> pd.DataFrame | None:
    table = results.get(experiment)
    if table is None:
        return None
    return table[(table["status"] == "run") & (table["metric"] == metric)]


def _select(rows: pd.DataFrame, where: Mapping[str, Any]) -> pd.DataFrame:
    for key, value in where.items():
        rows = rows[rows[key].astype(str) == str(value)]
    return rows


def _separated(a: pd.Series, b: pd.Series) -> str:
    """'yes' if a's interval lies wholly below b's, 'no' if they overlap, '' without intervals."""
    if pd.isna(a["ci_high"]) or pd.isna(b["ci_low"]) or a["ci_high"] == "" or b["ci_low"] == "":
        return ""
    return "yes" if float(a["ci_high"]) < float(b["ci_low"]) else "no"


def check_less(rows: pd.DataFrame, pairs: Sequence[Sequence[str]]) -> Verdict:
    by_cell = {r["cell"]: r for _, r in rows.iterrows()}
    if any(a not in by_cell or b not in by_cell for a, b in pairs):
        return Verdict(NOT_RUN, "missing cells: " + ", ".join(c for p in pairs for c in p if c not in by_cell))
    parts, ok, robust = [], True, []
    for a, b in pairs:
        va, vb = float(by_cell[a]["reproduced"]), float(by_cell[b]["reproduced"])
        ok &= va < vb
        parts.append(f"{a} {va:.3g} {'<' if va < vb else '>='} {b} {vb:.3g}")
        robust.append(_separated(by_cell[a], by_cell[b]))
    robust_flag = "" if "" in robust else ("yes" if all(r == "yes" for r in robust) else "no")
    return Verdict(REPRODUCED if ok else NOT_REPRODUCED, "; ".join(parts), robust_flag)


def _curve(rows: pd.DataFrame, where: Mapping[str, Any]) -> pd.Series | None:
    chosen = _select(rows, where)
    if chosen.empty:
        return None
    return chosen.assign(std=chosen["std"].astype(float)).set_index("std")["reproduced"].astype(float).sort_index()


def check_curves(kind: str, rows: pd.DataFrame, a_where: Mapping, b_where: Mapping) -> Verdict:
    a, b = _curve(rows, a_where), _curve(rows, b_where)
    if a is None or b is None:
        return Verdict(NOT_RUN, "missing curve")
    if kind == "range_less":
        va, vb, what = a.max() - a.min(), b.max() - b.min(), "FID range"
    elif kind == "min_less":
        va, vb, what = a.min(), b.min(), "best FID"
    elif kind == "mean_less":
        va, vb, what = a.mean(), b.mean(), "mean FID"
    else:  # crossover: a worse than b at the weakest signal, better at the strongest
        lo, hi = max(a.index.min(), b.index.min()), min(a.index.max(), b.index.max())
        worse_low, better_high = a[lo] > b[lo], a[hi] < b[hi]
        evidence = (f"std {lo:g}: A {a[lo]:.3g} vs B {b[lo]:.3g}; std {hi:g}: A {a[hi]:.3g} vs B {b[hi]:.3g}")
        return Verdict(REPRODUCED if worse_low and better_high else NOT_REPRODUCED, evidence)
    label_a = ", ".join(f"{v}" for v in a_where.values())
    label_b = ", ".join(f"{v}" for v in b_where.values())
    return Verdict(REPRODUCED if va < vb else NOT_REPRODUCED,
                   f"{what}: {label_a} {va:.3g} vs {label_b} {vb:.3g}")


def check_snr_band(rows: pd.DataFrame, fig3_cfg: Mapping[str, Any]) -> Verdict:
    """At each schedule's best-FID std (reproduced Fig. 2), is the Eq. 7 SNR-PDF mean inside the band?"""
    import numpy as np
    import torch

    from models.snr import analytic_snr_pdf, make_setting, snr_summary

    band = fig3_cfg["band_db"]
    lo, hi, step = fig3_cfg["grid_db"]
    grid = torch.tensor(np.arange(lo, hi + step / 2, step), dtype=torch.float64)
    parts, inside = [], []
    for schedule in sorted(set(rows["schedule"])):
        curve = _curve(rows, {"schedule": schedule})
        best = float(curve.idxmin())
        setting = make_setting(schedule, std=best, C=float(fig3_cfg.get("C", 1.0)), prediction="noise")
        summary = snr_summary(grid, analytic_snr_pdf(grid, setting), band)
        inside.append(summary["mean_in_band"])
        parts.append(f"{schedule}: best std {best:g}, PDF mean {summary['mean_db']:.1f} dB "
                     f"({'in' if summary['mean_in_band'] else 'outside'} [{band[0]:g}, {band[1]:g}] dB)")
    if not parts:
        return Verdict(NOT_RUN, "no Fig. 2 cells")
    return Verdict(REPRODUCED if all(inside) else NOT_REPRODUCED, "; ".join(parts))


def audit(results: Mapping[str, pd.DataFrame], claims: Sequence[Mapping[str, Any]],
          fig3_cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Verdict rows for every claim."""
    out = []
    scale = next((str(t["scale"].dropna().iloc[0]) for t in results.values()
                  if "scale" in t and not t["scale"].dropna().empty), "")
    for claim in claims:
        check = claim["check"]
        rows = _rows(results, check["experiment"], check.get("metric", "fid"))
        if rows is None or rows.empty:
            verdict = Verdict(NOT_RUN, f"no results/{check['experiment']}.csv")
        elif check["kind"] == "less":
            verdict = check_less(rows, check["pairs"])
        elif check["kind"] == "snr_band":
            verdict = check_snr_band(rows, fig3_cfg)
        else:
            verdict = check_curves(check["kind"], rows, check["a"], check["b"])
        out.append({"claim": claim["id"], "text": claim["text"], "verdict": verdict.verdict,
                    "reproduced_evidence": verdict.evidence, "robust": verdict.robust, "scale": scale,
                    "git_commit": git_commit()})
    return out


def load_results(results_dir: Path) -> dict[str, pd.DataFrame]:
    tables = {}
    for path in sorted(results_dir.glob("*.csv")):
        table = pd.read_csv(path, comment="#", keep_default_na=False, na_values=[""])
        if {"experiment", "metric", "reproduced", "status"} <= set(table.columns):
            tables[path.stem] = table
    return tables


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.audit", description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--claims", default="config/claims.yaml")
    parser.add_argument("--fig3-config", default="config/figures/fig3.yaml")
    parser.add_argument("--out", default="results/audit.csv")
    args = parser.parse_args(argv)
    claims, fig3_cfg = load_claims(args.claims), load_fig3(args.fig3_config)
    rows = audit(load_results(Path(args.results)), claims, fig3_cfg)
    prov = provenance(config={"claims": portable_path(args.claims), "results": portable_path(args.results)}, seed=None)
    atomic_write_csv(args.out, rows, COLUMNS, prov)
    counts = pd.Series([r["verdict"] for r in rows]).value_counts().to_dict()
    print(f"audit: {len(rows)} claims -> {args.out}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
