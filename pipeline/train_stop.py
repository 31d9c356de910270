"""Stop requests of a training segment (SIGTERM/SIGUSR1, the wall-time budget), read at step boundaries."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from core.distributed import Processes

_BAD_STEP_BASE = 2**62


class StopSignals:
    """While active, SIGTERM and SIGUSR1 only set a flag that the loop reads at the next step boundary."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class TimeBudget:
    """Stop early enough to save before ``minutes`` of wall time are used (``None``: no budget)."""

    minutes: float | None
    margin_minutes: float = 2.0
    started: float = field(default_factory=time.monotonic)
    step_seconds: float = 0.0
    save_seconds: float = 0.0

    def exhausted(self, now: float, steps_until_next_check: int) -> bool:
        if self.minutes is None:
            return False
        needed = self.margin_minutes * 60 + self.step_seconds * steps_until_next_check + self.save_seconds
        return now - self.started + needed >= self.minutes * 60


def agree_on_stop(
    ctx: Processes, wants_stop: int, time_due: bool, first_bad: torch.Tensor
) -> tuple[int, bool, int]:
    """Combine the ranks' stop requests (0 none, 1 signal, 2 budget), rolling timers and first non-finite
    step (−1: none) with one small all-reduce."""
    bad_code = torch.where(first_bad >= 0, _BAD_STEP_BASE - first_bad, torch.zeros_like(first_bad))
    flags = torch.stack([torch.tensor(wants_stop, device=first_bad.device),
                         torch.tensor(int(time_due), device=first_bad.device), bad_code])
    if ctx.world_size > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    stop_code, due, bad = flags.tolist()
    return int(stop_code), bool(due), (_BAD_STEP_BASE - bad if bad else -1)
