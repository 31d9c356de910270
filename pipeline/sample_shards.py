"""A sample set's resumable shards and their merge into the final ADM npz + JSON sidecar."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.distributed import Processes
from core.io import atomic_write, atomic_write_json, provenance, remove_stale_temporaries
from core.npz import read_member_header, write_npz_streaming
from core.shards import Shard
from pipeline.sample_rows import Batch

SHARD_METADATA = ("labels", "nfe", "start", "stop", "settings_sha256", "device", "world_size")


def read_shard(path: Path, shard: Shard, settings_sha: str) -> dict[str, Any] | None:
    """The shard's metadata (labels, NFE, ..., ``image_shape``) if the file is complete, for this index
    range and these settings; else None. The images themselves are not read."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays: dict[str, Any] = {k: data[k] for k in SHARD_METADATA}
            with data.zip.open("images.npy") as member:
                arrays["image_shape"] = read_member_header(member)[0]
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


def shard_chunks(shard_dir: Path, shards: Sequence[Shard], key: str) -> Iterator[np.ndarray]:
    for shard in shards:
        with np.load(shard_dir / shard.file, allow_pickle=False) as data:
            yield data[key]


def sidecar_path(out: str | os.PathLike) -> Path:
    return Path(out).with_suffix(".json")


def nfe_stats(nfe: np.ndarray) -> dict[str, float]:
    return {"mean": float(nfe.mean()), "min": int(nfe.min()), "max": int(nfe.max()), "total": int(nfe.sum())}


def merge_shards(out: Path, shard_dir: Path, shards: Sequence[Shard], settings_sha: str, identity: dict[str, Any],
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
    remove_stale_temporaries(out)  # left by a merge that was killed
    write_npz_streaming(out, {
        "arr_0": ((num_samples, *image_shape), np.uint8, shard_chunks(shard_dir, shards, "images")),
        "arr_1": ((num_samples,), np.int64, iter([all_labels])),
    })
    settings = {**identity, "num_samples": num_samples}
    summary = {
        **settings,
        "npz": out.name,
        "image_shape": list(image_shape),
        "nfe": nfe_stats(all_nfe),
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
