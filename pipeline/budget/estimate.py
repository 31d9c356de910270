"""The jobs of the DAG and their estimates: every latents folder, training segment and sample set that the
registry's figures and tables (and the sample grids) need, each estimated once.

Jobs are identified by their output path, exactly as the DAG names them. A ``sample`` job samples on the
job's processes, then scores FID/sFID/IS/P/R on rank 0 (as the ``sample`` rule); the grid is not scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.budget.flops import (
    digits_classifier_flops,
    digits_feature_dims,
    inception_feature_dims,
    inception_flops,
    network_forward_flops,
    precision_recall_flops,
    train_flops_per_image,
    vae_flops,
)
from pipeline.budget.step_model import StepSetting, step_time, tokens_per_image
from pipeline.budget.throughput import THROUGHPUT_FILE, Device, Throughput
from pipeline.paths import ScalePaths

JOB_KINDS = ("latents", "train", "sample")
GRID_EXPERIMENT = "grids"
GRID_TARGET = "paper_figures/fig8.png"      # the grids rule's output (Figs. 8-10), in the scale's folder


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
    nodes: int = 1
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
        """Wall-clock hours."""
        return self.seconds / 3600

    @property
    def device_hours(self) -> float:
        """Hours × devices (a CPU job counts as one device)."""
        return self.hours * max(self.gpus * self.nodes, 1)

    @property
    def gpu_hours(self) -> float:
        """Hours × GPUs (on every node)."""
        return self.hours * self.gpus * self.nodes


@dataclass
class BudgetEstimate:
    """Every job once, which experiments need which job, and each cell's dependency chain."""

    scale: str
    jobs: dict[str, Job]
    needs: dict[str, set[str]]
    chains: dict[str, list[list[str]]]
    gpu_device: str
    cpu_device: str
    throughput: Throughput

    def users(self, key: str) -> list[str]:
        """The experiments that need job ``key``, in registry order."""
        return [exp for exp, keys in self.needs.items() if key in keys]

    def attributed_hours(self, experiment: str) -> float:
        """Device-hours of the experiment's jobs, each shared job split equally among its users."""
        return sum(self.jobs[k].device_hours / len(self.users(k)) for k in self.needs[experiment])

    def critical_path_hours(self, experiment: str) -> float:
        """Wall hours of the experiment's longest latents → segments → sample chain."""
        return max((sum(self.jobs[k].hours for k in chain) for chain in self.chains[experiment]), default=0.0)

    def total_device_hours(self) -> float:
        """Device-hours of every unique job."""
        return sum(job.device_hours for job in self.jobs.values())

    def total_gpu_hours(self) -> float:
        """GPU-hours of every unique job (CPU jobs count 0)."""
        return sum(job.gpu_hours for job in self.jobs.values())


def _stage_gpus(protocol: Mapping[str, Any], stage: str) -> int:
    """GPUs per node a protocol's stage asks for (0: a CPU job)."""
    return int(protocol.get("resources", {}).get(stage, {}).get("gpu", 0))


def _stage_nodes(protocol: Mapping[str, Any], stage: str) -> int:
    """Nodes a protocol's stage runs on."""
    return max(int(protocol.get("resources", {}).get(stage, {}).get("nodes", 1)), 1)


def _train_images(scale_cfg: Mapping[str, Any], protocol: Mapping[str, Any],
                  tp: Throughput) -> tuple[int, str]:
    """(training images of the protocol's data set, where the count comes from)."""
    dataset = scale_cfg["datasets"][protocol["dataset"]]
    if dataset["kind"] == "digits":
        from pipeline.datasets import digits_split_indices

        return len(digits_split_indices()["train"]), "digits train split"
    counts = tp.assumptions.get("imagefolder_train_images", {})
    if protocol["dataset"] not in counts:
        raise KeyError(f"no image count for data set {protocol['dataset']!r}: add it to "
                       f"assumptions.imagefolder_train_images in {THROUGHPUT_FILE}")
    return int(counts[protocol["dataset"]]), f"{counts[protocol['dataset']]:,} training images (assumed)"


def _reference_images(scale_cfg: Mapping[str, Any], protocol: Mapping[str, Any],
                      tp: Throughput) -> tuple[int, bool]:
    """(number of reference images whose features P/R needs, whether FID statistics come precomputed)."""
    from pipeline.data_config import reference_plan
    from pipeline.datasets import DIGITS_NUM_REFERENCE

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

    def __init__(self, scale_cfg: Mapping[str, Any], tp: Throughput, gpu: Device, cpu: Device) -> None:
        self.cfg, self.tp, self.gpu, self.cpu = scale_cfg, tp, gpu, cpu

    def device(self, gpus: int) -> Device:
        """The GPU type for jobs that ask for GPUs, else the CPU."""
        return self.gpu if gpus > 0 else self.cpu

    def _flop_time(self, flops: float, device: Device, key: str, processes: int,
                   tokens_per_gpu: float | None = None) -> tuple[float, str]:
        """(seconds, source) of ``flops`` spread over ``processes`` devices at peak × utilisation
        (``tokens_per_gpu``: a transformer's tokens per call and device; ``None``: convolutions)."""
        util, source = self.tp.utilisation(device, key, tokens_per_gpu)
        seconds = flops / (processes * device.peak(key) * util)
        peak = device.peak(key) / 1e12
        return seconds, f"{device.name} {key} peak {peak:g} TFLOP/s x {util:.3f} ({source})"

    def train(self, job: Job, protocol: Mapping[str, Any], run: Mapping[str, Any]) -> None:
        """A training segment: a measured rate for this configuration if any, else the FLOP model."""
        device = self.device(job.gpus)
        processes = max(job.gpus * job.nodes, 1)
        key = device.precision_key(run["precision"], bool(run.get("tf32", False)))
        steps = int(job.step_to) - int(job.step_from or 0)
        batch = int(run["global_batch"])
        grad_ckpt = bool(run["network"].get("grad_checkpointing", False))
        job.items, job.device, job.precision = steps, device.name, key
        job.flops = steps * batch * train_flops_per_image(run["network"], grad_ckpt)
        measured = self.tp.find_measured(self.tp.measured_train, device, run["network"], key,
                                         batch=batch / processes)
        if measured is not None:
            job.seconds = steps / float(measured["it_s"])
            job.method = "measured"
            job.source = f"{self.tp.measured_source}: {float(measured['it_s']):.4g} it/s"
            return
        if device.kind != "gpu":
            seconds, source = self._flop_time(job.flops, device, key, processes)
            job.seconds = seconds + steps * device.step_overhead_s
            job.method = "flop-model"
            if device.step_overhead_s:
                source += f" + {device.step_overhead_s:g} s/step overhead"
            job.source = source
            return
        setting = StepSetting(network=run["network"], global_batch=batch, gpus_per_node=job.gpus,
                              nodes=job.nodes, key=key, grad_checkpointing=grad_ckpt,
                              grad_clip=float(run.get("optimizer", {}).get("grad_clip") or 0) > 0)
        measured_util = device.utilisation.get(key)
        parts = step_time(setting, device, self.tp.step_model, measured_util)
        job.seconds = steps * parts["total"]
        job.method = "step-model"
        where = f"utilisation measured on {device.name}" if measured_util is not None else "fitted step model"
        job.source = (f"{device.name} {key} peak {device.peak(key) / 1e12:g} TFLOP/s x {parts['utilisation']:.3f} "
                      f"({where}); per step {parts['total'] * 1e3:.0f} ms = compute "
                      f"{parts['compute'] * 1e3:.0f} + all-reduce {parts['allreduce'] * 1e3:.1f} + optimizer/EMA "
                      f"{parts['optimizer'] * 1e3:.1f} ms")

    def sample(self, job: Job, protocol: Mapping[str, Any], run: Mapping[str, Any],
               sampler: Mapping[str, Any], cfg: float, num: int, score: bool = True) -> None:
        """Sampling on the job's processes, then (``score``) the metrics on rank 0 (as the sample rule)."""
        device = self.device(job.gpus)
        processes = max(job.gpus * job.nodes, 1)
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
        network_flops = num * forwards * network_forward_flops(run["network"])
        job.flops = network_flops + num * decode
        measured = self.tp.find_measured(self.tp.measured_sample, device, run["network"], key)
        if measured is not None:
            rate = float(measured["sample_forwards_per_s"])
            job.sampling_seconds = num * forwards / rate
            job.method = "measured"
            source = f"sampling: {self.tp.measured_source}: {rate:.4g} sample-forwards/s; {nfe_source}"
        else:
            tokens = tokens_per_image(run["network"])
            rows = int(protocol.get("sample_micro_batch", 32))   # rows per network call, guidance included
            network_s, flop_source = self._flop_time(network_flops, device, key, processes,
                                                     None if tokens is None else rows * tokens)
            decode_s = self._flop_time(num * decode, device, key, processes)[0] if decode else 0.0
            job.sampling_seconds = network_s + decode_s
            job.method = "flop-model"
            source = f"sampling: {flop_source}; {nfe_source}" + (
                f"; + SD-VAE decode {decode_s / 3600:.2f} h (convolutions)" if decode else "")
        if score:
            job.scoring_seconds, scoring_flops, scoring_source = self._scoring(protocol, num, device)
            job.flops += scoring_flops
            source += f" | scoring on rank 0: {scoring_source}"
        job.seconds = job.sampling_seconds + job.scoring_seconds
        job.source = source

    def _scoring(self, protocol: Mapping[str, Any], num: int, device: Device) -> tuple[float, float, str]:
        """(seconds, FLOPs, source) of scoring ``num`` samples on one process: feature extraction of the
        samples and reference images, P/R distances (fp32: eval disables TF32), host statistics and sqrtm."""
        key = "fp32"
        ref_images, precomputed = _reference_images(self.cfg, protocol, self.tp)
        if self.cfg["extractor"]["kind"] == "inception":
            resolution = int(protocol["resolution"])
            per_image, dims = inception_flops(resolution), inception_feature_dims(resolution)
        else:
            per_image, dims = digits_classifier_flops(), digits_feature_dims()
        features = (num + ref_images) * per_image
        distances = precision_recall_flops(num, ref_images, dims["pool"])
        flops = features + distances
        seconds, source = self._flop_time(features, device, key, 1)             # convolutions
        seconds += self._flop_time(distances, device, key, 1, float("inf"))[0]   # matrix products
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
        """Encoding a latent folder: SD-VAE encoder FLOPs, or the identity autoencoder's measured rate."""
        device = self.device(job.gpus)
        processes = max(job.gpus * job.nodes, 1)
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
                    throughput: Throughput, gpu: str | None = None, cpu: str | None = None) -> BudgetEstimate:
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
    paths = ScalePaths(registry.scale)
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
                      gpus=_stage_gpus(protocol, "latents"), nodes=_stage_nodes(protocol, "latents"))
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
            key = paths("checkpoint", run=run_id, step=stop)
            if key not in jobs:
                job = Job("train", key, pname, run_id, run["network"]["name"],
                          step_from=registry.previous_milestone(run_id, stop) or 0, step_to=stop,
                          gpus=_stage_gpus(protocol, "train"), nodes=_stage_nodes(protocol, "train"))
                est.train(job, protocol, run)
                jobs[key] = job
            keys.append(key)
        return keys

    def sample_job(key: str, run_id: str, step: int, sampler: Mapping[str, Any], cfg: float, num: int,
                   score: bool = True, one_process: bool = False) -> str:
        if key not in jobs:
            run = registry.runs[run_id]
            pname = registry.run_protocol[run_id]
            protocol = registry.protocols[pname]
            gpus = _stage_gpus(protocol, "sample")
            job = Job("sample", key, pname, run_id, run["network"]["name"], step_to=step,
                      gpus=min(gpus, 1) if one_process else gpus,
                      nodes=1 if one_process else _stage_nodes(protocol, "sample"))
            est.sample(job, protocol, run, sampler, cfg, num, score)
            jobs[key] = job
        return key

    for experiment, cells in registry.cells.items():
        if not cells or registry.experiments.get(experiment, {}).get("alternative"):
            continue  # alternative readings are targets of their own, outside the default DAG and its budget
        needs[experiment], chains[experiment] = set(), []
        for cell in cells:
            sample_key = sample_job(cell.samples_path, cell.run_id, cell.step, cell.sampler, cell.cfg,
                                    cell.num_samples)
            # A published checkpoint (calibration) is imported, not trained: its chain is its sample set only.
            chain = [latents_job(cell.run_id), *segment_jobs(cell.run_id, cell.step), sample_key] \
                if registry.is_trained(cell.run_id) else [sample_key]
            needs[experiment].update(chain)
            chains[experiment].append(chain)
    if grid is not None:
        # The grids rule (paper_figures/fig8.png): one process, so at most one of the sample stage's GPUs.
        run_id, step = grid["run_id"], int(grid["step"])
        num = len(grid["classes"]) * int(grid["per_class"])
        chain = [latents_job(run_id), *segment_jobs(run_id, step),
                 sample_job(paths.at(GRID_TARGET), run_id, step, grid["sampler"], float(grid["cfg"]), num, score=False,
                            one_process=True)]
        needs[GRID_EXPERIMENT] = set(chain)
        chains[GRID_EXPERIMENT] = [chain]
    return BudgetEstimate(scale=str(scale_cfg.get("scale_name", "?")), jobs=jobs, needs=needs, chains=chains,
                  gpu_device=gpu_name, cpu_device=cpu_name, throughput=throughput)
