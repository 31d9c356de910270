"""Precompute autoencoder latents into resumable safetensors shards, and read them back.

Layout of ``out_dir``:

- ``shard-XXXXX.safetensors``: shard ``i`` holds dataset items ``[i·S, min((i+1)·S, N))`` (``S`` =
  shard size, dataset order) as ``latents`` (n, C, h, w) float32, ``labels`` (n,) int64 and, with
  flips on, ``latents_flipped`` (the encoding of the horizontally flipped image). Rank ``r`` of
  ``W`` writes the shards with ``i % W == r``: names come from the global shard index, so ranks
  never collide (fast-DiT issue #14) and every item is encoded exactly once, whatever ``W``.
- ``index.json``: written by rank 0 once every shard exists: counts, shapes, shard list, label
  counts, latent statistics (``data_std`` of Algorithm 2, per-channel mean/std), the autoencoder,
  posterior mode, flip flag and provenance.

Shards are written atomically (:func:`pipeline.io.atomic_write`), so a killed job leaves complete
shards or none; a rerun skips complete shards whose settings hash matches (any world size).
Posterior noise for item ``i`` comes from a generator seeded with
``derive_seed(seed, "latents-posterior", i, "plain"|"flipped")``: latents do not depend on the
batch size or the number of ranks.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline.autoencoders import Autoencoder, build_autoencoder
from pipeline.data import DataSourceError, ImageSource, open_image_source, resolve_vae_location
from pipeline.io import atomic_write, atomic_write_json, config_hash, derive_seed, provenance

FORMAT = "fasterdit-latents-v1"
INDEX_NAME = "index.json"


@dataclass(frozen=True)
class ShardRange:
    """Shard ``index`` covers dataset items ``[start, stop)``."""

    index: int
    start: int
    stop: int

    @property
    def file(self) -> str:
        return f"shard-{self.index:05d}.safetensors"

    def __len__(self) -> int:
        return self.stop - self.start


def plan_shards(num_items: int, shard_size: int) -> list[ShardRange]:
    """Contiguous shards of ``shard_size`` items in dataset order (the last one may be shorter)."""
    if shard_size < 1:
        raise ValueError("shard_size must be ≥ 1")
    return [ShardRange(i, start, min(start + shard_size, num_items))
            for i, start in enumerate(range(0, num_items, shard_size))]


def shards_for_rank(plan: Sequence[ShardRange], rank: int, world_size: int) -> list[ShardRange]:
    """The shards rank ``rank`` writes: index ``i`` with ``i % world_size == rank``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return [shard for shard in plan if shard.index % world_size == rank]


# --------------------------------------------------------------------------------------------
# Statistics (streaming, mergeable: count, mean, M2 per channel)
# --------------------------------------------------------------------------------------------


def channel_moments(latents: torch.Tensor) -> dict[str, list[float]]:
    """Per-channel count, mean and sum of squared deviations (M2) of ``(N, C, h, w)`` latents, float64."""
    per_channel = latents.detach().to(torch.float64).transpose(0, 1).reshape(latents.shape[1], -1)
    mean = per_channel.mean(dim=1)
    m2 = ((per_channel - mean[:, None]) ** 2).sum(dim=1)
    return {"count": [per_channel.shape[1]] * latents.shape[1], "mean": mean.tolist(), "m2": m2.tolist()}


def _merge(a: tuple[float, float, float], b: tuple[float, float, float]) -> tuple[float, float, float]:
    """Chan et al.'s pairwise merge of (count, mean, M2)."""
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    if n == 0:
        return 0.0, 0.0, 0.0
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n


def merge_moments(parts: Sequence[Mapping[str, list[float]]]) -> dict[str, Any]:
    """Combine :func:`channel_moments` records into per-channel and global mean/std (population std)."""
    channels = len(parts[0]["mean"])
    per_channel = [(0.0, 0.0, 0.0)] * channels
    for part in parts:
        for c in range(channels):
            per_channel[c] = _merge(per_channel[c], (part["count"][c], part["mean"][c], part["m2"][c]))
    overall = (0.0, 0.0, 0.0)
    for moments in per_channel:
        overall = _merge(overall, moments)
    return {
        "data_mean": overall[1],
        "data_std": (overall[2] / overall[0]) ** 0.5,
        "channel_mean": [m[1] for m in per_channel],
        "channel_std": [(m[2] / m[0]) ** 0.5 for m in per_channel],
        "num_values": int(overall[0]),
    }


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


class _CHWTensors(Dataset):
    """An image source as uint8 CHW tensors (conversion to model space happens on the device)."""

    def __init__(self, source: ImageSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.source[index]
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), label


def posterior_generators(seed: int, indices: Sequence[int], variant: str) -> list[torch.Generator]:
    """One CPU generator per dataset item, seeded by ``(seed, "latents-posterior", item, variant)``."""
    return [torch.Generator().manual_seed(derive_seed(seed, "latents-posterior", int(i), variant))
            for i in indices]


def encode_batch(
    autoencoder: Autoencoder, images_uint8: torch.Tensor, indices: Sequence[int], seed: int, flip: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode uint8 BCHW images (model space ``x/127.5 − 1``) and, if ``flip``, their mirror images."""
    device = getattr(autoencoder, "device", images_uint8.device)
    x = images_uint8.to(device).float() / 127.5 - 1.0
    sampled = autoencoder.posterior == "sample"
    latents = autoencoder.encode(x, posterior_generators(seed, indices, "plain") if sampled else None)
    flipped = None
    if flip:
        flipped = autoencoder.encode(x.flip(-1), posterior_generators(seed, indices, "flipped") if sampled else None)
        flipped = flipped.cpu()
    return latents.cpu(), flipped


def _shard_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def _read_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def _existing_shard_ok(path: Path, settings_sha: str) -> bool:
    """True for a complete shard written with these settings; error for a shard of other settings."""
    if not path.exists():
        return False
    try:
        metadata = _read_metadata(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise DataSourceError(f"{path} is unreadable ({err}); delete it and rerun") from err
    if metadata.get("settings_sha256") != settings_sha:
        raise DataSourceError(f"{path} was written with different settings; delete {path.parent} "
                              f"or choose another output folder")
    return True


def _remove_stale_temporaries(out_dir: Path, shards: Sequence[ShardRange]) -> None:
    for shard in shards:
        for tmp in out_dir.glob(f".{shard.file}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _settings(source: ImageSource, autoencoder_spec: Mapping[str, Any], flip: bool, shard_size: int,
              seed: int) -> dict[str, Any]:
    """Everything that decides a shard's content (the root path and world size do not)."""
    source_identity = {k: v for k, v in source.describe().items() if k != "root"}
    ae_identity = {k: autoencoder_spec.get(k) for k in ("name", "posterior", "dtype", "channels")}
    return {"format": FORMAT, "source": source_identity, "autoencoder": ae_identity, "flip": bool(flip),
            "shard_size": int(shard_size), "seed": int(seed)}


def _encode_device_description(autoencoder: Autoencoder) -> str:
    """Where a shard was encoded (numerics differ slightly between CPU, GPU and cuDNN TF32)."""
    device = torch.device(getattr(autoencoder, "device", "cpu"))
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cudnn tf32={torch.backends.cudnn.allow_tf32})"
    return device.type


def _encode_shards(
    source: ImageSource, autoencoder: Autoencoder, out_dir: Path, todo: Sequence[ShardRange], *,
    flip: bool, batch_size: int, seed: int, num_workers: int, settings_sha: str, rank: int, progress: bool,
) -> None:
    """Encode the ``todo`` shards in order and write each atomically as soon as it is complete."""
    batches = [list(range(b, min(b + batch_size, shard.stop)))
               for shard in todo for b in range(shard.start, shard.stop, batch_size)]
    loader = DataLoader(_CHWTensors(source), batch_sampler=batches, num_workers=num_workers,
                        pin_memory=torch.cuda.is_available())
    pending = iter(todo)
    shard = next(pending)
    parts: dict[str, list[torch.Tensor]] = {"latents": [], "labels": [], "latents_flipped": []}
    bar = tqdm(total=sum(map(len, todo)), desc=f"latents rank {rank}", unit="img", position=rank,
               mininterval=5, disable=not progress, file=sys.stderr)
    for indices, (images, labels) in zip(batches, loader):
        latents, flipped = encode_batch(autoencoder, images, indices, seed, flip)
        parts["latents"].append(latents)
        parts["labels"].append(labels.to(torch.int64))
        if flipped is not None:
            parts["latents_flipped"].append(flipped)
        bar.update(len(indices))
        if indices[-1] + 1 < shard.stop:
            continue
        tensors = {key: torch.cat(value) for key, value in parts.items() if value}
        stats = channel_moments(torch.cat([tensors["latents"]] + ([tensors["latents_flipped"]] if flip else [])))
        metadata = {"format": FORMAT, "settings_sha256": settings_sha, "shard": str(shard.index),
                    "start": str(shard.start), "stop": str(shard.stop), "rank": str(rank),
                    "moments": json.dumps(stats), "autoencoder": json.dumps(autoencoder.describe()),
                    "device": _encode_device_description(autoencoder)}
        with atomic_write(out_dir / shard.file) as handle:
            handle.write(_shard_bytes(tensors, metadata))
        parts = {key: [] for key in parts}
        shard = next(pending, None)
    bar.close()


# --------------------------------------------------------------------------------------------
# Index (rank 0, once every shard exists)
# --------------------------------------------------------------------------------------------


def wait_for_files(paths: Sequence[Path], timeout: float | None, poll: float = 2.0) -> None:
    """Block until every path exists (file-based barrier: works under torchrun and for plain processes)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while missing := [p for p in paths if not p.exists()]:
        if deadline is not None and time.monotonic() > deadline:
            raise DataSourceError(f"gave up waiting for {len(missing)} shard(s) from other ranks, "
                                  f"e.g. {missing[0]}")
        time.sleep(poll)


def write_index(
    out_dir: Path, source: ImageSource, plan: Sequence[ShardRange], settings: Mapping[str, Any],
    autoencoder_spec: Mapping[str, Any],
) -> dict[str, Any]:
    """Merge shard statistics and write ``index.json`` (every shard must exist)."""
    settings_sha = config_hash(settings, length=64)
    moments, label_counts, shards, devices = [], None, [], set()
    autoencoder: dict[str, Any] = {}
    latent_shape: list[int] = []
    for shard in plan:
        path = out_dir / shard.file
        if not _existing_shard_ok(path, settings_sha):
            raise DataSourceError(f"shard {path} is missing")
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            labels = handle.get_tensor("labels")
            latent_shape = list(handle.get_slice("latents").get_shape()[1:])
        counts = torch.bincount(labels, minlength=0)
        label_counts = counts if label_counts is None else _add_counts(label_counts, counts)
        moments.append(json.loads(metadata["moments"]))
        autoencoder = json.loads(metadata["autoencoder"])
        devices.add(metadata.get("device", "unknown"))
        shards.append({"file": shard.file, "start": shard.start, "stop": shard.stop,
                       "bytes": path.stat().st_size})
    stats = merge_moments(moments)
    flip = bool(settings["flip"])
    index = {
        "format": FORMAT,
        "num_items": plan[-1].stop if plan else 0,
        "latent_shape": latent_shape,
        "flip": flip,
        "tensors": ["latents", "labels"] + (["latents_flipped"] if flip else []),
        "shard_size": settings["shard_size"],
        "sharding": "shard i holds items [i*shard_size, (i+1)*shard_size) in dataset order; "
                    "rank r of W writes shards with i % W == r",
        "shards": shards,
        "num_classes": int(source.describe().get("num_classes", len(label_counts))),
        "label_counts": label_counts.tolist(),
        "source": source.describe(),
        "autoencoder": {**autoencoder, "spec": dict(autoencoder_spec)},
        "posterior": autoencoder.get("posterior"),
        "seed": settings["seed"],
        "encoded_on": sorted(devices),
        "stats_over": "latents" + (" and latents_flipped" if flip else "") + " (raw, unscaled)",
        **stats,
        "scale_factor": autoencoder.get("scale_factor"),
        "data_std_scaled": stats["data_std"] * float(autoencoder.get("scale_factor", 1.0)),
        "settings_sha256": settings_sha,
        "provenance": provenance(settings, settings["seed"]),
    }
    atomic_write_json(out_dir / INDEX_NAME, index)
    return index


def _add_counts(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    size = max(len(a), len(b))
    return torch.nn.functional.pad(a, (0, size - len(a))) + torch.nn.functional.pad(b, (0, size - len(b)))


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def precompute_latents(
    source_spec: Mapping[str, Any],
    autoencoder_spec: Mapping[str, Any],
    out_dir: str | os.PathLike,
    flip: bool = False,
    shard_size: int = 1024,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 64,
    seed: int = 0,
    *,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    wait_timeout: float | None = None,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Encode this rank's missing shards; rank 0 then waits for all shards and writes the index.

    ``source_spec``: see :func:`pipeline.data.open_image_source`; ``autoencoder_spec``: see
    :func:`pipeline.autoencoders.build_autoencoder`. Returns the index on rank 0, ``None`` elsewhere.
    Data-source problems (missing folder, weights, foreign shards) raise :class:`DataSourceError`
    before any encoding.
    """
    out_dir = Path(out_dir)
    source = open_image_source(source_spec)
    spec = dict(autoencoder_spec)
    if spec.get("name") == "identity":
        spec.setdefault("channels", source.channels)
    else:
        spec.setdefault("posterior", "sample")
        spec.setdefault("dtype", "float32")
        resolve_vae_location(str(spec["name"]), spec.get("weights_dir"))
        if source.channels != 3:
            raise DataSourceError(f"the VAE {spec['name']} encodes RGB images; {source.describe()['dataset']} "
                                  f"has {source.channels} channel(s): use the identity autoencoder")
    settings = _settings(source, spec, flip, shard_size, seed)
    settings_sha = config_hash(settings, length=64)
    plan = plan_shards(len(source), shard_size)
    mine = shards_for_rank(plan, rank, world_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out_dir, mine)
    todo = [shard for shard in mine if not _existing_shard_ok(out_dir / shard.file, settings_sha)]
    if todo:
        autoencoder = build_autoencoder(spec, device=device)
        _encode_shards(source, autoencoder, out_dir, todo, flip=flip, batch_size=batch_size, seed=seed,
                       num_workers=num_workers, settings_sha=settings_sha, rank=rank, progress=progress)
    if rank != 0:
        return None
    wait_for_files([out_dir / shard.file for shard in plan], wait_timeout)
    return write_index(out_dir, source, plan, settings, spec)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


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

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} outside a latent set of {len(self)}")
        i %= len(self)
        shard = bisect.bisect_right(self._starts, i) - 1
        offset = i - self._starts[shard]
        handle = self._handle(shard)
        latent = handle.get_slice("latents")[offset: offset + 1][0]
        flipped = handle.get_slice("latents_flipped")[offset: offset + 1][0] if self._flip else None
        return latent, self.labels[i], flipped


def collate_latents(items: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]):
    """Stack a list of :class:`LatentDataset` items; the flipped entry stays ``None`` when flips are off."""
    latents = torch.stack([item[0] for item in items])
    labels = torch.stack([item[1] for item in items])
    flipped = None if items[0][2] is None else torch.stack([item[2] for item in items])
    return latents, labels, flipped


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.latents",
                                     description="Precompute autoencoder latents into resumable shards "
                                                 "(plain process or torchrun; reads RANK/WORLD_SIZE/LOCAL_RANK).")
    parser.add_argument("--dataset", required=True, choices=["digits", "imagefolder"])
    parser.add_argument("--root", help="image-folder root (class-per-folder)")
    parser.add_argument("--split", default="train", choices=["train", "reference", "all"], help="digits split")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--autoencoder", default="identity",
                        help="identity, sd-vae-ft-ema, sd-vae-ft-mse, a hub id or a diffusers folder")
    parser.add_argument("--posterior", default="sample", choices=["sample", "mean"])
    parser.add_argument("--dtype", default="float32", help="VAE compute dtype (float32, bf16, fp16)")
    parser.add_argument("--weights-dir", help="folder of local weight copies (default $FASTERDIT_WEIGHTS_DIR "
                                              "or ./weights)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False,
                        help="also store the encoding of each horizontally flipped image")
    parser.add_argument("--out", required=True)
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="default: cuda:LOCAL_RANK when CUDA is available, else cpu")
    parser.add_argument("--wait-timeout", type=float, help="seconds rank 0 waits for other ranks' shards")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; data-source problems end with one ``error: ...`` line (SystemExit)."""
    args = _parser().parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = args.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    source_spec = {"dataset": args.dataset, "root": args.root, "split": args.split, "image_size": args.image_size}
    ae_spec: dict[str, Any] = {"name": args.autoencoder}
    if args.autoencoder != "identity":
        ae_spec.update(posterior=args.posterior, dtype=args.dtype)
        if args.weights_dir:
            ae_spec["weights_dir"] = args.weights_dir
    try:
        index = precompute_latents(source_spec, ae_spec, args.out, flip=args.flip, shard_size=args.shard_size,
                                   rank=rank, world_size=world_size, batch_size=args.batch_size, seed=args.seed,
                                   num_workers=args.num_workers, device=device, wait_timeout=args.wait_timeout,
                                   progress=not args.no_progress)
    except DataSourceError as err:
        raise SystemExit(f"error: {err}") from None
    if index is not None:
        print(f"wrote {Path(args.out) / INDEX_NAME}: {index['num_items']} items {index['latent_shape']}, "
              f"data_std {index['data_std']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
