"""Claims audit: each claim of the paper (config/claims.yaml) decided on the reproduced results, with its interval.

``results/audit.csv`` has one row per (claim, reading): the effect (signed so that positive is the paper's
direction), its 95 % interval, the verdict of :mod:`pipeline.verdicts` — ``supported``, ``contradicted``,
``inconclusive``, ``not run at this scale`` or ``not applicable at this scale`` — the seeds behind it, the
evidence per comparison, and for an inconclusive row roughly how many seeds per cell would decide it. A claim
with ``readings`` (an ``assumed:`` choice and its alternatives) has one row per reading and says whether its
verdict depends on the reading. Claims the paper does not state are marked ``implied``.

Check kinds (FID unless ``metric`` says otherwise; lower is better): ``less`` (pairs a < b), ``range_less``,
``min_less``, ``mean_less`` (a curve's range / best / mean over data std below another's), ``crossover`` (a worse
than b at the smallest std, better at the largest), ``snr_band`` (the best std's SNR-PDF mean in Fig. 3's band),
``argmin_in`` (a curve's best std inside an interval), ``speedup`` (training steps to reach a baseline's FID, as
a ratio) and ``absolute`` (a value within a tolerance of the paper's; judged only at the scales listed).

CLI: ``python -m pipeline.audit --scale mini`` (reads ``results/mini``, writes ``results/mini/audit.csv``; or
``--results DIR --out FILE``; ``--claims config/claims.yaml``)
(``--tables A.csv B.csv`` reads those tables instead of every CSV of ``--results``).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import InputError, run_cli
from core.io import atomic_write_csv, git_commit, portable_path, provenance
from pipeline.config import load_claims, load_fig3
from pipeline.paths import at_scale
from pipeline.verdicts import (
    CONTRADICTED,
    DRAWS,
    INCONCLUSIVE,
    NOT_APPLICABLE,
    NOT_RUN,
    SUPPORTED,
    CellValue,
    Effect,
    claim_rng,
    combine,
    decide,
    effect_of,
    seeds_to_decide,
)

MAX_SEEDS_SHOWN = 1000
COLUMNS = ["claim", "type", "reading", "verdict", "effect", "effect_low", "effect_high", "effect_is", "seeds",
           "evidence", "to_decide", "reading_dependent", "text", "scale", "git_commit"]


class Outcome:
    """What one check found: the verdict, the headline effect (if any), the evidence and the seeds behind it."""

    def __init__(self, verdict: str, evidence: str, effect: Effect | None = None, effect_is: str = "",
                 seeds: Sequence[int] = ()):
        self.verdict, self.evidence, self.effect, self.effect_is = verdict, evidence, effect, effect_is
        self.seeds = sorted(set(int(s) for s in seeds))


# --------------------------------------------------------------------------------------------
# Cells out of the tables
# --------------------------------------------------------------------------------------------


def _rows(results: Mapping[str, pd.DataFrame], experiment: str, metric: str = "fid") -> pd.DataFrame | None:
    table = results.get(experiment)
    if table is None:
        return None
    return table[(table["status"] == "run") & (table["metric"] == metric)]


def _select(rows: pd.DataFrame, where: Mapping[str, Any]) -> pd.DataFrame:
    for key, value in where.items():
        rows = rows[rows[key].astype(str) == str(value)]
    return rows


def finite_number(value: Any) -> float | None:
    """A CSV cell as a finite float (None for blank, text, NaN or ±inf)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def cell_value(row: pd.Series) -> CellValue:
    """A CSV row as a :class:`CellValue` (``se`` None when the table has none)."""
    se = finite_number(row["se"]) if "se" in row.index else None
    return CellValue(str(row["cell"]), float(row["reproduced"]), se, int(row.get("n_seeds", 1) or 1))


def _seeds(rows: pd.DataFrame) -> list[int]:
    """The seeds behind ``rows`` (pandas reads a one-seed column as numbers: ``0.0``)."""
    texts = rows.get("seeds", pd.Series(dtype=str)).dropna().astype(str)
    return [int(float(s)) for text in texts for s in text.split() if s]


def _uncertain(cells: Sequence[CellValue]) -> str | None:
    missing = [c.cell for c in cells if c.se is None]
    return None if not missing else f"no uncertainty estimate for {', '.join(missing)} (no se column or bootstrap)"


def _undecidable(cells: Sequence[CellValue], evidence: str, seeds: Sequence[int]) -> Outcome | None:
    why = _uncertain(cells)
    return None if why is None else Outcome(INCONCLUSIVE, f"{evidence}; {why}", seeds=seeds)


def _curve(rows: pd.DataFrame, where: Mapping[str, Any], prefix: str) -> list[tuple[float, CellValue]] | None:
    """(std, cell) of a curve, sorted by std, the cell ids prefixed so two curves never share a name."""
    chosen = _select(rows, where)
    if chosen.empty:
        return None
    points = [(float(r["std"]), cell_value(r)) for _, r in chosen.iterrows()]
    return [(std, CellValue(f"{prefix}{c.cell}", c.mean, c.se, c.n)) for std, c in sorted(points, key=lambda p: p[0])]


def _label(where: Mapping[str, Any]) -> str:
    return ", ".join(str(v) for v in where.values())


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def check_less(rows: pd.DataFrame, pairs: Sequence[Sequence[str]], rng: np.random.Generator) -> Outcome:
    """Each pair [a, b]: effect ``b − a`` (> 0: a is lower, the paper's claim)."""
    by_cell = {r["cell"]: r for _, r in rows.iterrows()}
    missing = [c for p in pairs for c in p if c not in by_cell]
    if missing:
        return Outcome(NOT_RUN, "missing cells: " + ", ".join(missing))
    seeds = _seeds(rows[rows["cell"].isin([c for p in pairs for c in p])])
    cells = {c: cell_value(by_cell[c]) for p in pairs for c in p}
    points = "; ".join(f"{a} {cells[a].mean:.4g} vs {b} {cells[b].mean:.4g}" for a, b in pairs)
    if (undecided := _undecidable(list(cells.values()), points, seeds)) is not None:
        return undecided
    effects = [effect_of(lambda v, a=a, b=b: v[b] - v[a], [cells[a], cells[b]], rng) for a, b in pairs]
    evidence = "; ".join(f"{b} − {a} = {e.text()} ({e.verdict})" for (a, b), e in zip(pairs, effects, strict=True))
    verdict = combine([e.verdict for e in effects])
    return Outcome(verdict, evidence, _headline(effects, verdict), "FID difference (the pair that decides)", seeds)


def _headline(effects: Sequence[Effect], verdict: str) -> Effect:
    """The comparison a combined verdict rests on: the most contradicted one if any is, else the weakest."""
    if verdict == CONTRADICTED:
        return min((e for e in effects if e.verdict == CONTRADICTED), key=lambda e: e.high)
    return min(effects, key=lambda e: e.low)


CURVE_STATISTICS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "range_less": ("FID range over data std", lambda m: m.max(axis=0) - m.min(axis=0)),
    "min_less": ("best FID over data std", lambda m: m.min(axis=0)),
    "mean_less": ("mean FID over data std", lambda m: m.mean(axis=0)),
}


def _stack(values: Mapping[str, np.ndarray], curve: Sequence[tuple[float, CellValue]]) -> np.ndarray:
    return np.stack([values[c.cell] for _, c in curve])


def check_curves(kind: str, rows: pd.DataFrame, a_where: Mapping, b_where: Mapping,
                 rng: np.random.Generator) -> Outcome:
    a, b = _curve(rows, a_where, "a:"), _curve(rows, b_where, "b:")
    if a is None or b is None:
        return Outcome(NOT_RUN, "missing curve")
    seeds = _seeds(pd.concat([_select(rows, a_where), _select(rows, b_where)]))
    cells = [c for _, c in a + b]
    if kind == "crossover":
        return _crossover(a, b, a_where, b_where, cells, seeds, rng)
    what, stat = CURVE_STATISTICS[kind]
    value_a = float(stat(np.array([[c.mean] for _, c in a]))[0])
    value_b = float(stat(np.array([[c.mean] for _, c in b]))[0])
    points = f"{what}: {_label(a_where)} {value_a:.4g} vs {_label(b_where)} {value_b:.4g}"
    if (undecided := _undecidable(cells, points, seeds)) is not None:
        return undecided
    effect = effect_of(lambda v: stat(_stack(v, b)) - stat(_stack(v, a)), cells, rng)
    return Outcome(effect.verdict, f"{points}; B − A = {effect.text()}", effect, f"{what}: B − A", seeds)


def _crossover(a: Sequence[tuple[float, CellValue]], b: Sequence[tuple[float, CellValue]], a_where: Mapping,
               b_where: Mapping, cells: Sequence[CellValue], seeds: Sequence[int],
               rng: np.random.Generator) -> Outcome:
    """A worse than B at the smallest common std (``A − B > 0``) and better at the largest (``B − A > 0``)."""
    a_at, b_at = {s: c for s, c in a}, {s: c for s, c in b}
    common = sorted(set(a_at) & set(b_at))
    if len(common) < 2:
        return Outcome(NOT_RUN, "the curves share fewer than two data stds")
    lo, hi = common[0], common[-1]
    points = (f"std {lo:g}: A {a_at[lo].mean:.4g} vs B {b_at[lo].mean:.4g}; "
              f"std {hi:g}: A {a_at[hi].mean:.4g} vs B {b_at[hi].mean:.4g}")
    used = [a_at[lo], b_at[lo], a_at[hi], b_at[hi]]
    if (undecided := _undecidable(used, points, seeds)) is not None:
        return undecided
    low_end = effect_of(lambda v: v[a_at[lo].cell] - v[b_at[lo].cell], used, rng)
    high_end = effect_of(lambda v: v[b_at[hi].cell] - v[a_at[hi].cell], used, rng)
    evidence = (f"{points}; at std {lo:g} A − B = {low_end.text()} ({low_end.verdict}); "
                f"at std {hi:g} B − A = {high_end.text()} ({high_end.verdict})")
    verdict = combine([low_end.verdict, high_end.verdict])
    return Outcome(verdict, evidence, _headline([low_end, high_end], verdict),
                   "FID gap at the end of the crossover that decides", seeds)


def _best_stds(curve: Sequence[tuple[float, CellValue]], rng: np.random.Generator, draws: int) -> np.ndarray:
    stds = np.array([s for s, _ in curve])
    matrix = np.stack([c.draws(rng, draws) for _, c in curve])
    return stds[np.argmin(matrix, axis=0)]


def _fraction_outcome(p_in: float, point_in: bool, evidence: str, what: str, seeds: Sequence[int],
                      draws: int) -> Outcome:
    """A yes/no property evaluated on every draw: supported when it holds in ≥ 97.5 % of the draws,
    contradicted in ≤ 2.5 % (the same two-sided 95 % rule), else inconclusive."""
    verdict = SUPPORTED if p_in >= 0.975 else CONTRADICTED if p_in <= 0.025 else INCONCLUSIVE
    effect = Effect(p_in, p_in, p_in, verdict, 0.5)
    return Outcome(verdict, f"{evidence}; holds in {p_in:.1%} of {draws} draws (at the means: "
                            f"{'yes' if point_in else 'no'})", effect, what, seeds)


def check_argmin_in(rows: pd.DataFrame, where: Mapping[str, Any], interval: Sequence[float],
                    rng: np.random.Generator, draws: int = DRAWS) -> Outcome:
    """The curve's best data std lies in ``interval`` (e.g. Fig. 6's optimum around 0.70)."""
    curve = _curve(rows, where, "")
    if curve is None:
        return Outcome(NOT_RUN, "missing curve")
    seeds = _seeds(_select(rows, where))
    lo, hi = float(interval[0]), float(interval[1])
    best = min(curve, key=lambda p: p[1].mean)[0]
    points = f"best std at the means {best:g} (interval [{lo:g}, {hi:g}])"
    if (undecided := _undecidable([c for _, c in curve], points, seeds)) is not None:
        return undecided
    stds = _best_stds(curve, rng, draws)
    p_in = float(np.mean((stds >= lo) & (stds <= hi)))
    return _fraction_outcome(p_in, lo <= best <= hi, points, "share of draws whose best std is in the interval",
                             seeds, draws)


def check_snr_band(rows: pd.DataFrame, fig3_cfg: Mapping[str, Any], rng: np.random.Generator,
                   draws: int = DRAWS) -> Outcome:
    """At each schedule's best-FID std (Fig. 2), the Eq. 7 SNR-PDF mean lies in Fig. 3's band, for every
    schedule at once, on every draw."""
    import torch

    from models.snr import analytic_snr_pdf, make_setting, snr_summary

    band = fig3_cfg["band_db"]
    lo, hi, step = fig3_cfg["grid_db"]
    grid = torch.tensor(np.arange(lo, hi + step / 2, step), dtype=torch.float64)
    schedules = sorted(set(rows["schedule"]))
    if not schedules:
        return Outcome(NOT_RUN, "no Fig. 2 cells")
    all_in, point_in, parts, curves = np.ones(draws, dtype=bool), True, [], []
    for schedule in schedules:
        curve = _curve(rows, {"schedule": schedule}, f"{schedule}:")
        curves.extend(c for _, c in curve)
        inside = {}
        for std, _ in curve:
            setting = make_setting(schedule, std=std, C=float(fig3_cfg.get("C", 1.0)), prediction="noise")
            inside[std] = bool(snr_summary(grid, analytic_snr_pdf(grid, setting), band)["mean_in_band"])
        best = min(curve, key=lambda p: p[1].mean)[0]
        point_in &= inside[best]
        parts.append(f"{schedule}: best std {best:g} ({'in' if inside[best] else 'outside'} "
                     f"[{band[0]:g}, {band[1]:g}] dB)")
        if _uncertain([c for _, c in curve]) is None:
            all_in &= np.array([inside[s] for s in _best_stds(curve, rng, draws)])
    seeds = _seeds(rows)
    if (undecided := _undecidable(curves, "; ".join(parts), seeds)) is not None:
        return undecided
    return _fraction_outcome(float(np.mean(all_in)), point_in, "; ".join(parts),
                             "share of draws with every best std's PDF mean in the band", seeds, draws)


def first_reach(steps: np.ndarray, fids: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The step at which a FID curve (milestones ``steps``, values ``fids`` (milestones × draws)) first reaches
    ``target`` (per draw), interpolating linearly between milestones; ``-1`` where it is reached at the first
    milestone already (the step is only bounded above), ``inf`` where it never is."""
    out = np.full(fids.shape[1], np.inf)
    reached = fids <= target[None, :]
    for j in range(fids.shape[1]):
        hits = np.flatnonzero(reached[:, j])
        if not hits.size:
            continue
        i = int(hits[0])
        if i == 0:
            out[j] = -1.0
            continue
        f0, f1 = fids[i - 1, j], fids[i, j]
        out[j] = steps[i - 1] + (f0 - target[j]) / (f0 - f1) * (steps[i] - steps[i - 1])
    return out


def speedup_ratios(baseline_step: float, steps: np.ndarray, fids: np.ndarray,
                   target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``baseline_step / step`` at which the method first reaches ``target``, per draw, as (value, low, high):
    reached at the first milestone the ratio is only bounded below (``low`` = ``baseline_step / steps[0]``,
    ``high`` = inf); never reached only bounded above (``low`` = 0, ``high`` = ``baseline_step / steps[-1]``)."""
    reach = first_reach(steps, fids, target)
    first, never = reach == -1.0, np.isinf(reach)
    exact = baseline_step / np.where(first | never, 1.0, reach)
    value = np.where(first, baseline_step / steps[0], np.where(never, baseline_step / steps[-1], exact))
    low = np.where(never, 0.0, value)
    high = np.where(first, np.inf, value)
    return value, low, high


def check_speedup(results: Mapping[str, pd.DataFrame], check: Mapping[str, Any],
                  rng: np.random.Generator, draws: int = DRAWS) -> Outcome:
    """How many times sooner the method's FID curve reaches the baseline's FID at its last milestone:
    ``baseline step / method step``, judged against ``min_ratio`` (× (1 − ``tolerance``))."""
    method_rows = _rows(results, check["method"]["experiment"])
    if method_rows is None:
        return Outcome(NOT_RUN, f"no results/{check['method']['experiment']}.csv")
    method = [r for _, r in method_rows.iterrows() if r["cell"] in check["method"]["cells"]]
    if len(method) != len(check["method"]["cells"]):
        return Outcome(NOT_RUN, "missing method cells")
    method.sort(key=lambda r: float(r["milestone"]))
    steps = np.array([float(r["milestone"]) for r in method])
    cells = [cell_value(r) for r in method]
    published = check["baseline"].get("published")
    if published is not None:
        baseline_step, target_cell = float(published["step"]), None
        target_text = f"{published['fid']:g} at {published['step'] / 1000:g}k ({published['source']}, quoted)"
    else:
        base_rows = _rows(results, check["baseline"]["experiment"])
        row = None if base_rows is None else next(
            (r for _, r in base_rows.iterrows() if r["cell"] == check["baseline"]["cell"]), None)
        if row is None:
            return Outcome(NOT_RUN, f"missing baseline cell {check['baseline']['cell']}")
        target_cell = cell_value(row)
        target_cell = CellValue(f"baseline:{target_cell.cell}", target_cell.mean, target_cell.se, target_cell.n)
        baseline_step = float(row["milestone"])
        target_text = f"{target_cell.mean:.4g} at {baseline_step / 1000:g}k ({check['baseline']['cell']})"
    seeds = _seeds(method_rows[method_rows["cell"].isin(check["method"]["cells"])])
    curve_text = ", ".join(f"{s / 1000:g}k {c.mean:.4g}" for s, c in zip(steps, cells, strict=True))
    bound = baseline_step / steps[0]
    evidence = f"target FID {target_text}; method {curve_text}; ratios above {bound:.3g} are not resolved"
    if (undecided := _undecidable(cells + ([target_cell] if target_cell else []), evidence, seeds)) is not None:
        return undecided

    def ratios(values: Mapping[str, np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        fids = np.stack([values[c.cell] for c in cells])
        target = values[target_cell.cell] if target_cell else np.full(size, float(published["fid"]))
        return speedup_ratios(baseline_step, steps, fids, target)

    every = cells + ([target_cell] if target_cell else [])
    point = float(ratios({c.cell: np.array([c.mean]) for c in every}, 1)[0][0])
    value, lows, highs = ratios({c.cell: c.draws(rng, draws) for c in every}, draws)
    # Censored draws count against the verdict they could fake: a bound is never evidence beyond itself.
    low = float(np.quantile(lows, 0.025, method="lower"))
    high = float(np.quantile(highs, 0.975, method="higher"))   # no interpolation: inf stays inf
    shown_low, shown_high = (float(q) for q in np.quantile(value, [0.025, 0.975]))
    threshold = float(check["min_ratio"]) * (1 - float(check.get("tolerance", 0.0)))
    verdict = decide(low, high, threshold - 1e-12)
    effect = Effect(point, shown_low, shown_high, verdict, threshold)
    censored = bool(np.isinf(high) or np.any(lows == 0.0))
    note = " (censored: some draws reach the target before the first milestone or never)" if censored else ""
    return Outcome(verdict, f"{evidence}; speed-up {effect.text()}{note} vs {threshold:.3g}", effect,
                   f"speed-up (baseline steps / method steps) vs {threshold:.3g}", seeds)


def check_absolute(rows: pd.DataFrame, cell: str, paper: float, tolerance: float,
                   rng: np.random.Generator) -> Outcome:
    """Equivalence: the cell's 95 % interval lies within ``paper ± tolerance`` (supported), wholly outside it
    (contradicted), or straddles its edge (inconclusive). The effect is ``tolerance − |value − paper|``."""
    row = next((r for _, r in rows.iterrows() if r["cell"] == cell), None)
    if row is None:
        return Outcome(NOT_RUN, f"missing cell {cell}")
    value = cell_value(row)
    seeds = _seeds(rows[rows["cell"] == cell])
    points = f"{cell} {value.mean:.4g} vs the paper's {paper:g} ± {tolerance:g}"
    if (undecided := _undecidable([value], points, seeds)) is not None:
        return undecided
    low, high = (float(q) for q in np.quantile(value.draws(rng, DRAWS) - paper, [0.025, 0.975]))
    verdict = SUPPORTED if -tolerance <= low and high <= tolerance else \
        CONTRADICTED if high < -tolerance or low > tolerance else INCONCLUSIVE
    effect = Effect(value.mean - paper, low, high, verdict, 0.0)
    return Outcome(verdict, f"{points}; value − paper = {effect.text()}", effect,
                   f"value − paper (supported inside ±{tolerance:g})", seeds)


def run_check(results: Mapping[str, pd.DataFrame], check: Mapping[str, Any], fig3_cfg: Mapping[str, Any],
              rng: np.random.Generator) -> Outcome:
    kind = check["kind"]
    if kind == "speedup":
        return check_speedup(results, check, rng)
    rows = _rows(results, check["experiment"], check.get("metric", "fid"))
    if rows is None or rows.empty:
        return Outcome(NOT_RUN, f"no results/{check['experiment']}.csv")
    if kind == "less":
        return check_less(rows, check["pairs"], rng)
    if kind == "snr_band":
        return check_snr_band(rows, fig3_cfg, rng)
    if kind == "argmin_in":
        return check_argmin_in(rows, check["a"], check["interval"], rng)
    if kind == "absolute":
        return check_absolute(rows, check["cell"], float(check["paper"]), float(check["tolerance"]), rng)
    return check_curves(kind, rows, check["a"], check["b"], rng)


# --------------------------------------------------------------------------------------------
# Claims -> rows
# --------------------------------------------------------------------------------------------


def _scale(results: Mapping[str, pd.DataFrame]) -> str:
    return next((str(t["scale"].dropna().iloc[0]) for t in results.values()
                 if "scale" in t and not t["scale"].dropna().empty), "")


def _with_experiment(check: Mapping[str, Any], default: str, reading: str) -> dict[str, Any]:
    """``check`` with every ``experiment`` equal to ``default`` (top level, ``method``, ``baseline``) replaced."""
    out = copy.deepcopy(dict(check))
    for part in (out, out.get("method"), out.get("baseline")):
        if isinstance(part, dict) and part.get("experiment") == default:
            part["experiment"] = reading
    return out


def _readings(claim: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(reading name, check) for the default reading and every alternative: each reading's experiment replaces
    the default reading's wherever the check names it (``experiment``, ``method.experiment``,
    ``baseline.experiment``)."""
    check = dict(claim["check"])
    readings = claim.get("readings")
    if not readings:
        return [("", check)]
    default = readings[0].get("experiment")
    return [(r["name"], _with_experiment(check, default, r["experiment"]) if "experiment" in r and default else
             copy.deepcopy(check)) for r in readings]


def _to_decide(outcome: Outcome) -> str:
    if outcome.verdict != INCONCLUSIVE or outcome.effect is None or \
            outcome.effect_is.startswith(("share", "value − paper")):
        return ""
    seeds = max(1, len(set(outcome.seeds)))
    needed = seeds_to_decide(outcome.effect, seeds, limit=MAX_SEEDS_SHOWN)  # search no further than shown
    if needed is None:
        return "no effect observed"
    if needed > MAX_SEEDS_SHOWN:
        return f"more than {MAX_SEEDS_SHOWN} seeds per cell: the effect is negligible against the noise"
    if len(set(outcome.seeds)) <= 1:
        return (f"≈{needed} seeds per cell if the seeds vary no more than the metric's noise "
                f"(one seed: seed variation unmeasured)")
    return f"≈{needed} seeds per cell for an effect of this size"


def audit(results: Mapping[str, pd.DataFrame], claims: Sequence[Mapping[str, Any]],
          fig3_cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (claim, reading) (module docstring)."""
    scale, commit, out = _scale(results), git_commit(), []
    for claim in claims:
        rows = []
        for reading, check in _readings(claim):
            only = claim.get("scales")
            if only and scale not in only:
                outcome = Outcome(NOT_APPLICABLE, f"judged at the {', '.join(only)} scale only")
            else:
                # One stream per claim, the same for every reading (common random numbers): readings with the
                # same cells get the same interval, so a verdict that differs by reading differs by the data.
                outcome = run_check(results, check, fig3_cfg, claim_rng(claim["id"]))
            effect = outcome.effect
            rows.append({
                "claim": claim["id"], "type": "implied" if claim.get("implied") else "paper", "reading": reading,
                "verdict": outcome.verdict, "effect": "" if effect is None else effect.value,
                "effect_low": "" if effect is None else effect.low,
                "effect_high": "" if effect is None else effect.high,
                "effect_is": outcome.effect_is, "seeds": " ".join(map(str, outcome.seeds)),
                "evidence": outcome.evidence, "to_decide": _to_decide(outcome), "reading_dependent": "",
                "text": claim["text"], "scale": scale, "git_commit": commit,
            })
        decided = {r["verdict"] for r in rows if r["verdict"] not in (NOT_RUN, NOT_APPLICABLE)}
        if len(rows) > 1:
            ran = [r for r in rows if r["verdict"] not in (NOT_RUN, NOT_APPLICABLE)]
            flag = "" if len(ran) < 2 else ("yes" if len(decided) > 1 else "no")
            if flag == "no" and _identical_readings(results, claim):
                flag = "no (the readings give identical results at this scale: not a test of the assumption here)"
            for row in rows:
                row["reading_dependent"] = flag
        out.extend(rows)
    return out


def _identical_readings(results: Mapping[str, pd.DataFrame], claim: Mapping[str, Any]) -> bool:
    """Whether every reading's table reproduces the same numbers for the same cells (e.g. guidance on 3 channels
    and on all channels of a 1-channel latent)."""
    tables = [results.get(r["experiment"]) for r in claim.get("readings") or [] if "experiment" in r]
    if len(tables) < 2 or any(t is None for t in tables):
        return False
    def key(table: pd.DataFrame) -> pd.Series:
        run = table[table["status"] == "run"]
        return run.set_index(["cell", "metric"])["reproduced"].astype(float).sort_index()
    first = key(tables[0])
    return all(key(t).reindex(first.index).equals(first) for t in tables[1:])


def load_results(results_dir: Path, tables: Sequence[str | Path] | None = None) -> dict[str, pd.DataFrame]:
    """The experiment tables of ``results_dir`` (or exactly ``tables``), by experiment name."""
    paths = [Path(t) for t in tables] if tables else sorted(results_dir.glob("*.csv"))
    loaded = {}
    for path in paths:
        table = pd.read_csv(path, comment="#", keep_default_na=False, na_values=[""])
        if {"experiment", "metric", "reproduced", "status"} <= set(table.columns):
            loaded[path.stem] = table
    return loaded


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.audit", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="mini", help="the scale whose folders the defaults name (default mini)")
    parser.add_argument("--results", help="folder of experiment CSVs (default: results/<scale>)")
    parser.add_argument("--tables", nargs="*", help="read exactly these experiment CSVs (default: all of --results)")
    parser.add_argument("--claims", default="config/claims.yaml")
    parser.add_argument("--fig3-config", default="config/figures/fig3.yaml")
    parser.add_argument("--out", help="the audit CSV (default: results/<scale>/audit.csv)")
    parser.add_argument("--only", default="", metavar="PREFIX",
                        help="audit only the claims whose id starts with PREFIX (e.g. calibration-)")
    args = parser.parse_args(argv)
    args.results = args.results or str(Path(at_scale("results/audit.csv", args.scale)).parent)
    args.out = args.out or at_scale("results/audit.csv", args.scale)
    claims, fig3_cfg = load_claims(args.claims), load_fig3(args.fig3_config)
    claims = [claim for claim in claims if claim["id"].startswith(args.only)]
    if not claims:
        raise InputError(f"--only: no claim of {args.claims} has an id starting with {args.only!r}")
    rows = audit(load_results(Path(args.results), args.tables), claims, fig3_cfg)
    prov = provenance(config={"claims": portable_path(args.claims), "results": portable_path(args.results)}, seed=None)
    atomic_write_csv(args.out, rows, COLUMNS, prov)
    counts = pd.Series([r["verdict"] for r in rows]).value_counts().to_dict()
    print(f"audit: {len(rows)} rows -> {args.out}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
