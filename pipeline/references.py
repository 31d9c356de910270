"""Reference sets: the real images the metrics compare against, as an ADM npz plus a provenance sidecar.

Built from an image source (:mod:`pipeline.datasets`) in a seeded order, or an existing ADM batch
validated and linked (or copied) as is. The CLI is ``python -m pipeline.data reference``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from core.io import DataSourceError, atomic_write, atomic_write_json, provenance
from core.npz import validate_adm_npz
from pipeline.datasets import ImageSource, open_image_source


def _atomic_symlink(target: Path, link: Path) -> None:
    """Point ``link`` at ``target`` through a temporary link and ``os.replace`` (never a missing link)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _load_images(dataset: ImageSource, indices: Sequence[int], workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (stacked uint8 NHWC, decoded by ``workers`` threads) and int64 labels of ``indices``, in order."""
    from tqdm import tqdm

    def fetch(i: int) -> np.ndarray:
        return dataset[int(i)][0]

    with ThreadPoolExecutor(max(1, workers)) as pool:
        images = list(tqdm(pool.map(fetch, indices), total=len(indices), desc="reference images",
                           mininterval=5, file=sys.stderr))
    labels = np.asarray([dataset.labels[int(i)] for i in indices], dtype=np.int64)
    return np.stack(images).astype(np.uint8), labels


def reference_sidecar_path(out_path: str | os.PathLike) -> Path:
    """Where the provenance JSON of a reference npz goes: ``ref.npz`` → ``ref.json``."""
    return Path(out_path).with_suffix(".json")


def write_reference_npz(
    source: str,
    out_path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    image_size: int | None = None,
    num: int | None = None,
    seed: int = 0,
    split: str = "reference",
    copy: bool = False,
    workers: int = 4,
) -> dict[str, Any]:
    """Write the real images metrics compare against as an ADM npz (``arr_0`` uint8 NHWC, ``arr_1``
    int64) and a provenance sidecar (:func:`reference_sidecar_path`); return the sidecar's content.

    ``source``: ``"digits"`` (the ``split`` of :func:`digits_split`, 8 px), ``"imagefolder"``
    (``root`` centre-cropped to ``image_size``) or ``"npz"`` (an existing ADM batch at ``root``,
    validated and symlinked, or copied with ``copy=True``, as is). Images are stored in the order of
    ``np.random.default_rng(seed).permutation(N)``, truncated to ``num`` (default: all), so the
    set is never class-sorted.
    """
    out_path = Path(out_path)
    settings = {"source": source, "root": str(root) if root else None, "image_size": image_size,
                "num": num, "seed": seed, "split": split}
    if source == "npz":
        if root is None:
            raise DataSourceError("source npz needs the path of an ADM reference batch (--root)")
        target = Path(root).resolve()
        summary = validate_adm_npz(target)
        if image_size and summary["shape"][1:3] != [image_size, image_size]:
            raise DataSourceError(f"reference batch {target} holds {summary['shape'][1]} px images, "
                                  f"expected {image_size} px")
        if copy:
            with open(target, "rb") as src, atomic_write(out_path) as dst:
                shutil.copyfileobj(src, dst, length=16 << 20)
        else:
            _atomic_symlink(target, out_path)
        record = {**summary, "mode": "copy" if copy else "symlink", "target": str(target)}
    else:
        if source == "digits":
            dataset: ImageSource = open_image_source({"dataset": "digits", "split": split,
                                                      "image_size": image_size})
        elif source == "imagefolder":
            dataset = open_image_source({"dataset": "imagefolder", "root": root, "image_size": image_size})
        else:
            raise DataSourceError(f"unknown reference source {source!r} (digits, imagefolder or npz)")
        total = len(dataset)
        if num is not None and not 0 < num <= total:
            raise DataSourceError(f"asked for {num} reference images but the source holds {total}")
        order = np.random.default_rng(seed).permutation(total)[: num or total]
        images, labels = _load_images(dataset, order, workers)
        with atomic_write(out_path) as handle:
            np.savez(handle, arr_0=images, arr_1=labels)
        record = {"num_images": len(images), "shape": list(images.shape), "has_labels": True,
                  "keys": ["arr_0", "arr_1"], "source_description": dataset.describe(),
                  "label_counts": np.bincount(labels).tolist(),
                  "indices_sha256": hashlib.sha256(order.astype(np.int64).tobytes()).hexdigest()}
    sidecar = {"npz": str(out_path), **record, "provenance": provenance(settings, seed)}
    atomic_write_json(reference_sidecar_path(out_path), sidecar)
    return sidecar
