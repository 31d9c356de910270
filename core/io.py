"""Atomic file writes, provenance records, seed derivation and config hashing shared by every package."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[1]
_TRACKED_PACKAGES = (
    "torch", "torchvision", "numpy", "scipy", "diffusers", "torchdiffeq",
    "torch-fidelity", "scikit-learn", "snakemake", "fasterdit-harness",
)


class DataSourceError(InputError):
    """A data set, reference batch or weight file is missing or malformed (one-line message)."""


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temp file next to ``path``; on success fsync it and rename it over ``path``.

    A crash or exception leaves ``path`` untouched (either the old file or no file), never a
    truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_writer_tag()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


_FOREIGN_TEMP_GRACE_S = 3600.0


def _writer_tag() -> str:
    """``<host>-<pid>``: who writes a temp file, so that cleaning up never deletes a live writer's file."""
    return f"{platform.node().replace('.', '_') or 'host'}-{os.getpid()}"


def _writer_is_alive(tmp: Path, name: str) -> bool:
    """Whether the process that named ``tmp`` (``.<name>.<host>-<pid>.<random>.tmp``) still runs here."""
    tag = tmp.name[len(name) + 2:].split(".", 1)[0]
    host, _, pid = tag.rpartition("-")
    if not pid.isdigit():
        return False  # an old-style name: no writer recorded
    if host != (platform.node().replace(".", "_") or "host"):  # another machine: alive while recently written
        try:
            return time.time() - tmp.stat().st_mtime < _FOREIGN_TEMP_GRACE_S
        except FileNotFoundError:
            return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(*paths: str | os.PathLike) -> None:
    """Delete the temp files that a killed :func:`atomic_write` left next to ``paths``.

    A temp file whose writer still runs on this machine (live pid, this process included) is left alone, and so
    is one another machine wrote in the last hour (a temp file lives only while its content is being written).
    """
    for path in map(Path, paths):
        if path.parent.is_dir():
            for tmp in path.parent.glob(f".{path.name}.*.tmp"):
                if not _writer_is_alive(tmp, path.name):
                    tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    import torch

    with atomic_write(path) as handle:
        torch.save(obj, handle)


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez`` (uncompressed, ADM-compatible) through :func:`atomic_write`."""
    with atomic_write(path) as handle:
        np.savez(handle, **arrays)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    with atomic_write(path, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=False, default=_json_default)
        handle.write("\n")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def atomic_write_csv(
    path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], columns: Sequence[str], prov: Mapping[str, Any]
) -> None:
    """Write a CSV whose first line is ``# provenance: {json}`` (read back with ``comment="#"``)."""
    buffer = io.StringIO()
    buffer.write("# provenance: " + json.dumps(prov, sort_keys=True, default=_json_default) + "\n")
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The repository's HEAD commit, with ``+dirty`` when the work tree has changes; ``unknown`` outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers, plus Python and platform."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def portable_path(path: str | os.PathLike) -> str:
    """``path`` as it may appear in a committed file: relative to the repository or the working directory when it
    lies under one of them, else its name only (no absolute path of this machine leaks)."""
    path = Path(path)
    if not path.is_absolute():
        return str(path)
    for root in (REPO_ROOT, Path.cwd()):
        try:
            return str(path.resolve().relative_to(root.resolve()))
        except ValueError:
            continue
    return path.name


def provenance(config: Mapping[str, Any] | None = None, seed: int | None = None) -> dict[str, Any]:
    """The provenance block every result file carries: config, seed, git commit, versions."""
    return {
        "config": dict(config) if config is not None else None,
        "seed": seed,
        "git_commit": git_commit(),
        "versions": package_versions(),
    }


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed derived from ``seed`` and any labels (stream name, step, sample index).

    Uses SHA-256 so that neighbouring inputs give unrelated streams; the same inputs always give
    the same seed, on every machine and world size.
    """
    text = "/".join([str(int(seed)), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def config_hash(config: Mapping[str, Any], length: int = 8) -> str:
    """Short stable hash of a JSON-serialisable config (key order does not matter)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]
