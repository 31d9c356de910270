"""Figures 1, 2, 4, 5, 6 and 7 in the paper's layout, drawn from cell records.

Reproduced values are plotted; the paper's numbers that its text states are written into each panel
(values read only off the paper's plots are not invented). Error bars are seed intervals where a cell
has several seeds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANEL_TITLES = {
    "ddpm-linear": "DDPM-linear", "ddpm-cosine": "DDPM-cosine",
    "flow-linear": "Flow-linear", "flow-cosine": "Flow-cosine",
}


def _value(record: dict[str, Any], metric: str = "fid") -> tuple[float, float | None, float | None]:
    s = record["summary"][metric]
    return s["mean"], s["low"], s["high"]


def _curve(ax: Any, records: Sequence[dict[str, Any]], label: str, **style: Any) -> None:
    """FID against data std for the given cells, sorted by std, with seed intervals if any."""
    pts = sorted((float(r["spec"]["coords"]["std"]), *_value(r)) for r in records)
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    ax.plot(xs, ys, marker="o", label=label, **style)
    if any(p[2] is not None for p in pts):
        lows = [p[1] - p[2] if p[2] is not None else 0 for p in pts]
        highs = [p[3] - p[1] if p[3] is not None else 0 for p in pts]
        ax.errorbar(xs, ys, yerr=[lows, highs], fmt="none", capsize=2, color=ax.lines[-1].get_color())


def _fid_axes(ax: Any, title: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("data std")
    ax.set_ylabel("FID (reproduced)")
    ax.grid(alpha=0.3)


def _by(records: Sequence[dict[str, Any]], *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        coords = r["spec"]["coords"]
        groups[(r["spec"]["block"], *(coords.get(k) for k in keys))].append(r)
    return groups


def _note(ax: Any, lines: Sequence[str]) -> None:
    """The paper's numbers for a panel, as a caption under its x label (never over the data)."""
    if lines:
        ax.annotate("\n".join(lines), xy=(0.5, 0), xycoords="axes fraction", xytext=(0, -38),
                    textcoords="offset points", ha="center", va="top", fontsize=7, color="0.3")


def _layout_with_scale_note(fig: Any, records: Sequence[dict[str, Any]]) -> None:
    """Lay the figure out, leaving a strip at the bottom for the scale note (never over the axis labels)."""
    scale = records[0]["scale"] if records else "?"
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.text(0.99, 0.01, f"scale: {scale} (paper numbers are ImageNet; compare trends, not values)",
             ha="right", va="bottom", fontsize=7, color="0.4")


def render_fig1(spec: dict, records: Sequence[dict]) -> Any:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1.2, 1]})
    for (_, ts), group in sorted(_by([r for r in records if r["spec"]["block"] == "left"], "timesteps").items()):
        _curve(left, group, ts)
    _fid_axes(left, "(left) same strategy, different data std")
    left.legend(fontsize=8)
    rows = [r for r in records if r["spec"]["block"] == "right"]
    table = [[r["cell"], f"{r['spec']['milestone'] // 1000}k", f"{r['paper'].get('fid', '')}", *_fmt_interval(r)]
             for r in rows]
    right.axis("off")
    right.set_title("(right) FID-50k, DiT-XL/2 recipe")
    if table:
        # One column per number, each wide enough for its text (nothing spills over a neighbour).
        t = right.table(cellText=table, colLabels=["cell", "steps", "paper", "reproduced", "95 % interval"],
                        colWidths=[0.3, 0.12, 0.12, 0.18, 0.32], cellLoc="center", loc="center")
        t.auto_set_font_size(False)
        t.set_fontsize(7.5)
        t.scale(1.0, 1.3)
    _layout_with_scale_note(fig, records)
    return fig


def _fmt_interval(record: dict, metric: str = "fid") -> tuple[str, str]:
    """(mean, "[low, high]") of a cell's metric ("" for the interval of a cell without uncertainty)."""
    mean, low, high = _value(record, metric)
    return f"{mean:.2f}", "" if low is None else f"[{low:.2f}, {high:.2f}]"


def _fmt_value(record: dict, metric: str = "fid") -> str:
    mean, low, high = _value(record, metric)
    return f"{mean:.2f}" if low is None else f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def render_schedule_panels(spec: dict, records: Sequence[dict], line_key: str | None,
                           schedules: Sequence[str]) -> Any:
    block = spec["blocks"][0]
    fig, axes = plt.subplots(1, len(schedules), figsize=(3.3 * len(schedules), 3.2), squeeze=False)
    for ax, (letter, schedule) in zip(axes[0], zip("abcd", schedules)):
        chosen = [r for r in records if r["spec"]["coords"].get("schedule") == schedule]
        groups = _by(chosen, line_key) if line_key else {("", ""): chosen}
        for (_, line), group in sorted(groups.items(), key=lambda kv: str(kv[0])):
            _curve(ax, group, str(line) if line_key else "reproduced")
        _fid_axes(ax, f"({letter}) {PANEL_TITLES[schedule]}")
        notes = [f"paper: FID {p['fid']} at std {p['std']}" for p in block.get("paper_points", [])
                 if p["schedule"] == schedule]
        if schedule in block.get("paper_ranges", {}):
            notes.append(f"paper: FID range {block['paper_ranges'][schedule]}")
        if schedule in block.get("paper_best", {}):
            notes.append(f"paper: best FID {block['paper_best'][schedule]}")
        _note(ax, notes)
        if line_key:
            ax.legend(fontsize=7, loc="best")
    _layout_with_scale_note(fig, records)
    return fig


def render_fig5(spec: dict, records: Sequence[dict]) -> Any:
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.2))
    ranges = spec["blocks"][0].get("paper_ranges", {})
    for ax, letter, schedule in zip(axes, "ab", ("flow-linear", "flow-cosine")):
        chosen = [r for r in records if r["spec"]["coords"].get("schedule") == schedule]
        pred = _by([r for r in chosen if r["spec"]["block"] == "prediction"], "prediction")
        for (_, prediction), group in sorted(pred.items()):
            label = "v-prediction" if prediction == "velocity" else "ε-prediction"
            _curve(ax, group, label)
        lognorm = [r for r in chosen if r["spec"]["block"] == "lognorm"]
        if lognorm:
            _curve(ax, lognorm, "v-prediction + lognorm(0, 1)", linestyle="--")
        _fid_axes(ax, f"({letter}) {PANEL_TITLES[schedule]}")
        _note(ax, [f"paper: FID range {ranges[k]} ({k.split('/')[1]})" for k in ranges if k.startswith(schedule)])
        ax.legend(fontsize=7, loc="best")
    _layout_with_scale_note(fig, records)
    return fig


def render_fig6(spec: dict, records: Sequence[dict]) -> Any:
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    _curve(ax, records, "flow-linear, v-prediction")
    _fid_axes(ax, "(a) standard deviation modulating")
    best = spec["blocks"][0].get("paper_best_std")
    if best is not None:
        ax.axvline(best, color="0.5", linestyle=":", label=f"paper's best std ≈ {best}")
    ax.legend(fontsize=7)
    _layout_with_scale_note(fig, records)
    return fig


def render_fig7(spec: dict, records: Sequence[dict]) -> Any:
    rows = {"both": "balance + direction loss", "balance": "multi-step balance", "none": "neither (SiT)"}
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    by_row: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_row[r["cell"].split("-")[0]].append(r)
    for row, (key, label) in enumerate(rows.items()):
        group = sorted(by_row.get(key, []), key=lambda r: r["spec"]["milestone"])
        if not group:
            continue
        # Rows side by side (a few k steps apart) so that their seed intervals do not hide each other.
        xs = [r["spec"]["milestone"] / 1000 + 4 * (row - 1) for r in group]
        values = [_value(r) for r in group]
        ax.plot(xs, [v[0] for v in values], marker="o", label=label)
        if any(v[1] is not None for v in values):
            ax.errorbar(xs, [v[0] for v in values], fmt="none", capsize=2, color=ax.lines[-1].get_color(),
                        yerr=[[v[0] - v[1] if v[1] is not None else 0 for v in values],
                              [v[2] - v[0] if v[2] is not None else 0 for v in values]])
        for x, r in zip(xs, group):
            if "fid" in r["paper"]:
                ax.annotate(f"{r['paper']['fid']}", (x, _value(r)[0]), fontsize=6, color=ax.lines[-1].get_color(),
                            xytext=(6, -10 + 9 * row), textcoords="offset points")  # stacked: points may coincide
    ax.set_xlabel("training iterations (paper's k steps; scaled at small scales)")
    ax.set_ylabel("FID (reproduced)")
    ax.set_title("(b) ablations for FasterDiT training (labels: paper's FID-50k)\nbars: 95 % interval over seeds "
                 "and samples", fontsize=10)
    ax.margins(x=0.1, y=0.12)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _layout_with_scale_note(fig, records)
    return fig


def render(experiment: str, spec: dict, records: Sequence[dict]) -> Any:
    """The figure of one experiment."""
    if experiment == "fig1":
        return render_fig1(spec, records)
    if experiment == "fig2":
        return render_schedule_panels(spec, records, None, ("ddpm-linear", "ddpm-cosine", "flow-linear", "flow-cosine"))
    if experiment == "fig4":
        return render_schedule_panels(spec, records, "timesteps", ("ddpm-linear", "ddpm-cosine"))
    if experiment == "fig5":
        return render_fig5(spec, records)
    if experiment == "fig6":
        return render_fig6(spec, records)
    if experiment == "fig7":
        return render_fig7(spec, records)
    raise ValueError(f"no figure for {experiment!r}")
