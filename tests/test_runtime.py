"""pipeline.runtime: SLURM wall-time requests in minutes, grown with the retry attempt."""

from __future__ import annotations

import pytest

from pipeline.runtime import attempt_runtime, runtime_minutes


@pytest.mark.parametrize(("value", "minutes"), [(90, 90), ("90", 90), ("30m", 30), ("48h", 2880), ("1h30m", 90),
                                                ("2d", 2880), ("1w", 10080), ("90min", 90), ("600s", 10),
                                                ("90s", 1), (0.5, 1)])
def test_runtime_minutes_reads_numbers_and_durations(value: object, minutes: int) -> None:
    assert runtime_minutes(value) == minutes


@pytest.mark.parametrize("value", ["", "soon", "3 weeks", "-5", 0, "1h later"])
def test_a_runtime_that_is_not_a_duration_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="runtime"):
        runtime_minutes(value)


def test_each_retry_asks_for_attempt_times_the_configured_time() -> None:
    assert [attempt_runtime("48h", a) for a in (1, 2, 3)] == [2880, 5760, 8640]
    assert attempt_runtime("30m", 0) == 30
    assert [attempt_runtime("16h", a, "48h") for a in (1, 2, 3, 4)] == [960, 1920, 2880, 2880]
    assert attempt_runtime("16h", 1, "8h") == 960          # a cap below the configured time never shortens it
