"""benchmarks.gpu_check (issue 20 item 5): without a GPU it measures nothing and exits 0; on the CPU with a tiny
network it runs the same code end to end and writes a file the budget can read. No speed is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import TARGET_RATIO, verdicts
from pipeline.budget.throughput import load_throughput

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the check would measure it")
def test_without_a_gpu_the_check_says_so_and_measures_nothing(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "no CUDA GPU on this machine, so nothing was measured" in proc.stdout
    assert not out.exists()


def test_the_targets_are_statements_about_the_measured_numbers():
    fast, slow = {"it_s": 3.3, "mfu": 0.45, "peak_device": "H100-SXM5"}, {"it_s": 1.0}
    assert verdicts(fast, slow, "NVIDIA H100 80GB HBM3") == {
        "ratio": 3.3, "ratio_target": TARGET_RATIO, "ratio_verdict": "meets", "mfu_verdict": "meets",
        "mfu_target": 0.4}
    low = {"it_s": 2.0, "mfu": 0.3, "peak_device": "H100-SXM5"}
    assert verdicts(low, slow, "NVIDIA H100")["mfu_verdict"] == "misses"
    assert verdicts({"it_s": 2.0, "mfu": 0.3}, slow, "NVIDIA H100")["ratio_verdict"] == "misses"
    assert verdicts({**fast, "peak_device": "A100-SXM4-80GB"}, slow, "NVIDIA A100-SXM4-80GB")["mfu_verdict"].startswith(
        "not judged")
    assert verdicts(fast, slow, None)["ratio_verdict"] == "not judged (not a GPU)"


@pytest.mark.slow
def test_the_check_runs_end_to_end_on_a_tiny_cpu_network(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--network", "DiT-T/2",
                           "--batch", "2", "--steps", "2", "--no-compile", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["acceptance"] is False                       # CPU numbers are never acceptance figures
    assert set(report["train"]) == {"harness", "dit_reference"}
    harness, reference = report["train"]["harness"], report["train"]["dit_reference"]
    assert harness["precision"] == "bf16" and harness["recipe"] == "flow-linear velocity"
    assert reference["network"]["learn_sigma"] and reference["recipe"] == "ddpm-linear noise"
    assert harness["steps_timed"] == reference["steps_timed"] == 2 and harness["it_s"] > 0
    assert report["targets"]["ratio"] == pytest.approx(harness["it_s"] / reference["it_s"])
    assert report["targets"]["ratio_verdict"] == "not judged (not a GPU)"
    assert [row["sampler"]["kind"] for row in report["samplers"]] == ["euler", "heun", "sde", "dopri5", "ddpm"]
    assert all(row["nfe"] > 0 for row in report["samplers"])
    assert report["ddp_2gpu_nccl"].startswith("not measured")
    throughput = load_throughput(measured=out)                  # the budget reads the file
    assert throughput.measured_device in throughput.devices and throughput.measured_train
