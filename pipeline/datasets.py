"""Image sources: the embedded digits and class-folder trees (ImageNet's layout), behind one interface.

Every source offers ``len``, ``ds[i] -> (uint8 HWC array, int label)``, ``labels`` and ``describe()``;
model space (``x / 127.5 - 1``) is the caller's business. Importing this module is cheap (no torch;
scikit-learn and PIL are imported when first needed).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import one_line
from core.io import DataSourceError

# --------------------------------------------------------------------------------------------
# Embedded digits
# --------------------------------------------------------------------------------------------

DIGITS_NUM_REFERENCE = 300
DIGITS_SPLIT_SEED = 0
DIGITS_IMAGE_SIZE = 8
DIGITS_NUM_CLASSES = 10


@lru_cache(maxsize=1)
def _digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 scikit-learn digits as uint8 (N, 8, 8, 1) and int64 labels, in scikit-learn's order.

    Pixel values 0..16 map to ``rint(v * 255 / 16)`` (round half to even; only v = 8 is a tie → 128).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def stratified_reference_indices(labels: np.ndarray, num_reference: int, seed: int) -> np.ndarray:
    """Indices of a stratified, seeded reference subset (sorted ascending).

    Class ``c`` gets ``num_reference * n_c / N`` places rounded by largest remainder (ties: lower
    class first); its members are drawn in the order of ``np.random.default_rng(seed).permutation``
    applied class by class in increasing class order.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if not 0 < num_reference < len(labels):
        raise ValueError(f"num_reference must be in (0, {len(labels)}), got {num_reference}")
    quota = num_reference * counts / counts.sum()
    take = np.floor(quota).astype(int)
    remainder_order = sorted(range(len(classes)), key=lambda k: (-(quota[k] - take[k]), k))
    for k in remainder_order[: num_reference - int(take.sum())]:
        take[k] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


def digits_split_indices() -> dict[str, np.ndarray]:
    """The fixed digits split as index arrays into scikit-learn's order (both sorted ascending).

    Reference: 300 images, stratified by class, seed 0 (:func:`stratified_reference_indices`);
    train: the other 1,497.
    """
    _, labels = _digits_uint8()
    reference = stratified_reference_indices(labels, DIGITS_NUM_REFERENCE, DIGITS_SPLIT_SEED)
    train = np.setdiff1d(np.arange(len(labels)), reference)
    return {"train": train, "reference": reference}


def digits_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, labels), "reference": (images, labels)}``: uint8 (N, 8, 8, 1), int64 (N,).

    1,497 train / 300 reference images, see :func:`digits_split_indices`.
    """
    images, labels = _digits_uint8()
    return {name: (images[idx], labels[idx]) for name, idx in digits_split_indices().items()}


# --------------------------------------------------------------------------------------------
# Image sources: a common, torch-free interface (len, getitem -> (uint8 HWC, label), describe)
# --------------------------------------------------------------------------------------------


class ArrayImageDataset:
    """Images held in memory: ``ds[i] -> (uint8 HWC array, int label)``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, description: Mapping[str, Any]):
        if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(labels):
            raise ValueError("images must be uint8 NHWC with one label per image")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.image_size = int(images.shape[1])
        self.channels = int(images.shape[3])
        self._description = dict(description)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], int(self.labels[index])

    def describe(self) -> dict[str, Any]:
        """JSON-ready identity of this source (recorded in indices and provenance)."""
        return {**self._description, "num_items": len(self), "image_size": self.image_size,
                "channels": self.channels}


def digits_dataset(split: str = "train") -> ArrayImageDataset:
    """The embedded digits, ``split`` in {"train", "reference", "all"} (see :func:`digits_split`)."""
    images, labels = _digits_uint8()
    if split == "all":
        idx = np.arange(len(labels))
    elif split in ("train", "reference"):
        idx = digits_split_indices()[split]
    else:
        raise DataSourceError(f"digits split must be train, reference or all, got {split!r}")
    return ArrayImageDataset(images[idx], labels[idx], {"dataset": "digits", "split": split,
                                                        "num_classes": DIGITS_NUM_CLASSES})


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


def center_crop_arr(pil_image: Any, image_size: int) -> np.ndarray:
    """ADM's centre crop: halve with BOX while the short side is ≥ 2·size, BICUBIC-resize the short
    side to ``image_size``, cut the centre square. Returns uint8 (size, size, 3) RGB."""
    from PIL import Image

    image = pil_image.convert("RGB")
    while min(image.size) >= 2 * image_size:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.Resampling.BOX)
    scale = image_size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size),
                         resample=Image.Resampling.BICUBIC)
    array = np.asarray(image)
    top = (array.shape[0] - image_size) // 2
    left = (array.shape[1] - image_size) // 2
    return np.ascontiguousarray(array[top: top + image_size, left: left + image_size])


def list_class_folders(root: str | os.PathLike) -> list[str]:
    """Class folder names under ``root`` in sorted order (= class index, ImageNet's standard order)."""
    root = Path(root)
    if not root.is_dir():
        raise DataSourceError(f"image folder {root} does not exist or is not a directory")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise DataSourceError(f"image folder {root} has no class sub-folders (expected root/<class>/<image>)")
    return classes


def _list_images(folder: Path) -> list[str]:
    """Image files below ``folder`` (recursive, hidden entries skipped), relative to its parent, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [os.path.join(dirpath, f) for f in filenames
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
    return sorted(os.path.relpath(p, folder.parent) for p in found)


class ImageFolderDataset:
    """A class-per-folder image tree (ImageNet's ``train/nXXXXXXXX/*.JPEG`` layout).

    Class index = position of the folder name in sorted order; items are ordered by class, then by
    relative path. ``ds[i] -> (uint8 (size, size, 3), label)`` after :func:`center_crop_arr`.
    """

    def __init__(self, root: str | os.PathLike, image_size: int):
        self.root = Path(root)
        self.image_size = int(image_size)
        self.channels = 3
        self.classes = list_class_folders(self.root)
        self.files: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(self.classes):
            images = _list_images(self.root / name)
            self.files += images
            labels += [label] * len(images)
        if not self.files:
            raise DataSourceError(f"image folder {self.root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> np.ndarray:
        """The centre-cropped uint8 image ``index``."""
        from PIL import Image, UnidentifiedImageError

        path = self.root / self.files[index]
        try:
            with Image.open(path) as image:
                return center_crop_arr(image, self.image_size)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:  # PIL's errors for bad files
            raise DataSourceError(f"{path}: not a readable image ({one_line(err)})") from None

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.load(index), int(self.labels[index])

    def file_list_digest(self) -> str:
        """SHA-256 over the ordered relative paths: two trees with the same digest give the same items."""
        digest = hashlib.sha256()
        for path in self.files:
            digest.update(path.encode() + b"\n")
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        """JSON-ready identity of this source (recorded in indices and provenance)."""
        return {"dataset": "imagefolder", "root": str(self.root), "image_size": self.image_size,
                "channels": 3, "num_items": len(self), "num_classes": len(self.classes),
                "file_list_sha256": self.file_list_digest()}


ImageSource = ArrayImageDataset | ImageFolderDataset


def open_image_source(spec: Mapping[str, Any]) -> ImageSource:
    """Open ``{"dataset": "digits", "split": ...}`` or ``{"dataset": "imagefolder", "root", "image_size"}``."""
    kind = spec.get("dataset")
    size = spec.get("image_size")
    if kind == "digits":
        if size not in (None, DIGITS_IMAGE_SIZE):
            raise DataSourceError(f"digits are {DIGITS_IMAGE_SIZE}x{DIGITS_IMAGE_SIZE} px, got image_size={size}")
        return digits_dataset(spec.get("split") or "train")
    if kind == "imagefolder":
        if not spec.get("root"):
            raise DataSourceError("dataset imagefolder needs a root folder (--root)")
        if not size:
            raise DataSourceError("dataset imagefolder needs an image size (--image-size)")
        return ImageFolderDataset(spec["root"], int(size))
    raise DataSourceError(f"unknown dataset {kind!r} (expected digits or imagefolder)")

