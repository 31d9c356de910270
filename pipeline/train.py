"""Training engine: one segment of a run, from a milestone (or scratch) to the next milestone.

``python -m pipeline.train --run-config RUN.json --start S --stop E [--init PREV.pt] --out E.pt
--rolling-dir DIR --log-dir DIR`` runs as a plain process or under ``torchrun`` (DDP; NCCL on GPU,
gloo on CPU) and trains the run of ``RUN.json`` (see :mod:`pipeline.runconfig`) from step ``S`` to ``E``.

Determinism by construction (docs/conventions.md):

* data order: epoch ``e`` is ``randperm(N)`` seeded by ``derive_seed(seed, "epoch", e)``; the global batch
  of step ``s`` is items ``s·B … (s+1)·B − 1`` of the concatenated epoch stream, so the data position is a
  function of the step alone (:func:`batch_items`);
* every random number of step ``s`` (times, noise, label drops, flips) is drawn for the whole global batch
  from one generator seeded by ``derive_seed(seed, "step", s)`` and each rank takes its contiguous slice,
  so the numbers do not depend on the world size (:func:`draw_step`);
* the network is initialised from ``derive_seed(seed, "init")`` on the CPU, identically on every rank.

On the CPU, training ``0 → 2k`` in one go, ``0 → 1k → 2k``, or killed at any step and rerun gives
bit-identical model, EMA and optimizer state. On GPUs the step generator lives on the device, so
numbers are identical for any world size on one device type. Because the state depends on the step
alone, a segment may resume with another world size (results then agree to rounding, as DDP's
gradient averaging sums in another order).

Checkpoints (:mod:`pipeline.checkpoints`): the milestone ``--out`` is written only when ``--stop`` is
reached; inside a segment ``DIR/rolling.pt`` is saved every N steps or M minutes, on SIGTERM/SIGUSR1 and
before a wall-time budget runs out. A rerun resumes from ``rolling.pt`` when its step is in
``(start, stop]`` and its run config has the same :func:`pipeline.io.config_hash`; it is deleted once the
milestone is written (the milestone holds the same state).

Exit codes of the CLI: 0 milestone written; :data:`EXIT_RESUMABLE` (75, ``EX_TEMPFAIL``) stopped early by
a signal or the time budget with a resumable ``rolling.pt`` (rerun the same command); 1 non-finite loss
(:class:`NonFiniteLossError`; the rolling checkpoint keeps the last good state) or another error. Under
``torchrun`` the launcher reports its own non-zero code when a worker exits with 75, and this module's
flags go after ``--`` (``torchrun --nproc-per-node 8 -m pipeline.train -- --start 0 …``), because
torchrun's parser would read ``--start`` as an abbreviation of its ``--start-method``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from models.ema import make_ema, update_ema
from models.losses import LossConfig, TrainingDraw, draw_training_randomness, training_losses
from models.schedules import Schedule
from pipeline.checkpoints import load_checkpoint, save_checkpoint
from pipeline.distributed import join_processes
from pipeline.io import config_hash, derive_seed, provenance
from pipeline.runconfig import build_network, build_schedule, input_multiplier, loss_config, with_defaults
from pipeline.train_log import (
    LOG_NAME,
    PLOT_NAME,
    append_record,
    max_memory_mb,
    plot_loss_curve,
    read_log,
    truncate_log,
)

EXIT_RESUMABLE = 75
ROLLING_NAME = "rolling.pt"
DEFAULT_LOG_EVERY = 50
DEFAULT_CHECK_EVERY = 10
DEFAULT_NUM_WORKERS = 4
IN_MEMORY_LIMIT_GB = 16.0
DEVICE_DATA_LIMIT_GB = 1.0
_BAD_STEP_BASE = 2**62


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN or infinite; the rolling checkpoint keeps the last good state."""


# --------------------------------------------------------------------------------------------
# Processes and devices
# --------------------------------------------------------------------------------------------


@dataclass
class DistContext:
    """Where this process sits: rank, world size, device; ``owns_group`` if we created the process group."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistContext:
    """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (torchrun) and join the process group (NCCL/gloo)."""
    rank, world_size, dev, owns = join_processes(device)
    return DistContext(rank=rank, world_size=world_size, device=dev, owns_group=owns)


def rank_slice(global_batch: int, world_size: int, rank: int) -> slice:
    """The contiguous part of the global batch that ``rank`` trains on."""
    if global_batch % world_size:
        raise ValueError(f"global batch {global_batch} is not divisible by the world size {world_size}; "
                         f"choose a number of processes that divides it")
    local = global_batch // world_size
    return slice(rank * local, (rank + 1) * local)


def _barrier(ctx: DistContext) -> None:
    if ctx.world_size > 1:
        dist.barrier()


# --------------------------------------------------------------------------------------------
# Data order and per-step randomness
# --------------------------------------------------------------------------------------------


def epoch_permutation(seed: int, epoch: int, num_items: int) -> torch.Tensor:
    """The order of the ``num_items`` items in epoch ``epoch`` (CPU, seeded by ``(seed, "epoch", epoch)``)."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch))
    return torch.randperm(num_items, generator=generator)


class DataOrder:
    """Item ids of any step's global batch: positions ``s·B … (s+1)·B − 1`` of the epoch stream."""

    def __init__(self, seed: int, num_items: int, global_batch: int):
        if num_items < 1:
            raise ValueError("the latent set is empty")
        self.seed, self.num_items, self.global_batch = seed, num_items, global_batch
        self._cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            if len(self._cache) >= 4:
                self._cache.pop(min(self._cache))
            self._cache[epoch] = epoch_permutation(self.seed, epoch, self.num_items)
        return self._cache[epoch]

    def batch_items(self, step: int) -> torch.Tensor:
        positions = torch.arange(step * self.global_batch, (step + 1) * self.global_batch)
        epochs = positions // self.num_items
        within = positions % self.num_items
        out = torch.empty_like(positions)
        for epoch in torch.unique(epochs).tolist():
            mask = epochs == epoch
            out[mask] = self._perm(int(epoch))[within[mask]]
        return out


def batch_items(step: int, global_batch: int, num_items: int, seed: int) -> torch.Tensor:
    """Item ids of the global batch of ``step`` (see :class:`DataOrder`)."""
    return DataOrder(seed, num_items, global_batch).batch_items(step)


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The one generator every random number of step ``step`` comes from."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, "step", step))


def draw_step(
    seed: int, step: int, global_shape: tuple[int, ...], schedule: Schedule, cfg: LossConfig, flip: bool,
    device: torch.device,
) -> tuple[TrainingDraw, torch.Tensor | None]:
    """Times, noise, label drops (and flip choices when ``flip``) for the whole global batch of ``step``."""
    generator = step_generator(seed, step, device)
    draw = draw_training_randomness(global_shape, schedule, cfg, generator, device)
    flips = torch.rand(global_shape[0], generator=generator, device=device) < 0.5 if flip else None
    return draw, flips


@dataclass
class LatentData:
    """A latent folder as the training loop sees it."""

    folder: Path
    num_items: int
    latent_shape: tuple[int, ...]
    data_std: float
    has_flipped: bool
    nbytes: int


def open_latents(folder: str | os.PathLike) -> LatentData:
    from pipeline.latents import read_index

    index = read_index(folder)
    shape = tuple(int(v) for v in index["latent_shape"])
    n = int(index["num_items"])
    flipped = bool(index["flip"])
    return LatentData(Path(folder), n, shape, float(index["data_std"]), flipped,
                      n * math.prod(shape) * 4 * (2 if flipped else 1))


class InMemoryBatches:
    """Rank-local batches from latents held in memory (on the device when small, else pinned host memory)."""

    def __init__(self, data: LatentData, device: torch.device, use_flipped: bool):
        from pipeline.latents import load_latents

        latents, labels, flipped, _ = load_latents(data.folder)
        on_device = device.type == "cpu" or data.nbytes <= DEVICE_DATA_LIMIT_GB * 2**30
        self.store = device if on_device else torch.device("cpu")
        self.device = device
        self.latents = latents.to(self.store)
        self.labels = labels.to(self.store)
        self.flipped = flipped.to(self.store) if use_flipped else None

    def batches(self, order: DataOrder, start: int, stop: int, part: slice) -> Iterator[tuple]:
        for step in range(start, stop):
            idx = order.batch_items(step)[part].to(self.store)
            flipped = None if self.flipped is None else self.flipped[idx]
            items = [self.latents[idx], self.labels[idx], flipped]
            if self.store != self.device:
                items = [None if v is None else v.pin_memory().to(self.device, non_blocking=True)
                         for v in items]
            yield tuple(items)


class _StepSampler:
    """Batch sampler of one rank's item ids for steps ``start … stop − 1`` (for a DataLoader)."""

    def __init__(self, order: DataOrder, start: int, stop: int, part: slice):
        self.order, self.start, self.stop, self.part = order, start, stop, part

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield self.order.batch_items(step)[self.part].tolist()

    def __len__(self) -> int:
        return self.stop - self.start


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGTERM/SIGUSR1 to the trainer, which shuts them down after saving."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


class LoaderBatches:
    """Rank-local batches read from the shards by DataLoader workers (latent sets too large for memory)."""

    def __init__(self, data: LatentData, device: torch.device, use_flipped: bool, num_workers: int):
        from pipeline.latents import LatentDataset

        self.dataset = LatentDataset(data.folder)
        self.device, self.use_flipped, self.num_workers = device, use_flipped, num_workers

    def batches(self, order: DataOrder, start: int, stop: int, part: slice) -> Iterator[tuple]:
        from torch.utils.data import DataLoader

        from pipeline.latents import collate_latents

        loader = DataLoader(
            self.dataset, batch_sampler=_StepSampler(order, start, stop, part), num_workers=self.num_workers,
            collate_fn=collate_latents, pin_memory=self.device.type == "cuda",
            worker_init_fn=_ignore_stop_signals if self.num_workers else None,
            prefetch_factor=4 if self.num_workers else None,
        )
        for latents, labels, flipped in loader:
            flipped = flipped if self.use_flipped else None
            yield tuple(None if v is None else v.to(self.device, non_blocking=True)
                        for v in (latents, labels, flipped))


def scaled_inputs(
    latents: torch.Tensor, flipped: torch.Tensor | None, flips: torch.Tensor | None, multiplier: float
) -> torch.Tensor:
    """Algorithm 2 step 1 input: stored latents (flipped where ``flips`` says so) × the run's multiplier."""
    if flips is not None:
        latents = torch.where(flips.reshape(-1, *[1] * (latents.ndim - 1)), flipped, latents)
    return latents * multiplier


# --------------------------------------------------------------------------------------------
# Model, optimizer, checkpoints
# --------------------------------------------------------------------------------------------


def build_model(run: dict[str, Any]) -> nn.Module:
    """The run's network on the CPU, initialised from ``derive_seed(seed, "init")`` (same on every rank)."""
    seed = derive_seed(run["seed"], "init")
    spec = dict(run["network"])
    if spec["name"].startswith("DiT-"):
        return build_network({**spec, "init_generator": torch.Generator().manual_seed(seed)})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_network(spec)


def build_optimizer(run: dict[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (paper Tables 4–5: lr 1e-4, weight decay 0, betas 0.9/0.999).

    PyTorch's fused kernel (same update, one kernel for all parameters; on CPU ~4x faster than the
    per-parameter loop) whenever every parameter is on a CPU or CUDA device.
    """
    opt = run["optimizer"]
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None  # None: PyTorch's default elsewhere
    return torch.optim.AdamW(params, lr=float(opt["lr"]), weight_decay=float(opt["weight_decay"]),
                             betas=tuple(float(b) for b in opt["betas"]), fused=fused)


def _rng_state() -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and len(state.get("cuda", [])) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_hash(run: dict[str, Any]) -> str:
    """Identity of a run config for resuming (defaults filled in, key order irrelevant)."""
    return config_hash(with_defaults(run), length=16)


def choose_start_point(
    run: dict[str, Any], start: int, stop: int, init: Path | None, rolling: Path
) -> tuple[dict[str, Any] | None, Path | None]:
    """What to resume from: a matching rolling save in ``(start, stop]``, else ``init``, else nothing."""
    if rolling.exists():
        ckpt = load_checkpoint(rolling)
        if start < ckpt["step"] <= stop and run_hash(ckpt["config"]) == run_hash(run):
            return ckpt, rolling
        print(f"train: ignoring {rolling} (step {ckpt['step']}, config {run_hash(ckpt['config'])}; "
              f"this segment is {start}→{stop}, config {run_hash(run)})", file=sys.stderr)
    if init is not None:
        ckpt = load_checkpoint(init)
        if ckpt["step"] != start:
            raise ValueError(f"--init {init} is at step {ckpt['step']}, but this segment starts at {start}")
        if run_hash(ckpt["config"]) != run_hash(run):
            raise ValueError(f"--init {init} was trained with another run config "
                             f"({run_hash(ckpt['config'])} ≠ {run_hash(run)})")
        return ckpt, init
    if start != 0:
        raise ValueError(f"segment starts at step {start} but neither --init nor a usable {rolling} exists")
    return None, None


def init_or_restore(
    run: dict[str, Any], ckpt: dict[str, Any] | None, device: torch.device
) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, int]:
    """Model, EMA (initially equal to the model, as DiT's first update with decay 0), AdamW and step."""
    model = build_model(run)
    ema = make_ema(model)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
    model.to(device).train()
    ema.to(device)
    opt = build_optimizer(run, model)
    if ckpt is None:
        return model, ema, opt, 0
    opt.load_state_dict(ckpt["opt"])
    _restore_rng(ckpt["rng"])
    step = int(ckpt["step"])
    if int(ckpt["data_position"]) != step * int(run["global_batch"]):
        raise ValueError(f"checkpoint data position {ckpt['data_position']} ≠ step {step} × global batch")
    return model, ema, opt, step


# --------------------------------------------------------------------------------------------
# Stop requests: signals and the wall-time budget
# --------------------------------------------------------------------------------------------


class StopSignals:
    """While active, SIGTERM and SIGUSR1 only set a flag that the loop reads at the next step boundary."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class Budget:
    """Stop early enough to save before ``minutes`` of wall time are used (``None``: no budget)."""

    minutes: float | None
    margin_minutes: float = 2.0
    started: float = field(default_factory=time.monotonic)
    step_seconds: float = 0.0
    save_seconds: float = 0.0

    def exhausted(self, now: float, steps_until_next_check: int) -> bool:
        if self.minutes is None:
            return False
        needed = self.margin_minutes * 60 + self.step_seconds * steps_until_next_check + self.save_seconds
        return now - self.started + needed >= self.minutes * 60


# --------------------------------------------------------------------------------------------
# The training step
# --------------------------------------------------------------------------------------------


class _NetCall:
    """What ``training_losses`` needs from a network, for a DDP-wrapped or compiled forward."""

    def __init__(self, forward: Any, net: nn.Module):
        self.forward = forward
        self.num_classes = net.num_classes
        self.learn_sigma = net.learn_sigma

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        return self.forward(*args)


def train_step(
    net_call: _NetCall, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
    y: torch.Tensor, draw: TrainingDraw, schedule: Schedule, cfg: LossConfig, run: dict[str, Any],
) -> dict[str, torch.Tensor]:
    """One optimizer step on this rank's slice; returns detached device scalars (no host sync)."""
    params = opt.param_groups[0]["params"]
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=run["precision"] == "bf16")
    with autocast:
        terms = training_losses(net_call, x, y, draw, schedule, cfg)
    terms["loss"].mean().backward()
    clip = run["optimizer"].get("grad_clip")
    if clip:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, float(clip))
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    opt.step()
    opt.zero_grad(set_to_none=True)
    update_ema(ema, model, float(run["ema_decay"]))
    stats = {key: value.detach().float().mean() for key, value in terms.items()}
    stats["grad_norm"] = grad_norm.detach().float()
    return stats


def _check_precision(run: dict[str, Any]) -> None:
    if run["precision"] not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', not {run['precision']!r}")


def _set_tf32(run: dict[str, Any], device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(run["tf32"])
        torch.backends.cudnn.allow_tf32 = bool(run["tf32"])


# --------------------------------------------------------------------------------------------
# The segment
# --------------------------------------------------------------------------------------------


def train(
    run_config: dict[str, Any],
    start: int,
    stop: int,
    out: str | os.PathLike,
    init: str | os.PathLike | None = None,
    rolling_dir: str | os.PathLike = "rolling",
    log_dir: str | os.PathLike = "logs",
    *,
    rolling_every_steps: int | None = None,
    rolling_every_minutes: float | None = None,
    time_budget_minutes: float | None = None,
    budget_margin_minutes: float = 2.0,
    log_every: int = DEFAULT_LOG_EVERY,
    check_every: int = DEFAULT_CHECK_EVERY,
    device: str = "auto",
    compile: bool = False,
    in_memory: bool | None = None,
    num_workers: int = DEFAULT_NUM_WORKERS,
    progress: bool | None = None,
    loss_plot: bool = True,
) -> dict[str, Any]:
    """Train ``run_config`` from step ``start`` to ``stop`` and write the milestone checkpoint ``out``.

    Resumes from ``rolling_dir/rolling.pt`` when it matches (see :func:`choose_start_point`), else from
    ``init`` (required when ``start > 0``). Returns a summary whose ``status`` is ``completed`` (``out``
    written), ``signal`` or ``time_budget`` (rolling checkpoint written; rerun to continue). Raises
    :class:`NonFiniteLossError` on a NaN/inf loss or gradient. ``in_memory=None`` holds latent sets up
    to 16 GB in memory and streams larger ones with ``num_workers`` DataLoader workers. ``check_every``
    is how often (in steps) ranks agree on signals, the budget and loss finiteness (one host sync).
    """
    run = with_defaults(run_config)
    _check_precision(run)
    if not 0 <= start < stop:
        raise ValueError(f"need 0 ≤ start < stop, got {start} → {stop}")
    out, rolling_dir, log_dir = Path(out), Path(rolling_dir), Path(log_dir)
    rolling = rolling_dir / ROLLING_NAME
    ctx = setup_distributed(device)
    try:
        with StopSignals() as signals:
            return _train_segment(
                run, start, stop, out, Path(init) if init else None, rolling, log_dir, ctx, signals,
                rolling_every_steps=rolling_every_steps, rolling_every_minutes=rolling_every_minutes,
                budget=Budget(time_budget_minutes, budget_margin_minutes), log_every=log_every,
                check_every=check_every, compile=compile, in_memory=in_memory, num_workers=num_workers,
                progress=progress, loss_plot=loss_plot,
            )
    finally:
        if ctx.owns_group:
            dist.destroy_process_group()


def _train_segment(
    run: dict[str, Any], start: int, stop: int, out: Path, init: Path | None, rolling: Path, log_dir: Path,
    ctx: DistContext, signals: StopSignals, *, rolling_every_steps: int | None,
    rolling_every_minutes: float | None, budget: Budget, log_every: int, check_every: int, compile: bool,
    in_memory: bool | None, num_workers: int, progress: bool | None, loss_plot: bool,
) -> dict[str, Any]:
    device, seed, global_batch = ctx.device, int(run["seed"]), int(run["global_batch"])
    part = rank_slice(global_batch, ctx.world_size, ctx.rank)
    _set_tf32(run, device)
    if "latents" not in run:
        raise ValueError("the run config has no 'latents' folder")
    data = open_latents(run["latents"])
    if run["flip"] and not data.has_flipped:
        raise ValueError(f"the run asks for flips but {data.folder} has no flipped latents "
                         f"(precompute them with --flip)")
    multiplier = input_multiplier(run, data.data_std)
    schedule, cfg = build_schedule(run), loss_config(run)

    ckpt, resumed_from = choose_start_point(run, start, stop, init, rolling)
    model, ema, opt, step = init_or_restore(run, ckpt, device)
    resumed_step = step
    del ckpt

    forward: Any = model
    if ctx.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          broadcast_buffers=False)
    if compile:
        forward = torch.compile(forward)
    net_call = _NetCall(forward, model)

    log_path, plot_path = log_dir / LOG_NAME, log_dir / PLOT_NAME
    if ctx.is_main:
        log_dir.mkdir(parents=True, exist_ok=True)
        truncate_log(log_path, resumed_step)
        _remove_stale_temporaries(rolling, out)

    def state(at_step: int) -> dict[str, Any]:
        return {"step": at_step, "model": model.state_dict(), "ema": ema.state_dict(),
                "opt": opt.state_dict(), "rng": _rng_state(), "data_position": at_step * global_batch,
                "config": run, "data_std": data.data_std, "world_size": ctx.world_size,
                "provenance": provenance(run, seed)}

    def save(path: Path, at_step: int) -> None:
        began = time.monotonic()
        if ctx.is_main:
            save_checkpoint(path, state(at_step))
        _barrier(ctx)
        budget.save_seconds = max(budget.save_seconds, time.monotonic() - began)

    order = DataOrder(seed, data.num_items, global_batch)
    if in_memory is None:
        in_memory = data.nbytes <= IN_MEMORY_LIMIT_GB * 2**30
    source = (InMemoryBatches(data, device, bool(run["flip"])) if in_memory
              else LoaderBatches(data, device, bool(run["flip"]), num_workers))
    global_shape = (global_batch, *data.latent_shape)

    show_bar = ctx.is_main and (sys.stderr.isatty() if progress is None else progress)
    bar = tqdm(total=stop - start, initial=step - start, desc=f"train {start}→{stop}", unit="it",
               disable=not show_bar, dynamic_ncols=True, file=sys.stderr)
    sums: dict[str, torch.Tensor] = {}
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    segment_began = last_save = window_began = time.monotonic()
    window_steps, status, last_record, last_good = 0, "completed", None, resumed_from

    batches = source.batches(order, step, stop, part)
    try:
        while step < stop:
            latents, labels, flipped = next(batches)
            draw, flips = draw_step(seed, step, global_shape, schedule, cfg, bool(run["flip"]), device)
            x = scaled_inputs(latents, flipped, None if flips is None else flips[part], multiplier)
            stats = train_step(net_call, model, ema, opt, x, labels, draw.slice(part.start, part.stop),
                               schedule, cfg, run)
            bad = ~(torch.isfinite(stats["loss"]) & torch.isfinite(stats["grad_norm"]))
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step), first_bad)
            for key, value in stats.items():
                sums[key] = sums[key] + value if key in sums else value.clone()
            step += 1
            window_steps += 1
            bar.update(1)

            # Step boundary. At least one step always runs, so a rerun always makes progress.
            now = time.monotonic()
            budget.step_seconds = (now - window_began) / window_steps
            interval = check_every if ctx.world_size > 1 else 1
            wants_stop = 1 if signals.received else 2 if budget.exhausted(now, interval) else 0
            time_due = rolling_every_minutes is not None and now - last_save >= rolling_every_minutes * 60
            steps_due = rolling_every_steps is not None and step % rolling_every_steps == 0
            log_due = step % log_every == 0 or step == stop
            scheduled = log_due or steps_due or step % check_every == 0
            if ctx.world_size == 1:  # the ranks of a group only meet at step-determined boundaries
                scheduled = scheduled or bool(wants_stop) or time_due
            if not scheduled:
                continue
            wants_stop, time_due, bad_step = _agree(ctx, wants_stop, time_due, first_bad)
            if bad_step >= 0:
                raise NonFiniteLossError(_non_finite_message(bad_step, run, last_good))
            if log_due or wants_stop:
                last_record = _log_window(ctx, sums, window_steps, window_began, step, run, opt, data, device,
                                          segment_began)
                if ctx.is_main:
                    append_record(log_path, last_record)
                    bar.set_postfix(loss=f"{last_record['loss']:.4g}")
                sums, window_steps, window_began = {}, 0, time.monotonic()
            if step == stop:
                break
            if wants_stop or steps_due or time_due:
                save(rolling, step)
                last_save, last_good = time.monotonic(), rolling
            if wants_stop:
                status = "signal" if wants_stop == 1 else "time_budget"
                break
    finally:
        batches.close()
        bar.close()

    if status == "completed":
        save(out, step)
        if ctx.is_main and last_good == rolling:  # only our own rolling save (the milestone supersedes it)
            rolling.unlink(missing_ok=True)
    if ctx.is_main and loss_plot:
        plot_loss_curve(read_log(log_path), plot_path, title=f"{run['network']['name']} — {run_hash(run)}")
    _barrier(ctx)  # exit together: torchrun stops the other workers as soon as one exits non-zero
    seconds = time.monotonic() - segment_began
    summary = {
        "status": status, "start": start, "stop": stop, "step": step, "resumed_step": resumed_step,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "out": str(out) if status == "completed" else None,
        "rolling": str(rolling) if status != "completed" else None,
        "steps_run": step - resumed_step, "seconds": seconds, "world_size": ctx.world_size,
        "last_record": last_record,
    }
    if ctx.is_main:
        rate = summary["steps_run"] / seconds if seconds > 0 else float("nan")
        loss = f"{last_record['loss']:.4g}" if last_record else "n/a"
        where = out if status == "completed" else rolling
        print(f"train: {status}: steps {resumed_step}→{step} of {start}→{stop} in {seconds:.1f}s "
              f"({rate:.2f} it/s, world {ctx.world_size}), loss {loss}, wrote {where}", file=sys.stderr)
    return summary


def _remove_stale_temporaries(*paths: Path) -> None:
    """Delete temp files that a process killed while saving left next to ``paths`` (atomic_write names)."""
    for path in paths:
        if path.parent.is_dir():
            for tmp in path.parent.glob(f".{path.name}.*.tmp"):
                tmp.unlink(missing_ok=True)


def _agree(
    ctx: DistContext, wants_stop: int, time_due: bool, first_bad: torch.Tensor
) -> tuple[int, bool, int]:
    """Combine the ranks' stop requests, rolling timers and first non-finite step (one small all-reduce)."""
    bad_code = torch.where(first_bad >= 0, _BAD_STEP_BASE - first_bad, torch.zeros_like(first_bad))
    flags = torch.stack([torch.tensor(wants_stop, device=first_bad.device),
                         torch.tensor(int(time_due), device=first_bad.device), bad_code])
    if ctx.world_size > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    stop_code, due, bad = flags.tolist()
    return int(stop_code), bool(due), (_BAD_STEP_BASE - bad if bad else -1)


def _non_finite_message(bad_step: int, run: dict[str, Any], last_good: Path | None) -> str:
    return (
        f"non-finite loss at step {bad_step} (the update from state {bad_step} to {bad_step + 1}; "
        f"run {run['network']['name']}, config {run_hash(run)}, latents {run.get('latents')}); "
        f"last good checkpoint: {last_good if last_good else 'none (the segment started from scratch)'}; "
        f"nothing was saved after the bad step"
    )


def _log_window(
    ctx: DistContext, sums: dict[str, torch.Tensor], steps: int, began: float, step: int, run: dict[str, Any],
    opt: torch.optim.Optimizer, data: LatentData, device: torch.device, segment_began: float,
) -> dict[str, Any]:
    """Average the window's per-step means over steps and ranks into one log record (one host sync)."""
    keys = sorted(sums)
    values = torch.stack([sums[k] for k in keys]) / max(steps, 1)
    if ctx.world_size > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values = values / ctx.world_size
    means = dict(zip(keys, values.tolist()))
    seconds = max(time.monotonic() - began, 1e-9)
    memory, memory_kind = max_memory_mb(device)
    record: dict[str, Any] = {"step": step, "epoch": step * int(run["global_batch"]) / data.num_items}
    for key in ("loss", "mse", "direction", "vb", "grad_norm"):
        if key in means:
            record[key] = means[key]
    record.update({
        "lr": opt.param_groups[0]["lr"], "it_s": steps / seconds,
        "images_s": steps * int(run["global_batch"]) / seconds, "max_mem_mb": memory, "mem_kind": memory_kind,
        "world_size": ctx.world_size, "elapsed_s": time.monotonic() - segment_began,
    })
    return record


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.train",
        description="Train one segment of a run (plain process or torchrun). Exit 0: milestone written; "
                    f"{EXIT_RESUMABLE}: stopped by a signal or the time budget, rerun to resume; "
                    "1: error (e.g. non-finite loss).",
    )
    parser.add_argument("--run-config", required=True, type=Path, help="run config JSON (pipeline.runconfig)")
    parser.add_argument("--start", required=True, type=int, help="step this segment starts from")
    parser.add_argument("--stop", required=True, type=int, help="milestone step this segment trains to")
    parser.add_argument("--init", type=Path, help="milestone checkpoint at --start (required when start > 0)")
    parser.add_argument("--out", required=True, type=Path, help="milestone checkpoint to write at --stop")
    parser.add_argument("--rolling-dir", required=True, type=Path, help="folder of rolling.pt")
    parser.add_argument("--log-dir", required=True, type=Path, help="folder of train.jsonl and loss.png")
    parser.add_argument("--rolling-every-steps", type=int)
    parser.add_argument("--rolling-every-minutes", type=float, default=30.0)
    parser.add_argument("--time-budget-minutes", type=float, help="stop (exit 75) before this wall time")
    parser.add_argument("--budget-margin-minutes", type=float, default=2.0)
    parser.add_argument("--log-every", type=int, default=DEFAULT_LOG_EVERY)
    parser.add_argument("--check-every", type=int, default=DEFAULT_CHECK_EVERY)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--in-memory", choices=["auto", "yes", "no"], default="auto")
    parser.add_argument("--num-workers", type=int, default=DEFAULT_NUM_WORKERS)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--loss-plot", action=argparse.BooleanOptionalAction, default=True,
                        help="redraw log-dir/loss.png at the end of the segment (about a second: matplotlib)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (see the module docstring for exit codes).

    Under torchrun put ``--`` before this module's flags (``torchrun … -m pipeline.train -- --start 0 …``):
    torchrun's parser would otherwise take ``--start`` for an abbreviation of its ``--start-method``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    args = _parser().parse_args(argv)
    run = json.loads(args.run_config.read_text())
    in_memory = {"auto": None, "yes": True, "no": False}[args.in_memory]
    try:
        summary = train(
            run, args.start, args.stop, args.out, args.init, args.rolling_dir, args.log_dir,
            rolling_every_steps=args.rolling_every_steps, rolling_every_minutes=args.rolling_every_minutes,
            time_budget_minutes=args.time_budget_minutes, budget_margin_minutes=args.budget_margin_minutes,
            log_every=args.log_every, check_every=args.check_every, device=args.device, compile=args.compile,
            in_memory=in_memory, num_workers=args.num_workers, progress=args.progress,
            loss_plot=args.loss_plot,
        )
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0 if summary["status"] == "completed" else EXIT_RESUMABLE


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
