"""The whole DAG: the smoke scale end to end, one-cell re-runs, and the paper-scale dry run."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.known_files import DIGITS, KNOWN_FILES
from pipeline.verdicts import VERDICTS

ROOT = Path(__file__).resolve().parents[1]
RESULTS, FIGURES = Path("results") / "smoke", Path("paper_figures") / "smoke"   # the smoke run's folders
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--workflow-profile", "none"]


def snakemake(workdir: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"}
    return subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """Parse Snakemake's 'Job stats' table."""
    stats = output[output.index("Job stats:"):]
    counts = {}
    for line in stats.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def test_paper_scale_dry_run_needs_no_data(tmp_path):
    start = time.perf_counter()
    proc = snakemake(tmp_path, "-n", "results/paper/table1.csv", "--config", "scale=paper")
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = job_counts(proc.stdout)
    assert counts["train_segment"] == 40          # FasterDiT 0 -> 2000k in 50k segments
    assert counts["sample"] == 4 and counts["cell"] == 4          # each sample job also scores its npz
    assert {"latents", "reference_npz", "inception_weights"} <= set(counts)
    print(f"paper-scale dry run of results/paper/table1.csv: {elapsed:.1f} s")


def test_a_nested_configfile_override_merges_into_the_scale(tmp_path):
    """Issue 19 item 3: a `--configfile` that sets one ImageNet root (and one protocol's count) keeps the rest of
    each block: the paper-scale graph builds, with the new root in its latents command."""
    override = tmp_path / "site.yaml"
    override.write_text("datasets: {imagenet: {root: /data/imagenet/train}}\n"
                        "protocols: {section4: {segment_every: 100000}}\n")
    proc = snakemake(tmp_path, "-n", "-p", "results/paper/table1.csv", "--config", "scale=paper", "--configfile",
                     str(override))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--root /data/imagenet/train" in proc.stdout
    # FasterDiT 0 -> 2000k in 100k segments (20), plus Fig. 7's 150k milestone of the same run
    assert job_counts(proc.stdout)["train_segment"] == 21


def test_paper_scale_guidance_and_grid_follow_the_reference(tmp_path):
    """Guided sample sets guide 3 latent channels (DiT/SiT's forward_with_cfg); the one-process grid job asks
    for one GPU, not the sampling stage's eight."""
    proc = snakemake(tmp_path, "-n", "-p", "results/paper/table1.csv", "paper_figures/paper/fig8.png", "--config",
                     "scale=paper")
    assert proc.returncode == 0, proc.stderr[-3000:]
    commands = [line for line in proc.stdout.splitlines() if "-m pipeline.sample" in line]
    guided = [c for c in commands if "--cfg-scale 1.5" in c or "--cfg-scale 4" in c]
    assert len(guided) == 3 and all("--legacy-cfg-channels 3" in c for c in guided)
    assert not any("--legacy-cfg-channels" in c for c in commands if "--cfg-scale 1 " in c)
    everything = snakemake(tmp_path, "-n", "--config", "scale=mini")  # `all`, the audit included
    assert everything.returncode == 0 and "audit" in everything.stdout, everything.stderr[-3000:]
    assert "fig1_sd3" in everything.stdout and "table1_allch" in everything.stdout  # mini's sensitivity rows
    paper = snakemake(tmp_path, "-n", "--config", "scale=paper")
    assert paper.returncode == 0 and "audit" in paper.stdout, paper.stderr[-3000:]
    assert "fig1_sd3" not in paper.stdout  # at the paper scale an alternative reading is a target of its own only
    bad = snakemake(tmp_path, "-n", "--config", "scale=mini", "audit_alternatives=[fig2]")
    assert bad.returncode != 0 and "audit_alternatives: ['fig2'] are not alternative experiments" in bad.stderr
    grids = proc.stdout[proc.stdout.index("rule grids:"):]
    assert "gpu=1," in grids.splitlines()[next(i for i, line in enumerate(grids.splitlines()) if "resources:" in line)]


MINI_TARGETS = ("results/mini/budget.csv", "results/mini/fig3.csv")   # mini outputs made in seconds, no training


def folder_state(workdir: Path, *folders: str) -> dict[str, tuple[int, str]]:
    """Every file under ``folders``: (mtime in ns, SHA-256)."""
    state = {}
    for folder in folders:
        for file in sorted((workdir / folder).rglob("*")):
            if file.is_file():
                state[str(file.relative_to(workdir))] = (file.stat().st_mtime_ns,
                                                         hashlib.sha256(file.read_bytes()).hexdigest())
    return state


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The whole smoke DAG, in a directory that already holds mini outputs (for the scale-isolation test)."""
    workdir = tmp_path_factory.mktemp("smoke")
    mini = snakemake(workdir, *MINI_TARGETS, "--cores", "2", "--config", "scale=mini")
    assert mini.returncode == 0, (mini.stdout[-3000:], mini.stderr[-5000:])
    workdir.joinpath("mini-state.json").write_text(json.dumps(folder_state(workdir, *MINI_FOLDERS)))
    proc = snakemake(workdir, "--cores", "2", "--config", "scale=smoke")
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    return workdir


MINI_FOLDERS = ("results/mini", "paper_figures/mini", "work/mini")


@pytest.mark.slow
def test_a_smoke_run_leaves_every_mini_file_untouched(smoke_run):
    """Issue 19: scales never overwrite each other. Mini outputs made before the smoke run keep their bytes and
    mtimes, the smoke run wrote only into smoke folders, and the mini targets are still up to date after it."""
    before = {path: tuple(value) for path, value in json.loads((smoke_run / "mini-state.json").read_text()).items()}
    assert any(path.startswith("paper_figures/mini/") for path in before) and len(before) > 5
    assert folder_state(smoke_run, *MINI_FOLDERS) == before
    assert (smoke_run / RESULTS / "table1.csv").exists() and not (smoke_run / "results" / "table1.csv").exists()
    tops = {p.name for root in ("results", "paper_figures", "work") for p in (smoke_run / root).iterdir()}
    assert tops <= {"mini", "smoke", "last-scale"}, tops
    again = snakemake(smoke_run, "-n", *MINI_TARGETS, "--config", "scale=mini")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]
    # A target of another scale, or of the layout before scale folders, is refused with one line.
    wrong = snakemake(smoke_run, "-n", "results/mini/table1.csv", "--config", "scale=smoke")
    assert wrong.returncode != 0
    assert "error: target results/mini/table1.csv is a mini-scale output, but this run's scale is smoke: add " \
           "--config scale=mini" in wrong.stderr
    old = snakemake(smoke_run, "-n", "results/table1.csv", "--config", "scale=smoke")
    assert old.returncode != 0 and "e.g. results/smoke/table1.csv" in old.stderr


@pytest.mark.slow
def test_smoke_dag_builds_every_figure_table_and_the_audit(smoke_run):
    for name in ("fig1", "fig2", "fig4", "fig5", "fig6", "fig7", "table1", "table2", "table3", "calibration", "fig3",
                 "audit"):
        assert (smoke_run / RESULTS / f"{name}.csv").stat().st_size > 0, name
    for name in ("fig1", "fig2", "fig3", "fig4", "fig5", "fig6", "fig7"):
        assert (smoke_run / FIGURES / f"{name}.png").stat().st_size > 0, name
    for name in ("table1", "table2", "table3", "calibration"):       # the paper's shape, Markdown and LaTeX
        assert (smoke_run / RESULTS / f"{name}.md").read_text().count("\n| ") >= 3, name
        assert "\\begin{tabular}" in (smoke_run / RESULTS / f"{name}.tex").read_text(), name
    lines = (smoke_run / RESULTS / "table1.csv").read_text().splitlines()
    assert lines[0].startswith("# provenance: ")
    rows = list(csv.DictReader(lines[1:]))
    run_rows = [r for r in rows if r["status"] == "run"]
    assert {r["metric"] for r in run_rows} == {"fid", "sfid", "is", "precision", "recall"}
    assert all(float(r["reproduced"]) == float(r["reproduced"]) for r in run_rows)  # finite numbers
    assert all(r["scale"] == "smoke" for r in run_rows)
    audit = list(csv.DictReader((smoke_run / RESULTS / "audit.csv").read_text().splitlines()[1:]))
    assert audit and all(r["verdict"] in VERDICTS for r in audit)
    assert {r["reading"] for r in audit if r["claim"] == "lognorm-sd3-crossover"} >= {
        "lognorm in SD3's convention (t = 1 at noise, mu flipped)"}
    assert all(r["verdict"] != "not run at this scale" for r in audit if r["claim"] == "guidance-helps")
    assert all(float(r["se"]) > 0 for r in run_rows if r["metric"] == "fid")  # every FID has its uncertainty
    cell = json.loads((smoke_run / RESULTS / "cells" / "table1" / "fasterdit-1000k-cfg1.5.json").read_text())
    assert cell["spec"]["cfg"] == 1.5 and cell["provenance"]["git_commit"]
    extractor = cell["sources"][0]["settings"]["extractor"]   # the shipped digits CNN (eval/weights/README.md)
    assert extractor["weights_path"] == "eval/weights/digits-classifier.pt"
    assert extractor["weights_sha256"] == KNOWN_FILES[DIGITS].sha256
    # Calibration: the stand-ins went through export + import; the published values are judged at paper only.
    calibration = json.loads((smoke_run / RESULTS / "cells" / "calibration" / "dit-xl-2-256-cfg1.5.json").read_text())
    source = calibration["sources"][0]["checkpoint_source"]
    assert source["layout"] == "dit" and len(source["sha256"]) == 64
    assert {r["verdict"] for r in audit if r["claim"].startswith("calibration-")} == {"not applicable at this scale"}


@pytest.mark.slow
def test_the_readme_report_command_works_on_a_finished_run(smoke_run):
    """README: `snakemake --report report.html` reports the last run's scale, no --config needed
    (tests/test_readme_commands.py runs every other README command)."""
    proc = snakemake(smoke_run, "--report", "report.html")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report: scale smoke, the last run in this directory" in proc.stderr
    assert (smoke_run / "report.html").stat().st_size > 0


@pytest.mark.slow
def test_deleting_one_cell_reruns_only_that_cell(smoke_run):
    target = "results/smoke/cells/table1/fasterdit-2000k-cfg1.json"
    (smoke_run / target).unlink()
    proc = snakemake(smoke_run, "-n", target, "--config", "scale=smoke")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert job_counts(proc.stdout) == {"cell": 1, "total": 1}
    proc = snakemake(smoke_run, target, "--cores", "1", "--config", "scale=smoke")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (smoke_run / target).exists()


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_dag_outputs_are_not_committed_but_snapshots_are():
    """A fresh checkout must regenerate the figures: Snakemake skips jobs whose outputs exist."""

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT).returncode == 0

    for output in ("results/smoke/table1.csv", "results/smoke/audit.csv", "results/smoke/cells/table1/x.json",
                   "paper_figures/smoke/fig2.png", "results/smoke/budget.csv", "work/mini/runs/x/ckpt/step1.pt",
                   "results/table1.csv"):
        assert ignored(output), output
    for snapshot in ("results/mini/table1.csv", "results/mini/cells/table1/x.json", "paper_figures/mini/fig2.png",
                     "results/paper/budget.csv"):
        assert not ignored(snapshot), snapshot
    tracked = subprocess.run(["git", "ls-files", "results", "paper_figures"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert not [path for path in tracked if ignored(path)], "a DAG output is committed"


def test_committed_results_hold_no_absolute_path_of_a_machine():
    """Snapshots are shared: no /tmp, /work, /home or /root path of the machine that made them."""
    tracked = subprocess.run(["git", "ls-files", "results", "paper_figures"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    pattern = re.compile(r"(?<![A-Za-z0-9_.])/(?:tmp|work|home|root|Users)/")
    leaks = [p for p in tracked if p.endswith((".csv", ".json", ".md"))
             and pattern.search((ROOT / p).read_text(errors="replace"))]
    assert not leaks, leaks[:10]
