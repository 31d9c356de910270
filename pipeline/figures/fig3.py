"""Figure 3: SNR PDFs (Eq. 7) of the four schedules for a low, a high and the best-FID data std.

    python -m pipeline.figures.fig3 --config config/figures/fig3.yaml [--scale mini] \\
        [--best-std-results results/mini/fig2.csv]

(``--fig-dir``, ``--csv`` and ``--summary`` default to ``paper_figures/<scale>``, ``results/<scale>/fig3.csv`` and
``results/<scale>/fig3_summary.json``.)

Writes ``<fig-dir>/<view>.pdf`` and ``.png`` for every view of the config (``fig3``: uniform sampling as in
the paper; ``fig3_lognorm``: the lognorm(0, 1) variant of Figs. 4-5), the curves in long format
(``results/<scale>/fig3.csv``, first line ``# provenance: {json}``) and per-curve summaries with the best-std sources.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib
import pandas as pd
import torch
import yaml
from matplotlib.figure import Figure

from core.errors import run_cli
from core.io import atomic_write, atomic_write_json, atomic_write_text, derive_seed, provenance
from models.snr import analytic_snr_pdf, bin_edges, db_grid, estimate_snr_pdf, make_setting, snr_summary
from pipeline.paths import at_scale

PANEL_TITLES = {
    "ddpm-linear": "DDPM-linear",
    "ddpm-cosine": "DDPM-cosine",
    "flow-linear": "Flow-linear",
    "flow-cosine": "Flow-cosine",
}
ROLE_COLOURS = {"low": "tab:blue", "high": "tab:red", "best": "tab:green"}
ROLE_ORDER = ("low", "high", "best")


@dataclass(frozen=True)
class BestStd:
    """The best-FID std of one schedule and where it came from (``results``, ``paper`` or ``assumed``)."""

    std: float
    kind: str
    source: str
    results: str | None = None

    def label(self) -> str:
        """Short source for the CSV: the results file, or which kind of config fallback."""
        return self.results if self.kind == "results" else f"config fallback ({self.kind})"


def load_config(path: str | Path) -> dict:
    """The ``fig3`` block of a YAML file (the whole file if it has no ``fig3`` key)."""
    with open(path) as handle:
        data = yaml.safe_load(handle) or {}
    return data.get("fig3", data)


def read_fid_table(path: str | Path) -> pd.DataFrame:
    """Fig. 2 results as rows with ``schedule``, ``std`` and ``fid``.

    Accepts a wide table with a ``fid`` column, or the report stage's long table (``metric``, ``reproduced``,
    ``status``: FID rows that were run). Leading ``#`` comment lines (provenance) are skipped.
    """
    lines = Path(path).read_text().splitlines()
    body = "\n".join(line for line in lines if not line.startswith("#"))
    table = pd.read_csv(io.StringIO(body))
    if "fid" not in table.columns and {"metric", "reproduced"} <= set(table.columns):
        table = table[table["metric"].astype(str) == "fid"]
        if "status" in table.columns:
            table = table[table["status"].astype(str) == "run"]
        table = table.assign(fid=pd.to_numeric(table["reproduced"], errors="coerce"))
    missing = {"schedule", "std", "fid"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: no {sorted(missing)} column(s) (nor metric/reproduced)")
    numeric = {column: pd.to_numeric(table[column], errors="coerce") for column in ("std", "fid")}
    table = table.assign(**numeric)
    return table.dropna(subset=["std", "fid"])


def best_stds(cfg: Mapping, results: str | Path | None = None) -> dict[str, BestStd]:
    """Best-FID std per schedule: from the Fig. 2 results if given (lowest FID), else the config fallback.

    A filter ``column: value`` keeps rows with that value or a blank one (blank: the column does not apply).
    """
    best: dict[str, BestStd] = {}
    if results is not None:
        table = read_fid_table(results)
        for column, value in (cfg["best_std"].get("filters") or {}).items():
            if column in table.columns:
                cells = table[column]
                table = table[cells.isna() | (cells.astype(str).str.strip().isin(["", str(value)]))]
        for schedule, rows in table.groupby("schedule"):
            row = rows.loc[rows["fid"].idxmin()]
            best[str(schedule)] = BestStd(
                float(row["std"]), "results", f"lowest FID {float(row['fid']):.2f} at std {row['std']:g}", str(results)
            )
    for schedule in cfg["schedules"]:
        if schedule not in best:
            fallback = cfg["best_std"]["fallback"][schedule]
            best[schedule] = BestStd(float(fallback["std"]), str(fallback["kind"]), str(fallback["source"]))
    return best


def _prediction(view: Mapping, schedule: str) -> str | None:
    prediction = view.get("prediction")
    return prediction.get(schedule) if isinstance(prediction, Mapping) else prediction


def curve_stds(cfg: Mapping, best: Mapping[str, BestStd], schedule: str) -> list[tuple[str, float]]:
    """The (role, std) pairs of one panel: low, high and best."""
    return [("low", float(cfg["stds"]["low"])), ("high", float(cfg["stds"]["high"])), ("best", best[schedule].std)]


def compute_curves(cfg: Mapping, best: Mapping[str, BestStd]) -> tuple[pd.DataFrame, list[dict]]:
    """Eq. 7 and Algorithm 1 for every view × schedule × std: a long table and per-curve summaries."""
    lo, hi, step = (float(v) for v in cfg["grid_db"])
    grid = db_grid(lo, hi, step)
    y = torch.as_tensor(grid, dtype=torch.float64)
    edges = torch.as_tensor(bin_edges(grid, step))
    band = tuple(float(b) for b in cfg["band_db"])
    frames, summaries = [], []
    for view in cfg["views"]:
        sampling = dict(view["sampling"])
        for schedule in cfg["schedules"]:
            for role, std in curve_stds(cfg, best, schedule):
                prediction = _prediction(view, schedule)
                setting = make_setting(
                    schedule, std, float(cfg["C"]), sampling["kind"], float(sampling.get("mu", 0.0)),
                    float(sampling.get("sigma", 1.0)), prediction=prediction,
                )
                seed = derive_seed(int(cfg["seed"]), "fig3", view["name"], schedule, role)
                eq7 = analytic_snr_pdf(y, setting).numpy()
                alg1 = estimate_snr_pdf(edges, setting, int(cfg["n_samples"]), torch.Generator().manual_seed(seed))
                source = best[schedule] if role == "best" else None
                frames.append(pd.DataFrame({
                    "view": view["name"], "schedule": schedule, "sampling": setting.sampling.label(),
                    "prediction": prediction or "", "role": role, "std": std,
                    "best_std_source": source.label() if source else "",
                    "lgSNR_dB": grid, "density_eq7": eq7, "density_alg1": alg1.numpy(),
                }))
                summaries.append({
                    "view": view["name"], "schedule": schedule, "role": role, "std": std,
                    "setting": setting.describe(),
                    "eq7": snr_summary(grid, eq7, band), "alg1": snr_summary(grid, alg1.numpy(), band),
                })
    return pd.concat(frames, ignore_index=True), summaries


def _legend_label(role: str, std: float, best: BestStd) -> str:
    if role != "best":
        return f"std = {std:g}"
    tag = {"results": "best FID", "paper": "best FID in paper", "assumed": "assumed best"}[best.kind]
    return f"std = {std:g} ({tag})"


def render_view(
    table: pd.DataFrame, cfg: Mapping, view: Mapping, best: Mapping[str, BestStd], out_stem: str | Path
) -> list[Path]:
    """One row of panels (one per schedule) for ``view``; writes ``out_stem.pdf`` and ``.png``."""
    schedules = list(cfg["schedules"])
    fig = Figure(figsize=(3.4 * len(schedules), 3.1))  # no pyplot: rendering never touches a GUI backend
    axes = fig.subplots(1, len(schedules), squeeze=False)
    band = cfg["band_db"]
    compare = view.get("compare_with")
    for idx, (ax, schedule) in enumerate(zip(axes[0], schedules)):
        ax.axvspan(band[0], band[1], color="0.85", zorder=0, lw=0)
        for role in ROLE_ORDER:
            rows = table[(table.view == view["name"]) & (table.schedule == schedule) & (table.role == role)]
            std = float(rows["std"].iloc[0])
            # The best std on top, thicker: near another std (DDPM-linear's 2.5 and 3.3) it stays visible.
            ax.plot(rows.lgSNR_dB, rows.density_eq7, color=ROLE_COLOURS[role], lw=2.2 if role == "best" else 1.4,
                    zorder=3 if role == "best" else 2, label=_legend_label(role, std, best[schedule]))
            if compare:
                ref = table[(table.view == compare) & (table.schedule == schedule) & (table.role == role)]
                ax.plot(ref.lgSNR_dB, ref.density_eq7, color=ROLE_COLOURS[role], lw=1.0, ls="--", alpha=0.7)
        ax.set_xlim(*cfg["xlim_db"])
        ax.set_ylim(0, 1.4 * ax.get_ylim()[1])  # headroom for the legend
        ax.set_title(f"({chr(ord('a') + idx)}) {PANEL_TITLES.get(schedule, schedule)}", fontsize=10)
        ax.set_xlabel("lgSNR (dB)")
        if idx == 0:
            ax.set_ylabel("PDF")
        ax.legend(fontsize=7, frameon=False, loc="upper left")
        ax.tick_params(labelsize=8)
    fig.suptitle(view.get("title", view["name"]), fontsize=10)
    fig.tight_layout()
    written = []
    for ext in ("pdf", "png"):
        path = Path(f"{out_stem}.{ext}")
        with atomic_write(path) as handle:
            fig.savefig(handle, format=ext, dpi=200 if ext == "png" else None)
        written.append(path)
    return written


def run(
    cfg: Mapping, fig_dir: str | Path, out_csv: str | Path, out_summary: str | Path,
    results: str | Path | None = None,
) -> dict:
    """Compute every curve, render every view and write the CSV and summary (all atomically)."""
    best = best_stds(cfg, results)
    table, curves = compute_curves(cfg, best)
    figures = [render_view(table, cfg, view, best, Path(fig_dir) / view["name"]) for view in cfg["views"]]
    prov = provenance(dict(cfg), int(cfg["seed"]))
    header = "# provenance: " + json.dumps(prov, sort_keys=True, default=str) + "\n"
    atomic_write_text(out_csv, header + table.to_csv(index=False, float_format="%.8g", lineterminator="\n"))
    summary = {
        "band_db": list(cfg["band_db"]),
        "best_std": {schedule: asdict(b) for schedule, b in best.items()},
        "best_std_results": str(results) if results is not None else None,
        "figures": [str(p) for paths in figures for p in paths],
        "curves": curves,
        "provenance": prov,
    }
    atomic_write_json(out_summary, summary)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.figures.fig3", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="YAML file with a fig3 block (config/figures/fig3.yaml)")
    source.add_argument("--config-json", help="the fig3 block as JSON (what the Snakemake rule passes)")
    parser.add_argument("--best-std-results", default=None, help="Fig. 2 results CSV (schedule, std, fid)")
    parser.add_argument("--scale", default="mini", help="the scale whose folders the defaults name (default mini)")
    parser.add_argument("--fig-dir", help="default: paper_figures/<scale>")
    parser.add_argument("--csv", help="default: results/<scale>/fig3.csv")
    parser.add_argument("--summary", help="default: results/<scale>/fig3_summary.json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.fig_dir = args.fig_dir or str(Path(at_scale("paper_figures/fig3.png", args.scale)).parent)
    args.csv = args.csv or at_scale("results/fig3.csv", args.scale)
    args.summary = args.summary or at_scale("results/fig3_summary.json", args.scale)
    cfg = load_config(args.config) if args.config else json.loads(args.config_json)
    matplotlib.use("Agg")
    torch.set_num_threads(1)
    summary = run(cfg, args.fig_dir, args.csv, args.summary, args.best_std_results)
    for curve in summary["curves"]:
        eq7 = curve["eq7"]
        print(
            f"{curve['view']:13s} {curve['schedule']:12s} {curve['role']:4s} std={curve['std']:<5g} "
            f"mean {eq7['mean_db']:7.2f} dB  sd {eq7['std_db']:6.2f} dB  band mass {eq7['band_mass']:.3f}"
            + ("  (mean in band)" if eq7["mean_in_band"] else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
