"""Contiguous shards of an indexed set and their assignment to ranks (latents and sample sets alike)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` holds items ``[start, stop)``; its file is ``shard-XXXXX`` + ``suffix``."""

    index: int
    start: int
    stop: int
    suffix: str = ".npz"

    @property
    def file(self) -> str:
        return f"shard-{self.index:05d}{self.suffix}"

    def __len__(self) -> int:
        return self.stop - self.start


def plan_shards(num_items: int, shard_size: int, suffix: str = ".npz") -> list[Shard]:
    """Contiguous shards of ``shard_size`` items in index order (the last one may be shorter)."""
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    return [Shard(i, start, min(start + shard_size, num_items), suffix)
            for i, start in enumerate(range(0, num_items, shard_size))]


def shards_of_rank(shards: Sequence[Shard], rank: int, world_size: int) -> list[Shard]:
    """The shards rank ``rank`` computes: index ``i`` with ``i % world_size == rank``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return [shard for shard in shards if shard.index % world_size == rank]
