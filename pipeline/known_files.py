"""The well-known external files a paper-scale run reads, and where to get each one.

Every entry names the file, what it is, its download URL as its publisher gives it (``source`` says where
that URL is published) and, where published, its SHA-256. Torch hub convention: the 8 hex digits at the
end of a name like ``weights-inception-2015-12-05-6726825d.pth`` are the first 8 hex digits of the file's
SHA-256; that is all that is published for the Inception weights, so it is stored as ``sha256_prefix``.
``sha256`` (the full digest) is filled only where a publisher gives one; none of these publishers does.

:mod:`pipeline.data_config` uses the table to say "get it: <command>" in its one-line errors, and to check
the Inception weights' bytes. Importing this module is cheap (standard library only).
"""

from __future__ import annotations

import hashlib
import os
import shlex
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pipeline.presets import PRESETS


@dataclass(frozen=True)
class KnownFile:
    """One external file: its name, what it is, where to get it and what its bytes hash to."""

    key: str
    filename: str
    what: str
    url: str | None  # None: no direct link verified; ``source`` says where to look
    source: str  # where the URL (or the file) is published
    sha256_prefix: str | None = None  # torch hub convention: the hex digits in the file name
    sha256: str | None = None  # the full digest, only where the publisher gives one


_ADM_REFS = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet"
_ADM_SOURCE = "openai/guided-diffusion evaluations/README.md"
_DIT_SOURCE = "facebookresearch/DiT download.py and README.md"

INCEPTION = "inception-v3-compat"
DIGITS = "digits-classifier"
# The mini/smoke feature extractor, shipped (trained once; the same file on every machine): its path in the
# repository and how it was made (eval/weights/README.md).
DIGITS_WEIGHTS = "eval/weights/digits-classifier.pt"
OFFICIAL_CHECKPOINT_PRESETS = tuple(PRESETS)  # pipeline.presets: the published checkpoints the harness imports

_ENTRIES = (
    KnownFile(INCEPTION, "weights-inception-2015-12-05-6726825d.pth",
              "torch-fidelity's inception-v3-compat weights",
              "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
              "weights-inception-2015-12-05-6726825d.pth",
              "torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3 (torch-fidelity 0.4.0)",
              sha256_prefix="6726825d"),
    KnownFile(DIGITS, "digits-classifier.pt", "the digits feature CNN of mini/smoke (eval.digits_classifier, seed 0)",
              None, "shipped in the repository: eval/weights/README.md says how it was trained",
              sha256="ce1a887a49fd5bf43cb6083e99a6f1df25a210770c123d978ccee2cf3f1969a5"),
    KnownFile("imagenet-128", "VIRTUAL_imagenet128_labeled.npz", "ADM reference batch, ImageNet 128x128",
              f"{_ADM_REFS}/128/VIRTUAL_imagenet128_labeled.npz", _ADM_SOURCE),
    KnownFile("imagenet-256", "VIRTUAL_imagenet256_labeled.npz", "ADM reference batch, ImageNet 256x256",
              f"{_ADM_REFS}/256/VIRTUAL_imagenet256_labeled.npz", _ADM_SOURCE),
    KnownFile("imagenet-512", "VIRTUAL_imagenet512.npz", "ADM reference batch, ImageNet 512x512",
              f"{_ADM_REFS}/512/VIRTUAL_imagenet512.npz", _ADM_SOURCE),
    KnownFile("dit-xl-2-256", "DiT-XL-2-256x256.pt", "official DiT-XL/2 checkpoint, 256x256",
              "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt", _DIT_SOURCE),
    KnownFile("dit-xl-2-512", "DiT-XL-2-512x512.pt", "official DiT-XL/2 checkpoint, 512x512",
              "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-512x512.pt", _DIT_SOURCE),
    KnownFile("sit-xl-2-256", "SiT-XL-2-256.pt", "official SiT-XL/2 checkpoint, 256x256",
              "https://www.dl.dropboxusercontent.com/scl/fi/as9oeomcbub47de5g4be0/SiT-XL-2-256.pt"
              "?rlkey=uxzxmpicu46coq3msb17b9ofa&dl=0",
              "willisma/SiT download.py and README.md"),
)

# key -> entry; looked up at call time, so tests may monkeypatch an entry.
KNOWN_FILES: dict[str, KnownFile] = {entry.key: entry for entry in _ENTRIES}


def known_file(name: str | os.PathLike) -> KnownFile | None:
    """The entry whose key or file name is ``name`` (a path's last part counts), else None."""
    text = os.fspath(name)
    if text in KNOWN_FILES:
        return KNOWN_FILES[text]
    base = Path(text).name
    return next((entry for entry in KNOWN_FILES.values() if entry.filename == base), None)


def fetch_command(entry: KnownFile, dest: str | os.PathLike | None = None) -> str | None:
    """``curl -fL -o DEST URL`` (shell-quoted; DEST defaults to the file name), or None without a URL."""
    if entry.url is None:
        return None
    return f"curl -fL -o {shlex.quote(os.fspath(dest or entry.filename))} {shlex.quote(entry.url)}"


def where_to_get(entry: KnownFile, dest: str | os.PathLike | None = None) -> str:
    """``get it: <fetch command>`` for an error line (``get it: see <source>`` without a URL)."""
    command = fetch_command(entry, dest)
    return f"get it: {command}" if command else f"get it: see {entry.source}"


def expected_sha256(entry: KnownFile) -> str | None:
    """The entry's SHA-256 for a message: the digest, ``starting 6726825d`` for a prefix, or None."""
    if entry.sha256:
        return entry.sha256
    return f"starting {entry.sha256_prefix}" if entry.sha256_prefix else None


def sha256_matches(entry: KnownFile, digest: str) -> bool:
    """Whether a hex SHA-256 agrees with the entry (True when nothing is published)."""
    digest = digest.lower()
    if entry.sha256:
        return digest == entry.sha256.lower()
    return digest.startswith(entry.sha256_prefix.lower()) if entry.sha256_prefix else True


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes; cached per (path, size, mtime) so a re-check does not re-read it."""
    stat = os.stat(path)
    return _cached_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
