"""Training data: which items and random numbers each step uses, and the batches fed to the loop.

* data order: epoch ``e`` is ``randperm(N)`` seeded by ``derive_seed(seed, "epoch", e)``; the global batch
  of step ``s`` is items ``s·B … (s+1)·B − 1`` of the concatenated epoch stream, so the data position is a
  function of the step alone (:class:`DataOrder`);
* every random number of step ``s`` (times, noise, label drops, flips and, for a latent folder of posterior
  distributions, the posterior noise) is drawn for the whole global batch from one generator seeded by
  ``derive_seed(seed, "step", s)`` and each rank takes its contiguous slice (:func:`rank_slice`), so the
  numbers do not depend on the world size (:func:`draw_step`);
* a distribution folder (``posterior: distribution``) gives each draw a fresh posterior sample
  ``mean + exp(0.5·logvar)·ε`` (:func:`scaled_inputs`): the same image seen at two steps gets two samples,
  as in DiT, while resuming stays bit-exact (``ε`` is a function of ``(seed, step)``).
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from core.io import derive_seed
from models.losses import LossConfig, TrainingDraw, draw_training_randomness
from models.schedules import Schedule
from pipeline.latent_reader import LatentDataset, collate_latents, holds_distribution, load_latent_set, read_index

IN_MEMORY_LIMIT_GB = 16.0
DEVICE_DATA_LIMIT_GB = 1.0


def rank_slice(global_batch: int, world_size: int, rank: int) -> slice:
    """The contiguous part of the global batch that ``rank`` trains on."""
    if global_batch % world_size:
        raise ValueError(f"global batch {global_batch} is not divisible by the world size {world_size}; "
                         f"choose a number of processes that divides it")
    local = global_batch // world_size
    return slice(rank * local, (rank + 1) * local)


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


class StepDraw(NamedTuple):
    """Every random number of one step's global batch (see :func:`draw_step`)."""

    draw: TrainingDraw
    flips: torch.Tensor | None
    posterior_noise: torch.Tensor | None


def draw_step(
    seed: int, step: int, global_shape: tuple[int, ...], schedule: Schedule, cfg: LossConfig, flip: bool,
    device: torch.device, posterior: bool = False,
) -> StepDraw:
    """Times, noise, label drops, flip choices (when ``flip``) and posterior noise ε (when ``posterior``: the
    latents are posterior distributions) for the whole global batch of ``step``, drawn in that order."""
    generator = step_generator(seed, step, device)
    draw = draw_training_randomness(global_shape, schedule, cfg, generator, device)
    flips = torch.rand(global_shape[0], generator=generator, device=device) < 0.5 if flip else None
    eps = torch.randn(global_shape, generator=generator, device=device) if posterior else None
    return StepDraw(draw, flips, eps)


@dataclass
class LatentData:
    """A latent folder as the training loop sees it."""

    folder: Path
    num_items: int
    latent_shape: tuple[int, ...]
    data_std: float
    has_flipped: bool
    nbytes: int
    distribution: bool = False
    settings_sha256: str | None = None


def open_latents(folder: str | os.PathLike) -> LatentData:
    """The facts about a latent folder the loop needs (from its checked ``index.json``)."""
    index = read_index(folder)
    shape = tuple(int(v) for v in index["latent_shape"])
    n = int(index["num_items"])
    flipped = bool(index["flip"])
    distribution = holds_distribution(index)
    return LatentData(Path(folder), n, shape, float(index["data_std"]), flipped,
                      n * math.prod(shape) * 4 * (2 if flipped else 1) * (2 if distribution else 1), distribution,
                      index.get("settings_sha256"))


class Batch(NamedTuple):
    """One rank's batch: stored latents (posterior means for a distribution folder), labels, the flipped
    latents when the run flips, and the posterior log-variances of a distribution folder."""

    latents: torch.Tensor
    labels: torch.Tensor
    flipped: torch.Tensor | None = None
    logvar: torch.Tensor | None = None
    flipped_logvar: torch.Tensor | None = None


class InMemoryBatches:
    """Rank-local batches from latents held in memory (on the device when small, else pinned host memory)."""

    def __init__(self, data: LatentData, device: torch.device, use_flipped: bool):
        latent_set = load_latent_set(data.folder)
        on_device = device.type == "cpu" or data.nbytes <= DEVICE_DATA_LIMIT_GB * 2**30
        self.store = device if on_device else torch.device("cpu")
        self.device = device

        def stored(tensor: torch.Tensor | None, wanted: bool = True) -> torch.Tensor | None:
            return tensor.to(self.store) if tensor is not None and wanted else None

        self.tensors = Batch(stored(latent_set.latents), stored(latent_set.labels),
                             stored(latent_set.flipped, use_flipped), stored(latent_set.logvar),
                             stored(latent_set.flipped_logvar, use_flipped))

    def batches(self, order: DataOrder, start: int, stop: int, part: slice) -> Iterator[Batch]:
        for step in range(start, stop):
            idx = order.batch_items(step)[part].to(self.store)
            items = [None if v is None else v[idx] for v in self.tensors]
            if self.store != self.device:
                items = [None if v is None else v.pin_memory().to(self.device, non_blocking=True)
                         for v in items]
            yield Batch(*items)


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
        self.dataset = LatentDataset(data.folder, distribution=data.distribution)
        self.device, self.use_flipped, self.num_workers = device, use_flipped, num_workers

    def batches(self, order: DataOrder, start: int, stop: int, part: slice) -> Iterator[Batch]:
        from torch.utils.data import DataLoader

        loader = DataLoader(
            self.dataset, batch_sampler=_StepSampler(order, start, stop, part), num_workers=self.num_workers,
            collate_fn=collate_latents, pin_memory=self.device.type == "cuda",
            worker_init_fn=_ignore_stop_signals if self.num_workers else None,
            prefetch_factor=4 if self.num_workers else None,
        )
        for items in loader:
            batch = Batch(*items)
            if not self.use_flipped:
                batch = batch._replace(flipped=None, flipped_logvar=None)
            yield Batch(*(None if v is None else v.to(self.device, non_blocking=True) for v in batch))


def scaled_inputs(
    latents: torch.Tensor, flipped: torch.Tensor | None, flips: torch.Tensor | None, multiplier: float,
    logvar: torch.Tensor | None = None, flipped_logvar: torch.Tensor | None = None,
    posterior_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Algorithm 2 step 1 input: stored latents (flipped where ``flips`` says so) × the run's multiplier.

    With ``logvar`` the stored latents are posterior means and the input is the posterior sample
    ``mean + exp(0.5·logvar)·posterior_noise`` (flipped mean and log-variance where ``flips`` says so).
    """
    if flips is not None:
        mask = flips.reshape(-1, *[1] * (latents.ndim - 1))
        latents = torch.where(mask, flipped, latents)
        if logvar is not None:
            logvar = torch.where(mask, flipped_logvar, logvar)
    if logvar is not None:
        if posterior_noise is None:
            raise ValueError("posterior log-variances need posterior noise (draw_step(..., posterior=True))")
        latents = latents + torch.exp(0.5 * logvar) * posterior_noise
    return latents * multiplier


def batch_source(
    data: LatentData, device: torch.device, use_flipped: bool, in_memory: bool | None, num_workers: int
) -> InMemoryBatches | LoaderBatches:
    """Latents held in memory (``in_memory=None``: sets up to 16 GB), else streamed by DataLoader workers."""
    if in_memory is None:
        in_memory = data.nbytes <= IN_MEMORY_LIMIT_GB * 2**30
    return (InMemoryBatches(data, device, use_flipped) if in_memory
            else LoaderBatches(data, device, use_flipped, num_workers))
