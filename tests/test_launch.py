"""Multi-node training (issue 20 item 1): two torchrun agents on localhost, joined through pipeline.launch's c10d
rendezvous as two "nodes" of 2 processes, train exactly what one 4-process agent trains (gloo, CPU)."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from core.errors import InputError
from core.io import REPO_ROOT
from pipeline.checkpoints import load_checkpoint
from pipeline.launch import DEFAULT_PORT, rendezvous, torchrun_argv
from tests.test_train import CHILD_ENV, PYTHON, assert_same_state, latents_dir, make_run  # noqa: F401 (fixture)

STEPS = 4


def test_the_rendezvous_comes_from_slurm_or_the_flags(monkeypatch):
    monkeypatch.setattr("pipeline.launch.first_node", lambda nodelist: "gpu-a01")
    env = {"SLURM_JOB_NODELIST": "gpu-a[01-02]", "SLURM_JOB_ID": "4242"}
    assert rendezvous(None, None, env) == (f"gpu-a01:{DEFAULT_PORT}", "4242")
    assert rendezvous("h:1", "x", {}) == ("h:1", "x")
    with pytest.raises(InputError, match="not inside a SLURM job"):
        rendezvous(None, "x", {})
    argv = torchrun_argv(2, 8, "gpu-a01:29400", "4242", "pipeline.train", ["--start", "0"])
    assert argv[1:] == ["-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "8", "--rdzv-backend",
                        "c10d", "--rdzv-endpoint", "gpu-a01:29400", "--rdzv-id", "4242", "-m", "pipeline.train",
                        "--", "--start", "0"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train_args(config: Path, out: Path) -> list[str]:
    return ["--run-config", str(config), "--start", "0", "--stop", str(STEPS), "--out", str(out),
            "--rolling-dir", str(out.parent / "rolling"), "--log-dir", str(out.parent / "logs"),
            "--check-every", "2", "--log-every", "2", "--device", "cpu", "--no-loss-plot"]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_agents_through_the_rendezvous_train_like_one_agent(latents_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    run = make_run(latents_dir)
    config = tmp_path / "run.json"
    config.write_text(json.dumps(run))
    two_nodes = tmp_path / "two" / "m.pt"
    endpoint = f"127.0.0.1:{_free_port()}"
    agents = [subprocess.Popen([PYTHON, "-m", "pipeline.launch", "--nnodes", "2", "--nproc-per-node", "2",
                                "--rdzv-endpoint", endpoint, "--rdzv-id", "test-job", "-m", "pipeline.train", "--",
                                *_train_args(config, two_nodes)],
                               cwd=REPO_ROOT, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True) for _ in range(2)]
    logs = [agent.communicate(timeout=600)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(log[-3000:] for log in logs)
    one_node = tmp_path / "one" / "m.pt"
    single = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
                             "-m", "pipeline.train", "--", *_train_args(config, one_node)],
                            cwd=REPO_ROOT, env=CHILD_ENV, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = load_checkpoint(two_nodes), load_checkpoint(one_node)
    assert a["world_size"] == b["world_size"] == 4
    assert_same_state(a, b)   # bit for bit
