"""Image data sets (embedded digits, class-folder trees such as ImageNet), reference npz sets and
the checks that every data source exists before a job starts.

Importing this module is cheap (no torch): the Snakefile calls :func:`check_data_sources` at DAG
time. Images leave this module as uint8 HWC arrays; model space (``x / 127.5 - 1``) is the caller's
business.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
import zipfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io import atomic_write, atomic_write_json, provenance

# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class DataSourceError(RuntimeError):
    """A data set, reference batch or weight file is missing or malformed (one-line message)."""


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
        from PIL import Image

        with Image.open(self.root / self.files[index]) as image:
            return center_crop_arr(image, self.image_size)

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


# --------------------------------------------------------------------------------------------
# Reference npz (ADM format)
# --------------------------------------------------------------------------------------------


def npz_array_header(path: str | os.PathLike, key: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype of ``key`` in an npz without loading it; ``None`` when the key is absent."""
    with zipfile.ZipFile(path) as archive:
        name = f"{key}.npy"
        if name not in archive.namelist():
            return None
        with archive.open(name) as member:
            major, _ = np.lib.format.read_magic(member)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(member)
    return tuple(shape), np.dtype(dtype)


def validate_adm_npz(path: str | os.PathLike) -> dict[str, Any]:
    """Check that ``path`` is an ADM image batch (``arr_0`` uint8 NHWC); return what it holds."""
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"reference batch {path} does not exist")
    try:
        images = npz_array_header(path, "arr_0")
        labels = npz_array_header(path, "arr_1")
        with zipfile.ZipFile(path) as archive:
            keys = sorted(name.removesuffix(".npy") for name in archive.namelist())
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise DataSourceError(f"reference batch {path} is not a readable npz ({err})") from err
    if images is None:
        raise DataSourceError(f"reference batch {path} has no arr_0 (keys: {', '.join(keys)})")
    shape, dtype = images
    if dtype != np.uint8 or len(shape) != 4 or shape[3] not in (1, 3):
        raise DataSourceError(f"reference batch {path}: arr_0 must be uint8 NHWC, got {dtype} {shape}")
    if labels is not None and (labels[0] != (shape[0],) or labels[1].kind not in "iu"):
        raise DataSourceError(f"reference batch {path}: arr_1 must be {shape[0]} integer labels, got "
                              f"{labels[1]} {labels[0]}")
    return {"num_images": shape[0], "shape": list(shape), "has_labels": labels is not None, "keys": keys}


def _atomic_symlink(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _load_images(dataset: ImageSource, indices: Sequence[int], workers: int) -> tuple[np.ndarray, np.ndarray]:
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


# --------------------------------------------------------------------------------------------
# VAE weight locations (no torch here; loading lives in pipeline.autoencoders)
# --------------------------------------------------------------------------------------------

VAE_HUB_IDS = {"sd-vae-ft-ema": "stabilityai/sd-vae-ft-ema", "sd-vae-ft-mse": "stabilityai/sd-vae-ft-mse"}
VAE_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
DEFAULT_WEIGHTS_DIR = "weights"


def _is_diffusers_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any((path / name).is_file() for name in VAE_WEIGHT_FILES)


def _hub_cached(hub_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = [try_to_load_from_cache(hub_id, name) for name in ("config.json", *VAE_WEIGHT_FILES)]
    return isinstance(found[0], str) and any(isinstance(f, str) for f in found[1:])


def weights_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The folder holding local weight copies: ``explicit``, else $FASTERDIT_WEIGHTS_DIR, else ``weights``."""
    return Path(explicit or os.environ.get("FASTERDIT_WEIGHTS_DIR") or DEFAULT_WEIGHTS_DIR)


def resolve_vae_location(name: str, weights_directory: str | os.PathLike | None = None) -> str:
    """Where to load the VAE ``name`` from, without downloading anything.

    ``name`` is a local diffusers folder, a short name (``sd-vae-ft-ema``/``sd-vae-ft-mse``, looked
    up as ``<weights_dir>/<name>``) or a hub id (``stabilityai/sd-vae-ft-ema``, looked up as
    ``<weights_dir>/<last part>`` and then in the Hugging Face cache). Raises
    :class:`DataSourceError` naming the expected location and the download command.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if _is_diffusers_dir(path):
            return str(path)
        raise DataSourceError(f"VAE folder {path} is not a diffusers AutoencoderKL folder "
                              f"(needs config.json and {' or '.join(VAE_WEIGHT_FILES)})")
    hub_id = VAE_HUB_IDS.get(name, name)
    looks_like_hub_id = hub_id.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise DataSourceError(f"VAE folder {path} does not exist (known names: {', '.join(VAE_HUB_IDS)})")
    local = weights_dir(weights_directory) / hub_id.split("/")[-1]
    if _is_diffusers_dir(local):
        return str(local)
    if _hub_cached(hub_id):
        return hub_id
    raise DataSourceError(
        f"VAE weights {name!r} not found: expected a diffusers folder at {local} (config.json + "
        f"{VAE_WEIGHT_FILES[0]}) or {hub_id} in the Hugging Face cache; nothing is downloaded at run "
        f"time, fetch them once with `hf download {hub_id} --local-dir {local}`")


# --------------------------------------------------------------------------------------------
# Scale config → sources and CLI arguments (workflow/rules/data.smk), and DAG-time checks
#
# Keys read from a scale config (config/scales/<scale>.yaml):
#   datasets.<name>:      {kind: digits} | {kind: imagefolder, root: <class-per-folder tree>}
#   autoencoders.<name>:  {kind: identity} | {kind: sd-vae, path: <short name|hub id|folder>,
#                          posterior: sample|mean, dtype: float32, weights_dir: <folder>}
#   references.<name>:    "built" (name = <dataset>-<res>) | <path of an ADM npz, used as is> |
#                         {dataset, resolution, root, num, seed}  (built from an image tree)
#   weights_dir:          optional folder of local weight copies (default $FASTERDIT_WEIGHTS_DIR or weights/)
#   latents:              optional {shard_size, batch_size, num_workers, seed}
# --------------------------------------------------------------------------------------------

DEFAULT_LATENT_SETTINGS = {"shard_size": 1024, "batch_size": 64, "seed": 0}


def autoencoder_spec(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``config["autoencoders"][name]`` as a :func:`pipeline.autoencoders.build_autoencoder` spec."""
    entries = config.get("autoencoders") or {}
    if name not in entries:
        raise DataSourceError(f"unknown autoencoder {name!r} (configured: {', '.join(entries) or 'none'})")
    entry = entries[name] or {}
    kind = entry.get("kind", "identity" if name == "identity" else "sd-vae")
    if kind == "identity":
        return {"name": "identity"}
    if kind != "sd-vae":
        raise DataSourceError(f"autoencoder {name}: unknown kind {kind!r} (identity or sd-vae)")
    spec = {"name": str(entry.get("path") or name), "posterior": entry.get("posterior", "sample"),
            "dtype": entry.get("dtype", "float32")}
    if entry.get("weights_dir") or config.get("weights_dir"):
        spec["weights_dir"] = str(entry.get("weights_dir") or config.get("weights_dir"))
    return spec


def dataset_entry(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``config["datasets"][name]``, with a clear error when it is not configured."""
    datasets = config.get("datasets") or {}
    if name not in datasets:
        raise DataSourceError(f"unknown data set {name!r} (configured: {', '.join(datasets) or 'none'})")
    return dict(datasets[name])


def source_spec(config: Mapping[str, Any], dataset: str, resolution: int, split: str = "train") -> dict[str, Any]:
    """The :func:`open_image_source` spec of a configured data set at ``resolution``."""
    entry = dataset_entry(config, dataset)
    if entry.get("kind") == "digits":
        if int(resolution) != DIGITS_IMAGE_SIZE:
            raise DataSourceError(f"data set {dataset} (digits) exists at {DIGITS_IMAGE_SIZE} px only, "
                                  f"asked for {resolution} px")
        return {"dataset": "digits", "split": split, "image_size": DIGITS_IMAGE_SIZE}
    if entry.get("kind") == "imagefolder":
        return {"dataset": "imagefolder", "root": entry.get("root"), "image_size": int(resolution)}
    raise DataSourceError(f"data set {dataset}: unknown kind {entry.get('kind')!r} (digits or imagefolder)")


def reference_plan(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """How ``config["references"][name]`` is made: keyword arguments of :func:`write_reference_npz`
    plus ``source``."""
    references = config.get("references") or {}
    if name not in references:
        raise DataSourceError(f"unknown reference {name!r} (configured: {', '.join(references) or 'none'})")
    entry = references[name]
    match = re.fullmatch(r"(.+)-(\d+)", name)
    if isinstance(entry, str) and entry != "built":
        return {"source": "npz", "root": entry, "image_size": int(match.group(2)) if match else None}
    fields = dict(entry) if isinstance(entry, Mapping) else {}
    dataset = fields.get("dataset") or (match.group(1) if match else None)
    resolution = fields.get("resolution") or (int(match.group(2)) if match else None)
    if dataset is None or resolution is None:
        raise DataSourceError(f"reference {name}: name it <dataset>-<resolution> or give dataset and resolution")
    spec = source_spec(config, dataset, int(resolution), split="reference")
    plan = {"num": fields.get("num"), "seed": int(fields.get("seed", 0))}
    if spec["dataset"] == "digits":
        return {"source": "digits", "split": "reference", "image_size": DIGITS_IMAGE_SIZE, **plan}
    return {"source": "imagefolder", "root": fields.get("root") or spec["root"], "image_size": int(resolution),
            **plan}


def _cli_flags(options: Mapping[str, Any]) -> list[str]:
    flags = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flags += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return flags


def reference_cli_args(config: Mapping[str, Any], name: str) -> list[str]:
    """Arguments of ``python -m pipeline.data reference`` (without ``--out``) for a configured reference."""
    plan = reference_plan(config, name)
    return ["reference", "--dataset", plan.pop("source"), *_cli_flags(plan)]


def latents_cli_args(config: Mapping[str, Any], dataset: str, resolution: int, autoencoder: str, flip: bool,
                     num_workers: int = 0) -> list[str]:
    """Arguments of ``python -m pipeline.latents`` (without ``--out``) for a configured combination."""
    spec = source_spec(config, dataset, resolution)
    ae = autoencoder_spec(config, autoencoder)
    settings = {**DEFAULT_LATENT_SETTINGS, "num_workers": num_workers, **(config.get("latents") or {})}
    options = {"dataset": spec["dataset"], "root": spec.get("root"),
               "split": spec.get("split"), "image_size": spec["image_size"], "autoencoder": ae["name"],
               "posterior": ae.get("posterior"), "dtype": ae.get("dtype"), "weights_dir": ae.get("weights_dir"),
               **{key: settings[key] for key in ("shard_size", "batch_size", "num_workers", "seed")}}
    return [*_cli_flags(options), "--flip" if flip else "--no-flip"]


def _check_imagefolder_root(root: Any, what: str) -> list[str]:
    if not root:
        return [f"{what}: no root folder configured"]
    try:
        list_class_folders(root)
    except DataSourceError as err:
        return [f"{what}: {err}"]
    return []


def check_data_sources(config: Mapping[str, Any]) -> list[str]:
    """One message per missing or malformed data source of a scale config (empty list = all fine).

    Checks every configured image-folder root, reference (ADM batch: readable, ``arr_0`` uint8 NHWC at
    the resolution its name says; built: its data set) and autoencoder's weights. Cheap enough for
    DAG time: lists directories and reads npz headers, imports no torch.
    """
    errors: list[str] = []
    for name, entry in (config.get("datasets") or {}).items():
        kind = (entry or {}).get("kind")
        if kind == "imagefolder":
            errors += _check_imagefolder_root(entry.get("root"), f"data set {name}")
        elif kind != "digits":
            errors.append(f"data set {name}: unknown kind {kind!r} (digits or imagefolder)")
    for name in config.get("references") or {}:
        try:
            plan = reference_plan(config, name)
        except DataSourceError as err:
            errors.append(f"reference {name}: {err}")
            continue
        if plan["source"] == "npz":
            try:
                summary = validate_adm_npz(plan["root"])
            except DataSourceError as err:
                errors.append(f"reference {name}: {err}")
                continue
            if plan["image_size"] and summary["shape"][1] != plan["image_size"]:
                errors.append(f"reference {name}: {plan['root']} holds {summary['shape'][1]} px images, "
                              f"not {plan['image_size']} px")
        elif plan["source"] == "imagefolder":
            dataset_roots = [d.get("root") for d in (config.get("datasets") or {}).values()]
            if plan["root"] not in dataset_roots:
                errors += _check_imagefolder_root(plan["root"], f"reference {name}")
    for name in config.get("autoencoders") or {}:
        try:
            spec = autoencoder_spec(config, name)
            if spec["name"] != "identity":
                resolve_vae_location(spec["name"], spec.get("weights_dir"))
        except DataSourceError as err:
            errors.append(f"autoencoder {name}: {err}")
    return errors


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ref = sub.add_parser("reference", help="write an ADM reference npz (+ provenance JSON)")
    ref.add_argument("--dataset", required=True, choices=["digits", "imagefolder", "npz"])
    ref.add_argument("--root", help="image-folder root, or the ADM npz for --dataset npz")
    ref.add_argument("--image-size", type=int)
    ref.add_argument("--split", default="reference", choices=["train", "reference", "all"],
                     help="digits split (default: reference)")
    ref.add_argument("--num", type=int, help="number of images (default: all)")
    ref.add_argument("--seed", type=int, default=0)
    ref.add_argument("--copy", action="store_true", help="copy an ADM npz instead of symlinking it")
    ref.add_argument("--workers", type=int, default=4, help="image-decoding threads")
    ref.add_argument("--out", required=True)
    check = sub.add_parser("check", help="check the data sources of a YAML config; exit 1 on problems")
    check.add_argument("config", nargs="+", help="YAML files, merged left to right (top-level keys)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; data-source problems end with one ``error: ...`` line (SystemExit)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "reference":
            summary = write_reference_npz(args.dataset, args.out, root=args.root, image_size=args.image_size,
                                          num=args.num, seed=args.seed, split=args.split, copy=args.copy,
                                          workers=args.workers)
            print(f"wrote {args.out}: {summary['num_images']} images {summary['shape']}")
            return 0
        import yaml

        merged: dict[str, Any] = {}
        for path in args.config:
            with open(path) as handle:
                merged.update(yaml.safe_load(handle) or {})
        errors = check_data_sources(merged)
        for line in errors:
            print(f"error: {line}", file=sys.stderr)
        return 1 if errors else 0
    except DataSourceError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    sys.exit(main())
