"""Training engine: one segment of a run, from a milestone (or scratch) to the next milestone.

``python -m pipeline.train --run-config RUN.json (or --run-json TEXT) --start S --stop E [--init PREV.pt] --out E.pt
--rolling-dir DIR --log-dir DIR`` runs as a plain process or under ``torchrun`` (DDP; NCCL on GPU,
gloo on CPU) and trains the run of ``RUN.json`` (see :mod:`pipeline.runconfig`) from step ``S`` to ``E``.

Determinism by construction (docs/conventions.md): the data position and every random number of a step
(the posterior noise of a ``posterior: distribution`` latent folder included) are functions of the step
alone, drawn for the whole global batch and sliced per rank (:mod:`pipeline.train_data`); the network is
initialised from ``derive_seed(seed, "init")`` on the CPU, identically on every rank (:mod:`pipeline.train_state`).

On the CPU, training ``0 → 2k`` in one go, ``0 → 1k → 2k``, or killed at any step and rerun gives
bit-identical model, EMA and optimizer state. On GPUs the step generator lives on the device, so
numbers are identical for any world size on one device type. Because the state depends on the step
alone, a segment may resume with another world size (results then agree to rounding, as DDP's
gradient averaging sums in another order).

Checkpoints (:mod:`pipeline.checkpoints`): the milestone ``--out`` is written only when ``--stop`` is
reached; inside a segment ``DIR/rolling.pt`` is saved every N steps or M minutes, on SIGTERM/SIGUSR1 and
before a wall-time budget runs out (:mod:`pipeline.train_stop`). A rerun resumes from ``rolling.pt`` when
its step is in ``(start, stop]`` and its run config has the same :func:`core.io.config_hash`; it is deleted
once the milestone is written (the milestone holds the same state).

Exit codes of the CLI: 0 milestone written; :data:`EXIT_RESUMABLE` (75, ``EX_TEMPFAIL``) stopped early by
a signal or the time budget with a resumable ``rolling.pt`` (rerun the same command); 1 non-finite loss
(:class:`NonFiniteLossError`; the rolling checkpoint keeps the last good state); 2 a bad input or another
error, as one ``error:`` line (:func:`core.errors.run_cli`; ``--debug`` shows the traceback), among them
another run holding this segment's output lock (:func:`core.locks.output_lock`). Under
``torchrun`` the launcher reports its own non-zero code when a worker exits with 75, and this module's
flags go after ``--`` (``torchrun --nproc-per-node 8 -m pipeline.train -- --start 0 …``), because
torchrun's parser would read ``--start`` as an abbreviation of its ``--start-method``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from core.distributed import Processes, join_processes
from core.errors import InputError, one_line, positive_int, run_cli
from core.io import atomic_write_text, remove_stale_temporaries
from core.locks import output_lock
from core.precision import set_tf32
from pipeline.checkpoints import save_checkpoint
from pipeline.runconfig import RunConfig
from pipeline.train_data import Batch, DataOrder, batch_source, draw_step, open_latents, rank_slice, scaled_inputs
from pipeline.train_log import (
    FLOP_CONVENTION,
    LOG_NAME,
    PLOT_NAME,
    TensorBoardLog,
    TrainingCost,
    append_record,
    plot_loss_curve,
    progress_line,
    read_log,
    truncate_log,
    window_record,
)
from pipeline.train_state import check_same_latents, checkpoint_state, choose_start_point, init_or_restore
from pipeline.train_step import NetCall, check_precision, train_step
from pipeline.train_stop import StopSignals, TimeBudget, agree_on_stop

EXIT_RESUMABLE = 75
ROLLING_NAME = "rolling.pt"
GRID_CLASSES, GRID_PER_CLASS, GRID_STEPS = 8, 4, 25   # the periodic EMA sample grid (--grid-every)
DEFAULT_LOG_EVERY = 50
DEFAULT_CHECK_EVERY = 10
DEFAULT_NUM_WORKERS = 4


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN or infinite; the rolling checkpoint keeps the last good state."""


@dataclass(frozen=True)
class TrainOptions:
    """How a segment runs (not what it trains).

    ``in_memory=None`` holds latent sets up to 16 GB in memory and streams larger ones with ``num_workers``
    DataLoader workers; ``check_every`` is how often (in steps) ranks agree on signals, the budget and loss
    finiteness (one host sync); ``progress=None`` shows a bar when stderr is a terminal.
    """

    rolling_every_steps: int | None = None
    rolling_every_minutes: float | None = None
    time_budget_minutes: float | None = None
    budget_margin_minutes: float = 2.0
    log_every: int = DEFAULT_LOG_EVERY
    check_every: int = DEFAULT_CHECK_EVERY
    device: str = "auto"
    compile: bool = False
    in_memory: bool | None = None
    num_workers: int = DEFAULT_NUM_WORKERS
    progress: bool | None = None
    loss_plot: bool = True
    tensorboard: Path | None = None
    grid_every: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainOptions:
        """The options of parsed CLI flags (:func:`_parser`)."""
        return cls(
            rolling_every_steps=args.rolling_every_steps, rolling_every_minutes=args.rolling_every_minutes,
            time_budget_minutes=args.time_budget_minutes, budget_margin_minutes=args.budget_margin_minutes,
            log_every=args.log_every, check_every=args.check_every, device=args.device, compile=args.compile,
            in_memory={"auto": None, "yes": True, "no": False}[args.in_memory], num_workers=args.num_workers,
            progress=args.progress, loss_plot=args.loss_plot, tensorboard=args.tensorboard,
            grid_every=args.grid_every,
        )


# --------------------------------------------------------------------------------------------
# The segment
# --------------------------------------------------------------------------------------------


def train(
    run_config: Mapping[str, Any] | RunConfig,
    start: int,
    stop: int,
    out: str | os.PathLike,
    init: str | os.PathLike | None = None,
    rolling_dir: str | os.PathLike = "rolling",
    log_dir: str | os.PathLike = "logs",
    options: TrainOptions | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train ``run_config`` from step ``start`` to ``stop`` and write the milestone checkpoint ``out``.

    ``overrides`` are :class:`TrainOptions` fields replacing those of ``options``. Resumes from
    ``rolling_dir/rolling.pt`` when it matches (see :func:`choose_start_point`), else from ``init``
    (required when ``start > 0``). Returns a summary whose ``status`` is ``completed`` (``out`` written),
    ``signal`` or ``time_budget`` (rolling checkpoint written; rerun to continue). Raises
    :class:`NonFiniteLossError` on a NaN/inf loss or gradient.
    """
    options = dataclasses.replace(options or TrainOptions(), **overrides)
    run = run_config if isinstance(run_config, RunConfig) else RunConfig.from_json(run_config)
    check_precision(run)
    if not 0 <= start < stop:
        raise InputError(f"--start/--stop: need 0 ≤ start < stop, got {start} → {stop}")
    rolling = Path(rolling_dir) / ROLLING_NAME
    first_rank = int(os.environ.get("RANK", "0")) == 0  # one lock per job; torchrun stops the others if it fails
    guard = output_lock(out, rolling, Path(log_dir) / LOG_NAME) if first_rank else contextlib.nullcontext()
    with guard:
        return _train_locked(run, start, stop, out, init, rolling, log_dir, options)


def _train_locked(run: RunConfig, start: int, stop: int, out: str | os.PathLike, init: str | os.PathLike | None,
                  rolling: Path, log_dir: str | os.PathLike, options: TrainOptions) -> dict[str, Any]:
    ctx = join_processes(options.device)
    try:
        with StopSignals() as signals:
            budget = TimeBudget(options.time_budget_minutes, options.budget_margin_minutes)
            segment = _Segment(run, start, stop, Path(out), Path(init) if init else None, rolling,
                               Path(log_dir), ctx, signals, budget, options)
            return segment.run()
    finally:
        ctx.close()


class _Segment:
    """One segment's data, state, log and checkpoints; :meth:`run` trains it."""

    def __init__(
        self, run: RunConfig, start: int, stop: int, out: Path, init: Path | None, rolling: Path, log_dir: Path,
        ctx: Processes, signals: StopSignals, budget: TimeBudget, options: TrainOptions,
    ):
        self.run_cfg, self.start, self.stop, self.out, self.rolling = run, start, stop, out, rolling
        self.ctx, self.signals, self.budget, self.options = ctx, signals, budget, options
        device = ctx.device
        self.part = rank_slice(run.global_batch, ctx.world_size, ctx.rank)
        if device.type == "cuda":
            set_tf32(run.tf32)
        if run.latents is None:
            raise ValueError("the run config has no 'latents' folder")
        self.data = open_latents(run.latents)
        if run.flip and not self.data.has_flipped:
            raise ValueError(f"the run asks for flips but {self.data.folder} has no flipped latents "
                             f"(precompute them with --flip)")
        self.multiplier = run.input_multiplier(self.data.data_std)
        self.schedule, self.loss_cfg = run.build_schedule(), run.loss_config()
        self.config = run.to_json()  # what checkpoints store as the run's config

        ckpt, self.resumed_from = choose_start_point(run, start, stop, init, rolling)
        if ckpt is not None:
            check_same_latents(ckpt, self.resumed_from, self.data.settings_sha256)
        self.model, self.ema, self.opt, self.step = init_or_restore(run, ckpt, device)
        self.resumed_step = self.step
        del ckpt
        self.net_call = NetCall(self._forward(options.compile), self.model)

        self.log_path, self.plot_path = log_dir / LOG_NAME, log_dir / PLOT_NAME
        if ctx.is_main:
            log_dir.mkdir(parents=True, exist_ok=True)
            truncate_log(self.log_path, self.resumed_step)
            remove_stale_temporaries(rolling, out)

        self.order = DataOrder(run.seed, self.data.num_items, run.global_batch)
        self.source = batch_source(self.data, device, run.flip, options.in_memory, options.num_workers)
        self.global_shape = (run.global_batch, *self.data.latent_shape)

        show_bar = ctx.is_main and (sys.stderr.isatty() if options.progress is None else options.progress)
        self.bar = tqdm(total=stop - start, initial=self.step - start, desc=f"train {start}→{stop}", unit="it",
                        disable=not show_bar, dynamic_ncols=True, file=sys.stderr)
        self.lines = ctx.is_main and not show_bar  # job logs (no terminal): a plain line per log window
        self.cost = TrainingCost.of(run.network, run.precision, run.tf32, device)
        if ctx.is_main:
            print(f"train: {self.cost.flops_per_image / 1e9:.4g} GFLOP per training image ({FLOP_CONVENTION})",
                  file=sys.stderr)
        self.tensorboard = TensorBoardLog(options.tensorboard, self.resumed_step) \
            if ctx.is_main and options.tensorboard is not None else None
        self.sums: dict[str, torch.Tensor] = {}
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.segment_began = self.last_save = self.window_began = time.monotonic()
        self.window_steps, self.status, self.last_record, self.last_good = 0, "completed", None, self.resumed_from

    def _forward(self, compile: bool) -> Any:
        """The model's forward, DDP-wrapped across ranks and compiled when asked."""
        forward: Any = self.model
        device = self.ctx.device
        if self.ctx.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            forward = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None,
                                              broadcast_buffers=False)
        if compile:
            require_compiler(device)
            forward = torch.compile(forward)
        return forward

    def run(self) -> dict[str, Any]:
        """Steps until ``stop``, a stop request or a non-finite loss; then the milestone and the summary."""
        batches = self.source.batches(self.order, self.step, self.stop, self.part)
        try:
            while self.step < self.stop:
                self._train_one(next(batches))
                if self._step_boundary():
                    break
        finally:
            batches.close()
            self.bar.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
        return self._finish()

    def _train_one(self, batch: Batch) -> None:
        run, part, step = self.run_cfg, self.part, self.step
        draw, flips, eps = draw_step(run.seed, step, self.global_shape, self.schedule, self.loss_cfg, run.flip,
                                     self.ctx.device, posterior=self.data.distribution)
        x = scaled_inputs(batch.latents, batch.flipped, None if flips is None else flips[part], self.multiplier,
                          batch.logvar, batch.flipped_logvar, None if eps is None else eps[part])
        stats = train_step(self.net_call, self.model, self.ema, self.opt, x, batch.labels,
                           draw.slice(part.start, part.stop), self.schedule, self.loss_cfg, run)
        bad = ~(torch.isfinite(stats["loss"]) & torch.isfinite(stats["grad_norm"]))
        first_bad = self.first_bad
        self.first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step), first_bad)
        for key, value in stats.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.step += 1
        self.window_steps += 1
        self.bar.update(1)

    def _step_boundary(self) -> bool:
        """Log, save and stop where due after a step; True ends the loop. At least one step always runs."""
        ctx, options, step = self.ctx, self.options, self.step
        now = time.monotonic()
        self.budget.step_seconds = (now - self.window_began) / self.window_steps
        interval = options.check_every if ctx.world_size > 1 else 1
        wants_stop = 1 if self.signals.received else 2 if self.budget.exhausted(now, interval) else 0
        minutes = options.rolling_every_minutes
        time_due = minutes is not None and now - self.last_save >= minutes * 60
        steps_due = options.rolling_every_steps is not None and step % options.rolling_every_steps == 0
        log_due = step % options.log_every == 0 or step == self.stop
        grid_due = options.grid_every is not None and step % options.grid_every == 0 and step < self.stop
        scheduled = log_due or steps_due or grid_due or step % options.check_every == 0
        if ctx.world_size == 1:  # the ranks of a group only meet at step-determined boundaries
            scheduled = scheduled or bool(wants_stop) or time_due
        if not scheduled:
            return False
        wants_stop, time_due, bad_step = agree_on_stop(ctx, wants_stop, time_due, self.first_bad)
        if bad_step >= 0:
            raise NonFiniteLossError(_non_finite_message(bad_step, self.run_cfg, self.last_good))
        if log_due or wants_stop:
            self._log_window()
        if step == self.stop:
            return True
        if wants_stop or steps_due or time_due or grid_due:
            self._save(self.rolling)
            self.last_save, self.last_good = time.monotonic(), self.rolling
        if grid_due and not wants_stop:
            self._sample_grid()
        if wants_stop:
            self.status = "signal" if wants_stop == 1 else "time_budget"
            return True
        return False

    def _log_window(self) -> None:
        self.last_record = record = window_record(
            self.sums, self.window_steps, self.window_began, self.step, global_batch=self.run_cfg.global_batch,
            num_items=self.data.num_items, lr=self.opt.param_groups[0]["lr"], device=self.ctx.device,
            world_size=self.ctx.world_size, segment_began=self.segment_began, cost=self.cost)
        if self.ctx.is_main:
            append_record(self.log_path, record)
            self.bar.set_postfix(loss=f"{record['loss']:.4g}")
            if self.lines:
                print(progress_line(record, self.start, self.stop, self.resumed_step), file=sys.stderr, flush=True)
            if self.tensorboard is not None:
                self.tensorboard.write(record)
        self.sums, self.window_steps, self.window_began = {}, 0, time.monotonic()

    def _sample_grid(self) -> None:
        """An EMA sample grid of the rolling checkpoint just saved: ``log_dir/grids/step<N>.png`` (rank 0; the
        other ranks wait). Its noise comes from its own seed, so training's random streams are untouched; its
        time and memory stay out of the log window's rates and peak memory; a grid that fails (e.g. a decoder
        that cannot be loaded) is one warning line, never the end of the segment."""
        began = time.monotonic()
        device = self.ctx.device
        if self.ctx.is_main:
            from pipeline.sample_grid import sample_grid

            out = self.log_path.parent / "grids" / f"step{self.step:08d}.png"
            try:
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    sample_grid(self.rolling, out,
                                classes=list(range(min(GRID_CLASSES, int(self.run_cfg.network["num_classes"])))),
                                per_class=GRID_PER_CLASS, cfg_scale=1.0, sampler="heun", steps=GRID_STEPS, seed=0,
                                latents_index=Path(self.data.folder) / "index.json", device=str(device),
                                tf32=self.run_cfg.tf32)
            except Exception as err:  # noqa: BLE001 - a grid is a by-product: training goes on
                print(f"warning: EMA sample grid {out} not written ({type(err).__name__}: {err})", file=sys.stderr)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
        self.ctx.barrier()
        self.window_began += time.monotonic() - began

    def _save(self, path: Path) -> None:
        began = time.monotonic()
        if self.ctx.is_main:
            save_checkpoint(path, checkpoint_state(
                self.step, self.model, self.ema, self.opt, self.config, self.run_cfg.seed, self.data.data_std,
                self.ctx.world_size, self.run_cfg.global_batch, self.data.settings_sha256))
        self.ctx.barrier()
        self.budget.save_seconds = max(self.budget.save_seconds, time.monotonic() - began)

    def _finish(self) -> dict[str, Any]:
        """Write the milestone (when completed) and the loss plot; the segment's summary."""
        ctx, status, step, rolling, out = self.ctx, self.status, self.step, self.rolling, self.out
        if status == "completed":
            self._save(out)
            if ctx.is_main and self.last_good == rolling:  # only our own rolling save (the milestone supersedes it)
                rolling.unlink(missing_ok=True)
        if ctx.is_main and self.options.loss_plot:
            plot_loss_curve(read_log(self.log_path), self.plot_path,
                            title=f"{self.run_cfg.network_name} — {self.run_cfg.config_hash()}")
        ctx.barrier()  # exit together: torchrun stops the other workers as soon as one exits non-zero
        seconds = time.monotonic() - self.segment_began
        summary = {
            "status": status, "start": self.start, "stop": self.stop, "step": step,
            "resumed_step": self.resumed_step, "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "out": str(out) if status == "completed" else None,
            "rolling": str(rolling) if status != "completed" else None,
            "steps_run": step - self.resumed_step, "seconds": seconds, "world_size": ctx.world_size,
            "last_record": self.last_record,
        }
        if ctx.is_main:
            rate = summary["steps_run"] / seconds if seconds > 0 else float("nan")
            loss = f"{self.last_record['loss']:.4g}" if self.last_record else "n/a"
            where = out if status == "completed" else rolling
            print(f"train: {status}: steps {self.resumed_step}→{step} of {self.start}→{self.stop} in {seconds:.1f}s "
                  f"({rate:.2f} it/s, world {ctx.world_size}), loss {loss}, wrote {where}", file=sys.stderr)
        return summary


def require_compiler(device: torch.device) -> None:
    """``torch.compile``'s default backend (inductor) needs a C++ compiler for CPU code and Triton for CUDA code:
    a missing one is one :class:`InputError` line up front, not a traceback at the first step."""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            raise InputError("--compile (compile: true) on CUDA needs Triton (pip install triton), or set "
                             "compile: false") from None
        return
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None and shutil.which("c++") is None:
        raise InputError(f"--compile (compile: true) on the CPU needs a C++ compiler ({compiler} or c++ on PATH) "
                         "for torch.compile's inductor backend, or set compile: false")


def _non_finite_message(bad_step: int, run: RunConfig, last_good: Path | None) -> str:
    return (
        f"non-finite loss at step {bad_step} (the update from state {bad_step} to {bad_step + 1}; "
        f"run {run.network_name}, config {run.config_hash()}, latents {run.latents}); "
        f"last good checkpoint: {last_good if last_good else 'none (the segment started from scratch)'}; "
        f"nothing was saved after the bad step"
    )


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _read_run_config(text: str | None, path: Path | None) -> dict[str, Any]:
    """The run config of ``--run-json`` text or the ``--run-config`` file, checked (one line if it is bad)."""
    source = "--run-json" if text is not None else str(path)
    try:
        run = json.loads(text if text is not None else path.read_text())
    except FileNotFoundError:
        raise InputError(f"{source}: run config file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{source}: not a readable JSON run config ({one_line(err)})") from None
    if not isinstance(run, dict):
        raise InputError(f"{source}: a run config is a JSON object, not {type(run).__name__}")
    RunConfig.from_json(run)  # every key checked before anything is written
    return run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.train",
        description="Train one segment of a run (plain process or torchrun). Exit 0: milestone written; "
                    f"{EXIT_RESUMABLE}: stopped by a signal or the time budget, rerun to resume; "
                    "1: error (e.g. non-finite loss).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-config", type=Path, help="run config JSON file (pipeline.runconfig)")
    source.add_argument("--run-json", help="the run config as JSON text (as the rules pass it)")
    parser.add_argument("--save-run-config", type=Path,
                        help="also write the run config here (rank 0, atomically, one sorted line)")
    parser.add_argument("--start", required=True, type=int, help="step this segment starts from")
    parser.add_argument("--stop", required=True, type=int, help="milestone step this segment trains to")
    parser.add_argument("--init", type=Path, help="milestone checkpoint at --start (required when start > 0)")
    parser.add_argument("--out", required=True, type=Path, help="milestone checkpoint to write at --stop")
    parser.add_argument("--rolling-dir", required=True, type=Path, help="folder of rolling.pt")
    parser.add_argument("--log-dir", required=True, type=Path, help="folder of train.jsonl and loss.png")
    parser.add_argument("--rolling-every-steps", type=positive_int)
    parser.add_argument("--rolling-every-minutes", type=float, default=30.0)
    parser.add_argument("--time-budget-minutes", type=float, help="stop (exit 75) before this wall time")
    parser.add_argument("--budget-margin-minutes", type=float, default=2.0)
    parser.add_argument("--log-every", type=positive_int, default=DEFAULT_LOG_EVERY)
    parser.add_argument("--check-every", type=positive_int, default=DEFAULT_CHECK_EVERY)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--in-memory", choices=["auto", "yes", "no"], default="auto")
    parser.add_argument("--num-workers", type=int, default=DEFAULT_NUM_WORKERS)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--tensorboard", type=Path, default=None,
                        help="also write TensorBoard event files of the log records to this folder")
    parser.add_argument("--grid-every", type=positive_int, default=None,
                        help=f"every N steps, an EMA sample grid in log-dir/grids/ ({GRID_CLASSES} classes x "
                             f"{GRID_PER_CLASS}, Heun {GRID_STEPS} steps, cfg 1)")
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
    run = _read_run_config(args.run_json, args.run_config)
    if args.save_run_config is not None and int(os.environ.get("RANK", 0)) == 0:
        atomic_write_text(args.save_run_config, json.dumps(run, sort_keys=True) + "\n")
    try:
        summary = train(run, args.start, args.stop, args.out, args.init, args.rolling_dir, args.log_dir,
                        TrainOptions.from_args(args))
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0 if summary["status"] == "completed" else EXIT_RESUMABLE


if __name__ == "__main__":
    sys.exit(run_cli(main))
