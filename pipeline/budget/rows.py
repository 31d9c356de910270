"""Rows and files of the budget: one row per job, totals per job kind, per experiment and overall; the CSV
(results/<scale>/budget.csv) and the plain-text tables the CLI prints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.io import portable_path
from pipeline.budget.estimate import JOB_KINDS, BudgetEstimate, Job
from pipeline.budget.throughput import Throughput

COLUMNS = [
    "row", "experiment", "kind", "job", "run", "protocol", "network", "device", "precision", "step_from",
    "step_to", "items", "nfe", "cfg", "gpus", "nodes", "tflop", "sampling_hours", "scoring_hours", "est_hours_wall",
    "est_gpu_hours", "est_device_hours",
    "attributed_device_hours", "critical_path_hours", "shared_by", "method", "source",
]


def budget_rows(budget: BudgetEstimate) -> list[dict[str, Any]]:
    """Job rows, then totals per job kind, per experiment (standalone and attributed) and the grand total."""
    rows: list[dict[str, Any]] = []
    order = {kind: i for i, kind in enumerate(JOB_KINDS)}
    for job in sorted(budget.jobs.values(), key=lambda j: (order[j.kind], j.key)):
        users = budget.users(job.key)
        rows.append({
            "row": "job", "experiment": ";".join(users), "kind": job.kind, "job": job.key,
            "run": job.run or "", "protocol": job.protocol, "network": job.network, "device": job.device,
            "precision": job.precision,
            "step_from": "" if job.step_from is None else job.step_from,
            "step_to": "" if job.step_to is None else job.step_to, "items": job.items,
            "nfe": "" if job.nfe is None else job.nfe, "cfg": "" if job.cfg is None else job.cfg,
            "gpus": job.gpus, "nodes": job.nodes, "tflop": job.flops / 1e12,
            "sampling_hours": job.sampling_seconds / 3600,
            "scoring_hours": job.scoring_seconds / 3600, "est_hours_wall": job.hours,
            "est_gpu_hours": job.gpu_hours, "est_device_hours": job.device_hours,
            "attributed_device_hours": job.device_hours / max(len(users), 1), "critical_path_hours": "",
            "shared_by": len(users), "method": job.method, "source": job.source,
        })
    for kind in JOB_KINDS:
        members = [j for j in budget.jobs.values() if j.kind == kind]
        rows.append(_total_row("kind_total", "", kind, members, f"{len(members)} {kind} jobs"))
    for experiment in budget.needs:
        members = [budget.jobs[k] for k in budget.needs[experiment]]
        row = _total_row("experiment", experiment, "", members,
                         f"{len(members)} jobs; standalone = every job it needs; attributed = shared jobs "
                         f"split equally among the experiments that need them")
        row["attributed_device_hours"] = budget.attributed_hours(experiment)
        row["critical_path_hours"] = budget.critical_path_hours(experiment)
        rows.append(row)
    total = _total_row("total", "all", "", list(budget.jobs.values()),
                       f"{len(budget.jobs)} unique jobs, each counted once")
    total["attributed_device_hours"] = sum(budget.attributed_hours(e) for e in budget.needs)
    total["critical_path_hours"] = max((budget.critical_path_hours(e) for e in budget.needs), default=0.0)
    rows.append(total)
    return rows


def _total_row(row: str, experiment: str, kind: str, members: Sequence[Job], note: str) -> dict[str, Any]:
    """A totals row over ``members`` (standalone: every member counted whole)."""
    devices = sorted({j.device for j in members})
    return {"row": row, "experiment": experiment, "kind": kind, "job": "", "device": ";".join(devices),
            "items": len(members), "tflop": sum(j.flops for j in members) / 1e12,
            "sampling_hours": sum(j.sampling_seconds for j in members) / 3600,
            "scoring_hours": sum(j.scoring_seconds for j in members) / 3600,
            "est_hours_wall": sum(j.hours for j in members),
            "est_gpu_hours": sum(j.gpu_hours for j in members),
            "est_device_hours": sum(j.device_hours for j in members),
            "attributed_device_hours": sum(j.device_hours for j in members), "critical_path_hours": "",
            "source": note}


def write_budget_csv(budget: BudgetEstimate, path: str | Path,
                     config: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Write results/<scale>/budget.csv (first line: provenance) and return its rows."""
    from core.io import atomic_write_csv, provenance

    rows = budget_rows(budget)
    model = budget.throughput.step_model
    fitted = {**{f"u_{k}": round(v, 6) for k, v in model.utilisation.items()}, "alpha": round(model.alpha, 6),
              "u_conv": round(model.conv_utilisation, 6), "min_tokens": model.min_tokens}
    settings = {"scale": budget.scale, "gpu_device": budget.gpu_device, "cpu_device": budget.cpu_device,
                "throughput": [portable_path(s) for s in budget.throughput.sources], "step_model": fitted,
                **(dict(config) if config else {})}
    prov = provenance(config=settings, seed=None)
    atomic_write_csv(path, rows, COLUMNS, prov)
    return rows


def summary_table(budget: BudgetEstimate, rows: Sequence[Mapping[str, Any]] | None = None) -> str:
    """A short plain-text table of the totals (printed by the CLI), read from ``rows`` (:func:`budget_rows`,
    computed when not given)."""
    rows = budget_rows(budget) if rows is None else rows
    experiments = {r["experiment"]: r for r in rows if r["row"] == "experiment"}
    kinds = {r["kind"]: r for r in rows if r["row"] == "kind_total"}
    (total,) = (r for r in rows if r["row"] == "total")
    lines = [f"budget at scale {budget.scale!r}: GPU jobs on {budget.gpu_device}, CPU jobs on "
             f"{budget.cpu_device}",
             f"{'target':<10} {'standalone':>12} {'attributed':>12} {'critical path':>14}  "
             f"(device-hours; hours)"]
    for experiment, row in experiments.items():
        lines.append(f"{experiment:<10} {row['est_device_hours']:>12,.1f} "
                     f"{row['attributed_device_hours']:>12,.1f} "
                     f"{row['critical_path_hours']:>14,.1f}")
    lines.append(f"{'total':<10} {total['est_device_hours']:>12,.1f} "
                 f"{'(unique jobs)':>12} {'':>14}  GPU-hours {total['est_gpu_hours']:,.1f}")
    for kind in JOB_KINDS:
        lines.append(f"  {kind:<8} {kinds[kind]['items']:>5} jobs {kinds[kind]['est_device_hours']:>12,.1f} "
                     f"device-h")
    return "\n".join(lines)


def calibration_table(tp: Throughput) -> str:
    """What ``--explain`` prints: the fitted step model and its validation (:func:`validation_markdown`)."""
    return "step model fitted to the published DiT-XL/2 training throughputs (config/throughput.yaml):\n" + (
        validation_markdown(tp))


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def validation_markdown(tp: Throughput) -> str:
    """The validation table of docs/benchmarks.md: predicted ÷ published time for every source, under the
    fitted model and under the same fit with alpha held at 0."""
    model, flat = tp.step_model, tp.flat_step_model
    lines = ["| source | role | setting | published | predicted | predicted ÷ published time | same, alpha = 0 | "
             "note |", "|---|---|---|---|---|---|---|---|"]
    for row in tp.validation():
        setting = f"{row['gpus']}× {row['device']}, {row['precision']}" if row["device"] else ""
        if row["ratio"] is None:
            lines.append(f"| {row['id']} | {row['role']} | {setting} | | | | | {row['note']} |")
            continue
        digits = 2 if row["unit"] == "it/s" else 1 if row["unit"] == "h" else 0
        lines.append(f"| {row['id']} | {row['role']} | {setting} | {row['published']:,.{digits}f} {row['unit']} | "
                     f"{row['predicted']:,.{digits}f} {row['unit']} | {row['ratio']:.2f} | {_fmt(row['flat_ratio'])} | "
                     f"{row['note']} |")
    lines.append("")
    lines.append("Fitted: " + ", ".join(f"u_{k} = {v:.3f}" for k, v in model.utilisation.items())
                 + f" (at ≥ {model.reference_tokens:,.0f} tokens per GPU), alpha = {model.alpha:.3f}, "
                   f"u_conv = {model.conv_utilisation:.3f}; residual rms {model.residual_rms:.3f} (log step time). "
                   f"With alpha held at 0: " + ", ".join(f"u_{k} = {v:.3f}" for k, v in flat.utilisation.items())
                 + f", u_conv = {flat.conv_utilisation:.3f}; residual rms {flat.residual_rms:.3f}.")
    return "\n".join(lines)
