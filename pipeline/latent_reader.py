"""Latent folders: their on-disk format and the readers training uses (the writer is :mod:`pipeline.latents`).

Layout of a latent folder:

- ``shard-XXXXX.safetensors``: shard ``i`` holds dataset items ``[i·S, min((i+1)·S, N))`` (``S`` =
  shard size, dataset order) as ``latents`` (n, C, h, w) float32, ``labels`` (n,) int64 and, with
  flips on, ``latents_flipped`` (the encoding of the horizontally flipped image). Rank ``r`` of
  ``W`` writes the shards with ``i % W == r``: names come from the global shard index, so ranks
  never collide (fast-DiT issue #14) and every item is encoded exactly once, whatever ``W``.
- ``index.json``: written by rank 0 once every shard exists: counts, shapes, shard list, label
  counts, latent statistics (``data_std`` of Algorithm 2, per-channel mean/std), the autoencoder,
  posterior mode, flip flag and provenance.

:func:`read_index` checks every shard against the index; :func:`load_latents` loads a small set whole;
:class:`LatentDataset` reads items lazily from memory-mapped shards (DataLoader workers included).
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.utils.data import Dataset

from core.io import DataSourceError

FORMAT = "fasterdit-latents-v1"
INDEX_NAME = "index.json"
LatentItem = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def read_index(out_dir: str | os.PathLike) -> dict[str, Any]:
    """``index.json`` of a latent folder, after checking that every shard is there with its size."""
    out_dir = Path(out_dir)
    path = out_dir / INDEX_NAME
    if not path.is_file():
        raise DataSourceError(f"no latent index at {path}; run `python -m pipeline.latents` first")
    index = json.loads(path.read_text())
    for shard in index["shards"]:
        file = out_dir / shard["file"]
        if not file.is_file() or file.stat().st_size != shard["bytes"]:
            raise DataSourceError(f"latent shard {file} is missing or has changed since {path} was written")
    return index


def load_latents(out_dir: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict]:
    """Everything in memory (small scales): ``(latents, labels, latents_flipped or None, index)``."""
    index = read_index(out_dir)
    loaded = [load_file(str(Path(out_dir) / shard["file"])) for shard in index["shards"]]
    latents = torch.cat([part["latents"] for part in loaded])
    labels = torch.cat([part["labels"] for part in loaded])
    flipped = torch.cat([part["latents_flipped"] for part in loaded]) if index["flip"] else None
    return latents, labels, flipped, index


class LatentDataset(Dataset):
    """Random access to a latent folder without loading it: ``ds[i] -> (latent, label, flipped|None)``.

    Shards are opened lazily (memory-mapped by safetensors) in each process, so the dataset can be
    handed to DataLoader workers. Use :func:`collate_latents` when flips are off (``None`` entries).
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.index = read_index(self.out_dir)
        self._starts = [shard["start"] for shard in self.index["shards"]]
        self._flip = bool(self.index["flip"])
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
        latent = handle.get_slice("latents")[offset: offset + 1][0]
        flipped = handle.get_slice("latents_flipped")[offset: offset + 1][0] if self._flip else None
        return latent, self.labels[i], flipped


def collate_latents(items: Sequence[LatentItem]) -> LatentItem:
    """Stack a list of :class:`LatentDataset` items; the flipped entry stays ``None`` when flips are off."""
    latents = torch.stack([item[0] for item in items])
    labels = torch.stack([item[1] for item in items])
    flipped = None if items[0][2] is None else torch.stack([item[2] for item in items])
    return latents, labels, flipped
