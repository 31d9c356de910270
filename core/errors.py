"""Bad input ends in one line: :class:`InputError`, :func:`safe_torch_load` and the CLI wrapper :func:`run_cli`.

Every ``python -m …`` entry point runs its ``main`` through :func:`run_cli`: an exception ends the process with
``error: <one line>`` on stderr and exit code 2 (``EXIT_BAD_INPUT``), no traceback. ``--debug`` anywhere in the
arguments (or ``FASTERDIT_DEBUG=1`` in the environment, which torchrun and Snakemake pass on) re-raises it so
the traceback shows. ``KeyboardInterrupt`` ends with exit code 130 and one line.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import pickle
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
DEBUG_FLAG = "--debug"
DEBUG_ENV = "FASTERDIT_DEBUG"


class InputError(ValueError):
    """A bad input: the message is one line naming the file or key and what was expected."""


def one_line(err: BaseException) -> str:
    """The exception as one line: its message's lines joined, its type named when the message does not help."""
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    if isinstance(err, InputError | OSError) and text:
        return text
    if isinstance(err, KeyError):
        return f"missing key {text}"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def safe_torch_load(path: str | os.PathLike, *, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` whose failures are one :class:`InputError` naming ``path``.

    A truncated, corrupt or hostile file (one that would need arbitrary unpickling) is reported as not a
    readable ``what``; torch's own advice to load with ``weights_only=False`` never reaches the user.
    """
    import torch

    path = require_file(path, what)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, AttributeError,
            KeyError, TypeError, IndexError, UnicodeDecodeError, ImportError):
        raise InputError(f"{path}: not a readable {what} (truncated, corrupt, not written by torch.save, or holding "
                         f"objects other than tensors and plain values)") from None


def _wants_debug(argv: list[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_cli(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` as a CLI: its exit code, or ``error: <one line>`` and :data:`EXIT_BAD_INPUT`.

    ``--debug`` is taken out of ``argv`` before ``main`` sees it and makes exceptions propagate.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _wants_debug(argv)
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    if debug:
        os.environ[DEBUG_ENV] = "1"  # child processes (torchrun workers, fasterdit stages) see it too
    try:
        result = main(argv)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            sys.stderr.close()
        return 1
    except Exception as err:  # noqa: BLE001 - the one place every failure becomes one line
        if debug:
            raise
        hint = "" if isinstance(err, InputError) else f" (rerun with {DEBUG_FLAG} for the traceback)"
        print(f"error: {one_line(err)}{hint}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return result if isinstance(result, int) else 0


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def require_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it is an existing file, else one :class:`InputError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found" if not path.exists() else f"{path}: {what} is not a file")
    return path
