"""The probability density of the data-dependent SNR during training (Section 2.2: Eq. 4–7, Algorithm 1).

Everything is on the code base's time axis (``t = 0`` noise, ``t = 1`` data) and in float64. Log-SNR is
in decibels, as in Algorithm 1 step 7: ``lgSNR = 10·log10 C + 20·log10 std + 10·log10(α_t²/σ_t²)``.

Discrete (DDPM) schedules. Training draws the integer step ``k`` (see :func:`step_probabilities`), so the
training SNR is a distribution over ``T`` atoms. To give it a density (Eq. 7) we use the schedule's
continuous interpolation: step ``k``'s probability is spread uniformly over the time cell
``[1 − (k+1)/T, 1 − k/T]`` (width ``1/T``, it contains the grid time ``t_k``). Uniform step sampling then
becomes exactly uniform ``t`` on ``[0, 1]``. Eq. 7 and Algorithm 1 both use this relaxation;
``sample_snr_db(..., on_grid=True)`` draws the exact atoms instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from models.schedules import DDPMSchedule, FlowCosine, FlowLinear, Schedule, get_schedule, relative_snr
from models.timesteps import LossWeight, TimestepSampling, loss_weight, timestep_density

Tensor = torch.Tensor
DB_PER_NEPER = 10.0 / math.log(10.0)  # a power ratio of e^λ is λ·DB_PER_NEPER decibels
_F64 = torch.float64


@dataclass(frozen=True)
class SNRSetting:
    """One training configuration whose SNR PDF we want: schedule, data std, C, f_s, f_l, time range.

    ``t_range`` is the interval training times are drawn in (``Schedule.t_range(prediction)``); the
    sampling density is mapped affinely into it, as ``models.timesteps.sample_timesteps`` does. ``prediction``
    is the training target whose MSE f_l multiplies (``data`` when none is given).
    """

    schedule: Schedule
    std: float = 1.0
    C: float = 1.0
    sampling: TimestepSampling = field(default_factory=TimestepSampling)
    weight: LossWeight = field(default_factory=LossWeight)
    t_range: tuple[float, float] = (0.0, 1.0)
    prediction: str = "data"  # the training target f_l weighs (min-snr depends on it)

    def __post_init__(self) -> None:
        if self.std <= 0 or self.C <= 0:
            raise ValueError("std and C must be positive")
        lo, hi = self.t_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"t_range must satisfy 0 <= lo < hi <= 1, got {self.t_range}")
        if self.schedule.discrete and tuple(self.t_range) != (0.0, 1.0):
            raise ValueError("discrete schedules train on their whole grid; t_range must be (0, 1)")

    @property
    def offset_db(self) -> float:
        """The data-dependent part of Algorithm 1 step 7: ``10·log10 C + 20·log10 std``."""
        return 10.0 * math.log10(self.C) + 20.0 * math.log10(self.std)

    def describe(self) -> dict:
        return {
            "schedule": self.schedule.name,
            "std": self.std,
            "C": self.C,
            "sampling": {"kind": self.sampling.kind, "mu": self.sampling.mu, "sigma": self.sampling.sigma},
            "loss_weight": {"kind": self.weight.kind, "gamma": self.weight.gamma},
            "t_range": list(self.t_range),
        }


def make_setting(
    schedule: str,
    std: float = 1.0,
    C: float = 1.0,
    sampling: str = "uniform",
    mu: float = 0.0,
    sigma: float = 1.0,
    weight: str = "none",
    gamma: float = 5.0,
    prediction: str | None = None,
) -> SNRSetting:
    """Build an :class:`SNRSetting` from plain values; ``prediction`` picks ``Schedule.t_range``."""
    sched = get_schedule(schedule)
    t_range = sched.t_range(prediction) if prediction is not None else (0.0, 1.0)
    return SNRSetting(
        sched, float(std), float(C), TimestepSampling(sampling, float(mu), float(sigma)),
        LossWeight(weight, float(gamma)), (float(t_range[0]), float(t_range[1])), prediction or "data",
    )


# --- Eq. 4–5 and Algorithm 1 step 7 -------------------------------------------------------------------


def data_dependent_snr(t: Tensor, schedule: Schedule, std: float, C: float = 1.0) -> Tensor:
    """Eq. 4–5: ``SNR(t) = C·std²·α_t²/σ_t²`` (the data-independent Eq. 3 scaled by ``K(I) = C·std²``)."""
    return C * std**2 * relative_snr(t, schedule)


def log_snr_db(t: Tensor, schedule: Schedule, std: float = 1.0, C: float = 1.0) -> Tensor:
    """Algorithm 1 step 7: ``lgSNR(dB) = 10·log10 C + 20·log10 std + 10·log10(α_t²/σ_t²)``.

    Computed from ``schedule.log_snr`` (stable where α or σ is tiny), not from the ratio itself.
    """
    return 10.0 * math.log10(C) + 20.0 * math.log10(std) + DB_PER_NEPER * schedule.log_snr(t)


def d_log_snr_db_dt(t: Tensor, schedule: Schedule) -> Tensor:
    """``d lgSNR/dt`` in dB per unit time: ``DB_PER_NEPER · 2·(α'/α − σ'/σ)`` (independent of std and C)."""
    return DB_PER_NEPER * 2.0 * (schedule.d_alpha(t) / schedule.alpha(t) - schedule.d_sigma(t) / schedule.sigma(t))


def time_of_log_snr_db(y_db: Tensor, schedule: Schedule, std: float = 1.0, C: float = 1.0) -> Tensor:
    """``g(y)`` of Eq. 7: the time whose lgSNR is ``y`` (NaN where no time in [0, 1] has it).

    Closed form for the two flows, exact inverse of the log-ᾱ interpolation for DDPM, bisection for any
    other schedule whose log-SNR increases with ``t``.
    """
    lam = (y_db.to(_F64) - 10.0 * math.log10(C) - 20.0 * math.log10(std)) / DB_PER_NEPER  # ln(α²/σ²)
    if isinstance(schedule, FlowLinear):  # ln SNR = 2·logit(t)
        return torch.sigmoid(0.5 * lam)
    if isinstance(schedule, FlowCosine):  # SNR = tan²(πt/2)
        return (2.0 / math.pi) * torch.atan(torch.exp(0.5 * lam))
    if isinstance(schedule, DDPMSchedule):
        return _ddpm_time_of_log_snr(lam, schedule)
    return _bisect_time_of_log_snr(lam, schedule)


def _ddpm_time_of_log_snr(lam: Tensor, schedule: DDPMSchedule) -> Tensor:
    log_abar_grid = torch.log(schedule.alphas_cumprod).to(_F64)  # decreasing in k
    target = torch.nn.functional.logsigmoid(lam)  # SNR = ᾱ/(1 − ᾱ)  ⇒  ᾱ = sigmoid(ln SNR)
    increasing = -log_abar_grid
    pos = torch.searchsorted(increasing, (-target).contiguous())
    lo = (pos - 1).clamp(0, schedule.num_steps - 2)
    frac = (target - log_abar_grid[lo]) / (log_abar_grid[lo + 1] - log_abar_grid[lo])
    t = schedule.time_of_index(lo.to(_F64) + frac)
    inside = (target <= log_abar_grid[0]) & (target >= log_abar_grid[-1])
    return torch.where(inside, t.clamp(0.0, 1.0), torch.full_like(t, float("nan")))


def _bisect_time_of_log_snr(lam: Tensor, schedule: Schedule, iterations: int = 80) -> Tensor:
    lo = torch.zeros_like(lam)
    hi = torch.ones_like(lam)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        below = schedule.log_snr(mid) < lam
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    inside = (lam >= schedule.log_snr(torch.zeros(1, dtype=_F64))) & (
        lam <= schedule.log_snr(torch.ones(1, dtype=_F64))
    )
    return torch.where(inside, 0.5 * (lo + hi), torch.full_like(lam, float("nan")))


# --- Timestep distribution: f_s, f_l and Eq. 6 -----------------------------------------------------------


def sampling_density(t: Tensor, sampling: TimestepSampling, t_range: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """f_s(t) for continuous schedules: the sampling density mapped affinely into ``t_range``."""
    lo, hi = t_range
    s = (t.to(_F64) - lo) / (hi - lo)
    inside = (s >= 0) & (s <= 1)
    base = timestep_density(s.clamp(1e-12, 1 - 1e-12), sampling) / (hi - lo)
    return torch.where(inside, base, torch.zeros_like(base))


def step_probabilities(schedule: DDPMSchedule, sampling: TimestepSampling) -> Tensor:
    """Training probability of each DDPM step ``k`` (index 0 = least noisy), before any loss weight.

    ``uniform``: ``1/T`` for every step (DiT draws ``randint(0, T)``; the paper's integer t). ``lognorm``:
    the logit-normal mass of the rounding cell of ``k`` — what ``sample_timesteps`` does (draw
    ``t = sigmoid(N(μ, s²))`` and round to the nearest grid time).
    """
    T = schedule.num_steps
    if sampling.kind == "uniform":
        return torch.full((T,), 1.0 / T, dtype=_F64)
    k = torch.arange(T, dtype=_F64)
    t_upper = schedule.time_of_index(k - 0.5).clamp(0.0, 1.0)  # larger t (smaller index) end of the cell
    t_lower = schedule.time_of_index(k + 0.5).clamp(0.0, 1.0)
    return _logit_normal_cdf(t_upper, sampling) - _logit_normal_cdf(t_lower, sampling)


def _logit_normal_cdf(t: Tensor, sampling: TimestepSampling) -> Tensor:
    logit = torch.log(t) - torch.log1p(-t)  # ±inf at the ends, which erf handles
    return 0.5 * (1 + torch.erf((logit - sampling.mu) / (sampling.sigma * math.sqrt(2.0))))


def _cell_of_time(t: Tensor, num_steps: int) -> Tensor:
    """Step ``k`` whose relaxation cell ``[1 − (k+1)/T, 1 − k/T]`` contains ``t``."""
    return torch.floor((1 - t) * num_steps).clamp(0, num_steps - 1).long()


def _unnormalised_timestep_density(t: Tensor, setting: SNRSetting) -> Tensor:
    """``f_l(t)·f_s(t)`` (numerator of Eq. 6); for DDPM the relaxed step mass on its cell."""
    t = t.to(_F64)
    schedule = setting.schedule
    if isinstance(schedule, DDPMSchedule):
        k = _cell_of_time(t, schedule.num_steps)
        t_grid = schedule.time_of_index(torch.arange(schedule.num_steps, dtype=_F64))
        weight = loss_weight(t_grid, setting.weight, schedule, setting.prediction)
        mass = step_probabilities(schedule, setting.sampling) * weight
        return schedule.num_steps * mass[k]
    f_s = sampling_density(t, setting.sampling, setting.t_range)
    f_l = loss_weight(t.clamp(1e-300, 1.0), setting.weight, schedule, setting.prediction)
    return torch.where(f_s > 0, f_l * f_s, torch.zeros_like(f_s))


def timestep_normaliser(setting: SNRSetting, half_width: float = 45.0, step: float = 2e-3) -> float:
    """The denominator of Eq. 6, ``∫₀¹ f_l(t)·f_s(t) dt``.

    Exact sum for DDPM; otherwise the trapezoid rule in ``u = logit((t − lo)/(hi − lo))``, where every
    supported f_s is smooth. Raises ``ValueError`` if the integrand has not decayed at ``|u| = half_width``
    (e.g. the SNR loss weight on a flow over the whole of [0, 1]: Eq. 6 is then undefined).
    """
    schedule = setting.schedule
    if isinstance(schedule, DDPMSchedule):
        t_grid = schedule.time_of_index(torch.arange(schedule.num_steps, dtype=_F64))
        weight = loss_weight(t_grid, setting.weight, schedule, setting.prediction)
        mass = step_probabilities(schedule, setting.sampling) * weight
        return float(mass.sum())
    lo, hi = setting.t_range
    u = torch.arange(-half_width, half_width + step / 2, step, dtype=_F64)
    s = torch.sigmoid(u)
    t = lo + (hi - lo) * s
    jac = (hi - lo) * s * (1 - s)
    integrand = _unnormalised_timestep_density(t, setting) * jac
    total = float(torch.trapezoid(integrand, u))
    if not math.isfinite(total) or total <= 0:
        raise ValueError("Eq. 6 is undefined: ∫ f_l·f_s dt is not finite and positive for this setting")
    edge = float(torch.maximum(integrand[0], integrand[-1]))
    if edge * 50.0 > 1e-9 * total:  # tail beyond |u| = half_width would still matter
        raise ValueError("Eq. 6 is undefined: f_l·f_s is not integrable on this time range (tails do not decay)")
    return total


def combined_timestep_density(t: Tensor, setting: SNRSetting, normaliser: float | None = None) -> Tensor:
    """Eq. 6: ``f_t(t) = f_l(t)·f_s(t) / ∫₀¹ f_l·f_s dt`` on (0, 1).

    For DDPM, the step probabilities spread over their relaxation cells (module docstring).
    ``normaliser`` may be passed to reuse :func:`timestep_normaliser`'s value.
    """
    z = timestep_normaliser(setting) if normaliser is None else normaliser
    return _unnormalised_timestep_density(t, setting) / z


# --- Eq. 7: analytic density of lgSNR ---------------------------------------------------------------------


def analytic_snr_pdf(y_db: Tensor, setting: SNRSetting) -> Tensor:
    """Eq. 7: ``f_Y(y) = f_t(g(y))·|g'(y)|``, the density of lgSNR in dB (per dB).

    ``g`` is the inverse of ``t ↦ lgSNR(t)`` (:func:`time_of_log_snr_db`) and ``g'(y) = 1/(dlgSNR/dt)``.
    Zero where no training time has that SNR.
    """
    y = torch.as_tensor(y_db, dtype=_F64)
    t = time_of_log_snr_db(y, setting.schedule, setting.std, setting.C)
    valid = torch.isfinite(t) & (t > 0) & (t < 1)
    t_safe = torch.where(valid, t, torch.full_like(t, 0.5))
    slope = d_log_snr_db_dt(t_safe, setting.schedule)
    density = combined_timestep_density(t_safe, setting) / slope.abs()
    ok = valid & torch.isfinite(density)
    return torch.where(ok, density, torch.zeros_like(density))


def db_grid(lo: float, hi: float, step: float) -> np.ndarray:
    """Evenly spaced lgSNR grid (dB) from ``lo`` to ``hi`` inclusive."""
    if step <= 0 or hi <= lo:
        raise ValueError("grid needs lo < hi and step > 0")
    count = int(round((hi - lo) / step)) + 1
    return lo + step * np.arange(count, dtype=np.float64)


def bin_edges(grid_db: np.ndarray, step: float | None = None) -> np.ndarray:
    """Bins of width ``step`` (default: the grid's spacing) centred on an even grid (Algorithm 1's histogram)."""
    step = float(grid_db[1] - grid_db[0]) if step is None else float(step)
    return np.concatenate([grid_db - step / 2, [grid_db[-1] + step / 2]])


def bin_average(density: Callable[[Tensor], Tensor], edges: Tensor, points_per_bin: int = 64) -> Tensor:
    """Average of a density over each bin ``[edges[i], edges[i+1]]`` (composite midpoint rule)."""
    edges = torch.as_tensor(edges, dtype=_F64)
    frac = (torch.arange(points_per_bin, dtype=_F64) + 0.5) / points_per_bin
    width = torch.diff(edges)
    nodes = edges[:-1, None] + width[:, None] * frac[None, :]
    return density(nodes.reshape(-1)).reshape(nodes.shape).mean(dim=1)


# --- Algorithm 1: sample-based estimate ------------------------------------------------------------------


def sample_snr_db(
    n: int, setting: SNRSetting, generator: torch.Generator | None = None, on_grid: bool = False
) -> Tensor:
    """Algorithm 1 steps 1–7: ``n`` lgSNR samples (dB) drawn from the training distribution f_t.

    1. ``n`` times uniform on [0, 1]; 2. ``f_l(t)·f_s(t)`` for each; 3. normalise the weights (the printed
    denominator ``Σf_l·Σf_s`` differs from ``Σ f_l·f_s`` only by a constant, which cancels); 4–5. resample
    ``n`` times from that weighted set (inverse CDF of the weights); 6–7. lgSNR in dB.
    ``on_grid=True`` (DDPM only) snaps each draw to its step's grid time: the exact, discrete training SNR.
    """
    t = torch.rand(n, generator=generator, dtype=_F64)
    weights = _unnormalised_timestep_density(t, setting)
    total = weights.sum()
    if not torch.isfinite(total) or total <= 0:
        raise ValueError("Algorithm 1: the weights f_l·f_s are not finite and positive")
    cdf = torch.cumsum(weights / total, dim=0)
    u = torch.rand(n, generator=generator, dtype=_F64) * cdf[-1]
    t_resampled = t[torch.searchsorted(cdf, u).clamp(max=n - 1)]
    schedule = setting.schedule
    if on_grid:
        if not isinstance(schedule, DDPMSchedule):
            raise ValueError("on_grid applies to discrete (DDPM) schedules only")
        t_resampled = schedule.time_of_index(_cell_of_time(t_resampled, schedule.num_steps).to(_F64))
    return log_snr_db(t_resampled, schedule, setting.std, setting.C)


def histogram_density(samples_db: Tensor, edges_db: Tensor) -> Tensor:
    """Algorithm 1 step 8: histogram density per dB on the bins ``edges_db`` (normalised by all samples)."""
    edges = torch.as_tensor(edges_db, dtype=_F64)
    counts = torch.histogram(samples_db.to(_F64), bins=edges).hist
    return counts / (samples_db.numel() * torch.diff(edges))


def estimate_snr_pdf(
    edges_db: Tensor,
    setting: SNRSetting,
    n: int = 1_000_000,
    generator: torch.Generator | None = None,
    on_grid: bool = False,
) -> Tensor:
    """Algorithm 1: sample-based estimate of the lgSNR density (per dB) on the bins ``edges_db``."""
    return histogram_density(sample_snr_db(n, setting, generator, on_grid), edges_db)


# --- Summary --------------------------------------------------------------------------------------------


def snr_summary(
    y_db: np.ndarray | Tensor, density: np.ndarray | Tensor, band: tuple[float, float] | None = None
) -> dict:
    """Mean, standard deviation and mode of lgSNR (dB) for a density tabulated on ``y_db``.

    Moments are normalised by the mass on the grid (``grid_mass``, which should be ≈ 1: a grid that cuts
    the tails shows here). ``band_mass`` is the (un-renormalised) probability inside ``band``.
    """
    y = np.asarray(y_db, dtype=np.float64)
    p = np.asarray(density, dtype=np.float64)
    mass = float(np.trapezoid(p, y))
    if mass <= 0:
        raise ValueError("density has no mass on this grid")
    mean = float(np.trapezoid(y * p, y) / mass)
    var = float(np.trapezoid((y - mean) ** 2 * p, y) / mass)
    summary = {
        "grid_mass": mass,
        "mean_db": mean,
        "std_db": math.sqrt(max(var, 0.0)),
        "mode_db": float(y[int(np.argmax(p))]),
    }
    if band is not None:
        lo, hi = sorted(float(b) for b in band)
        cumulative = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(y))])
        summary["band_db"] = [lo, hi]
        summary["band_mass"] = float(np.interp(hi, y, cumulative) - np.interp(lo, y, cumulative))
        summary["mean_in_band"] = bool(lo <= mean <= hi)
    return summary
