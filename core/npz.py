"""ADM npz files (``arr_0`` uint8 NHWC images, ``arr_1`` int64 labels): headers, validation, streaming
reads and streaming writes, without ever holding a whole 10 GB batch in memory."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from core.io import DataSourceError, atomic_write


def read_member_header(member: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of an open ``.npy`` stream, leaving it at the first data byte."""
    version = np.lib.format.read_magic(member)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = reader(member)
    return tuple(int(s) for s in shape), bool(fortran_order), np.dtype(dtype)


def npz_array_header(path: str | os.PathLike, key: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype of ``key`` in an npz without loading it; ``None`` when the key is absent."""
    with zipfile.ZipFile(path) as archive:
        name = f"{key}.npy"
        if name not in archive.namelist():
            return None
        with archive.open(name) as member:
            shape, _, dtype = read_member_header(member)
    return shape, dtype


def npz_array_shape(path: str | os.PathLike, key: str = "arr_0") -> tuple[int, ...]:
    """Shape of one array of an npz, read from its header only."""
    header = npz_array_header(path, key)
    if header is None:
        raise KeyError(f"{path} has no {key}")
    return header[0]


def iter_npz_rows(path: str | os.PathLike, batch_size: int, key: str = "arr_0") -> Iterator[np.ndarray]:
    """Stream ``key`` of an npz in batches of rows without loading the whole array (ADM files reach 10 GB)."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
        shape, fortran_order, dtype = read_member_header(member)
        if fortran_order or dtype.hasobject or len(shape) == 0:
            raise ValueError(f"{path}:{key} must be a C-ordered numeric array")
        row_shape = shape[1:]
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
        for start in range(0, shape[0], batch_size):
            count = min(batch_size, shape[0] - start)
            buffer = member.read(count * row_bytes)
            if len(buffer) != count * row_bytes:
                raise ValueError(f"{path}:{key} is truncated")
            yield np.frombuffer(bytearray(buffer), dtype=dtype).reshape(count, *row_shape)


def validate_adm_npz(path: str | os.PathLike, what: str = "reference batch") -> dict[str, Any]:
    """Check that ``path`` is an ADM image batch (``arr_0`` uint8 NHWC); return what it holds.

    ``what`` names the file in the messages ("reference batch", "sample set").
    """
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"{what} {path} does not exist")
    try:
        images = npz_array_header(path, "arr_0")
        labels = npz_array_header(path, "arr_1")
        with zipfile.ZipFile(path) as archive:
            keys = sorted(name.removesuffix(".npy") for name in archive.namelist())
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise DataSourceError(f"{what} {path} is not a readable npz ({err})") from err
    if images is None:
        raise DataSourceError(f"{what} {path} has no arr_0 (keys: {', '.join(keys)})")
    shape, dtype = images
    if dtype != np.uint8 or len(shape) != 4 or shape[3] not in (1, 3):
        raise DataSourceError(f"{what} {path}: arr_0 must be uint8 NHWC, got {dtype} {shape}")
    if labels is not None and (labels[0] != (shape[0],) or labels[1].kind not in "iu"):
        raise DataSourceError(f"{what} {path}: arr_1 must be {shape[0]} integer labels, got "
                              f"{labels[1]} {labels[0]}")
    return {"num_images": shape[0], "shape": list(shape), "has_labels": labels is not None, "keys": keys}


def write_npz_streaming(path: str | os.PathLike, arrays: Mapping[str, tuple[tuple[int, ...], np.dtype,
                                                                             Iterable[np.ndarray]]]) -> None:
    """Write an uncompressed npz (as ``np.savez``) whose arrays arrive in chunks along axis 0, atomically.

    ``arrays`` maps a name to ``(shape, dtype, chunks)``; memory use is one chunk, not the whole set.
    """
    with atomic_write(path) as handle, \
            zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, (shape, dtype, chunks) in arrays.items():
            dtype = np.dtype(dtype)
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                          "shape": tuple(int(s) for s in shape)}
                np.lib.format.write_array_header_1_0(member, header)
                written = 0
                for chunk in chunks:
                    chunk = np.ascontiguousarray(chunk, dtype=dtype)
                    member.write(chunk.tobytes())
                    written += chunk.shape[0]
                if written != shape[0]:
                    raise ValueError(f"{name}: expected {shape[0]} rows, got {written}")
