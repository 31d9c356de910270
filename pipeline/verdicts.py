"""Decided verdicts: a claim's effect, its 95 % interval from Monte Carlo draws of the cells, and the decision rule.

A cell's value is drawn as ``mean + se·T`` with ``T`` Student's t with ``df = n_seeds − 1`` (several seeds) or
standard normal (one seed: the metric's bootstrap alone), ``mean``, ``se`` and ``n`` from the experiment's CSV
(:mod:`pipeline.cells`). A claim's statistic (a difference, a curve's range, best value or mean, a crossing step)
is computed on every draw, so the cells' uncertainty propagates through it; the effect is the statistic on the
means and its interval the 2.5 % and 97.5 % quantiles of the draws (:data:`DRAWS` draws, seeded per claim).

The decision rule, on an effect signed so that positive is the paper's direction (:func:`decide`):

* ``supported``: the interval lies above the threshold (0 for orderings);
* ``contradicted``: the interval lies below it;
* ``inconclusive``: it contains it. The row then says roughly how many seeds per cell would decide an effect of
  the observed size (:func:`seeds_to_decide`: the interval's half-width shrinks like 1/√n).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.io import derive_seed

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
NOT_RUN, NOT_APPLICABLE = "not run at this scale", "not applicable at this scale"
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_RUN, NOT_APPLICABLE)
DRAWS = 4000
LEVEL = 0.95


@dataclass(frozen=True)
class CellValue:
    """One cell's reproduced value and its uncertainty (``se`` None: no estimate)."""

    cell: str
    mean: float
    se: float | None
    n: int

    def draws(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` draws of the cell's value (module docstring)."""
        if self.se is None:
            raise ValueError(f"cell {self.cell} has no uncertainty estimate")
        noise = rng.standard_t(self.n - 1, size) if self.n >= 2 else rng.standard_normal(size)
        return self.mean + self.se * noise


@dataclass(frozen=True)
class Effect:
    """A statistic on the means, its interval, and the verdict the rule gives it."""

    value: float
    low: float
    high: float
    verdict: str
    threshold: float = 0.0

    def text(self, digits: int = 3) -> str:
        return f"{self.value:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}]"


def claim_rng(claim: str) -> np.random.Generator:
    """The generator of one claim's draws (seeded by the claim id: reruns give the same interval)."""
    return np.random.Generator(np.random.PCG64(derive_seed(0, "audit", claim)))


def decide(low: float, high: float, threshold: float = 0.0) -> str:
    """The rule of the module docstring on an interval of an effect whose positive side is the paper's."""
    if low > threshold:
        return SUPPORTED
    if high < threshold:
        return CONTRADICTED
    return INCONCLUSIVE


def effect_of(statistic: Callable[[dict[str, np.ndarray]], np.ndarray], cells: Sequence[CellValue],
              rng: np.random.Generator, threshold: float = 0.0, draws: int = DRAWS) -> Effect:
    """``statistic`` maps ``{cell: values}`` (arrays) to the effect; evaluated on the means and on ``draws``
    joint draws of the cells."""
    point = float(np.asarray(statistic({c.cell: np.array([c.mean]) for c in cells}))[0])
    sampled = np.asarray(statistic({c.cell: c.draws(rng, draws) for c in cells}), dtype=np.float64)
    low, high = np.quantile(sampled, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Effect(point, float(low), float(high), decide(float(low), float(high), threshold), threshold)


def combine(verdicts: Sequence[str]) -> str:
    """A claim made of several comparisons: contradicted if any is, supported if all are, else inconclusive."""
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    if verdicts and all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    return INCONCLUSIVE


def seeds_to_decide(effect: Effect, seeds: int, limit: int = 100_000) -> int | None:
    """The fewest seeds per cell at which an effect of the observed size would clear the threshold: the standard
    error behind the interval (its half-width over the t quantile of ``seeds − 1`` df, normal for one seed)
    shrinks like 1/√n — times √2 from one seed, where the seeds' own spread is unmeasured and taken as large as
    the metric's noise — and the quantile falls with the df. ``None`` for an effect at the threshold itself;
    ``limit + 1`` when even ``limit`` seeds would not do."""
    from pipeline.cells import quantile  # one t/normal quantile for cells and verdicts

    gap = abs(effect.value - effect.threshold)
    half = (effect.high - effect.low) / 2
    if gap == 0 or not math.isfinite(half) or half <= 0:
        return None
    seeds = max(seeds, 1)
    se = half / quantile(LEVEL, seeds - 1 if seeds >= 2 else None)
    se1 = se * math.sqrt(seeds) * (math.sqrt(2.0) if seeds == 1 else 1.0)   # the se of one seed per cell
    for n in range(seeds + 1, limit + 1):
        if quantile(LEVEL, n - 1) * se1 / math.sqrt(n) < gap:
            return n
    return limit + 1
