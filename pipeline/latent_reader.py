"""Latent folders: their on-disk format and the readers training uses (the writer is :mod:`pipeline.latents`).

Layout of a latent folder:

- ``shard-XXXXX.safetensors``: shard ``i`` holds dataset items ``[i·S, min((i+1)·S, N))`` (``S`` =
  shard size, dataset order) as ``latents`` (n, C, h, w) float32, ``labels`` (n,) int64 and, with
  flips on, ``latents_flipped`` (the encoding of the horizontally flipped image). Rank ``r`` of
  ``W`` writes the shards with ``i % W == r``: names come from the global shard index, so ranks
  never collide (fast-DiT issue #14) and every item is encoded exactly once, whatever ``W``.
- ``index.json``: written by rank 0 once every shard exists: counts, shapes, shard list, label
  counts, latent statistics (``data_std`` of Algorithm 2, per-channel mean/std), the autoencoder,
  posterior mode, flip flag, the tensor names and provenance.

Posterior modes of an SD-VAE folder (``index["posterior"]``): ``sample`` stores one frozen posterior
draw per image (and per flip), ``mean`` the posterior mean, and ``distribution`` the posterior itself:
``latents`` is its mean and ``latents_logvar`` (with flips also ``latents_flipped_logvar``) its
log-variance, float32, so that training draws ``mean + exp(0.5·logvar)·ε`` afresh each time it sees an
image (DiT's semantics; the paper's Table 5: features not pre-computed). The statistics of a
distribution folder are those of what training sees: per channel ``E[mean]`` and
``Var[mean] + E[exp(logvar)]``. The identity autoencoder records ``posterior: none``.

Storage: a distribution folder holds twice the floats of a frozen one. ImageNet train (1,281,167
images) at 256 px (latents 4×32×32 float32, 16,384 bytes per image): one copy is 20.99 GB (19.55 GiB);
``sample``/``mean`` take 20.99 GB, or 41.98 GB with flips; ``distribution`` 41.98 GB, or 83.96 GB
(78.20 GiB) with flips. At 128 px divide by 4 (distribution with flips: 20.99 GB), at 512 px multiply by
4 (335.85 GB); labels add 10.2 MB. Sets over 16 GiB are streamed from the shards, not held in memory
(:func:`pipeline.train_data.batch_source`).

:func:`read_index` checks every shard against the index; :func:`load_latent_set` loads a small set whole
(any mode); :func:`load_latents` loads fixed latents only (``sample``, ``mean``, identity) and refuses a
distribution folder, which would otherwise silently train on the posterior mean; :class:`LatentDataset`
reads items lazily from memory-mapped shards (DataLoader workers included).
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.utils.data import Dataset

from core.io import DataSourceError

FORMAT = "fasterdit-latents-v1"
INDEX_NAME = "index.json"
DISTRIBUTION = "distribution"
LatentItem = tuple[torch.Tensor | None, ...]


def tensor_names(flip: bool, distribution: bool) -> list[str]:
    """The tensors every shard of a folder holds, in the order ``index.json`` lists them."""
    names = ["latents", "labels"] + (["latents_flipped"] if flip else [])
    if distribution:
        names += ["latents_logvar"] + (["latents_flipped_logvar"] if flip else [])
    return names


def holds_distribution(index: Mapping[str, Any]) -> bool:
    """True when a folder stores the posterior's mean and log-variance (``posterior: distribution``)."""
    return index.get("posterior") == DISTRIBUTION


def check_mode(index: Mapping[str, Any], out_dir: str | os.PathLike, distribution: bool) -> None:
    """Refuse a folder whose posterior mode is not the one the caller reads (one-line error)."""
    if holds_distribution(index) and not distribution:
        raise DataSourceError(f"{out_dir} holds posterior distributions (posterior: distribution, mean and "
                              f"log-variance), not fixed latents: reading only its mean would train on the "
                              f"posterior mean; read it as a distribution (pipeline.train does)")
    if distribution and not holds_distribution(index):
        raise DataSourceError(f"{out_dir} holds fixed latents (posterior: {index.get('posterior')}), "
                              f"no log-variance to sample from")


def read_index(out_dir: str | os.PathLike) -> dict[str, Any]:
    """``index.json`` of a latent folder, after checking that every shard is there with its size."""
    out_dir = Path(out_dir)
    path = out_dir / INDEX_NAME
    if not path.is_file():
        raise DataSourceError(f"no latent index at {path}; run `python -m pipeline.latents` first")
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT:
        raise DataSourceError(f"{path} has format {index.get('format')!r}, this code reads {FORMAT!r}; "
                              f"recompute the latents with this version")
    for shard in index["shards"]:
        file = out_dir / shard["file"]
        if not file.is_file() or file.stat().st_size != shard["bytes"]:
            raise DataSourceError(f"latent shard {file} is missing or has changed since {path} was written")
    return index


@dataclass
class LatentSet:
    """A whole latent folder in memory; the log-variances are ``None`` unless it holds distributions."""

    latents: torch.Tensor
    labels: torch.Tensor
    flipped: torch.Tensor | None
    logvar: torch.Tensor | None
    flipped_logvar: torch.Tensor | None
    index: dict[str, Any]


def load_latent_set(out_dir: str | os.PathLike) -> LatentSet:
    """Every tensor of a latent folder of any posterior mode, in memory (small scales)."""
    index = read_index(out_dir)
    loaded = [load_file(str(Path(out_dir) / shard["file"])) for shard in index["shards"]]

    def joined(name: str, present: bool) -> torch.Tensor | None:
        return torch.cat([part[name] for part in loaded]) if present else None

    flip, distribution = bool(index["flip"]), holds_distribution(index)
    return LatentSet(joined("latents", True), joined("labels", True), joined("latents_flipped", flip),
                     joined("latents_logvar", distribution), joined("latents_flipped_logvar", flip and distribution),
                     index)


def load_latents(out_dir: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict]:
    """Fixed latents in memory: ``(latents, labels, latents_flipped or None, index)``; a distribution
    folder is refused (use :func:`load_latent_set`)."""
    index = read_index(out_dir)
    check_mode(index, out_dir, distribution=False)
    latent_set = load_latent_set(out_dir)
    return latent_set.latents, latent_set.labels, latent_set.flipped, latent_set.index


class LatentDataset(Dataset):
    """Random access to a latent folder without loading it: ``ds[i] -> (latent, label, flipped|None)``,
    or with ``distribution=True`` (a distribution folder) ``(mean, label, flipped_mean|None, logvar,
    flipped_logvar|None)``; a folder of the other mode is refused (:func:`check_mode`).

    Shards are opened lazily (memory-mapped by safetensors) in each process, so the dataset can be
    handed to DataLoader workers. Use :func:`collate_latents` when flips are off (``None`` entries).
    """

    def __init__(self, out_dir: str | os.PathLike, distribution: bool = False):
        self.out_dir = Path(out_dir)
        self.index = read_index(self.out_dir)
        check_mode(self.index, self.out_dir, distribution)
        self._starts = [shard["start"] for shard in self.index["shards"]]
        self._flip = bool(self.index["flip"])
        self._distribution = bool(distribution)
        labels = []
        for shard in self.index["shards"]:
            with safe_open(str(self.out_dir / shard["file"]), framework="pt") as handle:
                labels.append(handle.get_tensor("labels"))
        self.labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return int(self.index["num_items"])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}

    def _handle(self, shard: int) -> Any:
        if shard not in self._handles:
            file = self.out_dir / self.index["shards"][shard]["file"]
            self._handles[shard] = safe_open(str(file), framework="pt")
        return self._handles[shard]

    def __getitem__(self, i: int) -> LatentItem:
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} outside a latent set of {len(self)}")
        i %= len(self)
        shard = bisect.bisect_right(self._starts, i) - 1
        offset = i - self._starts[shard]
        handle = self._handle(shard)

        def row(name: str, present: bool) -> torch.Tensor | None:
            return handle.get_slice(name)[offset: offset + 1][0] if present else None

        item = (row("latents", True), self.labels[i], row("latents_flipped", self._flip))
        if not self._distribution:
            return item
        return (*item, row("latents_logvar", True), row("latents_flipped_logvar", self._flip))


def collate_latents(items: Sequence[LatentItem]) -> LatentItem:
    """Stack a list of :class:`LatentDataset` items entry by entry; ``None`` entries (no flips) stay ``None``."""
    return tuple(None if entry is None else torch.stack([item[k] for item in items])
                 for k, entry in enumerate(items[0]))
