"""Compute budget: estimated wall-clock and GPU-hours of every job, figure and table, before anything runs.

``python -m pipeline.budget --scale paper [--gpu H100-SXM5] [--throughput benchmarks/results/HOST.json]
--out results/budget.csv`` (or ``snakemake results/budget.csv --config scale=paper``).

How a job is estimated (docs/benchmarks.md has the numbers):

* FLOPs come from the architectures themselves: every network, the SD-VAE and Inception-v3 are built on
  the meta device and run once under ``torch.utils.flop_counter.FlopCounterMode`` (nothing is allocated;
  DiT-XL/2 gives 118.6 G multiply-adds at 256 px, the DiT paper's "118.6 Gflops"). A training step costs
  ``3 × forward`` per image (backward = 2 × forward, checked with the counter for all paper networks).
* Time = FLOPs / (devices × peak[precision] × utilisation[precision]) (+ a per-step overhead on CPUs).
  Peaks are vendor figures (``config/throughput.yaml``); utilisations are *derived* from published
  DiT-XL/2 training throughputs (DiT issue #22, fast-DiT), see :func:`calibration_points`.
* A benchmark file (``python -m benchmarks.run_all``) adds the machine it ran on as a device, with its
  measured matmul peak and utilisation, and exact per-configuration training and sampling rates that take
  precedence over the FLOP model.

Jobs (identified by their output path, exactly as the DAG names them): ``latents`` (one per latent
folder), ``train`` (one per segment between milestones) and ``sample`` (one per sample set: sampling on the
job's GPUs, then scoring FID/sFID/IS/P/R on rank 0, as the ``sample`` rule does; the two parts are separate
columns). Figs. 8-10's grid is a ``sample`` job without scoring.
A job needed by several figures/tables is counted once in the grand total. Per experiment the CSV gives
the *standalone* cost (every job it needs, as if only that target were asked for) and the *attributed*
cost (each shared job split equally among the experiments that need it; attributed costs add up to the
grand total), plus the critical path (the longest latents → segments → sample chain).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
THROUGHPUT_FILE = ROOT / "config" / "throughput.yaml"
JOB_KINDS = ("latents", "train", "sample")
GRID_EXPERIMENT = "grids"
GRID_TARGET = "paper_figures/fig8.png"      # the grids rule's output (Figs. 8-10)

# stabilityai/sd-vae-ft-ema config.json (the SD 1.x KL-f8 autoencoder, 83,653,863 parameters).
SD_VAE_ARCHITECTURE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
    "norm_num_groups": 32, "sample_size": 256,
}
INCEPTION_DIMS = {"pool": 2048, "spatial": 2023}          # pool_3, Mixed_6d.branch1x1[..., :7] (ADM sFID)

COLUMNS = [
    "row", "experiment", "kind", "job", "run", "protocol", "network", "device", "precision", "step_from",
    "step_to", "items", "nfe", "cfg", "gpus", "tflop", "sampling_hours", "scoring_hours", "est_hours_wall",
    "est_gpu_hours", "est_device_hours",
    "attributed_device_hours", "critical_path_hours", "shared_by", "method", "source",
]


# --------------------------------------------------------------------------------------------
# FLOP counting on the meta device
# --------------------------------------------------------------------------------------------


def count_forward_flops(module: Any, *inputs: Any) -> int:
    """FLOPs (2 per multiply-add) of one forward call, counted by ``FlopCounterMode`` without grad."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*inputs)
    return int(counter.get_total_flops())


def _spec_key(spec: Mapping[str, Any]) -> str:
    return json.dumps(dict(spec), sort_keys=True)


@cache
def _network_forward_flops(spec_json: str) -> float:
    import torch

    from pipeline.runconfig import build_network

    spec = json.loads(spec_json)
    with torch.device("meta"):
        net = build_network(spec)
        x = torch.zeros(1, net.in_channels, net.input_size, net.input_size)
        t = torch.zeros(1)
        y = torch.zeros(1, dtype=torch.int64)
    return float(count_forward_flops(net, x, t, y))


def network_forward_flops(spec: Mapping[str, Any]) -> float:
    """FLOPs of one forward pass of one image through the network of a run config's ``network`` block."""
    return _network_forward_flops(_spec_key(spec))


def dit_paper_gflops(name: str, input_size: int = 32, in_channels: int = 4) -> float:
    """A DiT's forward cost in the DiT paper's unit ("Gflops" there are 1e9 multiply-adds, i.e. FLOPs / 2)."""
    spec = {"name": name, "input_size": input_size, "in_channels": in_channels, "learn_sigma": True}
    return network_forward_flops(spec) / 2e9


def train_flops_per_image(spec: Mapping[str, Any], grad_checkpointing: bool = False) -> float:
    """Forward + backward FLOPs per training image: 3 × forward (4 × with gradient checkpointing)."""
    return (4.0 if grad_checkpointing else 3.0) * network_forward_flops(spec)


@cache
def vae_flops(resolution: int, part: str = "encode") -> float:
    """FLOPs of the SD-VAE encoder (image → latent mean) or decoder (latent → image) for one image."""
    import torch
    from diffusers import AutoencoderKL

    if part not in ("encode", "decode"):
        raise ValueError(f"part must be 'encode' or 'decode', not {part!r}")
    with torch.device("meta"):
        vae = AutoencoderKL(**SD_VAE_ARCHITECTURE)
        image = torch.zeros(1, 3, resolution, resolution)
        latent = torch.zeros(1, 4, resolution // 8, resolution // 8)
    if part == "encode":
        return float(count_forward_flops(lambda x: vae.encode(x).latent_dist.mean, image))
    return float(count_forward_flops(lambda z: vae.decode(z).sample, latent))


@cache
def inception_flops(resolution: int = 256) -> float:
    """FLOPs of torch-fidelity's ``inception-v3-compat`` on one image (resized to 299 inside)."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Architecture(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:  # architecture only, no weights
            return None

    with tempfile.TemporaryDirectory() as folder:
        empty = Path(folder) / "empty.pt"
        torch.save({}, empty)
        with torch.device("meta"):
            net = _Architecture("inception-v3-compat", ["2048", "logits_unbiased"],
                                feature_extractor_weights_path=str(empty))
            images = torch.zeros(1, 3, resolution, resolution, dtype=torch.uint8)
        return float(count_forward_flops(net, images))


@cache
def digits_classifier_flops() -> float:
    """FLOPs of the digits CNN (eval.digits_classifier) on one 8×8 image."""
    import torch

    from eval.digits_classifier import DigitsClassifier, DigitsClassifierConfig

    with torch.device("meta"):
        net = DigitsClassifier(DigitsClassifierConfig())
        images = torch.zeros(1, 1, 8, 8)
    return float(count_forward_flops(net.forward_features, images))


def precision_recall_flops(num_samples: int, num_reference: int, dim: int) -> float:
    """Distance FLOPs of k-NN precision/recall: radii in each set and the cross distances, 2·dim a pair."""
    pairs = num_reference**2 + num_samples**2 + num_samples * num_reference
    return 2.0 * dim * pairs


# --------------------------------------------------------------------------------------------
# Devices, calibration and the throughput table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """A GPU type or CPU: peak FLOP/s per precision (TFLOP/s), optional measured utilisation and overhead."""

    name: str
    kind: str
    peak_tflops: dict[str, float]
    source: str = ""
    utilisation: dict[str, float] = field(default_factory=dict)
    step_overhead_s: float = 0.0

    def precision_key(self, precision: str, tf32: bool) -> str:
        """``bf16``; fp32 runs use ``tf32`` on a GPU that has it when TF32 is on, else ``fp32``."""
        if precision == "bf16" and "bf16" in self.peak_tflops:
            return "bf16"
        if self.kind == "gpu" and tf32 and "tf32" in self.peak_tflops:
            return "tf32"
        return "fp32"

    def peak(self, key: str) -> float:
        """Peak FLOP/s for a precision key."""
        if key not in self.peak_tflops:
            raise KeyError(f"device {self.name} has no {key} peak; known: {sorted(self.peak_tflops)}")
        return float(self.peak_tflops[key]) * 1e12


def _device(name: str, entry: Mapping[str, Any]) -> Device:
    return Device(name=name, kind=str(entry.get("kind", "gpu")),
                  peak_tflops={k: float(v) for k, v in entry["peak_tflops"].items()},
                  source=str(entry.get("source", "")),
                  utilisation={k: float(v) for k, v in (entry.get("utilisation") or {}).items()},
                  step_overhead_s=float(entry.get("step_overhead_s", 0.0)))


def _calibration_step_flops(entry: Mapping[str, Any]) -> float:
    per_image = train_flops_per_image(entry["network"], bool(entry.get("grad_checkpointing", False)))
    if entry.get("vae_encode_resolution"):
        per_image += vae_flops(int(entry["vae_encode_resolution"]), "encode")
    return float(entry["global_batch"]) * per_image


@dataclass
class Throughput:
    """Devices, the published calibration points and assumptions (config/throughput.yaml), plus an optional
    benchmark file's measured device and exact rates."""

    devices: dict[str, Device]
    default_device: str
    calibration: list[dict[str, Any]]
    checks: list[dict[str, Any]]
    assumptions: dict[str, Any]
    measured_train: list[dict[str, Any]] = field(default_factory=list)
    measured_sample: list[dict[str, Any]] = field(default_factory=list)
    measured_device: str | None = None
    measured_source: str | None = None
    sources: list[str] = field(default_factory=list)
    _derived: dict[str, tuple[float, str]] | None = field(default=None, repr=False)

    def calibration_points(self) -> list[dict[str, Any]]:
        """Each published throughput turned into achieved FLOP/s per GPU and utilisation of the peak."""
        points = []
        for entry in self.calibration:
            device = self.devices[entry["device"]]
            step_flops = _calibration_step_flops(entry)
            achieved = float(entry["it_s"]) * step_flops / int(entry["gpus"])
            peak = device.peak(entry["precision"])
            points.append({"id": entry["id"], "precision": entry["precision"], "device": device.name,
                           "gpus": int(entry["gpus"]), "it_s": float(entry["it_s"]),
                           "step_tflop": step_flops / 1e12, "achieved_tflops_per_gpu": achieved / 1e12,
                           "peak_tflops": peak / 1e12, "utilisation": achieved / peak,
                           "source": entry["source"]})
        return points

    def derived_utilisation(self) -> dict[str, tuple[float, str]]:
        """Utilisation per precision: geometric mean of the calibration points of that precision."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for point in self.calibration_points():
            groups.setdefault(point["precision"], []).append(point)
        return {key: (math.exp(sum(math.log(p["utilisation"]) for p in pts) / len(pts)),
                      "derived from " + ", ".join(p["id"] for p in pts))
                for key, pts in groups.items()}

    def utilisation(self, device: Device, key: str) -> tuple[float, str]:
        """(utilisation, where it comes from) for a device and precision key."""
        if key in device.utilisation:
            return device.utilisation[key], f"utilisation measured on {device.name}"
        derived = _derived_cache(self)
        if key in derived:
            return derived[key]
        raise KeyError(f"no utilisation for {key} on {device.name}: add a calibration entry or a measured "
                       f"file")

    def check_predictions(self) -> list[dict[str, Any]]:
        """Published end-to-end figures versus what this model predicts for them."""
        rows = []
        for entry in self.checks:
            device = self.devices[entry["device"]]
            util, _ = self.utilisation(device, entry["precision"])
            capacity = int(entry["gpus"]) * device.peak(entry["precision"]) * util
            step_s = _calibration_step_flops(entry) / capacity
            predicted = step_s * int(entry["steps"]) / 3600
            rows.append({"id": entry["id"], "predicted_hours": predicted,
                         "reported_hours": float(entry["reported_hours"]),
                         "ratio": predicted / float(entry["reported_hours"]), "source": entry["source"]})
        return rows

    def dopri5_nfe(self, atol: float, rtol: float) -> tuple[float, str]:
        table = self.assumptions.get("dopri5_nfe", {})
        key = f"{atol:g}/{rtol:g}"
        if key in table:
            return float(table[key]), f"dopri5 NFE at atol/rtol {key}: {table[key]:g}"
        return float(table.get("default", 250)), f"dopri5 NFE {table.get('default', 250):g} (assumed default)"

    def find_measured(self, entries: list[dict[str, Any]], device: Device, spec: Mapping[str, Any],
                      batch: float, key: str) -> dict[str, Any] | None:
        """An exact measured rate for (device, network, geometry, per-process batch, precision), if any."""
        want = _network_identity(spec)
        for entry in entries:
            if (entry.get("device") == device.name and _network_identity(entry["network"]) == want
                    and float(entry["batch"]) == float(batch) and entry["precision"] == key):
                return entry
        return None


def _network_identity(spec: Mapping[str, Any]) -> tuple[Any, ...]:
    return (spec["name"], int(spec.get("input_size", 0)), int(spec.get("in_channels", 0)),
            bool(spec.get("learn_sigma", False)))


def _derived_cache(tp: Throughput) -> dict[str, tuple[float, str]]:
    """The derived utilisations, computed once per table (FLOP counting of the calibration networks)."""
    if tp._derived is None:
        tp._derived = tp.derived_utilisation()
    return tp._derived


def _merge_assumptions(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, Mapping) else value
    return merged


def load_throughput(path: str | Path = THROUGHPUT_FILE, measured: str | Path | None = None) -> Throughput:
    """The throughput table, plus a benchmark file's measured device and rates (which take precedence)."""
    table = yaml.safe_load(Path(path).read_text())
    devices = {name: _device(name, entry) for name, entry in table["devices"].items()}
    tp = Throughput(devices=devices, default_device=str(table["default_device"]),
                    calibration=list(table.get("calibration", [])), checks=list(table.get("checks", [])),
                    assumptions=dict(table.get("assumptions", {})), sources=[str(path)])
    if measured is not None:
        data = json.loads(Path(measured).read_text())
        section = data.get("budget_calibration", data)
        device = _device(section["device"]["name"], section["device"])
        tp.devices[device.name] = device
        tp.measured_device = device.name
        tp.measured_source = str(measured)
        tp.measured_train = [{**e, "device": device.name} for e in section.get("train", [])]
        tp.measured_sample = [{**e, "device": device.name} for e in section.get("sample", [])]
        tp.assumptions = _merge_assumptions(tp.assumptions, section.get("assumptions", {}))
        tp.sources.append(str(measured))
    return tp


# --------------------------------------------------------------------------------------------
# Jobs of the DAG
# --------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One job of the DAG and its estimate."""

    kind: str
    key: str
    protocol: str
    run: str | None
    network: str
    step_from: int | None = None
    step_to: int | None = None
    items: int = 0
    nfe: float | None = None
    cfg: float | None = None
    gpus: int = 0
    device: str = ""
    precision: str = ""
    flops: float = 0.0
    seconds: float = 0.0
    sampling_seconds: float = 0.0
    scoring_seconds: float = 0.0
    method: str = ""
    source: str = ""

    @property
    def hours(self) -> float:
        return self.seconds / 3600

    @property
    def device_hours(self) -> float:
        return self.hours * max(self.gpus, 1)

    @property
    def gpu_hours(self) -> float:
        return self.hours * self.gpus


@dataclass
class Budget:
    """Every job once, which experiments need which job, and each cell's dependency chain."""

    scale: str
    jobs: dict[str, Job]
    needs: dict[str, set[str]]
    chains: dict[str, list[list[str]]]
    gpu_device: str
    cpu_device: str
    throughput: Throughput

    def users(self, key: str) -> list[str]:
        return [exp for exp, keys in self.needs.items() if key in keys]

    def standalone_hours(self, experiment: str) -> float:
        return sum(self.jobs[k].device_hours for k in self.needs[experiment])

    def attributed_hours(self, experiment: str) -> float:
        return sum(self.jobs[k].device_hours / len(self.users(k)) for k in self.needs[experiment])

    def critical_path_hours(self, experiment: str) -> float:
        return max((sum(self.jobs[k].hours for k in chain) for chain in self.chains[experiment]), default=0.0)

    def total_device_hours(self) -> float:
        return sum(job.device_hours for job in self.jobs.values())

    def total_gpu_hours(self) -> float:
        return sum(job.gpu_hours for job in self.jobs.values())


def _stage_gpus(protocol: Mapping[str, Any], stage: str) -> int:
    return int(protocol.get("resources", {}).get(stage, {}).get("gpu", 0))


def _train_images(scale_cfg: Mapping[str, Any], protocol: Mapping[str, Any],
                  tp: Throughput) -> tuple[int, str]:
    dataset = scale_cfg["datasets"][protocol["dataset"]]
    if dataset["kind"] == "digits":
        from pipeline.data import digits_split_indices

        return len(digits_split_indices()["train"]), "digits train split"
    counts = tp.assumptions.get("imagefolder_train_images", {})
    if protocol["dataset"] not in counts:
        raise KeyError(f"no image count for data set {protocol['dataset']!r}: add it to "
                       f"assumptions.imagefolder_train_images in {THROUGHPUT_FILE}")
    return int(counts[protocol["dataset"]]), f"{counts[protocol['dataset']]:,} training images (assumed)"


def _reference_images(scale_cfg: Mapping[str, Any], protocol: Mapping[str, Any],
                      tp: Throughput) -> tuple[int, bool]:
    """(number of reference images whose features P/R needs, whether FID statistics come precomputed)."""
    from pipeline.data import DIGITS_NUM_REFERENCE, reference_plan

    plan = reference_plan(scale_cfg, protocol["reference"])
    assumed = int(tp.assumptions.get("reference_images", {}).get("adm", 10000))
    if plan["source"] == "npz":
        return assumed, True
    if plan["num"] is not None:
        return int(plan["num"]), False
    # No count given: digits use their fixed split; an image folder is read whole (size unknown here).
    return (DIGITS_NUM_REFERENCE if plan["source"] == "digits" else assumed), False


class _Estimator:
    """Turns registry entries into estimated jobs on one GPU type (and one CPU type for CPU jobs)."""

    def __init__(self, scale_cfg: Mapping[str, Any], tp: Throughput, gpu: Device, cpu: Device):
        self.cfg, self.tp, self.gpu, self.cpu = scale_cfg, tp, gpu, cpu

    def device(self, gpus: int) -> Device:
        return self.gpu if gpus > 0 else self.cpu

    def _flop_time(self, flops: float, device: Device, key: str, processes: int) -> tuple[float, str]:
        util, source = self.tp.utilisation(device, key)
        seconds = flops / (processes * device.peak(key) * util)
        peak = device.peak(key) / 1e12
        return seconds, f"{device.name} {key} peak {peak:g} TFLOP/s x {util:.3f} ({source})"

    def train(self, job: Job, protocol: Mapping[str, Any], run: Mapping[str, Any]) -> None:
        device = self.device(job.gpus)
        processes = max(job.gpus, 1)
        key = device.precision_key(run["precision"], bool(run.get("tf32", False)))
        steps = int(job.step_to) - int(job.step_from or 0)
        batch = int(run["global_batch"])
        grad_ckpt = bool(run["network"].get("grad_checkpointing", False))
        job.items, job.device, job.precision = steps, device.name, key
        job.flops = steps * batch * train_flops_per_image(run["network"], grad_ckpt)
        measured = self.tp.find_measured(self.tp.measured_train, device, run["network"], batch / processes,
                                         key)
        if measured is not None:
            job.seconds = steps / float(measured["it_s"])
            job.method = "measured"
            job.source = f"{self.tp.measured_source}: {float(measured['it_s']):.4g} it/s"
            return
        seconds, source = self._flop_time(job.flops, device, key, processes)
        job.seconds = seconds + steps * device.step_overhead_s
        job.method = "flop-model"
        if device.step_overhead_s:
            source += f" + {device.step_overhead_s:g} s/step overhead"
        job.source = source

    def sample(self, job: Job, protocol: Mapping[str, Any], run: Mapping[str, Any],
               sampler: Mapping[str, Any], cfg: float, num: int, score: bool = True) -> None:
        """Sampling on the job's processes, then (``score``) the metrics on rank 0 (as the sample rule)."""
        device = self.device(job.gpus)
        processes = max(job.gpus, 1)
        key = device.precision_key("fp32", tf32=True)   # pipeline.sample: fp32 with TF32 on (its default)
        kind = sampler["kind"]
        if kind == "dopri5":
            nfe, nfe_source = self.tp.dopri5_nfe(float(sampler["atol"]), float(sampler["rtol"]))
        else:
            nfe = float(sampler["steps"]) * (2 if kind == "heun" else 1)
            nfe_source = f"{kind} {sampler['steps']} steps"
        forwards = nfe * (1 if float(cfg) == 1.0 else 2)
        autoencoder = self.cfg["autoencoders"][protocol["autoencoder"]]
        decode = vae_flops(int(protocol["resolution"]), "decode") if autoencoder["kind"] == "sd-vae" else 0.0
        job.items, job.nfe, job.cfg, job.device, job.precision = num, nfe, float(cfg), device.name, key
        job.flops = num * (forwards * network_forward_flops(run["network"]) + decode)
        measured = self._measured_sample(device, run["network"], key)
        if measured is not None:
            rate = float(measured["sample_forwards_per_s"])
            job.sampling_seconds = num * forwards / rate
            job.method = "measured"
            source = f"sampling: {self.tp.measured_source}: {rate:.4g} sample-forwards/s; {nfe_source}"
        else:
            job.sampling_seconds, flop_source = self._flop_time(job.flops, device, key, processes)
            job.method = "flop-model"
            source = f"sampling: {flop_source}; {nfe_source}" + ("; + SD-VAE decode" if decode else "")
        if score:
            job.scoring_seconds, scoring_flops, scoring_source = self._scoring(protocol, num, device)
            job.flops += scoring_flops
            source += f" | scoring on rank 0: {scoring_source}"
        job.seconds = job.sampling_seconds + job.scoring_seconds
        job.source = source

    def _measured_sample(self, device: Device, spec: Mapping[str, Any], key: str) -> dict[str, Any] | None:
        want = _network_identity(spec)
        for entry in self.tp.measured_sample:
            if entry.get("device") == device.name and _network_identity(entry["network"]) == want \
                    and entry["precision"] == key:
                return entry
        return None

    def _scoring(self, protocol: Mapping[str, Any], num: int, device: Device) -> tuple[float, float, str]:
        """(seconds, FLOPs, source) of scoring ``num`` samples on one process: feature extraction of the
        samples and reference images, P/R distances (fp32: eval disables TF32), host statistics and sqrtm."""
        key = "fp32"
        ref_images, precomputed = _reference_images(self.cfg, protocol, self.tp)
        if self.cfg["extractor"]["kind"] == "inception":
            per_image, dims = inception_flops(int(protocol["resolution"])), INCEPTION_DIMS
        else:
            from eval.digits_classifier import DigitsClassifierConfig

            config = DigitsClassifierConfig()
            per_image = digits_classifier_flops()
            side = config.image_size // 2
            dims = {"pool": config.hidden, "spatial": side * side * config.spatial_channels}
        flops = (num + ref_images) * per_image + precision_recall_flops(num, ref_images, dims["pool"])
        seconds, source = self._flop_time(flops, device, key, 1)
        host = self.tp.assumptions.get("metrics_host", {})
        fd_2048 = float(host.get("frechet_seconds_2048", 0.0))
        stats_2048 = float(host.get("stats_seconds_per_10k_2048", 0.0))
        host_s = 0.0
        for dim in dims.values():
            host_s += fd_2048 * (dim / 2048) ** 3
            rows = num + (0 if precomputed else ref_images)
            host_s += stats_2048 * (rows / 1e4) * (dim / 2048) ** 2
        return seconds + host_s, flops, (f"{source}; features of {num:,} samples + {ref_images:,} reference "
                                         f"images, P/R distances; + {host_s:.0f} s host statistics/sqrtm")

    def latents(self, job: Job, protocol: Mapping[str, Any]) -> None:
        device = self.device(job.gpus)
        processes = max(job.gpus, 1)
        images, image_source = _train_images(self.cfg, protocol, self.tp)
        items = images * (2 if protocol["flip"] else 1)
        autoencoder = self.cfg["autoencoders"][protocol["autoencoder"]]
        job.items, job.device = items, device.name
        if autoencoder["kind"] != "sd-vae":
            rate = float(self.tp.assumptions.get("identity_latents_images_per_s", 5000.0))
            job.precision, job.seconds, job.method = "fp32", items / rate, "measured-rate"
            job.source = f"{image_source}; identity autoencoder at {rate:g} images/s"
            return
        key = device.precision_key("fp32", tf32=True)   # float32 VAE; cuDNN convolutions use TF32 by default
        job.precision = key
        job.flops = items * vae_flops(int(protocol["resolution"]), "encode")
        job.seconds, source = self._flop_time(job.flops, device, key, processes)
        job.method = "flop-model"
        job.source = f"{source}; {image_source}" + (" x 2 (flipped copies)" if protocol["flip"] else "")


def estimate_budget(registry: Any, grid: Mapping[str, Any] | None, scale_cfg: Mapping[str, Any],
                    throughput: Throughput, gpu: str | None = None, cpu: str | None = None) -> Budget:
    """Estimate every job the registry's figures and tables need (and the sample grids, if ``grid`` is given).

    ``gpu``: device name for jobs that ask for GPUs (default: a measured GPU, else the table's default);
    ``cpu``: device for CPU jobs (default: a measured CPU, else ``cpu``).
    """
    measured = throughput.devices.get(throughput.measured_device or "")
    gpu_name = gpu or (measured.name if measured is not None and measured.kind == "gpu"
                       else throughput.default_device)
    cpu_name = cpu or (measured.name if measured is not None and measured.kind == "cpu" else "cpu")
    for name in (gpu_name, cpu_name):
        if name not in throughput.devices:
            raise KeyError(f"unknown device {name!r}; known: {sorted(throughput.devices)}")
    est = _Estimator(scale_cfg, throughput, throughput.devices[gpu_name], throughput.devices[cpu_name])
    jobs: dict[str, Job] = {}
    needs: dict[str, set[str]] = {}
    chains: dict[str, list[list[str]]] = {}

    def latents_job(run_id: str) -> str:
        run = registry.runs[run_id]
        pname = registry.run_protocol[run_id]
        key = f"{run['latents']}/index.json"
        if key not in jobs:
            protocol = registry.protocols[pname]
            job = Job("latents", key, pname, None, protocol["autoencoder"],
                      gpus=_stage_gpus(protocol, "latents"))
            est.latents(job, protocol)
            jobs[key] = job
        return key

    def segment_jobs(run_id: str, step: int) -> list[str]:
        run = registry.runs[run_id]
        pname = registry.run_protocol[run_id]
        protocol = registry.protocols[pname]
        keys = []
        for stop in registry.milestones[run_id]:
            if stop > step:
                break
            key = f"work/runs/{run_id}/ckpt/step{stop}.pt"
            if key not in jobs:
                job = Job("train", key, pname, run_id, run["network"]["name"],
                          step_from=registry.previous_milestone(run_id, stop) or 0, step_to=stop,
                          gpus=_stage_gpus(protocol, "train"))
                est.train(job, protocol, run)
                jobs[key] = job
            keys.append(key)
        return keys

    def sample_job(key: str, run_id: str, step: int, sampler: Mapping[str, Any], cfg: float, num: int,
                   score: bool = True) -> str:
        if key not in jobs:
            run = registry.runs[run_id]
            pname = registry.run_protocol[run_id]
            protocol = registry.protocols[pname]
            job = Job("sample", key, pname, run_id, run["network"]["name"], step_to=step,
                      gpus=_stage_gpus(protocol, "sample"))
            est.sample(job, protocol, run, sampler, cfg, num, score)
            jobs[key] = job
        return key

    for experiment, cells in registry.cells.items():
        if not cells:
            continue
        needs[experiment], chains[experiment] = set(), []
        for cell in cells:
            sample_key = sample_job(cell.samples_path, cell.run_id, cell.step, cell.sampler, cell.cfg,
                                    cell.num_samples)
            chain = [latents_job(cell.run_id), *segment_jobs(cell.run_id, cell.step), sample_key]
            needs[experiment].update(chain)
            chains[experiment].append(chain)
    if grid is not None:
        # The grids rule (paper_figures/fig8.png); costed with the protocol's sample-stage resources.
        run_id, step = grid["run_id"], int(grid["step"])
        num = len(grid["classes"]) * int(grid["per_class"])
        chain = [latents_job(run_id), *segment_jobs(run_id, step),
                 sample_job(GRID_TARGET, run_id, step, grid["sampler"], float(grid["cfg"]), num, score=False)]
        needs[GRID_EXPERIMENT] = set(chain)
        chains[GRID_EXPERIMENT] = [chain]
    return Budget(scale=str(scale_cfg.get("scale_name", "?")), jobs=jobs, needs=needs, chains=chains,
                  gpu_device=gpu_name, cpu_device=cpu_name, throughput=throughput)


# --------------------------------------------------------------------------------------------
# Rows and files
# --------------------------------------------------------------------------------------------


def budget_rows(budget: Budget) -> list[dict[str, Any]]:
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
            "gpus": job.gpus, "tflop": job.flops / 1e12, "sampling_hours": job.sampling_seconds / 3600,
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


def write_budget_csv(budget: Budget, path: str | Path, config: Mapping[str, Any] | None = None) -> list[dict]:
    """Write results/budget.csv (first line: provenance) and return its rows."""
    from pipeline.io import atomic_write_csv, provenance

    rows = budget_rows(budget)
    utilisation = {k: v[0] for k, v in _derived_cache(budget.throughput).items()}
    settings = {"scale": budget.scale, "gpu_device": budget.gpu_device, "cpu_device": budget.cpu_device,
                "throughput": budget.throughput.sources, "derived_utilisation": utilisation,
                **(dict(config) if config else {})}
    prov = provenance(config=settings, seed=None)
    atomic_write_csv(path, rows, COLUMNS, prov)
    return rows


def summary_table(budget: Budget) -> str:
    """A short plain-text table of the totals (printed by the CLI)."""
    lines = [f"budget at scale {budget.scale!r}: GPU jobs on {budget.gpu_device}, CPU jobs on "
             f"{budget.cpu_device}",
             f"{'target':<10} {'standalone':>12} {'attributed':>12} {'critical path':>14}  "
             f"(device-hours; hours)"]
    for experiment in budget.needs:
        lines.append(f"{experiment:<10} {budget.standalone_hours(experiment):>12,.1f} "
                     f"{budget.attributed_hours(experiment):>12,.1f} "
                     f"{budget.critical_path_hours(experiment):>14,.1f}")
    lines.append(f"{'total':<10} {budget.total_device_hours():>12,.1f} "
                 f"{'(unique jobs)':>12} {'':>14}  GPU-hours {budget.total_gpu_hours():,.1f}")
    for kind in JOB_KINDS:
        members = [j for j in budget.jobs.values() if j.kind == kind]
        hours = sum(j.device_hours for j in members)
        lines.append(f"  {kind:<8} {len(members):>5} jobs {hours:>12,.1f} device-h")
    return "\n".join(lines)


def calibration_table(tp: Throughput) -> str:
    """The calibration points, derived utilisations and the checks as plain text (``--explain``)."""
    lines = ["calibration (published DiT-XL/2 training throughputs):"]
    for p in tp.calibration_points():
        lines.append(f"  {p['id']:<30} {p['precision']:<5} {p['gpus']}x {p['device']}: {p['it_s']:g} it/s x "
                     f"{p['step_tflop']:.1f} TFLOP/step = {p['achieved_tflops_per_gpu']:.1f} TFLOP/s per "
                     f"GPU = "
                     f"{p['utilisation']:.3f} of {p['peak_tflops']:g}")
    for key, (value, source) in sorted(_derived_cache(tp).items()):
        lines.append(f"  utilisation[{key}] = {value:.3f} ({source})")
    for c in tp.check_predictions():
        lines.append(f"check {c['id']}: predicted {c['predicted_hours']:.1f} h, reported "
                     f"{c['reported_hours']:g} h "
                     f"(ratio {c['ratio']:.2f})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def load_scale_config(scale: str, extra: Sequence[str | Path] = ()) -> dict[str, Any]:
    """config/defaults.yaml + config/scales/<scale>.yaml (+ extra YAML files), merged like the Snakefile."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "config" / "defaults.yaml").read_text()) or {}
    config["scale"] = scale
    for path in extra:
        config.update(yaml.safe_load(Path(path).read_text()) or {})
    scale_file = ROOT / "config" / "scales" / f"{scale}.yaml"
    for key, value in (yaml.safe_load(scale_file.read_text()) or {}).items():
        config.setdefault(key, value)
    return config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.budget",
        description="Estimated GPU-hours per job, figure and table (results/budget.csv).")
    parser.add_argument("--scale", default="paper", help="mini, smoke or paper (default: paper)")
    parser.add_argument("--config-json", help="the whole merged config as JSON (the Snakemake rule passes "
                                              "its config; replaces --scale and --config-file)")
    parser.add_argument("--config-file", action="append", default=[],
                        help="extra YAML merged over the defaults")
    parser.add_argument("--gpu", help="GPU type for GPU jobs (a device of config/throughput.yaml)")
    parser.add_argument("--cpu", help="device for CPU jobs (default: a measured CPU, else cpu)")
    parser.add_argument("--throughput",
                        help="benchmark file (benchmarks/results/<host>.json) with measured rates")
    parser.add_argument("--table", default=str(THROUGHPUT_FILE),
                        help="throughput table (config/throughput.yaml)")
    parser.add_argument("--out", default="results/budget.csv")
    parser.add_argument("--explain", action="store_true", help="print the calibration and checks")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from pipeline.registry import load_registry

    config = json.loads(args.config_json) if args.config_json else load_scale_config(args.scale,
                                                                                        args.config_file)
    registry, grid = load_registry(config)
    tp = load_throughput(args.table, args.throughput)
    budget = estimate_budget(registry, grid, config, tp, gpu=args.gpu, cpu=args.cpu)
    write_budget_csv(budget, args.out)
    if args.explain:
        print(calibration_table(tp))
    print(summary_table(budget))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
