"""Per-output lock files: two processes that would write the same output never run at once.

``with output_lock(out):`` holds an exclusive ``flock`` on ``.<name>.lock`` next to ``out`` for the block; a
second process asking for the same lock fails at once with one :class:`~core.errors.InputError` line (it never
waits, never deletes the first one's files). The kernel drops the lock when its process dies, so a killed run
leaves no stale lock: the next run simply takes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from core.errors import InputError


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file guarding ``out``: a hidden file in the same folder."""
    out = Path(out)
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def output_lock(*outputs: str | os.PathLike) -> Iterator[None]:
    """Hold the locks of ``outputs`` (in sorted order, so two runs never deadlock) for the block."""
    handles = []
    try:
        for out in sorted({lock_path(o) for o in outputs}):
            out.parent.mkdir(parents=True, exist_ok=True)
            handle = open(out, "a+")  # noqa: SIM115 - closed in the finally block
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                target = out.name[1:-len(".lock")]
                raise InputError(f"{out.parent / target}: another run is writing it ({holder}); wait for it to "
                                 f"finish, or stop it") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
            handle.flush()
            handles.append(handle)
        yield
    finally:
        for handle in handles:
            handle.close()
