"""The SLURM profile against a real one-node SLURM cluster, and its sbatch lines at paper scale.

Cluster tests (marked ``slurm``) need the local cluster from ``tests/slurm/start_slurm.sh``; without
it they are skipped with that reason (or fail, if FASTERDIT_REQUIRE_SLURM=1, as CI sets once the
cluster started). They run the test workflow through ``--profile slurm`` (the profile users get)
layered with ``tests/slurm/ci-profile`` (partition, account, small resources, fast polling), cancel
the training job with ``scancel`` mid-run and check that Snakemake resubmits it and that the retry
resumes from the rolling checkpoint.

The sbatch-line tests need no cluster: they feed paper-scale jobs to the SLURM plugin's own
submit-string builder through ``tests/slurm/sbatch_preview.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "tests" / "slurm"
USER_PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
CI_PROFILE = SLURM_DIR / "ci-profile"
PREVIEW = SLURM_DIR / "sbatch_preview.py"

# What the end-to-end test runs. To point it at the real workflow at smoke scale, set SNAKEFILE to
# REPO / "workflow" / "Snakefile", TARGETS to ["results/smoke/table1.csv"], EXTRA_ARGS to its smoke
# configfile, SUBMITTED_RULES to its rules, and TRAIN_RULE / ROLLING_DIR / the two helpers below to the
# real training rule and its rolling checkpoints.
SNAKEFILE = SLURM_DIR / "test_workflow" / "Snakefile"
TARGETS: list[str] = ["results/summary.json"]
EXTRA_ARGS: list[str] = []
TRAIN_RULE = "train"
SUBMITTED_RULES = {"prepare", "train", "summarize"}  # rules that must have gone through sbatch
ROLLING_DIR = "ckpt/_rolling"
TRAIN_STEPS = 15  # tests/slurm/test_workflow/config/smoke.yaml
CANCEL_AT_STEP = 3

RUN_TIMEOUT_S = 300
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: ([^)\s]+)\)")


def rolling_step(workdir: Path) -> int:
    """Step of the training job's rolling checkpoint (0 if there is none yet)."""
    state = workdir / ROLLING_DIR / "state.json"
    try:
        return int(json.loads(state.read_text())["step"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def attempt_records(workdir: Path) -> dict[str, dict]:
    """One record per start of the training script, keyed by SLURM job id."""
    records = [json.loads(p.read_text()) for p in sorted((workdir / ROLLING_DIR).glob("attempt-*.json"))]
    return {record["slurm_job_id"]: record for record in records}


def expected_toy_value(steps: int, data_total: int) -> int:
    """The toy state after ``steps`` uninterrupted updates v <- (31 v + total + step) mod 1000003."""
    value = 0
    for step in range(steps):
        value = (value * 31 + data_total + step) % 1_000_003
    return value


# ---------------------------------------------------------------------------------------------
# helpers


def snakemake_env() -> dict[str, str]:
    """Environment for snakemake subprocesses: this venv first on PATH, no ambient profile."""
    env = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run(cmd: list[str], timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check)


def error_text(err: Exception) -> str:
    """stderr of a failed command (or the exception), on one line."""
    return " ".join(str(getattr(err, "stderr", None) or err).split())


def slurm_unavailable_reason() -> str | None:
    """Why the local test cluster cannot be used, or None when it is up."""
    hint = "start it with tests/slurm/start_slurm.sh"
    for tool in ("sinfo", "sbatch", "squeue", "sacct", "scancel"):
        if shutil.which(tool) is None:
            return f"SLURM not installed ({tool} not found): {hint}"
    try:
        states = run(["sinfo", "-h", "-N", "-p", "ci", "-o", "%T"], timeout=15).stdout.split()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        return f"SLURM not running (sinfo failed: {error_text(err)}): {hint}"
    if not states:
        return f"SLURM not running: no partition 'ci' (not the test cluster): {hint}"
    if not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in states):
        return f"SLURM not running: node states {states}: {hint}"
    try:
        run(["sacct", "-n", "-X", "-S", "now"], timeout=15)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        return f"SLURM accounting (sacct) not working ({error_text(err)}): {hint}"
    return None


def require_slurm() -> None:
    reason = slurm_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("FASTERDIT_REQUIRE_SLURM") == "1":
        pytest.fail(f"FASTERDIT_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


def sacct_jobs(job_ids: list[str]) -> dict[str, dict[str, str]]:
    fields = ["JobIDRaw", "JobName", "State", "Account", "Partition", "Timelimit", "Comment", "ReqMem",
              "ReqCPUS", "NNodes"]
    out = run(["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", ",".join(fields)]).stdout
    rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]
    return {row["JobIDRaw"]: row for row in rows}


@dataclass
class SlurmRun:
    workdir: Path
    log: str
    returncode: int
    cancelled_job: str
    step_at_cancel: int
    submissions: dict[str, list[str]]  # rule -> SLURM job ids, in submission order


def parse_submissions(log: str) -> dict[str, list[str]]:
    """rule -> SLURM job ids from the 'submitted with SLURM jobid N (log: .../rule_X/...)' lines."""
    submissions: dict[str, list[str]] = {}
    for job_id, logfile in SUBMITTED.findall(log):
        rule = re.search(r"/rule_([A-Za-z0-9_]+)/", logfile)
        submissions.setdefault(rule.group(1) if rule else "?", []).append(job_id)
    return submissions


def cancel_leftovers(log_path: Path) -> None:
    """scancel every job this run submitted (cleanup after a failed/timed-out test run)."""
    ids = [job_id for ids in parse_submissions(log_path.read_text()).values() for job_id in ids]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, check=False)


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stop the snakemake run this test started (its own session), politely first."""
    for sig, grace in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory: pytest.TempPathFactory) -> SlurmRun:
    """Run TARGETS through --profile slurm on the local cluster, scancel training mid-run once."""
    require_slurm()
    workdir = tmp_path_factory.mktemp("slurm_run")
    log_path = workdir.parent / f"{workdir.name}.snakemake.log"
    cmd = [
        sys.executable, "-m", "snakemake", *TARGETS, "--snakefile", str(SNAKEFILE),
        "--directory", str(workdir), "--workflow-profile", "none",
        "--profile", "slurm", "--profile", str(CI_PROFILE.relative_to(REPO)), *EXTRA_ARGS,
    ]
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, env=snakemake_env(), stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        train_job = None
        while time.monotonic() < deadline and proc.poll() is None:
            train_jobs = parse_submissions(log_path.read_text()).get(TRAIN_RULE, [])
            if train_jobs and rolling_step(workdir) >= CANCEL_AT_STEP:
                train_job = train_jobs[0]
                break
            time.sleep(0.5)
        assert train_job is not None, f"training never reached step {CANCEL_AT_STEP}:\n{log_path.read_text()}"
        step_at_cancel = rolling_step(workdir)
        run(["scancel", train_job])
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except BaseException:
        stop_process_group(proc)
        cancel_leftovers(log_path)
        raise
    log = log_path.read_text()
    return SlurmRun(workdir, log, proc.returncode, train_job, step_at_cancel, parse_submissions(log))


# ---------------------------------------------------------------------------------------------
# end-to-end on the local cluster


@pytest.mark.slurm
def test_workflow_completes_through_sbatch(slurm_run: SlurmRun) -> None:
    assert slurm_run.returncode == 0, slurm_run.log
    assert "Using profiles slurm and tests/slurm/ci-profile" in slurm_run.log
    rules = set(slurm_run.submissions)
    assert SUBMITTED_RULES <= rules, slurm_run.log
    job_ids = [job_id for ids in slurm_run.submissions.values() for job_id in ids]
    accounting = sacct_jobs(job_ids)
    assert set(accounting) == set(job_ids)
    run_names = {row["JobName"] for row in accounting.values()}
    assert len(run_names) == 1, "all jobs of one run share the run's UUID as job name"
    for rule, ids in slurm_run.submissions.items():
        for job_id in ids:
            row = accounting[job_id]
            assert row["Comment"] == f"rule_{rule}"
            assert (row["Account"], row["Partition"]) == ("ci", "ci")
        assert accounting[ids[-1]]["State"] == "COMPLETED", accounting
    for job_id in slurm_run.submissions[TRAIN_RULE]:  # smoke-scale resources reached SLURM as declared
        row = accounting[job_id]
        assert (row["ReqMem"], row["ReqCPUS"], row["NNodes"]) == ("1000M", "1", "1"), row
    queue = run(["squeue", "-h", "--states=all", "-j", ",".join(job_ids), "-o", "%i|%T"]).stdout
    assert {line.split("|")[0] for line in queue.split()} == set(job_ids)


@pytest.mark.slurm
def test_outputs_are_complete(slurm_run: SlurmRun) -> None:
    assert slurm_run.returncode == 0, slurm_run.log
    workdir = slurm_run.workdir
    summary = json.loads((workdir / "results" / "summary.json").read_text())
    numbers = json.loads((workdir / "data" / "numbers.json").read_text())["numbers"]
    assert summary["steps"] == TRAIN_STEPS
    assert summary["value"] == expected_toy_value(TRAIN_STEPS, sum(numbers))
    assert summary["matches_uninterrupted"] is True
    assert summary["slurm_job_id"] == slurm_run.submissions["summarize"][-1], "ran inside its SLURM job"
    dry = subprocess.run(
        [sys.executable, "-m", "snakemake", *TARGETS, "-n", "--snakefile", str(SNAKEFILE),
         "--directory", str(workdir), "--workflow-profile", "none",
         "--profile", "slurm", "--profile", str(CI_PROFILE.relative_to(REPO)), *EXTRA_ARGS],
        cwd=REPO, env=snakemake_env(), capture_output=True, text=True, timeout=120,
    )
    assert dry.returncode == 0, dry.stderr
    assert "Nothing to be done" in dry.stdout + dry.stderr


@pytest.mark.slurm
def test_cancelled_training_is_retried_and_resumes(slurm_run: SlurmRun) -> None:
    assert slurm_run.returncode == 0, slurm_run.log
    train_jobs = slurm_run.submissions[TRAIN_RULE]
    assert len(train_jobs) == 2 and train_jobs[0] == slurm_run.cancelled_job, slurm_run.submissions
    first, retry = train_jobs
    accounting = sacct_jobs(train_jobs)
    assert accounting[first]["State"].startswith("CANCELLED")
    assert accounting[retry]["State"] == "COMPLETED"
    # runtime = runtime_min * attempt: the retry asked SLURM for twice the wall time.
    assert (accounting[first]["Timelimit"], accounting[retry]["Timelimit"]) == ("00:05:00", "00:10:00")
    assert f"SLURM-job '{first}' failed, SLURM status is: 'CANCELLED" in slurm_run.log
    records = attempt_records(slurm_run.workdir)
    assert set(records) == {first, retry}
    assert records[first]["resumed_from"] == 0
    resumed = records[retry]["resumed_from"]
    assert slurm_run.step_at_cancel <= resumed < TRAIN_STEPS, "retry resumed from the rolling checkpoint"
    final = json.loads((slurm_run.workdir / "ckpt" / "final.json").read_text())
    assert (final["slurm_job_id"], final["resumed_from"]) == (retry, resumed)


# ---------------------------------------------------------------------------------------------
# profile files and sbatch lines (no cluster needed)


def test_profile_is_found_from_repo_root_and_dry_runs(tmp_path: Path) -> None:
    assert (REPO / "slurm").is_symlink() and (REPO / "slurm").resolve() == USER_PROFILE.parent
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(SNAKEFILE), "--directory",
         str(tmp_path), "--workflow-profile", "none", "--profile", "slurm"],
        cwd=REPO, env=snakemake_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Using profile slurm for setting default command line arguments" in proc.stdout + proc.stderr


def test_user_profile_keys() -> None:
    profile = yaml.safe_load(USER_PROFILE.read_text())
    assert profile["executor"] == "slurm"
    for key in ("jobs", "latency-wait", "retries", "slurm-logdir"):
        assert profile[key]
    for key in ("rerun-incomplete", "keep-going", "printshellcmds", "show-failed-logs"):
        assert profile[key] is True
    assert profile["rerun-triggers"] == ["mtime", "input"]
    assert {"runtime", "mem_mb"} <= set(profile["default-resources"])
    assert "cores" not in profile, "--cores would cap every rule's threads on the cluster"
    assert not {"slurm_account", "slurm_partition"} & set(profile["default-resources"]), \
        "account and partition are site settings left for users"


def test_ci_profile_overrides_only_site_settings() -> None:
    """CI must exercise the user profile: the CI layer may only set partition/account/resources
    and test observability (polling interval, keeping logs)."""
    ci = yaml.safe_load((CI_PROFILE / "config.yaml").read_text())
    assert set(ci) <= {"default-resources", "slurm-init-seconds-before-status-checks",
                       "slurm-keep-successful-logs"}
    user = yaml.safe_load(USER_PROFILE.read_text())
    allowed = set(user["default-resources"]) | {"slurm_partition", "slurm_account"}
    assert set(ci["default-resources"]) <= allowed


def sbatch_preview(tmp_path: Path, configfile: Path) -> dict[str, dict]:
    proc = subprocess.run(
        [sys.executable, str(PREVIEW), "--snakefile", str(SNAKEFILE), "--directory", str(tmp_path),
         "--workflow-profile", "none", "--profile", "slurm", "--configfile", str(configfile)],
        cwd=REPO, env=snakemake_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {line["rule"]: line for line in lines}


def test_paper_scale_training_sbatch_line(tmp_path: Path) -> None:
    jobs = sbatch_preview(tmp_path, SLURM_DIR / "test_workflow" / "config" / "paper.yaml")
    assert set(jobs) == {"prepare", "train", "summarize"}
    train = jobs["train"]
    flags = train["sbatch"].split()
    assert flags[0] == "sbatch"
    assert "--gpus=8" in flags and "--nodes=1" in flags and "--cpus-per-task=64" in flags
    assert flags[flags.index("--mem") + 1] == "480000"
    assert flags[flags.index("-t") + 1] == "1440"
    assert "--requeue" in flags
    assert not [f for f in flags if f.startswith(("--ntasks", "--cpus-per-gpu", "--gres"))], \
        "a torchrun rule must be one task that sees all 8 GPUs"
    assert "--output" in flags and "logs/slurm/rule_train/%j.log" in train["sbatch"]
    # the step the jobstep plugin starts inside the allocation: one task with all 8 GPUs
    assert train["srun"] == "srun -n1 --cpu-bind=q --cpus-per-task=64 --gpus=8 --nodes=1"
    # rules without own resources get the profile defaults, and no GPU
    summarize = jobs["summarize"]["sbatch"].split()
    assert summarize[summarize.index("-t") + 1] == "120"
    assert summarize[summarize.index("--mem") + 1] == "16000"
    assert not [f for f in summarize if f.startswith("--gpus")]


def test_smoke_scale_training_sbatch_line_has_no_gpu(tmp_path: Path) -> None:
    jobs = sbatch_preview(tmp_path, SLURM_DIR / "test_workflow" / "config" / "smoke.yaml")
    flags = jobs["train"]["sbatch"].split()
    assert not [f for f in flags if f.startswith(("--gpus", "--gres"))]
    assert "--cpus-per-task=1" in flags and flags[flags.index("-t") + 1] == "5"


# ---------------------------------------------------------------------------------------------
# the harness's own workflow


def real_preview(tmp_path: Path, *args: str, attempt: int = 1) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, str(PREVIEW), "results/paper/table1.csv", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(tmp_path), "--workflow-profile", "none", "--profile", "slurm", *args],
        cwd=REPO, env={**snakemake_env(), "FASTERDIT_PREVIEW_ATTEMPT": str(attempt)}, capture_output=True,
        text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_harness_paper_scale_sbatch_lines(tmp_path: Path) -> None:
    """Table 1 at paper scale: every training segment and sampling job is one 8-GPU task on one node."""
    jobs = real_preview(tmp_path, "--config", "scale=paper")
    train = [j for j in jobs if j["rule"] == "train_segment"]
    sample = [j for j in jobs if j["rule"] == "sample"]
    assert len(train) == 40 and len(sample) == 4
    for job in train + sample:
        flags = job["sbatch"].split()
        assert "--gpus=8" in flags and "--nodes=1" in flags
        assert not [f for f in flags if f.startswith(("--ntasks", "--gres", "--cpus-per-gpu"))]
        assert job["srun"].startswith("srun -n1 ") and "--gpus=8" in job["srun"]
    flags = train[0]["sbatch"].split()
    assert "--cpus-per-task=64" in flags and flags[flags.index("--mem") + 1] == "480000"
    assert flags[flags.index("-t") + 1] == "960"                    # 16 h per 50k-step segment
    assert not [j for j in jobs if j["rule"] in ("cell", "table1")]  # light rules stay on the head node


def test_harness_runtime_requests_grow_with_the_retry_attempt(tmp_path: Path) -> None:
    """Issue 20 item 4: a resubmitted job (Snakemake's `attempt`, `retries: 2` in the profile) asks SLURM for
    attempt × the configured time, at most the stage's max_runtime: a 16 h training segment's retries ask for
    32 h, then 48 h (its cap); so do a 16 h sampling job's."""
    def limits(attempt: int) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for job in real_preview(tmp_path / str(attempt), "--config", "scale=paper", attempt=attempt):
            flags = job["sbatch"].split()
            found.setdefault(job["rule"], set()).add(flags[flags.index("-t") + 1])
        return found

    second, third = limits(2), limits(3)
    assert (second["train_segment"], third["train_segment"]) == ({"1920"}, {"2880"})
    assert (second["sample"], third["sample"]) == ({"1920"}, {"2880"})


def test_harness_two_node_training_sbatch_and_srun_lines(tmp_path: Path) -> None:
    """Issue 20 item 1: `nodes: 2` for training (a scale setting) -> sbatch asks for 2 nodes of 8 GPUs, one task
    each, and the job's shell starts one pipeline.launch agent per node under srun (torchrun --nnodes 2 with a
    c10d rendezvous on the first node: tests/test_launch.py runs two such agents on localhost)."""
    override = tmp_path / "two-nodes.yaml"
    override.write_text("protocol_overrides: {all: {resources: {train: {nodes: 2}}}}\n")
    jobs = real_preview(tmp_path, "--config", "scale=paper", "--configfile", str(override))
    train = [j for j in jobs if j["rule"] == "train_segment"]
    assert len(train) == 40
    for job in train:
        flags = job["sbatch"].split()
        assert {"--nodes=2", "--ntasks=2", "--gres=gpu:8", "--cpus-per-task=64"} <= set(flags)
        assert not [f for f in flags if f.startswith(("--gpus", "--ntasks-per-gpu"))]
        assert job["srun"] is None and job["shell"].count("srun ") == 1
        launch = job["shell"][job["shell"].index("srun "):job["shell"].index(" -- ")]
        assert launch == ("srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=64 --kill-on-bad-exit=1 "
                          "python -m pipeline.launch --nnodes 2 --nproc-per-node 8 -m pipeline.train")
    sample = [j for j in jobs if j["rule"] == "sample"]
    assert sample and all("--nodes=1" in j["sbatch"].split() and j["srun"] for j in sample)  # sampling: one node


def test_protocols_that_disagree_on_a_stages_nodes_stop_with_one_line(tmp_path: Path) -> None:
    override = tmp_path / "mixed.yaml"
    override.write_text("protocol_overrides: {section4: {resources: {train: {nodes: 2}}}}\n")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "results/paper/table1.csv", "--snakefile",
                           str(REPO / "Snakefile"), "--directory", str(tmp_path), "--workflow-profile", "none",
                           "--config", "scale=paper", "--configfile", str(override)],
                          cwd=REPO, env=snakemake_env(), capture_output=True, text=True, timeout=180)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 1 and errors == [
        "error: resources.train.nodes: the protocols of scale paper ask for [1, 2] nodes; a stage runs on one node "
        "or on the same number of nodes in every protocol"], proc.stderr[-2000:]


@pytest.fixture(scope="module")
def harness_slurm_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """results/smoke/table1.csv at smoke scale through --profile slurm on the local cluster."""
    require_slurm()
    workdir = tmp_path_factory.mktemp("harness_slurm")
    cmd = [sys.executable, "-m", "snakemake", "results/smoke/table1.csv", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--workflow-profile", "none", "--profile", "slurm",
           "--profile", str(CI_PROFILE.relative_to(REPO)), "--config", "scale=smoke"]
    proc = subprocess.run(cmd, cwd=REPO, env=snakemake_env(), capture_output=True, text=True, timeout=900)
    return workdir, proc.stdout + proc.stderr, proc.returncode


@pytest.mark.slurm
def test_harness_table1_through_sbatch(harness_slurm_run: tuple[Path, str, int]) -> None:
    workdir, log, returncode = harness_slurm_run
    assert returncode == 0, log[-5000:]
    submissions = parse_submissions(log)
    assert {"train_segment", "sample", "latents"} <= set(submissions), submissions
    assert len(submissions["train_segment"]) == 5            # smoke milestones 150k..2000k, chained
    ids = [i for ids in submissions.values() for i in ids]
    states = sacct_jobs(ids)
    assert set(states) == set(ids)
    assert all(s["State"] == "COMPLETED" and s["Partition"] == "ci" for s in states.values())
    table = (workdir / "results" / "smoke" / "table1.csv").read_text().splitlines()
    assert table[0].startswith("# provenance: ") and len(table) > 5
