"""Sample a checkpoint into an ADM npz (``arr_0`` uint8 NHWC, ``arr_1`` int64 labels); resumable, multi-GPU.

Determinism rule: **sample ``i`` of a sample set depends only on (checkpoint, sampler settings, seed,
micro-batch, device type, TF32), never on the number of processes, ``--batch-size`` or the set's size.**

* Randomness per sample. Sample ``i`` draws its label ``randint(num_classes)`` from a CPU generator seeded
  ``derive_seed(seed, "label", i)``, its initial noise from ``derive_seed(seed, "noise", i)`` and, for DDPM,
  the fresh noise of every ancestral step from its own generator ``derive_seed(seed, "steps", i)``,
  advanced one draw per step. Labels are uniform and come out in random class order (IS splits need that).
* Fixed-shape arithmetic. Batched matrix products are not row-independent: on CPU (MKL) a row's output
  changes in the last bits with the batch size (measured: batches below 16 rows differ from larger ones;
  cuBLAS also picks kernels by shape). For a *fixed* batch shape they are row-independent and
  position-independent (measured for DiT-T/S/Mini, 1 and 2 threads). So every network and decoder call
  runs in micro-batches of exactly ``micro_batch`` rows (:class:`FixedBatchNetwork`; the last one padded
  with copies of its first row, whose outputs are dropped). The micro-batch size is part of a sample
  set's identity (recorded in the sidecar); ``--batch-size`` only decides how many samples move through
  the sampler loop together (with guidance a step feeds ``2·batch`` rows, so a batch of a multiple of
  ``micro_batch / 2`` wastes no padding). Each run checks the position assumption on its device once
  (:meth:`SamplingSession.rows_are_position_invariant`, sidecar ``network_rows_position_invariant``).
  Outside the network only elementwise operations and per-row reductions touch a sample; torch's
  vectorised ``pow`` differs from its scalar tail loop in the last bit, so the dopri5 controller takes
  its powers with ``math.pow``.
* Adaptive dopri5 without batch coupling. torchdiffeq picks one step size for a whole batch, which would
  make a sample depend on its batch mates. :func:`dopri5_per_sample` runs the same Dormand–Prince 5(4)
  pair with the usual controller vectorised over the batch but with a step size, error norm and
  accept/reject decision *per sample*; each sample's trajectory is the one it would have alone, and its
  NFE is its own (sidecar: NFE mean/min/max). The last step is clipped to land on ``t1`` exactly.
* Work split. Sample ``i`` belongs to shard ``i // shard_size``; rank ``r`` of ``W`` computes the shards
  ``j`` with ``j % W == r`` and writes ``shard-XXXXX.npz`` atomically. A rerun skips complete shards
  written with the same settings (any world size, batch size or sample count); rank 0 streams the
  shards in index order into the final npz and writes the JSON sidecar.

Quantisation: ``uint8 = clamp(127.5·x + 128, 0, 255)`` truncated, as DiT/SiT ``sample_ddp.py`` do; this
is round-half-up of ``(x + 1)·127.5``, the exact inverse of the harness's ``u/127.5 − 1``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from models.dopri5 import dopri5_per_sample, guided_velocity
from models.samplers import SAMPLERS, SamplerConfig, sample
from models.schedules import Schedule
from pipeline.autoencoders import Autoencoder, build_autoencoder
from pipeline.checkpoints import load_network
from pipeline.distributed import join_processes
from pipeline.io import atomic_write, atomic_write_json, config_hash, derive_seed, provenance
from pipeline.runconfig import build_schedule, input_multiplier

Tensor = torch.Tensor
FORMAT = "fasterdit-samples-v1"
DEFAULT_MICRO_BATCH = 32
DEFAULT_SHARD_SIZE = 500
QUANTISATION = ("uint8 = clamp(127.5*x + 128, 0, 255) truncated (DiT/SiT sample_ddp; "
                "round-half-up of (x+1)*127.5)")


# --------------------------------------------------------------------------------------------
# Per-sample randomness
# --------------------------------------------------------------------------------------------


def _generator(seed: int, stream: str, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, stream, int(index)))


def sample_labels(seed: int, indices: Iterable[int], num_classes: int) -> Tensor:
    """Label of each sample index: ``randint(num_classes)`` from its own generator ``(seed, "label", i)``."""
    return torch.tensor([int(torch.randint(num_classes, (1,), generator=_generator(seed, "label", i)))
                         for i in indices], dtype=torch.int64)


def sample_noise(seed: int, indices: Iterable[int], shape: Sequence[int]) -> Tensor:
    """Initial noise ``(n, *shape)`` float32 on CPU; row ``i`` from the generator ``(seed, "noise", i)``."""
    return torch.stack([torch.randn(tuple(shape), generator=_generator(seed, "noise", i)) for i in indices])


class PerSampleStepNoise:
    """DDPM step noise: each call stacks one fresh draw per sample from that sample's own generator.

    ``models.samplers.ddpm_sample`` calls it once per ancestral step, so sample ``i`` receives the
    same sequence of draws whatever batch it is in.
    """

    def __init__(self, seed: int, indices: Iterable[int], shape: Sequence[int], device: torch.device):
        self.generators = [_generator(seed, "steps", i) for i in indices]
        self.shape, self.device = tuple(shape), device

    def __call__(self, _step: int) -> Tensor:
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators]).to(self.device)


# --------------------------------------------------------------------------------------------
# Fixed-shape evaluation
# --------------------------------------------------------------------------------------------


def _pad_rows(tensor: Tensor, rows: int) -> Tensor:
    if rows == 0:
        return tensor
    return torch.cat([tensor, tensor[:1].expand(rows, *tensor.shape[1:])])


def in_fixed_batches(fn: Callable[..., Tensor], tensors: Sequence[Tensor], size: int) -> Tensor:
    """``fn(*tensors)`` computed in calls of exactly ``size`` rows (the last padded, its padding dropped)."""
    n = tensors[0].shape[0]
    outputs = []
    for start in range(0, n, size):
        parts = [t[start:start + size] for t in tensors]
        rows = parts[0].shape[0]
        out = fn(*(_pad_rows(p, size - rows) for p in parts))
        outputs.append(out[:rows])
    return torch.cat(outputs) if outputs else fn(*tensors)


class FixedBatchNetwork(nn.Module):
    """A network that always runs on exactly ``micro_batch`` rows, so a row's output does not depend on
    how many other rows share its call (see the module docstring). Same interface and attributes."""

    def __init__(self, net: nn.Module, micro_batch: int):
        super().__init__()
        if micro_batch < 1:
            raise ValueError("micro_batch must be >= 1")
        self.net, self.micro_batch = net, int(micro_batch)
        for name in ("in_channels", "out_channels", "learn_sigma", "num_classes", "input_size"):
            setattr(self, name, getattr(net, name))

    def forward(self, x: Tensor, t_model: Tensor, y: Tensor) -> Tensor:
        return in_fixed_batches(self.net, (x, t_model, y), self.micro_batch)


# --------------------------------------------------------------------------------------------
# One batch: labels + noise -> model samples -> decoded uint8 images
# --------------------------------------------------------------------------------------------


def to_uint8(images: Tensor) -> Tensor:
    """Images in [-1, 1] ``(B, C, H, W)`` → uint8 NHWC with DiT's ``clamp(127.5·x + 128, 0, 255)``."""
    return torch.clamp(127.5 * images.float() + 128.0, 0, 255).to(torch.uint8).permute(0, 2, 3, 1)


@dataclass
class Batch:
    """Samples of some indices: uint8 NHWC images, int64 labels, per-sample NFE (numpy, CPU)."""

    images: np.ndarray
    labels: np.ndarray
    nfe: np.ndarray


@dataclass
class SamplingSession:
    """Everything needed to turn sample indices into images; built once per process."""

    net: nn.Module
    schedule: Schedule
    prediction: str
    sampler: SamplerConfig
    autoencoder: Autoencoder
    multiplier: float
    seed: int
    num_classes: int
    micro_batch: int
    device: torch.device
    wrapped: FixedBatchNetwork = field(init=False)

    def __post_init__(self) -> None:
        self.wrapped = FixedBatchNetwork(self.net, self.micro_batch)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.net.in_channels, self.net.input_size, self.net.input_size)

    @torch.no_grad()
    def sample_model_space(
        self, indices: Sequence[int], labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Sample the given indices in model space: ``(x, labels, nfe per sample)`` (labels drawn per index
        unless given)."""
        indices = [int(i) for i in indices]
        y = sample_labels(self.seed, indices, self.num_classes) if labels is None else labels.to(torch.int64)
        noise = sample_noise(self.seed, indices, self.latent_shape).to(self.device)
        y_dev = y.to(self.device)
        if self.sampler.kind == "dopri5":
            t0, t1 = self.schedule.t_range(self.prediction)
            velocity = guided_velocity(self.wrapped, self.schedule, self.prediction, y_dev, self.sampler)
            x, nfe = dopri5_per_sample(velocity, noise, t0, t1, self.sampler.atol, self.sampler.rtol)
            return x, y, nfe.cpu()
        steps = PerSampleStepNoise(self.seed, indices, self.latent_shape, self.device)
        x, count = sample(self.wrapped, self.schedule, self.prediction, noise, y_dev, self.sampler, steps)
        return x, y, torch.full((len(indices),), count, dtype=torch.int64)

    @torch.no_grad()
    def generate(self, indices: Sequence[int], labels: Tensor | None = None) -> Batch:
        """Sample the given indices and decode them to uint8 NHWC images."""
        x, y, nfe = self.sample_model_space(indices, labels)
        return Batch(to_uint8(self.decode(x)).cpu().numpy(), y.numpy(), nfe.numpy())

    @torch.no_grad()
    def rows_are_position_invariant(self) -> bool:
        """Self-check of the assumption behind batch-size invariance: in a call of ``micro_batch`` rows,
        a row's output does not depend on its position (rows rolled by one give rolled outputs)."""
        g = torch.Generator().manual_seed(0)
        m = self.micro_batch
        x = torch.randn((m, *self.latent_shape), generator=g).to(self.device)
        t = self.schedule.model_time(torch.rand(m, generator=g, dtype=torch.float64)).float().to(self.device)
        y = torch.randint(self.net.num_classes, (m,), generator=g).to(self.device)
        out = self.net(x, t, y)
        rolled = self.net(x.roll(1, 0), t.roll(1, 0), y.roll(1, 0))
        return bool(torch.equal(rolled, out.roll(1, 0)))

    def decode(self, x_model: Tensor) -> Tensor:
        """Model space → raw latents (÷ input multiplier) → autoencoder → images in [-1, 1]."""
        latents = x_model / self.multiplier
        return in_fixed_batches(self.autoencoder.decode, (latents,), self.micro_batch)


def resolve_autoencoder_spec(
    autoencoder: str | Mapping[str, Any] | None, latents_index: str | os.PathLike | None,
    run: Mapping[str, Any], channels: int,
) -> dict[str, Any]:
    """Which autoencoder decodes the samples: an explicit spec or name, else the one recorded in the
    latents' ``index.json`` (``--latents-index`` or the run config's ``latents`` folder)."""
    if isinstance(autoencoder, Mapping):
        spec = dict(autoencoder)
    elif isinstance(autoencoder, str) and autoencoder.strip().startswith("{"):
        spec = json.loads(autoencoder)
    elif isinstance(autoencoder, str):
        spec = {"name": autoencoder}
    else:
        index_path = Path(latents_index) if latents_index else None
        if index_path is None and run.get("latents"):
            index_path = Path(run["latents"]) / "index.json"
        if index_path is None or not index_path.is_file():
            raise FileNotFoundError("no autoencoder given: pass --autoencoder or --latents-index "
                                    f"(looked for {index_path})")
        spec = dict(json.loads(index_path.read_text())["autoencoder"]["spec"])
    if spec.get("name") == "identity":
        spec.setdefault("channels", channels)
    return spec


def build_session(
    ckpt: str | os.PathLike, sampler: SamplerConfig, seed: int, *, use_ema: bool = True,
    autoencoder: str | Mapping[str, Any] | None = None, latents_index: str | os.PathLike | None = None,
    num_classes: int | None = None, micro_batch: int = DEFAULT_MICRO_BATCH,
    device: str | torch.device = "cpu",
) -> tuple[SamplingSession, dict[str, Any]]:
    """Load the checkpoint and autoencoder; returns the session and a JSON-ready description of it."""
    device = torch.device(device)
    net, run, checkpoint = load_network(ckpt, use_ema=use_ema, device=device)
    classes = int(num_classes if num_classes is not None else net.num_classes)
    if not 1 <= classes <= net.num_classes:
        raise ValueError(f"num_classes must be in [1, {net.num_classes}], got {classes}")
    ae_spec = resolve_autoencoder_spec(autoencoder, latents_index, run, net.in_channels)
    ae = build_autoencoder(ae_spec, device=device)
    data_std = float(checkpoint.get("data_std", 1.0))
    multiplier = input_multiplier(run, data_std)
    session = SamplingSession(net, build_schedule(run), run["prediction"], sampler, ae, multiplier, int(seed),
                              classes, int(micro_batch), device)
    ckpt_path = Path(ckpt).resolve()
    stat = ckpt_path.stat()
    description = {
        "checkpoint": {"path": str(ckpt_path), "step": int(checkpoint.get("step", -1)),
                       "config_hash": config_hash(checkpoint["config"]),
                       "weights": "ema" if use_ema else "raw",
                       "data_std": data_std, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        "run": {"schedule": run["schedule"], "prediction": run["prediction"], "network": run["network"],
                "input_scale": run["input_scale"]},
        "sampler": sampler_description(sampler),
        "seed": int(seed),
        "num_classes": classes,
        "autoencoder": {**ae.describe(), "spec": ae_spec},
        "input_multiplier": multiplier,
        "micro_batch": int(micro_batch),
        "device_type": device.type,
    }
    return session, description


def sampler_description(cfg: SamplerConfig) -> dict[str, Any]:
    adaptive = cfg.kind == "dopri5"
    return {"kind": cfg.kind, "steps": None if adaptive else cfg.steps, "cfg_scale": cfg.cfg_scale,
            "legacy_cfg_channels": cfg.legacy_cfg_channels, "atol": cfg.atol if adaptive else None,
            "rtol": cfg.rtol if adaptive else None,
            "step_size_control": "per sample" if adaptive else None}


# --------------------------------------------------------------------------------------------
# Shards and the final npz
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` holds samples ``[start, stop)``."""

    index: int
    start: int
    stop: int

    @property
    def file(self) -> str:
        return f"shard-{self.index:05d}.npz"

    def __len__(self) -> int:
        return self.stop - self.start


def plan_shards(num_samples: int, shard_size: int) -> list[Shard]:
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    return [Shard(j, start, min(start + shard_size, num_samples))
            for j, start in enumerate(range(0, num_samples, shard_size))]


def shards_of_rank(shards: Sequence[Shard], rank: int, world_size: int) -> list[Shard]:
    """Shard ``j`` goes to rank ``j % world_size``."""
    return [s for s in shards if s.index % world_size == rank]


SHARD_METADATA = ("labels", "nfe", "start", "stop", "settings_sha256", "device", "world_size")


def _member_shape(data: Any, key: str) -> tuple[int, ...]:
    """Shape of an npz member from its ``.npy`` header, without reading the array."""
    with data.zip.open(f"{key}.npy") as member:
        version = np.lib.format.read_magic(member)
        fmt = np.lib.format
        reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        return tuple(reader(member)[0])


def read_shard(path: Path, shard: Shard, settings_sha: str) -> dict[str, Any] | None:
    """The shard's metadata (labels, NFE, ..., ``image_shape``) if the file is complete, for this index
    range and these settings; else None. The images themselves are not read."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays: dict[str, Any] = {k: data[k] for k in SHARD_METADATA}
            arrays["image_shape"] = _member_shape(data, "images")
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None
    ok = (str(arrays["settings_sha256"]) == settings_sha and int(arrays["start"]) == shard.start
          and int(arrays["stop"]) == shard.stop and len(arrays["labels"]) == len(shard)
          and arrays["image_shape"][0] == len(shard) and len(arrays["nfe"]) == len(shard))
    return arrays if ok else None


def write_shard(path: Path, shard: Shard, batches: Sequence[Batch], settings_sha: str, device: str,
                world_size: int) -> None:
    arrays = {
        "images": np.concatenate([b.images for b in batches]),
        "labels": np.concatenate([b.labels for b in batches]).astype(np.int64),
        "nfe": np.concatenate([b.nfe for b in batches]).astype(np.int64),
        "start": np.int64(shard.start), "stop": np.int64(shard.stop),
        "settings_sha256": np.str_(settings_sha), "device": np.str_(device),
        "world_size": np.int64(world_size),
    }
    with atomic_write(path) as handle:
        np.savez(handle, **arrays)


def write_npz_streaming(path: str | os.PathLike, arrays: Mapping[str, tuple[tuple[int, ...], np.dtype,
                                                                             Iterable[np.ndarray]]]) -> None:
    """Write an uncompressed npz (as ``np.savez``) whose arrays arrive in chunks along axis 0.

    ``arrays`` maps a name to ``(shape, dtype, chunks)``; memory use is one chunk, not the whole set.
    """
    with atomic_write(path) as handle, \
            zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, (shape, dtype, chunks) in arrays.items():
            dtype = np.dtype(dtype)
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                          "shape": tuple(int(s) for s in shape)}
                np.lib.format.write_array_header_1_0(member, header)
                written = 0
                for chunk in chunks:
                    chunk = np.ascontiguousarray(chunk, dtype=dtype)
                    member.write(chunk.tobytes())
                    written += chunk.shape[0]
                if written != shape[0]:
                    raise ValueError(f"{name}: expected {shape[0]} rows, got {written}")


def _shard_chunks(shard_dir: Path, shards: Sequence[Shard], key: str) -> Iterator[np.ndarray]:
    for shard in shards:
        with np.load(shard_dir / shard.file, allow_pickle=False) as data:
            yield data[key]


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


@dataclass
class Processes:
    """This process's rank, the world size, its device; ``owns_group`` if we created the process group."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup_processes(device: str = "auto", timeout_s: float = 86_400.0) -> Processes:
    """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (torchrun); join a gloo (CPU) or NCCL (CUDA) group.

    The group is only used for barriers, with a long timeout: ranks with fewer shards wait for the others.
    """
    rank, world_size, dev, owns = join_processes(device, timeout_s)
    return Processes(rank, world_size, dev, owns)


def set_tf32(enabled: bool) -> None:
    """TF32 matmuls/convolutions on CUDA (the paper samples with TF32, Tables 6–7); no effect on CPU.

    cuDNN autotuning is switched off so that the same shapes always run the same kernels.
    """
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)
    torch.backends.cudnn.benchmark = False


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def sidecar_path(out: str | os.PathLike) -> Path:
    return Path(out).with_suffix(".json")


def _nfe_stats(nfe: np.ndarray) -> dict[str, float]:
    return {"mean": float(nfe.mean()), "min": int(nfe.min()), "max": int(nfe.max()), "total": int(nfe.sum())}


def sample_to_npz(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    *,
    num_samples: int,
    sampler: str = "dopri5",
    steps: int = 250,
    cfg_scale: float = 1.0,
    legacy_cfg_channels: int | None = None,
    atol: float = 1e-6,
    rtol: float = 1e-3,
    seed: int = 0,
    batch_size: int = 32,
    micro_batch: int = DEFAULT_MICRO_BATCH,
    use_ema: bool = True,
    autoencoder: str | Mapping[str, Any] | None = None,
    latents_index: str | os.PathLike | None = None,
    num_classes: int | None = None,
    device: str = "auto",
    shard_dir: str | os.PathLike | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    keep_shards: bool = False,
    tf32: bool = True,
    progress: bool | None = None,
    processes: Processes | None = None,
) -> dict[str, Any]:
    """Generate ``num_samples`` samples into the ADM npz ``out`` (+ ``out`` with ``.json``: the sidecar).

    Works in one process or under torchrun (every rank calls it). Returns the sidecar dict on rank 0
    and ``{"rank": r, "shards_computed": n}`` on the others.
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError("num_samples and batch_size must be >= 1")
    began = time.monotonic()
    procs = processes or setup_processes(device)
    try:
        set_tf32(tf32)
        cfg = SamplerConfig(kind=sampler, steps=steps, cfg_scale=float(cfg_scale),
                            legacy_cfg_channels=legacy_cfg_channels, atol=float(atol), rtol=float(rtol))
        session, description = build_session(
            ckpt, cfg, seed, use_ema=use_ema, autoencoder=autoencoder, latents_index=latents_index,
            num_classes=num_classes, micro_batch=micro_batch, device=procs.device)
        identity = {"format": FORMAT, **description, "tf32": bool(tf32),
                    "label_rule": "randint(num_classes) from derive_seed(seed, 'label', i)",
                    "noise_rule": "randn from derive_seed(seed, 'noise', i); DDPM steps from "
                                  "derive_seed(seed, 'steps', i)",
                    "quantisation": QUANTISATION}
        settings_sha = config_hash(identity, length=64)
        invariant = session.rows_are_position_invariant()
        if not invariant:
            print(f"warning: on this device a network row's output depends on its position in a micro-batch "
                  f"of {micro_batch}; the samples may change with --batch-size", file=sys.stderr)
        out = Path(out)
        shard_path = Path(shard_dir) if shard_dir is not None else out.with_suffix(".shards")
        shards = plan_shards(num_samples, shard_size)
        mine = shards_of_rank(shards, procs.rank, procs.world_size)
        computed = _compute_shards(session, mine, shard_path, settings_sha, batch_size, procs, progress)
        procs.barrier()
        if not procs.is_main:
            procs.barrier()
            return {"rank": procs.rank, "shards_computed": computed}
        summary = _merge(out, shard_path, shards, settings_sha, identity, procs, num_samples,
                         batch_size, shard_size, time.monotonic() - began, seed, invariant)
        if not keep_shards:
            for shard in shards:
                (shard_path / shard.file).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                shard_path.rmdir()
        procs.barrier()
        return summary
    finally:
        if processes is None:
            procs.close()


def _compute_shards(session: SamplingSession, mine: Sequence[Shard], shard_dir: Path, settings_sha: str,
                    batch_size: int, procs: Processes, progress: bool | None) -> int:
    shard_dir.mkdir(parents=True, exist_ok=True)
    for shard in mine:
        for tmp in shard_dir.glob(f".{shard.file}.*.tmp"):
            tmp.unlink(missing_ok=True)
    todo = [s for s in mine if read_shard(shard_dir / s.file, s, settings_sha) is None]
    show = procs.is_main if progress is None else progress
    bar = tqdm(total=sum(map(len, todo)), desc=f"sample rank {procs.rank}/{procs.world_size}", unit="img",
               disable=not show, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    for shard in todo:
        batches = []
        for start in range(shard.start, shard.stop, batch_size):
            batch = session.generate(range(start, min(start + batch_size, shard.stop)))
            batches.append(batch)
            bar.update(len(batch.labels))
        write_shard(shard_dir / shard.file, shard, batches, settings_sha, str(procs.device), procs.world_size)
    bar.close()
    return len(todo)


def _merge(out: Path, shard_dir: Path, shards: Sequence[Shard], settings_sha: str, identity: dict[str, Any],
           procs: Processes, num_samples: int, batch_size: int, shard_size: int, seconds: float,
           seed: int, position_invariant: bool) -> dict[str, Any]:
    """Check every shard, stream them into ``out`` in index order, write the sidecar; returns it."""
    labels, nfe, devices, world_sizes, image_shape = [], [], set(), set(), None
    for shard in shards:
        arrays = read_shard(shard_dir / shard.file, shard, settings_sha)
        if arrays is None:
            raise RuntimeError(f"shard {shard_dir / shard.file} is missing or incomplete after sampling")
        labels.append(arrays["labels"])
        nfe.append(arrays["nfe"])
        devices.add(str(arrays["device"]))
        world_sizes.add(int(arrays["world_size"]))
        image_shape = tuple(arrays["image_shape"][1:])
    all_labels, all_nfe = np.concatenate(labels), np.concatenate(nfe)
    for tmp in out.parent.glob(f".{out.name}.*.tmp"):  # left by a merge that was killed
        tmp.unlink(missing_ok=True)
    write_npz_streaming(out, {
        "arr_0": ((num_samples, *image_shape), np.uint8, _shard_chunks(shard_dir, shards, "images")),
        "arr_1": ((num_samples,), np.int64, iter([all_labels])),
    })
    settings = {**identity, "num_samples": num_samples}
    summary = {
        **settings,
        "npz": out.name,
        "image_shape": list(image_shape),
        "nfe": _nfe_stats(all_nfe),
        "label_counts": np.bincount(all_labels, minlength=identity["num_classes"]).tolist(),
        "world_size": procs.world_size,
        "world_sizes_of_shards": sorted(world_sizes),
        "computed_on": sorted(devices),
        "batch_size": batch_size,
        "shard_size": shard_size,
        "network_rows_position_invariant": position_invariant,
        "settings_sha256": settings_sha,
        "seconds": seconds,
        "provenance": provenance(settings, seed),
    }
    atomic_write_json(sidecar_path(out), summary)
    return summary


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared with ``pipeline.sample_grid``: checkpoint, sampler, guidance, decoding, device."""
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint (pipeline.checkpoints format)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="dopri5")
    parser.add_argument("--steps", type=int, default=250, help="steps of ddpm/euler/heun (ignored by dopri5)")
    parser.add_argument("--atol", type=float, default=1e-6, help="dopri5 absolute tolerance")
    parser.add_argument("--rtol", type=float, default=1e-3, help="dopri5 relative tolerance")
    parser.add_argument("--legacy-cfg-channels", type=int, default=None,
                        help="guide only the first N channels (3 = DiT's released code, DiT issue #41)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
    parser.add_argument("--autoencoder", default=None,
                        help="decoder: a name (identity, sd-vae-ft-ema, ...) or a JSON spec; "
                             "default: the one recorded in --latents-index")
    parser.add_argument("--latents-index", type=Path, default=None, help="the latents' index.json")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="draw labels from [0, N) (default: all classes)")
    parser.add_argument("--micro-batch", type=int, default=DEFAULT_MICRO_BATCH,
                        help="rows per network/decoder call (fixed; part of the sample set's identity)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                        help="TF32 on CUDA (paper Tables 6-7: yes)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.sample",
        description="Sample a checkpoint into an ADM npz (arr_0 uint8 NHWC, arr_1 int64 labels) plus a JSON "
                    "sidecar. Plain process or torchrun (`torchrun ... -m pipeline.sample -- --ckpt ...`); "
                    "the result does not depend on the number of processes or the batch size.",
    )
    add_sampler_arguments(parser)
    parser.add_argument("--cfg-scale", type=float, default=1.0)
    parser.add_argument("--num-samples", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=32, help="samples per sampler call and process")
    parser.add_argument("--out", required=True, type=Path, help="the npz to write; sidecar: same name, .json")
    parser.add_argument("--shard-dir", type=Path, default=None, help="resumable shards (default: OUT.shards)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    parser.add_argument("--keep-shards", action="store_true", help="keep the shards after merging")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    scoring = parser.add_argument_group("scoring (optional): evaluate the npz in the same process")
    scoring.add_argument("--metrics-out", type=Path, default=None, help="write ADM metrics of the npz here")
    scoring.add_argument("--reference", type=Path, default=None, help="reference npz for --metrics-out")
    scoring.add_argument("--extractor", choices=("inception", "digits"), default="inception")
    scoring.add_argument("--extractor-weights", default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    args = _parser().parse_args(argv)
    summary = sample_to_npz(
        args.ckpt, args.out, num_samples=args.num_samples, sampler=args.sampler, steps=args.steps,
        cfg_scale=args.cfg_scale, legacy_cfg_channels=args.legacy_cfg_channels, atol=args.atol,
        rtol=args.rtol, seed=args.seed, batch_size=args.batch_size, micro_batch=args.micro_batch,
        use_ema=not args.raw_weights, autoencoder=args.autoencoder, latents_index=args.latents_index,
        num_classes=args.num_classes, device=args.device, shard_dir=args.shard_dir,
        shard_size=args.shard_size, keep_shards=args.keep_shards, tf32=args.tf32, progress=args.progress,
    )
    if "nfe" in summary:  # rank 0, after the merge
        nfe = summary["nfe"]
        print(f"wrote {args.out}: {summary['num_samples']} samples, NFE mean {nfe['mean']:.1f} "
              f"(min {nfe['min']}, max {nfe['max']}), world {summary['world_size']}, "
              f"{summary['seconds']:.1f} s", file=sys.stderr)
        if args.metrics_out is not None:
            from eval.evaluate import score_npz

            if args.reference is None:
                raise SystemExit("error: --metrics-out needs --reference")
            score_npz(args.reference, args.out, args.metrics_out, args.extractor, args.extractor_weights,
                      device=None if args.device == "auto" else args.device)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
