"""Run every benchmark, write one JSON file and print a short table.

``python -m benchmarks.run_all [--out benchmarks/results/<name>.json] [--quick | --full] [--only NAME ...]``

Benchmarks (one module each, in this order): ``matmul`` (the machine's peak, measured first: every
"fraction of peak" divides by it), ``train`` (training-step throughput), ``train_vs_plain`` (the harness's
step against a hand-written PyTorch loop), ``sampling``, ``latents``, ``metrics`` (feature extraction and
FID/sFID/IS/P/R at 10k and 50k samples, time and peak memory), ``dag`` (Snakemake dry run at paper scale).

The JSON holds every measurement, the host (CPU, threads, load average before and after), provenance, and a
``budget_calibration`` block that ``python -m pipeline.budget --throughput FILE`` reads: this machine as a
device (measured peaks, utilisation, per-step overhead) and exact per-configuration rates.
Speeds are measured here and never asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import socket
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/run_all.py` as well as `python -m benchmarks.run_all`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import (  # noqa: E402
    bench_dag,
    bench_latents,
    bench_matmul,
    bench_metrics,
    bench_sampling,
    bench_train,
    bench_train_vs_plain,
)
from benchmarks.common import ROOT, Context, Result, budget_device  # noqa: E402

BENCHMARKS: dict[str, Callable[..., Result]] = {
    "matmul": bench_matmul.run,
    "train": bench_train.run,
    "train_vs_plain": bench_train_vs_plain.run,
    "sampling": bench_sampling.run,
    "latents": bench_latents.run,
    "metrics": bench_metrics.run,
    "dag": bench_dag.run,
}


def host_info(device: torch.device, threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
        match = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.MULTILINE)
        cpu = match.group(1).strip() if match else cpu
    except OSError:
        pass
    info = {"hostname": socket.gethostname(), "cpu": cpu, "cpu_count": os.cpu_count(), "threads": threads,
            "device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def default_name(device: torch.device) -> str:
    """``cpu`` on a CPU; ``<host>-<gpu>`` on a GPU."""
    if device.type != "cuda":
        return "cpu"
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(device)).strip("-")
    return f"{socket.gethostname()}-{gpu}"


def table_bandwidths(gpu_name: str) -> dict[str, Any]:
    """Memory and all-reduce bandwidths of the config/throughput.yaml row this GPU name matches
    (pipeline.train_log.GPU_ROWS), for the budget's step model; {} for a GPU the table does not know.
    Not measured here: the source says which row they come from."""
    from pipeline.budget import load_throughput
    from pipeline.train_log import GPU_ROWS

    row = next((row for marker, row in GPU_ROWS if marker in gpu_name), None)
    if row is None:
        return {}
    table = load_throughput().devices[row]
    return {"memory_gbps": table.memory_gbps, "allreduce_gbps": table.allreduce_gbps, "bandwidths_from": row}


def budget_calibration(ctx: Context, host: dict[str, Any], source: str) -> dict[str, Any]:
    """This machine as a device of pipeline.budget: peaks, utilisation, overhead and exact rates."""
    train = ctx.shared.get("train_entries", [])
    utilisation: dict[str, float] = {}
    for key in sorted({e["precision"] for e in train}):
        largest = max((e for e in train if e["precision"] == key), key=lambda e: e["flops_per_step"])
        if largest.get("fraction_of_peak"):
            utilisation[key] = largest["fraction_of_peak"]
    largest_flops = max((e["flops_per_step"] for e in train), default=0.0)
    overheads = [max(0.0, 1 / e["it_s"] - e["flops_per_step"] / (ctx.peaks[e["precision"]]
                                                                 * utilisation[e["precision"]]))
                 for e in train if e["precision"] in utilisation and e["precision"] in ctx.peaks
                 and e["flops_per_step"] < largest_flops]
    sample_precision = budget_device(ctx).precision_key("fp32", tf32=True)  # pipeline.sample: fp32, TF32 on
    samples = [{"network": e["network"], "precision": sample_precision,
                "sample_forwards_per_s": e["sample_forwards_s"],
                "from": e.get("sampler", "forward-only rate")}
               for e in ctx.shared.get("sample_entries", []) + ctx.shared.get("forward_entries", [])]
    assumptions: dict[str, Any] = {}
    dopri = [e for e in ctx.shared.get("sample_entries", []) if e["kind"] == "dopri5"]
    if dopri:
        assumptions["dopri5_nfe"] = {f"{e['atol']:g}/{e['rtol']:g}": e["nfe_mean"] for e in dopri}
    if "identity_latents_images_s" in ctx.shared:
        assumptions["identity_latents_images_per_s"] = ctx.shared["identity_latents_images_s"]
    if "metrics_host" in ctx.shared:
        assumptions["metrics_host"] = ctx.shared["metrics_host"]
    name = f"{host['hostname']}-{host.get('gpu', 'cpu')}"
    device = {"name": re.sub(r"\s+", "-", name), "kind": "gpu" if ctx.device.type == "cuda" else "cpu",
              "peak_tflops": {k: v / 1e12 for k, v in ctx.peaks.items()}, "utilisation": utilisation,
              "step_overhead_s": statistics.median(overheads) if overheads else 0.0,
              "source": f"measured by benchmarks.run_all ({source}), {host['threads']} threads"}
    device.update(table_bandwidths(str(host.get("gpu", ""))) if device["kind"] == "gpu" else {})
    return {
        "device": device,
        "train": [{"network": e["network"], "batch": e["batch"], "precision": e["precision"],
                   "it_s": e["it_s"], "threads": e["threads"]} for e in train],
        "sample": samples,
        "assumptions": assumptions,
    }


def format_table(results: Sequence[Result]) -> str:
    lines = []
    for result in results:
        lines.append(f"[{result.name}] {result.seconds:.1f} s")
        for label, value, unit in result.table:
            shown = f"{value:,.4g}" if isinstance(value, float) else str(value)
            lines.append(f"  {label:<52} {shown:>10} {unit}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        help="JSON to write (default: benchmarks/results/cpu.json on a CPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: each mini-scale job runs on one thread, and one "
                             "thread is robust to other load on a small machine)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="skip the 50k-sample metric runs")
    mode.add_argument("--full", action="store_true", help="also re-time the Fréchet distances at 50k")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS),
                        help="run only these (matmul always runs)")
    parser.add_argument("--train-config", action="append", default=[],
                        help="extra training configuration NAME:INPUT:CHANNELS:BATCH:PRECISION[:sigma], "
                             "e.g. DiT-XL/2:32:4:32:bf16")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from core.io import atomic_write_json, provenance

    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    torch.set_num_threads(args.threads)
    out = args.out or ROOT / "benchmarks" / "results" / f"{default_name(device)}.json"
    host = host_info(device, torch.get_num_threads())
    selected = ["matmul"] + [n for n in BENCHMARKS if n != "matmul" and (not args.only or n in args.only)]
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    results: list[Result] = []
    errors: dict[str, str] = {}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fasterdit-bench-") as scratch:
        ctx = Context(device=device, threads=host["threads"], scratch=Path(scratch), quick=args.quick,
                      full=args.full)
        for name in selected:
            started = time.perf_counter()
            try:
                extra = (args.train_config,) if name == "train" else ()
                result = BENCHMARKS[name](ctx, *extra)
            except Exception:  # record and go on: one broken benchmark should not hide the others
                errors[name] = traceback.format_exc()
                print(f"benchmark {name} failed:\n{errors[name]}", file=sys.stderr)
                continue
            result.seconds = time.perf_counter() - started
            results.append(result)
            print(format_table([result]), flush=True)
        total = time.perf_counter() - began
        command = "python -m benchmarks.run_all " + " ".join(argv if argv is not None else sys.argv[1:])
        report = {
            "command": command.strip(), "host": host, "total_seconds": total,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "mode": "quick" if args.quick else "full" if args.full else "default",
            "benchmarks": {r.name: {"seconds": r.seconds, **r.data} for r in results},
            "errors": errors,
            "budget_calibration": budget_calibration(ctx, host, str(out)),
            "provenance": provenance(config={"command": command.strip(), "device": str(device)}, seed=None),
        }
    atomic_write_json(out, report)
    print(f"total {total:.1f} s; wrote {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
