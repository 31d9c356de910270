"""One node's share of a multi-node job: a ``torchrun`` agent that joins the job's c10d rendezvous.

    srun --nodes N --ntasks-per-node 1 python -m pipeline.launch --nnodes N --nproc-per-node G -m pipeline.train -- ...

``srun`` starts this module once per node; each copy execs ``python -m torch.distributed.run`` with the same
rendezvous (``--rdzv-backend c10d``, endpoint on the job's first node, id = the SLURM job id), so the agents
form one job of N x G processes (global ranks in node order of arrival, data shards by global rank: the result
does not depend on how processes are spread over nodes). Outside SLURM give ``--rdzv-endpoint`` and
``--rdzv-id`` yourself (tests/test_launch.py starts two agents on localhost this way).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

from core.errors import InputError, run_cli

DEFAULT_PORT = 29400


def first_node(nodelist: str) -> str:
    """The first host of a SLURM node list (``scontrol show hostnames``; a plain comma list without SLURM)."""
    try:
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        hosts = [host for host in nodelist.split(",") if host and "[" not in host]
    if not hosts:
        raise InputError(f"SLURM_JOB_NODELIST: cannot read a host from {nodelist!r}; pass --rdzv-endpoint")
    return hosts[0]


def rendezvous(endpoint: str | None, rdzv_id: str | None, env: Mapping[str, str]) -> tuple[str, str]:
    """(endpoint, id) of the job's rendezvous: as given, else from SLURM's environment."""
    if endpoint is None:
        if "SLURM_JOB_NODELIST" not in env:
            raise InputError("--rdzv-endpoint: not given and not inside a SLURM job (no SLURM_JOB_NODELIST)")
        endpoint = f"{first_node(env['SLURM_JOB_NODELIST'])}:{env.get('FASTERDIT_RDZV_PORT', DEFAULT_PORT)}"
    if rdzv_id is None:
        if "SLURM_JOB_ID" not in env:
            raise InputError("--rdzv-id: not given and not inside a SLURM job (no SLURM_JOB_ID)")
        rdzv_id = env["SLURM_JOB_ID"]
    return endpoint, rdzv_id


def torchrun_argv(nnodes: int, nproc_per_node: int, endpoint: str, rdzv_id: str, module: str,
                  args: Sequence[str]) -> list[str]:
    """The ``python -m torch.distributed.run`` command of one node's agent (``--`` before the module's flags)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes),
            "--nproc-per-node", str(nproc_per_node), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
            "--rdzv-id", rdzv_id, "-m", module, "--", *args]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--nnodes", type=int, required=True, help="nodes of the job (one agent each)")
    parser.add_argument("--nproc-per-node", type=int, required=True, help="processes (GPUs) per node")
    parser.add_argument("--rdzv-endpoint", help="HOST:PORT of the rendezvous (default: the job's first node)")
    parser.add_argument("--rdzv-id", help="rendezvous id shared by the agents (default: SLURM_JOB_ID)")
    parser.add_argument("-m", dest="module", required=True, help="the module every process runs")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- then the module's flags")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.nnodes < 1 or args.nproc_per_node < 1:
        raise InputError(f"--nnodes/--nproc-per-node: need >= 1, got {args.nnodes} and {args.nproc_per_node}")
    endpoint, rdzv_id = rendezvous(args.rdzv_endpoint, args.rdzv_id, os.environ)
    rest = args.args[1:] if args.args[:1] == ["--"] else args.args
    command = torchrun_argv(args.nnodes, args.nproc_per_node, endpoint, rdzv_id, args.module, rest)
    sys.stdout.flush()
    os.execv(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(run_cli(main))
