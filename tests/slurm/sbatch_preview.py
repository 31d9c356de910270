"""Show the sbatch command lines a SLURM profile would submit, without submitting anything.

    python tests/slurm/sbatch_preview.py results/paper/table1.csv --profile slurm [other snakemake args]

Runs Snakemake's own command-line parsing (so profiles, ``--config``, ``--set-resources`` apply
exactly as in a real run) and a dry-run, then feeds every job that would run on the cluster to
snakemake-executor-plugin-slurm's submit-string builder (``get_submit_command`` +
``set_gres_string``) and to the jobstep plugin's step flags (the ``srun`` that starts the rule
inside the allocation; for a multi-node, MPI-style job, ``shell``: the rule's command with its own ``srun``).
Prints one JSON object per job. No SLURM, GPU or account is needed, so
multi-GPU paper-scale declarations can be checked on a laptop or in CI.

Differences from a real submission, by design: the job name is ``<run-uuid>`` instead of a fresh
UUID, the ``--wrap="<snakemake ...>"`` payload is left out, and account/partition appear only when
set as resources (a real run guesses them from ``sacct``/``sinfo`` when unset). Unless ``--cores``
is given, threads are not capped (as in a real cluster run without ``--cores``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

_UNCAPPED_CORES = 1 << 20


def _account_and_partition(job: Any) -> tuple[str, str]:
    """The ``-A``/``-p`` fragments the plugin adds when account/partition are set as resources."""
    account = job.resources.get("slurm_account")
    partition = job.resources.get("slurm_partition")
    return (f" -A {shlex.quote(str(account))}" if account else "",
            f" -p {shlex.quote(str(partition))}" if partition else "")


def _runs_on_cluster(job: Any, workflow: Any) -> bool:
    """Whether a real run would submit ``job`` (Workflow.is_local minus the dry-run's local executor)."""
    rule = job.rule
    stays_local = rule.group is None and (
        rule.name in workflow._localrules or rule.norun or rule.is_template_engine
    )
    return not stays_local


def _submission(job: Any, workflow: Any, executor_settings: Any) -> dict[str, Any]:
    """Build the plugin's sbatch line and the jobstep's srun flags for one job."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import get_job_wildcards, set_gres_string
    from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting, get_gpu_setting, get_node_setting

    wildcards = get_job_wildcards(job)
    logdir = Path(executor_settings.logdir or ".snakemake/slurm_logs")
    if not logdir.is_absolute():
        logdir = Path(workflow.workdir_init) / logdir
    account, partition = _account_and_partition(job)
    params = {
        "run_uuid": "<run-uuid>",
        "slurm_logfile": logdir / f"rule_{job.name}" / wildcards / "%j.log",
        "comment_str": f"rule_{job.name}" + (f"_wildcards_{wildcards}" if wildcards else ""),
        "account": account,
        "partition": partition,
        "workdir": workflow.workdir_init,
    }
    sbatch = get_submit_command(job, params, settings=executor_settings) + set_gres_string(job)
    gpu_job = bool(job.resources.get("gpu")) or "gpu" in str(job.resources.get("gres", ""))
    step_flags = [get_cpu_setting(job, gpu_job), get_gpu_setting(job), get_node_setting(job)]
    srun = " ".join(["srun -n1 --cpu-bind=q", *[flag for flag in step_flags if flag]])
    submission = {
        "rule": job.name,
        "wildcards": dict(job.wildcards_dict),
        "sbatch": " ".join(sbatch.split()),
        "srun": srun,
        "threads": job.threads,
    }
    if "mpi" in job.resources.keys():
        # The jobstep runs an MPI job's shell as is on the first node: the rule's own `srun` starts its tasks.
        submission["srun"] = None
        submission["shell"] = " ".join(str(job.shellcmd).split())
    return submission


def preview(argv: list[str]) -> list[dict[str, Any]]:
    """Dry-run ``snakemake argv`` and return the SLURM submission of every job it would run.

    ``argv`` must select the slurm executor (``--profile slurm`` or ``--executor slurm``).
    Local rules (``localrules``, ``localrule: True``, rules without shell/run) are left out: they
    never reach sbatch.
    """
    from snakemake.api import DAGApi
    from snakemake.cli import args_to_api, parse_args

    parser, args = parse_args([*argv, "--dry-run"])
    if args.executor != "slurm":
        raise SystemExit(f"the arguments select executor {args.executor!r}, not 'slurm' (use --profile slurm)")
    if args.cores is None:
        args.cores = _UNCAPPED_CORES
    captured: dict[str, Any] = {}
    original = DAGApi.execute_workflow

    def execute_and_capture(self: DAGApi, *pos: Any, **kw: Any) -> Any:
        result = original(self, *pos, **kw)
        captured["workflow"] = self.workflow_api._workflow
        captured["executor_settings"] = kw["executor_settings"]
        return result

    DAGApi.execute_workflow = execute_and_capture
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the dry-run's report; stdout is for the JSON
            ok = args_to_api(args, parser)
    finally:
        DAGApi.execute_workflow = original
    if not ok or "workflow" not in captured:
        raise SystemExit("snakemake dry-run failed (see the messages above)")
    workflow = captured["workflow"]
    dag = workflow.dag
    jobs = [job for job in dag.jobs if dag.needrun(job) and _runs_on_cluster(job, workflow)]
    attempt = int(os.environ.get("FASTERDIT_PREVIEW_ATTEMPT", "1"))
    for job in jobs:
        job.attempt = attempt        # resources are re-evaluated for this retry attempt
    return [_submission(job, workflow, captured["executor_settings"]) for job in jobs]


def main(argv: list[str] | None = None) -> None:
    """Print the submissions as JSON lines on stdout (the dry-run's messages go to stderr)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    for submission in preview(argv):
        print(json.dumps(submission, sort_keys=True))


if __name__ == "__main__":
    main()
