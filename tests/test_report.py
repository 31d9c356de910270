"""Cells -> tables, figures and the claims audit, on synthetic metrics."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from pipeline import audit as audit_mod
from pipeline.cells import cell_summary, write_cell
from pipeline.config import load_scale
from pipeline.registry import expand, load_experiments
from pipeline.report import build
from pipeline.verdicts import VERDICTS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def registry():
    return expand(load_experiments(), load_scale("mini"))


def fake_fid(cell) -> float:
    """A deterministic synthetic FID: FasterDiT < balance < SiT, decreasing with steps; std-dependent."""
    base = {"both": 10.0, "fasterdit": 10.0, "balance": 14.0, "none": 18.0, "sit": 18.0, "dit": 20.0}
    head = cell.id.split("-")[0]
    value = base.get(head, 30.0) + 1000.0 / cell.step + 0.1 * cell.seed
    if "std" in cell.coords:
        value += 5 * abs(float(cell.coords["std"]) - 0.9) * (2 if cell.coords.get("prediction") == "noise" else 1)
    return value


def make_cells(tmp_path: Path, registry, experiment: str) -> list[str]:
    files = []
    for cell_id, cells in registry.cell_groups(experiment).items():
        metric_files = []
        for cell in cells:
            path = tmp_path / "metrics" / f"{cell.run_id}-{cell.sample_tag}-{cell_id}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            fid = fake_fid(cell)
            path.write_text(json.dumps({"metrics": {"fid": fid, "sfid": fid / 2, "inception_score": 5.0,
                                                    "precision": 0.5, "recall": 0.4}, "settings": {},
                                        "bootstrap": {"se": {"fid": 0.2, "sfid": 0.1, "inception_score": 0.05},
                                                      "resamples": 200, "seed": 0}}))
            metric_files.append(str(path))
        out = tmp_path / "cells" / experiment / f"{cell_id}.json"
        write_cell(cells, metric_files, str(out), scale="mini")
        files.append(str(out))
    return files


def test_cell_summary_combines_seed_and_metric_noise():
    one = cell_summary([2.0])
    assert (one["mean"], one["n"], one["se"], one["low"], one["high"]) == (2.0, 1, None, None, None)
    boot = cell_summary([2.0], [0.5])                      # one seed: the metric's bootstrap se alone, normal
    assert boot["se_metric"] == 0.5 and boot["se_seeds"] is None and boot["df"] is None
    assert boot["low"] == pytest.approx(2.0 - 1.959964 * 0.5, rel=1e-6)
    r = cell_summary([1.0, 2.0, 3.0], [0.3, 0.4, 0.0])     # worked: sd 1 -> se_seeds 1/sqrt(3); se_metric 0.5/3
    assert r["se_seeds"] == pytest.approx(1 / 3 ** 0.5) and r["se_metric"] == pytest.approx(0.5 / 3)
    assert r["se"] == pytest.approx((1 / 3 + 0.25 / 9) ** 0.5) and r["df"] == 2
    assert r["high"] - r["mean"] == pytest.approx(4.302653 * r["se"], rel=1e-6)   # t(2) quantile
    seeds_only = cell_summary([1.0, 2.0, 3.0], [0.3, None, 0.1])   # a seed without bootstrap: seeds only
    assert seeds_only["se_metric"] is None and seeds_only["se"] == pytest.approx(1 / 3 ** 0.5)


def test_cell_json_has_metrics_paper_and_provenance(tmp_path, registry):
    files = make_cells(tmp_path, registry, "table1")
    record = json.loads(Path([f for f in files if f.endswith("fasterdit-1000k-cfg1.5.json")][0]).read_text())
    assert record["paper"]["fid"] == 2.30 and record["seeds"] == [0, 1, 2]
    assert set(record["summary"]) == {"fid", "sfid", "is", "precision", "recall"}
    assert record["difference"]["fid"] == pytest.approx(record["summary"]["fid"]["mean"] - 2.30)
    assert {"git_commit", "versions"} <= set(record["provenance"])


@pytest.mark.parametrize("experiment", ["fig1", "fig2", "fig4", "fig5", "fig6", "fig7", "table1"])
def test_tables_and_figures(tmp_path, registry, experiment):
    files = make_cells(tmp_path, registry, experiment)
    figure = None if experiment.startswith("table") else str(tmp_path / f"{experiment}.pdf")
    build(experiment, files, str(tmp_path / f"{experiment}.csv"), figure)
    text = (tmp_path / f"{experiment}.csv").read_text().splitlines()
    assert text[0].startswith("# provenance: ")
    rows = list(csv.DictReader(text[1:]))
    assert rows and {"paper", "reproduced", "difference", "scale", "seeds"} <= set(rows[0])
    if figure:
        assert (tmp_path / f"{experiment}.pdf").stat().st_size > 0
        assert (tmp_path / f"{experiment}.png").stat().st_size > 0
    if experiment == "table1":
        cited = [r for r in rows if r["status"] == "cited"]
        assert any(r["cell"] == "DiT (cfg=1.5) [37]" and r["metric"] == "fid" and r["paper"] == "2.27" for r in cited)
        assert all(r["reproduced"] == "" for r in cited)


def test_audit_verdicts(tmp_path, registry):
    results = tmp_path / "results"
    for experiment in ("fig1", "fig2", "fig4", "fig5", "fig7", "table1"):
        build(experiment, make_cells(tmp_path, registry, experiment), str(results / f"{experiment}.csv"), None)
    claims = yaml.safe_load((ROOT / "config" / "claims.yaml").read_text())["claims"]
    fig3 = yaml.safe_load((ROOT / "config" / "figures" / "fig3.yaml").read_text())["fig3"]
    every = audit_mod.audit(audit_mod.load_results(results), claims, fig3)
    rows: dict = {}
    for r in every:
        rows.setdefault(r["claim"], r)  # the default reading comes first
    alternative = [r for r in every if r["claim"] == "guidance-helps"][1]
    assert alternative["reading"] == "cfg on every channel" and alternative["verdict"] == "not run at this scale"
    assert alternative["reading_dependent"] == ""   # only one reading ran
    assert rows["fasterdit-beats-sit-400k"]["verdict"] == "supported"
    assert rows["direction-loss-helps"]["verdict"] == "supported"     # 10 vs 14, se ~0.13: every pair decided
    assert float(rows["direction-loss-helps"]["effect_low"]) > 0
    assert rows["longer-training-helps"]["verdict"] == "supported"
    assert rows["longer-training-helps"]["type"] == "implied"
    assert rows["guidance-helps"]["verdict"] == "inconclusive"       # synthetic FID ignores cfg: no effect at all
    assert rows["guidance-helps"]["to_decide"] == "no effect observed"
    assert rows["v-pred-more-robust-linear"]["verdict"] == "supported"
    assert rows["fasterdit-512"]["verdict"] == "not run at this scale"
    assert rows["seven-x-faster"]["verdict"] == "not applicable at this scale"
    assert "dB" in rows["best-std-in-band"]["evidence"]
    assert {r["verdict"] for r in every} <= set(VERDICTS)


@pytest.mark.parametrize("experiment", ["table1", "table2", "table3", "calibration"])
def test_tables_come_in_the_papers_shape(tmp_path, registry, experiment):
    """Issue 19 item 5: each table as Markdown and LaTeX in the paper's rows and columns, the paper's value beside
    the reproduced mean ± the half-width of its 95 % interval; every layout cell is a cell of the experiment."""
    spec = load_experiments()["experiments"][experiment]
    layout = spec["layout"]
    ids = set(registry.cell_groups(experiment))
    assert {c for row in layout["rows"] for c in row.get("cells", [row.get("cell")])} == ids
    files = make_cells(tmp_path, registry, experiment)
    md, tex = tmp_path / f"{experiment}.md", tmp_path / f"{experiment}.tex"
    html = tmp_path / f"{experiment}.html"
    build(experiment, files, str(tmp_path / f"{experiment}.csv"), None, str(md), str(tex), str(html))
    assert html.read_text().count("<tr>") == len(layout["rows"]) + len(spec.get("cited", [])) + 1
    lines = md.read_text().splitlines()
    assert lines[0].startswith("<!-- provenance: ") and tex.read_text().startswith("% provenance: ")
    body = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert len(body) == 1 + len(layout["rows"]) + len(spec.get("cited", []))
    columns = len(layout.get("metrics", layout.get("columns", [])))
    assert all(line.count(" | ") == 2 * columns for line in body)        # label + a (paper, here) pair each
    table = list(csv.DictReader((tmp_path / f"{experiment}.csv").read_text().splitlines()[1:]))
    first = next(r for r in table if r["cell"] == (layout["rows"][0].get("cell") or layout["rows"][0]["cells"][0])
                 and r["metric"] == layout.get("metric", "fid"))
    half = float(first["ci_high"]) - float(first["reproduced"])
    assert f"{float(first['reproduced']):.2f} ± {half:.2f}" in body[1 + len(spec.get("cited", []))]
    assert r"\begin{tabular}" in tex.read_text() and r"$\pm$" in tex.read_text()
    with pytest.raises(Exception, match="--markdown and --latex go together"):
        build(experiment, files, str(tmp_path / "x.csv"), None, str(md), None)
