"""Is the harness's training step as fast as a hand-written PyTorch loop doing the same work? (issue 5)

Both train the same mini-scale FasterDiT run (the mini scale's network on the embedded digits: flow linear,
v-prediction, lognorm(0, 1) timesteps, direction loss, class dropout 0.1, AdamW, grad-norm clip 1.0,
EMA) from the same initial weights:

* harness: the engine's per-step work — :class:`pipeline.train_data.InMemoryBatches` over
  :class:`pipeline.train_data.DataOrder`, :func:`pipeline.train_data.draw_step`,
  :func:`pipeline.train_data.scaled_inputs`, :func:`pipeline.train_step.train_step` (Algorithm 2 loss,
  backward, clip, AdamW, EMA) and the loss-statistics
  accumulation of :func:`pipeline.train.train`;
* plain: twenty lines of textbook PyTorch (random batch indices, logit-normal t, noise, label drop,
  interpolation, MSE + cosine direction loss, backward, clip, AdamW, an EMA loop).

Both run on one thread, as the mini-scale rules train. Rounds alternate (harness first in even rounds,
plain first in odd ones) so that load from other processes hits both alike; the reported ratio is the
median over rounds of the per-round ratio (the medians of each loop's step time are reported too).
:func:`pipeline.train.train` itself is also timed end to end for two lengths (the difference gives its
per-step cost; the rest is fixed cost: model build, checkpoint, loss plot), and its checkpoint is kept for
the sampling benchmark.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import Context, Result, timed

ROUNDS = 7
STEPS_PER_ROUND = 15
THREADS = 1          # as the mini-scale rules run training (OMP_NUM_THREADS=1); less sensitive to other load
TRAIN_SHORT, TRAIN_LONG = 20, 120


def digits_latents(ctx: Context) -> Path:
    """The digits train split through the identity autoencoder (cached in the scratch folder)."""
    if "digits_latents" not in ctx.shared:
        from pipeline.latents import precompute_latents

        folder = ctx.scratch / "latents-digits-noflip"
        precompute_latents({"dataset": "digits", "split": "train"}, {"name": "identity"}, folder, flip=False,
                           progress=False)
        ctx.shared["digits_latents"] = folder
    return ctx.shared["digits_latents"]


def mini_fasterdit_run(latents: Path) -> dict[str, Any]:
    """The mini scale's FasterDiT run of Table 1 (its network and batch), pointed at ``latents``."""
    from pipeline.budget import load_scale_config
    from pipeline.registry import load_registry

    registry, _ = load_registry(load_scale_config("mini"))
    cell = next(c for c in registry.cells["table1"] if c.seed == 0)
    run = copy.deepcopy(registry.runs[cell.run_id])
    run["latents"] = str(latents)
    return run


class HarnessLoop:
    """The training engine's per-step work, minus logging and checkpoint I/O."""

    def __init__(self, run: dict[str, Any], device: torch.device):
        from models.ema import make_ema
        from pipeline.runconfig import RunConfig
        from pipeline.train_data import DataOrder, InMemoryBatches, open_latents
        from pipeline.train_state import build_optimizer

        self.run = RunConfig.from_json(run)
        self.device = device
        data = open_latents(self.run.latents)
        self.model = self.run.build_network().to(device).train()
        self.ema = make_ema(self.model)
        self.opt = build_optimizer(self.run, self.model)
        self.schedule, self.cfg = self.run.build_schedule(), self.run.loss_config()
        self.multiplier = self.run.input_multiplier(data.data_std)
        self.batch = self.run.global_batch
        self.shape = (self.batch, *data.latent_shape)
        self.source = InMemoryBatches(data, device, False)
        self.order = DataOrder(self.run.seed, data.num_items, self.batch)
        self.step = 0
        self.sums: dict[str, torch.Tensor] = {}
        self._batches = self.source.batches(self.order, 0, 10**9, slice(0, self.batch))

    def steps(self, n: int) -> None:
        from pipeline.train_data import draw_step, scaled_inputs
        from pipeline.train_step import train_step

        for _ in range(n):
            latents, labels, flipped, _, _ = next(self._batches)
            draw, flips, _ = draw_step(self.run.seed, self.step, self.shape, self.schedule, self.cfg,
                                       False, self.device)
            x = scaled_inputs(latents, flipped, flips, self.multiplier)
            stats = train_step(self.model, self.model, self.ema, self.opt, x, labels, draw, self.schedule,
                               self.cfg, self.run)
            for key, value in stats.items():
                self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
            self.step += 1


class PlainLoop:
    """The same training written as a plain PyTorch loop."""

    def __init__(self, run: dict[str, Any], device: torch.device):
        from pipeline.latent_reader import load_latents
        from pipeline.runconfig import RunConfig, input_multiplier, with_defaults

        run = with_defaults(run)
        latents, labels, _, index = load_latents(run["latents"])
        self.x_all = (latents * input_multiplier(run, float(index["data_std"]))).to(device)
        self.y_all = labels.to(device)
        self.model = RunConfig.from_json(run).build_network().to(device).train()
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        opt = run["optimizer"]
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=opt["lr"], betas=tuple(opt["betas"]),
                                     weight_decay=opt["weight_decay"],  # the fused kernel, as the harness uses
                                     fused=True if torch.device(device).type in ("cpu", "cuda") else None)
        self.clip, self.decay = opt["grad_clip"], float(run["ema_decay"])
        self.batch, self.num_classes = int(run["global_batch"]), self.model.num_classes
        self.drop = float(run["network"].get("class_dropout_prob", 0.1))
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.device = device

    def steps(self, n: int) -> None:
        g, device = self.generator, self.device
        for _ in range(n):
            idx = torch.randint(0, len(self.y_all), (self.batch,), generator=g, device=device)
            x, y = self.x_all[idx], self.y_all[idx]
            t = torch.sigmoid(torch.randn(self.batch, generator=g, device=device))          # lognorm(0, 1)
            noise = torch.randn(x.shape, generator=g, device=device)
            drop = torch.rand(self.batch, generator=g, device=device) < self.drop
            y = torch.where(drop, self.num_classes, y)
            tt = t.view(-1, 1, 1, 1)
            x_t = tt * x + (1 - tt) * noise                                                  # flow linear
            target = x - noise                                                               # velocity
            pred = self.model(x_t, t, y)
            loss = ((pred - target) ** 2).mean() + (1 - F.cosine_similarity(pred, target, dim=1)).mean()
            loss.backward()
            if self.clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                for p_ema, p in zip(self.ema.parameters(), self.model.parameters()):
                    p_ema.mul_(self.decay).add_(p, alpha=1 - self.decay)


def _per_step(ctx: Context, loop: Any, n: int) -> float:
    return timed(ctx, lambda: loop.steps(n))[0] / n


def compare_loops(ctx: Context, run: dict[str, Any]) -> dict[str, Any]:
    harness, plain = HarnessLoop(run, ctx.device), PlainLoop(run, ctx.device)
    harness.steps(3)
    plain.steps(3)
    times: dict[str, list[float]] = {"harness": [], "plain": []}
    for r in range(ROUNDS):
        order = [("harness", harness), ("plain", plain)]
        for name, loop in order if r % 2 == 0 else order[::-1]:
            times[name].append(_per_step(ctx, loop, STEPS_PER_ROUND))
    h, p = statistics.median(times["harness"]), statistics.median(times["plain"])
    ratios = [a / b for a, b in zip(times["harness"], times["plain"])]
    return {"harness_step_s": h, "plain_step_s": p, "ratio_harness_over_plain": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)], "rounds": ROUNDS, "steps_per_round": STEPS_PER_ROUND,
            "threads": THREADS, "per_round_s": times}


def time_train_segments(ctx: Context, run: dict[str, Any]) -> dict[str, Any]:
    """pipeline.train.train for two lengths from scratch; keeps the longer run's checkpoint."""
    from pipeline.train import train

    seconds = {}
    for steps in (TRAIN_SHORT, TRAIN_LONG):
        root = ctx.scratch / f"train-{steps}"
        began = time.perf_counter()
        train(run, 0, steps, root / "ckpt.pt", rolling_dir=root / "rolling", log_dir=root / "log",
              log_every=50, device=str(ctx.device), progress=False, loss_plot=False)  # as mini's jobs
        ctx.sync()
        seconds[steps] = time.perf_counter() - began
    per_step = (seconds[TRAIN_LONG] - seconds[TRAIN_SHORT]) / (TRAIN_LONG - TRAIN_SHORT)
    ctx.shared["checkpoint"] = ctx.scratch / f"train-{TRAIN_LONG}" / "ckpt.pt"
    return {"segment_seconds": {str(k): v for k, v in seconds.items()}, "train_step_s": per_step,
            "train_it_s": 1 / per_step if per_step > 0 else None,
            "fixed_seconds": seconds[TRAIN_SHORT] - TRAIN_SHORT * per_step}


def run(ctx: Context) -> Result:
    result = Result("train_vs_plain")
    train_run = mini_fasterdit_run(digits_latents(ctx))
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        loops = compare_loops(ctx, train_run)
        segments = time_train_segments(ctx, train_run)
    finally:
        torch.set_num_threads(threads)
    result.data = {"network": train_run["network"], "global_batch": train_run["global_batch"],
                   "recipe": "FasterDiT (flow linear, v, lognorm(0,1), direction loss)", **loops, **segments}
    result.row(f"harness step ({train_run['network']['name']} b{train_run['global_batch']}, {THREADS} thread)",
               1000 * loops["harness_step_s"], "ms")
    result.row("plain PyTorch step (1 thread)", 1000 * loops["plain_step_s"], "ms")
    low, high = loops["ratio_range"]
    result.row("harness / plain", loops["ratio_harness_over_plain"],
               f"(1.00 = as fast; rounds {low:.2f}-{high:.2f})")
    result.row("pipeline.train.train per step", 1000 * segments["train_step_s"], "ms (+ "
               f"{segments['fixed_seconds']:.1f} s fixed per segment)")
    return result
