"""Stage `snr_pdf`: the SNR probability density of one training setting (Section 2.2) as CSV + summary.

    python -m pipeline.snr_pdf --schedule ddpm-linear --std 2.5 --sampling uniform \\
        --out pdf.csv --summary summary.json --band -6 0

The CSV has ``lgSNR_dB, density`` (Eq. 7, per dB) and, with ``--n-samples N > 0``, ``density_alg1``
(Algorithm 1's histogram with the grid points as bin centres). Its first line is a ``# provenance: {json}``
comment (read it with ``pandas.read_csv(path, comment="#")``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.errors import positive_float, run_cli
from core.io import atomic_write_json, atomic_write_text, derive_seed, provenance
from models.schedules import SCHEDULES
from models.snr import SNRSetting, analytic_snr_pdf, bin_edges, db_grid, estimate_snr_pdf, make_setting, snr_summary


def snr_pdf_table(
    setting: SNRSetting, grid_db: np.ndarray, n_samples: int = 0, seed: int = 0
) -> pd.DataFrame:
    """Eq. 7 on ``grid_db`` and, if ``n_samples > 0``, Algorithm 1's estimate on bins centred there."""
    y = torch.as_tensor(grid_db, dtype=torch.float64)
    table = {"lgSNR_dB": grid_db, "density": analytic_snr_pdf(y, setting).numpy()}
    if n_samples > 0:
        generator = torch.Generator().manual_seed(derive_seed(seed, "snr_pdf", json.dumps(setting.describe())))
        edges = torch.as_tensor(bin_edges(grid_db))
        table["density_alg1"] = estimate_snr_pdf(edges, setting, n_samples, generator).numpy()
    return pd.DataFrame(table)


def summarise_table(table: pd.DataFrame, band: tuple[float, float] | None) -> dict:
    """:func:`models.snr.snr_summary` for each density column of a table from :func:`snr_pdf_table`."""
    y = table["lgSNR_dB"].to_numpy()
    out = {"eq7": snr_summary(y, table["density"].to_numpy(), band)}
    if "density_alg1" in table:
        out["alg1"] = snr_summary(y, table["density_alg1"].to_numpy(), band)
    return out


def csv_with_provenance(table: pd.DataFrame, prov: dict) -> str:
    """CSV text whose first line is ``# provenance: {json}``."""
    header = "# provenance: " + json.dumps(prov, sort_keys=True, default=str) + "\n"
    return header + table.to_csv(index=False, float_format="%.10g", lineterminator="\n")


def run(
    out_csv: str | Path,
    out_summary: str | Path,
    setting: SNRSetting,
    grid: tuple[float, float, float] = (-100.0, 100.0, 0.25),
    n_samples: int = 0,
    seed: int = 0,
    band: tuple[float, float] | None = None,
    config: dict | None = None,
) -> dict:
    """Compute the table and summary for ``setting`` and write both atomically; return the summary."""
    grid_db = db_grid(*grid)
    table = snr_pdf_table(setting, grid_db, n_samples, seed)
    prov = provenance(config if config is not None else setting.describe(), seed)
    summary = {
        "setting": setting.describe(),
        "grid_db": list(grid),
        "n_samples": n_samples,
        **summarise_table(table, band),
        "provenance": prov,
    }
    atomic_write_text(out_csv, csv_with_provenance(table, prov))
    atomic_write_json(out_summary, summary)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.snr_pdf", description=__doc__.split("\n")[0])
    parser.add_argument("--schedule", required=True, choices=sorted(SCHEDULES))
    parser.add_argument("--std", type=positive_float, default=1.0, help="data standard deviation (Eq. 5)")
    parser.add_argument("--C", type=positive_float, default=1.0, help="the data constant C(I) of Eq. 5")
    parser.add_argument("--sampling", choices=["uniform", "lognorm"], default="uniform")
    parser.add_argument("--mu", type=float, default=0.0, help="lognorm mean (t = 1 is data)")
    parser.add_argument("--sigma", type=positive_float, default=1.0, help="lognorm scale")
    parser.add_argument("--loss-weight", choices=["none", "min-snr", "snr"], default="none")
    parser.add_argument("--gamma", type=positive_float, default=5.0, help="min-snr clamp")
    parser.add_argument(
        "--prediction", choices=["noise", "velocity", "data"], default=None,
        help="training target; sets the time range (Schedule.t_range). Default: the whole of [0, 1]",
    )
    parser.add_argument("--grid", type=float, nargs=3, default=[-100.0, 100.0, 0.25], metavar=("LO", "HI", "STEP"))
    parser.add_argument("--n-samples", type=int, default=0, help="Algorithm 1 samples (0: Eq. 7 only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--band", type=float, nargs=2, default=None, metavar=("LO", "HI"), help="band in dB")
    parser.add_argument("--out", required=True, help="CSV of (lgSNR_dB, density)")
    parser.add_argument("--summary", required=True, help="JSON summary")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setting = make_setting(
        args.schedule, args.std, args.C, args.sampling, args.mu, args.sigma, args.loss_weight, args.gamma,
        args.prediction,
    )
    config = {k: v for k, v in vars(args).items() if k not in ("out", "summary")}
    summary = run(
        args.out, args.summary, setting, tuple(args.grid), args.n_samples, args.seed,
        tuple(args.band) if args.band else None, config,
    )
    eq7 = summary["eq7"]
    print(
        f"{args.schedule} std={args.std:g}: mean {eq7['mean_db']:.2f} dB, sd {eq7['std_db']:.2f} dB, "
        f"mode {eq7['mode_db']:.2f} dB" + (f", band mass {eq7['band_mass']:.3f}" if args.band else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
