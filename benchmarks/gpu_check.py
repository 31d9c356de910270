"""The GPU acceptance check (issue 20 item 5): one command, a few minutes on one GPU, what it measured only.

    python -m benchmarks.gpu_check [--out benchmarks/results/gpu-check.json] [--steps 200]

Side by side on the same GPU, DiT-XL/2 at 256 px (32×32×4 latents), 32 images per GPU:

* ``harness``: the paper recipe as the paper scale trains it — FasterDiT (flow linear, v-prediction,
  lognorm(0, 1), direction loss), bf16 autocast, ``torch.compile``, SDPA attention — through the harness's
  training step (:func:`pipeline.train_step.train_step`: forward, loss, backward, AdamW, EMA);
* ``dit_reference``: DiT's own training settings — DDPM linear, ε with learned σ, fp32 with TF32 matmuls, eager
  (DiT's train.py) — through the same step. It stands in for the official DiT loop (the same network and
  loss; the official code itself is not vendored here).

Reported per configuration: it/s, images/s, MFU (model FLOPs of :data:`pipeline.train_log.FLOP_CONVENTION`
against the dense peak of config/throughput.yaml for the recognised GPU), the fraction of the matmul peak
measured in the same run, and peak memory. Then the ratio harness ÷ reference and the two targets of the
developers' guide (ratio ≥ 3, MFU ≥ 40 % in bf16 on an H100-class GPU) as ``meets``/``misses`` of the measured
numbers; a short run of every sampler (NFE, samples/s); with two or more GPUs, the harness step under 2-GPU
NCCL DDP. The JSON also holds a ``budget_calibration`` block (``snakemake results/paper/budget.csv --config
budget_throughput=FILE`` reads it). Without a CUDA GPU it says so and exits 0, measuring nothing
(``--device cpu --network DiT-T/2`` runs the same code on a tiny network, as tests/test_gpu_check.py does;
those numbers are not acceptance figures).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import bench_matmul
from benchmarks.bench_train import TrainConfig, measure, parse_config
from benchmarks.common import ROOT, Context

TARGET_RATIO = 3.0       # the harness's step against DiT's fp32/TF32 eager loop, same GPU
TARGET_MFU = 0.40        # bf16, H100-class GPUs
H100_CLASS_ROWS = ("H100-SXM5", "H800-SXM5")   # config/throughput.yaml rows (pipeline.train_log.GPU_ROWS)
SAMPLERS = ({"kind": "euler", "steps": 10}, {"kind": "heun", "steps": 10}, {"kind": "sde", "steps": 10},
            {"kind": "dopri5", "atol": 1e-6, "rtol": 1e-3}, {"kind": "ddpm", "steps": 10})


def configurations(network: str, batch: int, steps: int, compile: bool) -> dict[str, TrainConfig]:
    """The two timed configurations (module docstring); ``steps`` caps the timed steps of each."""
    size = "32:4" if network.startswith("DiT-XL") or network.startswith("DiT-B") else "8:1"
    harness = parse_config(f"{network}:{size}:{batch}:bf16")
    reference = parse_config(f"{network}:{size}:{batch}:tf32:sigma")
    harness.run["tf32"] = True                          # the paper scale trains bf16 with TF32 on (paper.yaml)
    harness.compile, harness.label = compile, f"harness {harness.label}{' compile' if compile else ''}"
    reference.label = f"dit_reference {reference.label} eager"
    for config in (harness, reference):
        config.max_steps, config.min_seconds = steps, 1e9   # exactly `steps` timed steps after the warm-up
    return {"harness": harness, "dit_reference": reference}


def mfu(entry: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """MFU of a measured entry against the recognised GPU's dense peak (None on an unknown device)."""
    from pipeline.train_log import TrainingCost

    precision = "bf16" if entry["precision"] == "bf16" else "fp32"
    cost = TrainingCost.of(entry["network"], precision, entry["precision"] == "tf32", device)
    return cost.fields(entry["images_s"], world_size=1)


def sampler_runs(ctx: Context, network: str, batch: int) -> list[dict[str, Any]]:
    """Every sampler once on a random-weight network of the check's size: NFE and samples/s."""
    from models.samplers import SamplerConfig, sample
    from pipeline.runconfig import RunConfig

    rows = []
    for spec in SAMPLERS:
        entry = configurations(network, batch, 1, False)["dit_reference" if spec["kind"] == "ddpm" else "harness"]
        run = RunConfig.from_json(entry.run)
        net = run.build_network().to(ctx.device).eval()
        generator = torch.Generator(device=ctx.device).manual_seed(0)
        noise = torch.randn((batch, net.in_channels, net.input_size, net.input_size), generator=generator,
                            device=ctx.device)
        labels = torch.randint(0, net.num_classes, (batch,), generator=generator, device=ctx.device)
        cfg = SamplerConfig(kind=spec["kind"], steps=int(spec.get("steps", 250)), cfg_scale=1.0,
                            atol=float(spec.get("atol", 1e-6)), rtol=float(spec.get("rtol", 1e-3)))
        with torch.no_grad():
            sample(net, run.build_schedule(), run.prediction, noise, labels, cfg)    # warm-up, not timed
            ctx.sync()
            began = time.perf_counter()
            _, nfe = sample(net, run.build_schedule(), run.prediction, noise, labels, cfg)
            ctx.sync()
        seconds = time.perf_counter() - began
        rows.append({"sampler": spec, "nfe": int(nfe), "seconds": seconds, "samples_s": batch / seconds})
    return rows


def ddp_run(network: str, batch: int, steps: int, compile: bool, scratch: Path) -> dict[str, Any] | None:
    """The harness step under 2-GPU NCCL DDP (torchrun), or None with fewer than two GPUs."""
    if torch.cuda.device_count() < 2:
        return None
    out = scratch / "ddp.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "benchmarks.gpu_ddp_worker", "--", "--network", network, "--batch", str(batch), "--steps",
               str(steps), "--out", str(out)] + (["--compile"] if compile else [])
    try:
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return {"error": "the 2-GPU run took over 900 s"}
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    import json

    return json.loads(out.read_text())


def verdicts(harness: dict[str, Any], reference: dict[str, Any], device_name: str | None) -> dict[str, Any]:
    # ``device_name``: the GPU's name, None off a GPU; the MFU target is judged on the peak row that MFU used.
    """The guide's two targets, as statements about the measured numbers (judged on a GPU only)."""
    ratio = harness["it_s"] / reference["it_s"]
    out: dict[str, Any] = {"ratio": ratio, "ratio_target": TARGET_RATIO,
                           "ratio_verdict": "meets" if ratio >= TARGET_RATIO else "misses"}
    if device_name is None:
        out["ratio_verdict"] = "not judged (not a GPU)"
    h100_class = device_name is not None and harness.get("peak_device") in H100_CLASS_ROWS
    if harness.get("mfu") is None or not h100_class:
        out["mfu_verdict"] = "not judged (needs an H100-class GPU with a known peak)"
    else:
        out["mfu_verdict"] = "meets" if harness["mfu"] >= TARGET_MFU else "misses"
    out["mfu_target"] = TARGET_MFU
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu-check.json")
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU or nothing), cuda:N, or cpu")
    parser.add_argument("--network", default="DiT-XL/2")
    parser.add_argument("--batch", type=int, default=32, help="images per GPU")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per configuration")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from benchmarks.run_all import budget_calibration, host_info
    from core.io import atomic_write_json, provenance

    if args.device == "auto" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine, so nothing was measured; run it on a GPU node "
              "(`--device cpu --network DiT-T/2` exercises the same code on a tiny network)")
        return 0
    device = torch.device("cuda" if args.device == "auto" else args.device)
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fasterdit-gpu-check-") as scratch:
        ctx = Context(device=device, threads=torch.get_num_threads(), scratch=Path(scratch))
        bench_matmul.run(ctx)
        entries = {}
        for name, config in configurations(args.network, args.batch, args.steps, args.compile).items():
            entry = measure(ctx, config)
            entry.update(mfu(entry, device))
            entries[name] = entry
            memory = entry["peak_memory_bytes"]
            shown = f"{entry['mfu']:.1%}" if entry.get("mfu") is not None else "n/a (no known peak)"
            print(f"{name:>14}: {entry['it_s']:.3f} it/s, {entry['images_s']:.1f} img/s, MFU {shown}, "
                  f"peak memory {memory / 2**30:.2f} GiB" if memory else
                  f"{name:>14}: {entry['it_s']:.3f} it/s, {entry['images_s']:.1f} img/s, MFU {shown}", flush=True)
        ctx.shared["train_entries"] = list(entries.values())
        judged = verdicts(entries["harness"], entries["dit_reference"], gpu_name)
        print(f"harness / DiT reference: {judged['ratio']:.2f}x ({judged['ratio_verdict']}, target {TARGET_RATIO:g}x); "
              f"MFU: {judged['mfu_verdict']}", flush=True)
        samplers = sampler_runs(ctx, args.network, min(args.batch, 8))
        for row in samplers:
            print(f"sampler {row['sampler']['kind']:>6}: NFE {row['nfe']}, {row['samples_s']:.2f} samples/s")
        ddp = ddp_run(args.network, args.batch, min(args.steps, 50), args.compile, Path(scratch))
        host = host_info(device, ctx.threads)
        report = {
            "command": "python -m benchmarks.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:]),
            "device": gpu_name or str(device), "acceptance": device.type == "cuda",
            "host": {**host, "hostname": socket.gethostname(), "python": platform.python_version(),
                     "cuda_devices": torch.cuda.device_count()},
            "peaks_measured": ctx.peaks, "train": entries, "targets": judged, "samplers": samplers,
            "ddp_2gpu_nccl": ddp if ddp is not None else "not measured (fewer than 2 GPUs)",
            "seconds": time.perf_counter() - began,
            "budget_calibration": budget_calibration(ctx, host, str(args.out)),
            "provenance": provenance(config={"argv": list(argv or sys.argv[1:]), "device": str(device)}, seed=None),
        }
    atomic_write_json(args.out, report)
    print(f"wrote {args.out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    sys.exit(main())
