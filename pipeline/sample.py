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

Refusals, each one :class:`~core.errors.InputError` line before any work or before anything is written for
the batch at fault: bad flags (:func:`check_sample_options`); a missing, unreadable or non-harness checkpoint,
or one whose weights in use hold NaN/inf (:func:`pipeline.checkpoints.load_network`); an input multiplier
that is 0 or not finite; a batch that comes out of the sampler or the decoder with NaN/inf
(:class:`~pipeline.sample_rows.NonFiniteSamplesError`, naming the sample indices: no shard for it, no npz, no
metrics); a second run writing the same npz or shard folder (:func:`core.locks.output_lock`, taken by rank 0).

One module at ~400 lines on purpose: the determinism rule above, the session that implements it and the
stage that applies it read as one story (per-sample pieces: :mod:`pipeline.sample_rows`; shards:
:mod:`pipeline.sample_shards`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from core.distributed import Processes, join_processes
from core.errors import InputError, require_file, run_cli
from core.io import config_hash, portable_path, remove_stale_temporaries
from core.locks import output_lock
from core.precision import set_tf32
from core.shards import Shard, plan_shards, shards_of_rank
from models.ddpm import FIXED_VARIANCES
from models.dopri5 import dopri5_per_sample, guided_velocity
from models.samplers import SAMPLERS, SDE_LAST_STEP_SIZE, SamplerConfig, sample
from models.schedules import Schedule
from pipeline.autoencoders import Autoencoder, build_autoencoder
from pipeline.checkpoints import load_network
from pipeline.runconfig import build_schedule, input_multiplier
from pipeline.sample_rows import (
    Batch,
    FixedBatchNetwork,
    NonFiniteSamplesError,
    PerSampleStepNoise,
    check_finite,
    in_fixed_batches,
    sample_labels,
    sample_noise,
    to_uint8,
)
from pipeline.sample_shards import merge_shards, read_shard, write_shard

Tensor = torch.Tensor
FORMAT = "fasterdit-samples-v1"
DEFAULT_MICRO_BATCH = 32
DEFAULT_SHARD_SIZE = 500
QUANTISATION = ("uint8 = clamp(127.5*x + 128, 0, 255) truncated (DiT/SiT sample_ddp; "
                "round-half-up of (x+1)*127.5)")


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
    source: str = ""  # the checkpoint, named in error messages
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
            try:
                x, nfe = dopri5_per_sample(velocity, noise, t0, t1, self.sampler.atol, self.sampler.rtol)
            except FloatingPointError as err:  # NaN/inf in the ODE: name the samples, in one line
                raise self._non_finite_ode(err, indices) from None
            check_finite(x, indices, "after sampling", self.source)
            return x, y, nfe.cpu()
        steps = PerSampleStepNoise(self.seed, indices, self.latent_shape, self.device)
        x, count = sample(self.wrapped, self.schedule, self.prediction, noise, y_dev, self.sampler, steps)
        check_finite(x, indices, "after sampling", self.source)
        return x, y, torch.full((len(indices),), count, dtype=torch.int64)

    def _non_finite_ode(self, err: FloatingPointError, indices: Sequence[int]) -> NonFiniteSamplesError:
        found = re.search(r"batch rows \[([0-9, ]*)\]", str(err))
        rows = [int(r) for r in found.group(1).split(",") if r.strip()] if found else []
        named = ", ".join(str(indices[r]) for r in rows[:8]) if rows else f"{indices[0]}-{indices[-1]}"
        prefix = f"{self.source}: " if self.source else ""
        return NonFiniteSamplesError(f"{prefix}sample(s) {named} hit NaN or inf while integrating the sampling "
                                     f"ODE (dopri5); stopped before quantising to uint8, nothing written for them")

    @torch.no_grad()
    def generate(self, indices: Sequence[int], labels: Tensor | None = None) -> Batch:
        """Sample the given indices and decode them to uint8 NHWC images."""
        indices = [int(i) for i in indices]
        x, y, nfe = self.sample_model_space(indices, labels)
        images = self.decode(x)
        check_finite(images, indices, "after decoding", self.source)
        return Batch(to_uint8(images).cpu().numpy(), y.numpy(), nfe.numpy())

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
        if not bool(torch.isfinite(out).all()):
            prefix = f"{self.source}: " if self.source else ""
            raise NonFiniteSamplesError(f"{prefix}the network outputs NaN or inf on random inputs (self-check of "
                                        f"{m} rows, before sampling); nothing sampled or written")
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
        raise InputError(f"--num-classes: expected an integer in [1, {net.num_classes}] (the checkpoint's classes), "
                         f"got {classes}")
    data_std = float(checkpoint.get("data_std", 1.0))
    try:
        multiplier = input_multiplier(run, data_std)
    except ZeroDivisionError:  # target_std / data_std with data_std 0
        multiplier = math.inf
    if not math.isfinite(multiplier) or multiplier <= 0:
        raise InputError(f"{ckpt}: input multiplier {multiplier!r} (input_scale {run['input_scale']}, data_std "
                         f"{data_std!r}) must be finite and > 0; samples are divided by it before decoding")
    ae_spec = resolve_autoencoder_spec(autoencoder, latents_index, run, net.in_channels)
    ae = build_autoencoder(ae_spec, device=device)
    session = SamplingSession(net, build_schedule(run), run["prediction"], sampler, ae, multiplier, int(seed),
                              classes, int(micro_batch), device, source=str(ckpt))
    ckpt_path = Path(ckpt).resolve()
    stat = ckpt_path.stat()
    description = {
        "checkpoint": {"path": portable_path(ckpt_path), "step": int(checkpoint.get("step", -1)),
                       "config_hash": config_hash(checkpoint["config"]),
                       "weights": "ema" if use_ema else "raw",
                       "data_std": data_std, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                       **({"source": checkpoint["source"]} if "source" in checkpoint else {})},
        "run": {"schedule": run["schedule"], "prediction": run["prediction"], "network": run["network"],
                "input_scale": run["input_scale"]},
        "sampler": sampler_description(sampler, bool(net.learn_sigma)),
        "seed": int(seed),
        "num_classes": classes,
        "autoencoder": {**ae.describe(), "spec": ae_spec},
        "input_multiplier": multiplier,
        "micro_batch": int(micro_batch),
        "device_type": device.type,
    }
    return session, description


def _check(ok: bool, flag: str, expected: str, value: Any) -> None:
    if not ok:
        raise InputError(f"{flag}: expected {expected}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_sampler_settings(*, sampler: str, steps: int, cfg_scale: float, atol: float, rtol: float, seed: int,
                           micro_batch: int, legacy_cfg_channels: int | None = None,
                           ddpm_variance: str = "fixed-large") -> None:
    """The flags shared by ``pipeline.sample`` and ``pipeline.sample_grid``, checked before any work: one
    :class:`~core.errors.InputError` line naming the flag. ``--cfg-scale`` 1 is no guidance, 0 unconditional."""
    _check(sampler in SAMPLERS, "--sampler", f"one of {', '.join(SAMPLERS)}", sampler)
    _check(_is_int(steps) and steps >= 1, "--steps", "an integer >= 1", steps)
    _check(_is_number(cfg_scale) and cfg_scale >= 0, "--cfg-scale",
           "a finite number >= 0 (1 = no guidance)", cfg_scale)
    _check(_is_number(atol) and atol > 0, "--atol", "a finite number > 0", atol)
    _check(_is_number(rtol) and rtol > 0, "--rtol", "a finite number > 0", rtol)
    _check(_is_int(seed) and seed >= 0, "--seed", "an integer >= 0", seed)
    _check(_is_int(micro_batch) and micro_batch >= 1, "--micro-batch", "an integer >= 1", micro_batch)
    _check(legacy_cfg_channels is None or (_is_int(legacy_cfg_channels) and legacy_cfg_channels >= 1),
           "--legacy-cfg-channels", "an integer >= 1", legacy_cfg_channels)
    _check(ddpm_variance in FIXED_VARIANCES, "--ddpm-variance", f"one of {', '.join(FIXED_VARIANCES)}", ddpm_variance)
    _check(sampler != "sde" or (_is_int(steps) and steps >= 2), "--steps", "an integer >= 2 for the sde sampler",
           steps)


def check_checkpoint_path(ckpt: str | os.PathLike) -> Path:
    """``ckpt`` as a path if it is a file (its contents are checked when it is loaded)."""
    return require_file(ckpt, "checkpoint")


def sampler_description(cfg: SamplerConfig, learned_sigma: bool = False) -> dict[str, Any]:
    """The sampler part of a sample set's identity; a DDPM sampler names its variance (``learned-range`` for a
    network with learned σ, else ``cfg.ddpm_variance``)."""
    adaptive = cfg.kind == "dopri5"
    description = {"kind": cfg.kind, "steps": None if adaptive else cfg.steps, "cfg_scale": cfg.cfg_scale,
                   "legacy_cfg_channels": cfg.legacy_cfg_channels, "atol": cfg.atol if adaptive else None,
                   "rtol": cfg.rtol if adaptive else None,
                   "step_size_control": "per sample" if adaptive else None}
    if cfg.kind == "ddpm":
        description["variance"] = "learned-range" if learned_sigma else cfg.ddpm_variance
    if cfg.kind == "sde":
        description["sde"] = {"method": "Euler-Maruyama", "diffusion": "sigma_t (SiT diffusion_form sigma, norm 1)",
                              "last_step": "Mean", "last_step_size": SDE_LAST_STEP_SIZE}
    return description


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleOptions:
    """How a sample set is made (the CLI's flags); every field but the last seven is part of its identity."""

    num_samples: int = 0
    sampler: str = "dopri5"
    steps: int = 250
    cfg_scale: float = 1.0
    legacy_cfg_channels: int | None = None
    atol: float = 1e-6
    rtol: float = 1e-3
    ddpm_variance: str = "fixed-large"
    seed: int = 0
    micro_batch: int = DEFAULT_MICRO_BATCH
    use_ema: bool = True
    autoencoder: str | Mapping[str, Any] | None = None
    latents_index: str | os.PathLike | None = None
    num_classes: int | None = None
    tf32: bool = True
    # execution only: never change a sample
    batch_size: int = 32
    device: str = "auto"
    shard_dir: str | os.PathLike | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    keep_shards: bool = False
    progress: bool | None = None

    def sampler_config(self) -> SamplerConfig:
        return SamplerConfig(kind=self.sampler, steps=self.steps, cfg_scale=float(self.cfg_scale),
                             legacy_cfg_channels=self.legacy_cfg_channels, atol=float(self.atol),
                             rtol=float(self.rtol), ddpm_variance=self.ddpm_variance)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SampleOptions:
        """The options of a parsed ``pipeline.sample`` command line."""
        names = {f.name for f in fields(cls)} - {"use_ema"}
        return cls(use_ema=not args.raw_weights, **{name: getattr(args, name) for name in names})


def check_sample_options(opts: SampleOptions) -> None:
    """The options of a sample set, checked before any work: one :class:`~core.errors.InputError` line naming
    the flag (``--num-samples: expected an integer >= 1, got 0``)."""
    _check(_is_int(opts.num_samples) and opts.num_samples >= 1, "--num-samples", "an integer >= 1",
           opts.num_samples)
    _check(_is_int(opts.batch_size) and opts.batch_size >= 1, "--batch-size", "an integer >= 1", opts.batch_size)
    _check(_is_int(opts.shard_size) and opts.shard_size >= 1, "--shard-size", "an integer >= 1", opts.shard_size)
    _check(opts.num_classes is None or (_is_int(opts.num_classes) and opts.num_classes >= 1), "--num-classes",
           "an integer >= 1", opts.num_classes)
    check_sampler_settings(sampler=opts.sampler, steps=opts.steps, cfg_scale=opts.cfg_scale, atol=opts.atol,
                           rtol=opts.rtol, seed=opts.seed, micro_batch=opts.micro_batch,
                           legacy_cfg_channels=opts.legacy_cfg_channels, ddpm_variance=opts.ddpm_variance)


def first_rank(processes: Processes | None = None) -> bool:
    """Whether this process is rank 0 (``RANK`` unset or 0 before the process group exists)."""
    return processes.is_main if processes is not None else int(os.environ.get("RANK", "0") or 0) == 0


def sample_to_npz(
    ckpt: str | os.PathLike, out: str | os.PathLike, options: SampleOptions | None = None, *,
    processes: Processes | None = None, **overrides: Any,
) -> dict[str, Any]:
    """Generate ``options.num_samples`` samples into the ADM npz ``out`` (+ ``out`` with ``.json``: the sidecar).

    ``overrides`` replace fields of ``options`` (``sample_to_npz(ckpt, out, num_samples=100, seed=1)``).
    Works in one process or under torchrun (every rank calls it). Returns the sidecar dict on rank 0
    and ``{"rank": r, "shards_computed": n}`` on the others.

    Options are checked first (:func:`check_sample_options`), then rank 0 takes the output lock of ``out`` and
    the shard folder (:func:`core.locks.output_lock`): a second run for the same output refuses at once with
    one line instead of deleting the first one's shards. The other ranks of a torchrun job work under rank 0's
    lock; when rank 0 refuses, torchrun stops them.
    """
    opts = replace(options or SampleOptions(), **overrides)
    check_sample_options(opts)
    ckpt = check_checkpoint_path(ckpt)
    out = Path(out)
    shard_path = Path(opts.shard_dir) if opts.shard_dir is not None else out.with_suffix(".shards")
    guard = output_lock(out, shard_path) if first_rank(processes) else contextlib.nullcontext()
    with guard:
        return _sample_locked(ckpt, out, shard_path, opts, processes)


def _sample_locked(ckpt: Path, out: Path, shard_path: Path, opts: SampleOptions,
                   processes: Processes | None) -> dict[str, Any]:
    num_samples, batch_size, micro_batch, seed = opts.num_samples, opts.batch_size, opts.micro_batch, opts.seed
    began = time.monotonic()
    # The group is only used for barriers, with a long timeout: ranks with fewer shards wait for the others.
    procs = processes or join_processes(opts.device, timeout_s=86_400.0)
    try:
        set_tf32(opts.tf32, deterministic_kernels=True)
        session, description = build_session(
            ckpt, opts.sampler_config(), seed, use_ema=opts.use_ema, autoencoder=opts.autoencoder,
            latents_index=opts.latents_index, num_classes=opts.num_classes, micro_batch=micro_batch,
            device=procs.device)
        identity = {"format": FORMAT, **description, "tf32": bool(opts.tf32),
                    "label_rule": "randint(num_classes) from derive_seed(seed, 'label', i)",
                    "noise_rule": "randn from derive_seed(seed, 'noise', i); DDPM and SDE steps from "
                                  "derive_seed(seed, 'steps', i)",
                    "quantisation": QUANTISATION}
        settings_sha = config_hash(identity, length=64)
        invariant = session.rows_are_position_invariant()
        if not invariant:
            print(f"warning: on this device a network row's output depends on its position in a micro-batch "
                  f"of {micro_batch}; the samples may change with --batch-size", file=sys.stderr)
        shards = plan_shards(num_samples, opts.shard_size)
        mine = shards_of_rank(shards, procs.rank, procs.world_size)
        try:
            computed = _compute_shards(session, mine, shard_path, settings_sha, batch_size, procs, opts.progress)
        except Exception:
            with contextlib.suppress(OSError):
                shard_path.rmdir()  # only if this run left it empty
            raise
        procs.barrier()
        if not procs.is_main:
            procs.barrier()
            return {"rank": procs.rank, "shards_computed": computed}
        summary = merge_shards(out, shard_path, shards, settings_sha, identity, procs, num_samples,
                               batch_size, opts.shard_size, time.monotonic() - began, seed, invariant)
        if not opts.keep_shards:
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
    remove_stale_temporaries(*(shard_dir / shard.file for shard in mine))
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
    parser.add_argument("--ddpm-variance", default="fixed-large",
                        help="DDPM sampler variance of a network without learned sigma: fixed-large (beta, DiT's "
                             "create_diffusion default) or fixed-small (beta-tilde); "
                             f"one of {', '.join(FIXED_VARIANCES)}")
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


def _check_scoring_inputs(args: argparse.Namespace) -> None:
    """``--metrics-out`` needs a reference npz and extractor weights that exist: checked before sampling."""
    if args.reference is None:
        raise InputError("--metrics-out needs --reference")
    if not Path(args.reference).is_file():
        raise InputError(f"{args.reference}: reference npz (--reference) not found")
    if args.extractor_weights is not None:
        if not Path(args.extractor_weights).is_file():
            raise InputError(f"{args.extractor_weights}: {args.extractor} extractor weights (--extractor-weights) "
                             f"not found")
    elif args.extractor == "digits":
        raise InputError("--extractor digits needs --extractor-weights (a file from eval.digits_classifier)")
    else:
        from eval.features import resolve_inception_weights

        try:
            resolve_inception_weights(None)
        except FileNotFoundError as err:
            raise InputError(f"--extractor-weights not given and {err}") from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    args = _parser().parse_args(argv)
    options = SampleOptions.from_args(args)
    check_sample_options(options)
    check_checkpoint_path(args.ckpt)
    if args.metrics_out is not None:
        _check_scoring_inputs(args)
    summary = sample_to_npz(args.ckpt, args.out, options)
    if "nfe" in summary:  # rank 0, after the merge
        nfe = summary["nfe"]
        print(f"wrote {args.out}: {summary['num_samples']} samples, NFE mean {nfe['mean']:.1f} "
              f"(min {nfe['min']}, max {nfe['max']}), world {summary['world_size']}, "
              f"{summary['seconds']:.1f} s", file=sys.stderr)
        if args.metrics_out is not None:
            from eval.evaluate import score_npz

            source = summary.get("checkpoint", {}).get("source")  # the sidecar's record, as merge_shards wrote it
            score_npz(args.reference, args.out, args.metrics_out, args.extractor, args.extractor_weights,
                      device=None if args.device == "auto" else args.device, checkpoint_source=source)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
