"""SLURM wall-time requests: a resource's ``runtime`` in minutes, grown with Snakemake's retry ``attempt``.

A job that hit its time limit (or was preempted) is resubmitted by Snakemake up to ``retries`` times
(profiles/slurm/config.yaml); training resumes from its rolling checkpoint, so each attempt asks for
``attempt`` × the configured time: attempt 1 gets the time as configured, attempt 2 twice it, and so on,
up to the stage's ``max_runtime`` when one is set.
"""

from __future__ import annotations

import re

_UNITS = {"s": 1 / 60, "m": 1.0, "min": 1.0, "h": 60.0, "d": 1440.0, "w": 10080.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(min|s|m|h|d|w)")


def runtime_minutes(value: int | float | str) -> int:
    """Minutes of a runtime given as minutes (a number) or a string with units ("48h", "1h30m", "90min")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        minutes = float(value)
    else:
        text = str(value).strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            minutes = float(text)
        else:
            parts = _PART.findall(text)
            if not parts or _PART.sub("", text).strip():
                raise ValueError(f"runtime {value!r}: expected minutes or a duration such as '48h' or '1h30m'")
            minutes = sum(float(n) * _UNITS[unit] for n, unit in parts)
    if minutes <= 0:
        raise ValueError(f"runtime {value!r}: must be positive")
    return max(1, int(minutes))      # whole minutes, as Snakemake truncates a duration string


def attempt_runtime(value: int | float | str, attempt: int = 1, cap: int | float | str | None = None) -> int:
    """Minutes to request on retry ``attempt`` (1 for the first submission): ``attempt × runtime``, at most
    ``cap`` (a stage's ``max_runtime``: the partition's ``MaxTime``, which SLURM would otherwise refuse)."""
    minutes = runtime_minutes(value) * max(int(attempt), 1)
    return minutes if cap is None else min(minutes, max(runtime_minutes(cap), runtime_minutes(value)))
