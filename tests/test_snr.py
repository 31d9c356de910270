"""Section 2.2: data-dependent SNR (Eq. 4-5), Eq. 6, Eq. 7, Algorithm 1, the snr_pdf stage and Figure 3."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from models.schedules import FlowLinear, Schedule, get_schedule
from models.snr import (
    DB_PER_NEPER,
    SNRSetting,
    analytic_snr_pdf,
    bin_average,
    combined_timestep_density,
    data_dependent_snr,
    estimate_snr_pdf,
    log_snr_db,
    make_setting,
    sample_snr_db,
    snr_summary,
    step_probabilities,
    time_of_log_snr_db,
    timestep_normaliser,
)
from models.timesteps import LossWeight, TimestepSampling, sample_timesteps

torch.set_num_threads(1)

SCHEDULES = ["ddpm-linear", "ddpm-cosine", "flow-linear", "flow-cosine"]
SAMPLINGS = {"uniform": TimestepSampling("uniform"), "lognorm": TimestepSampling("lognorm", 0.0, 1.0)}
FINE_GRID = torch.arange(-200.0, 200.0, 0.005, dtype=torch.float64)


def _setting(schedule: str, sampling: str = "uniform", **kwargs) -> SNRSetting:
    return SNRSetting(get_schedule(schedule), sampling=SAMPLINGS[sampling], **kwargs)


def _interior_times(n: int = 2001) -> torch.Tensor:
    return torch.linspace(0.0, 1.0, n, dtype=torch.float64)[1:-1]


# --- Eq. 4-5 and Algorithm 1 step 7 ----------------------------------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_log_snr_db_is_ten_log10_of_data_dependent_snr(schedule):
    sched = get_schedule(schedule)
    t = torch.linspace(0.05, 0.95, 101, dtype=torch.float64)
    snr = data_dependent_snr(t, sched, std=1.7, C=0.4)
    expected = 0.4 * 1.7**2 * sched.alpha(t) ** 2 / sched.sigma(t) ** 2
    torch.testing.assert_close(snr, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(log_snr_db(t, sched, std=1.7, C=0.4), 10 * torch.log10(snr), rtol=0, atol=1e-9)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_doubling_std_shifts_every_log_snr_by_20_log10_2(schedule):
    shift = 20 * math.log10(2)
    sched = get_schedule(schedule)
    t = _interior_times()
    for std in (0.3, 1.0, 3.3):
        diff = log_snr_db(t, sched, std=2 * std) - log_snr_db(t, sched, std=std)
        torch.testing.assert_close(diff, torch.full_like(diff, shift), rtol=0, atol=1e-10)
    # Algorithm 1 with the same random stream: every sample moves by exactly the shift.
    base, doubled = (_setting(schedule, "lognorm", std=s) for s in (0.9, 1.8))
    a = sample_snr_db(20_000, base, torch.Generator().manual_seed(3))
    b = sample_snr_db(20_000, doubled, torch.Generator().manual_seed(3))
    torch.testing.assert_close(b - a, torch.full_like(a, shift), rtol=0, atol=1e-10)
    # Eq. 7: the whole density translates by the shift.
    y = torch.linspace(-60, 60, 481, dtype=torch.float64)
    torch.testing.assert_close(analytic_snr_pdf(y + shift, doubled), analytic_snr_pdf(y, base), rtol=1e-7, atol=1e-12)


# --- The inverse g(y) of Eq. 7 -----------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_time_of_log_snr_inverts_log_snr(schedule):
    sched = get_schedule(schedule)
    t = torch.linspace(0.001, 0.999, 999, dtype=torch.float64)
    y = log_snr_db(t, sched, std=0.7, C=2.0)
    torch.testing.assert_close(time_of_log_snr_db(y, sched, std=0.7, C=2.0), t, rtol=0, atol=1e-9)


def test_ddpm_inverse_is_nan_outside_the_schedules_snr_range():
    sched = get_schedule("ddpm-linear")
    lo, hi = log_snr_db(torch.tensor([0.0, 1.0], dtype=torch.float64), sched)
    t = time_of_log_snr_db(torch.tensor([lo - 1, hi + 1, 0.5 * (lo + hi)], dtype=torch.float64), sched)
    assert torch.isnan(t[:2]).all() and 0 < t[2] < 1


class _OpaqueFlow(Schedule):
    """flow-linear behind a class models.snr does not know: exercises the bisection inverse."""

    name = "opaque-flow"

    def __init__(self):
        self._inner = FlowLinear()

    def alpha(self, t):
        return self._inner.alpha(t)

    def sigma(self, t):
        return self._inner.sigma(t)

    def d_alpha(self, t):
        return self._inner.d_alpha(t)

    def d_sigma(self, t):
        return self._inner.d_sigma(t)


def test_bisection_inverse_matches_closed_form():
    y = torch.linspace(-80, 80, 321, dtype=torch.float64)
    torch.testing.assert_close(
        time_of_log_snr_db(y, _OpaqueFlow(), std=1.3), time_of_log_snr_db(y, FlowLinear(), std=1.3), rtol=0, atol=1e-12
    )


# --- Eq. 6 ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("sampling", ["uniform", "lognorm"])
@pytest.mark.parametrize("weight", ["none", "min-snr"])
def test_combined_timestep_density_integrates_to_one(schedule, sampling, weight):
    setting = _setting(schedule, sampling, weight=LossWeight(weight, 5.0))
    u = torch.linspace(-40, 40, 400_001, dtype=torch.float64)  # integrate in logit(t): dt = t(1 - t) du
    t = torch.sigmoid(u)
    mass = torch.trapezoid(combined_timestep_density(t, setting) * t * (1 - t), u)
    assert abs(float(mass) - 1.0) < 2e-3


def test_eq6_rejects_a_weight_that_is_not_integrable():
    with pytest.raises(ValueError, match="Eq. 6"):
        timestep_normaliser(_setting("flow-linear", weight=LossWeight("snr")))
    # Noise prediction keeps t away from 1, so the same weight is integrable there.
    setting = make_setting("flow-linear", weight="snr", prediction="noise")
    assert math.isfinite(timestep_normaliser(setting))


def test_ddpm_step_probabilities_match_the_training_sampler():
    sched = get_schedule("ddpm-linear")
    uniform = step_probabilities(sched, SAMPLINGS["uniform"])
    assert torch.allclose(uniform, torch.full((1000,), 1e-3, dtype=torch.float64))
    sampling = TimestepSampling("lognorm", 0.3, 0.8)
    probs = step_probabilities(sched, sampling)
    assert abs(float(probs.sum()) - 1) < 1e-12
    t = sample_timesteps(400_000, sampling, sched, generator=torch.Generator().manual_seed(0))
    k = torch.round(sched.index(t.double())).long()
    freq = torch.bincount(k, minlength=1000).double() / len(k)
    # Grouped into 20 blocks of 50 steps so the comparison is not dominated by sampling noise.
    assert float((freq.reshape(20, 50).sum(1) - probs.reshape(20, 50).sum(1)).abs().sum()) < 1e-2


# --- Eq. 7 and Algorithm 1 ------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("sampling", ["uniform", "lognorm"])
def test_algorithm1_agrees_with_eq7(schedule, sampling):
    """L1 distance between Algorithm 1's histogram (N = 10^6) and Eq. 7 averaged over the same 2-dB bins."""
    setting = _setting(schedule, sampling)
    edges = torch.arange(-130.0, 130.01, 2.0, dtype=torch.float64)
    estimate = estimate_snr_pdf(edges, setting, 1_000_000, torch.Generator().manual_seed(0))
    exact = bin_average(lambda y: analytic_snr_pdf(y, setting), edges)
    assert float((exact * torch.diff(edges)).sum()) == pytest.approx(1.0, abs=1e-3)
    assert float(((estimate - exact).abs() * torch.diff(edges)).sum()) < 1e-2


def test_algorithm1_agrees_with_eq7_under_a_loss_weight():
    setting = _setting("ddpm-cosine", "lognorm", weight=LossWeight("min-snr", 5.0))
    edges = torch.arange(-130.0, 130.01, 2.0, dtype=torch.float64)
    estimate = estimate_snr_pdf(edges, setting, 1_000_000, torch.Generator().manual_seed(1))
    exact = bin_average(lambda y: analytic_snr_pdf(y, setting), edges)
    assert float(((estimate - exact).abs() * torch.diff(edges)).sum()) < 1e-2


@pytest.mark.parametrize("schedule", ["ddpm-linear", "ddpm-cosine"])
def test_relaxed_ddpm_density_matches_the_exact_training_steps(schedule):
    """The piecewise Eq. 7 density of a DDPM schedule vs the SNR of the 1000 grid steps themselves."""
    setting = _setting(schedule)
    edges = torch.arange(-130.0, 130.01, 4.0, dtype=torch.float64)
    atoms = estimate_snr_pdf(edges, setting, 1_000_000, torch.Generator().manual_seed(2), on_grid=True)
    exact = bin_average(lambda y: analytic_snr_pdf(y, setting), edges)
    assert float(((atoms - exact).abs() * 4.0).sum()) < 3e-2


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("sampling", ["uniform", "lognorm"])
@pytest.mark.parametrize("std,C", [(1.0, 1.0), (0.3, 2.0), (3.3, 1.0)])
def test_eq7_density_integrates_to_one(schedule, sampling, std, C):
    density = analytic_snr_pdf(FINE_GRID, _setting(schedule, sampling, std=std, C=C))
    assert (density >= 0).all()
    assert float(torch.trapezoid(density, FINE_GRID)) == pytest.approx(1.0, abs=1e-3)


def test_eq7_matches_the_closed_form_for_flow_linear():
    """Uniform t on flow-linear: lgSNR = 2·DB_PER_NEPER·logit(t), a logistic law with scale 2·DB_PER_NEPER."""
    std, C = 0.6, 1.5
    y = torch.linspace(-80, 80, 641, dtype=torch.float64)
    scale = 2 * DB_PER_NEPER
    z = (y - 10 * math.log10(C) - 20 * math.log10(std)) / scale
    logistic = torch.exp(-z) / (scale * (1 + torch.exp(-z)) ** 2)
    torch.testing.assert_close(analytic_snr_pdf(y, _setting("flow-linear", std=std, C=C)), logistic, rtol=1e-9, atol=0)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_lognorm_gives_a_narrower_log_snr_spread_than_uniform(schedule):
    """Section 3 / Fig. 4: lognorm(0, 1) concentrates the PDF."""
    grid = FINE_GRID[::10]
    spread = {}
    for sampling in ("uniform", "lognorm"):
        setting = _setting(schedule, sampling)
        spread[sampling] = snr_summary(grid, analytic_snr_pdf(grid, setting))["std_db"]
        samples = sample_snr_db(200_000, setting, torch.Generator().manual_seed(4))
        assert float(samples.std()) == pytest.approx(spread[sampling], rel=2e-2)
    assert spread["lognorm"] < 0.8 * spread["uniform"]


# --- Summary --------------------------------------------------------------------------------------------


def test_snr_summary_of_a_gaussian():
    y = np.linspace(-100, 100, 20001)
    density = np.exp(-0.5 * ((y - 3.0) / 7.0) ** 2) / (7.0 * math.sqrt(2 * math.pi))
    summary = snr_summary(y, density, band=(3.0 - 7.0, 3.0 + 7.0))
    assert summary["grid_mass"] == pytest.approx(1.0, abs=1e-9)
    assert summary["mean_db"] == pytest.approx(3.0, abs=1e-6)
    assert summary["std_db"] == pytest.approx(7.0, abs=1e-6)
    assert summary["mode_db"] == pytest.approx(3.0, abs=0.01)
    assert summary["band_mass"] == pytest.approx(math.erf(1 / math.sqrt(2)), abs=1e-6)
    assert summary["mean_in_band"]


# --- Stage CLI and figure ----------------------------------------------------------------------------------


def test_snr_pdf_cli_writes_csv_and_summary(tmp_path):
    from pipeline import snr_pdf

    out, summary_path = tmp_path / "pdf.csv", tmp_path / "summary.json"
    code = snr_pdf.main([
        "--schedule", "ddpm-cosine", "--std", "0.9", "--sampling", "lognorm", "--mu", "0", "--sigma", "1",
        "--loss-weight", "min-snr", "--grid", "-100", "100", "0.5", "--n-samples", "50000",
        "--band", "-6", "0", "--out", str(out), "--summary", str(summary_path),
    ])
    assert code == 0
    assert out.read_text().startswith("# provenance: ")
    table = pd.read_csv(out, comment="#")
    assert list(table.columns) == ["lgSNR_dB", "density", "density_alg1"]
    assert np.trapezoid(table.density, table.lgSNR_dB) == pytest.approx(1.0, abs=2e-3)
    summary = json.loads(summary_path.read_text())
    assert summary["setting"]["schedule"] == "ddpm-cosine" and summary["setting"]["loss_weight"]["kind"] == "min-snr"
    assert 0 < summary["eq7"]["band_mass"] < 1
    assert summary["alg1"]["mean_db"] == pytest.approx(summary["eq7"]["mean_db"], abs=0.3)
    assert "git_commit" in summary["provenance"] and summary["provenance"]["config"]["std"] == 0.9


def _tiny_fig3_config() -> dict:
    from core.io import REPO_ROOT
    from pipeline.figures.fig3 import load_config

    cfg = load_config(REPO_ROOT / "config" / "figures" / "fig3.yaml")
    return {**cfg, "grid_db": [-90.0, 90.0, 1.0], "n_samples": 20_000}


def test_fig3_renders_and_records_best_std_sources(tmp_path):
    from pipeline.figures import fig3

    cfg = _tiny_fig3_config()
    fig2 = tmp_path / "fig2.csv"
    fig2.write_text(
        "# provenance: {}\nschedule,std,fid,prediction\n"
        "ddpm-linear,0.3,65.0,noise\nddpm-linear,1.5,40.0,noise\nddpm-linear,0.9,10.0,velocity\n"
    )
    summary = fig3.run(cfg, tmp_path / "figs", tmp_path / "fig3.csv", tmp_path / "fig3.json", results=fig2)
    for view in cfg["views"]:
        for ext in ("pdf", "png"):
            assert (tmp_path / "figs" / f"{view['name']}.{ext}").stat().st_size > 1000
    table = pd.read_csv(tmp_path / "fig3.csv", comment="#")
    best = table[(table.role == "best") & (table.view == "fig3")].groupby("schedule")
    assert best["std"].first().to_dict() == {
        "ddpm-linear": 1.5, "ddpm-cosine": 0.9, "flow-linear": 0.7, "flow-cosine": 0.82,
    }
    assert best["best_std_source"].first()["ddpm-linear"] == str(fig2)
    assert best["best_std_source"].first()["ddpm-cosine"].startswith("config fallback")
    assert summary["best_std"]["ddpm-linear"]["kind"] == "results"
    assert len(summary["curves"]) == 3 * len(cfg["schedules"]) * len(cfg["views"])
    for (_, _, _), rows in table.groupby(["view", "schedule", "role"]):
        assert np.trapezoid(rows.density_eq7, rows.lgSNR_dB) == pytest.approx(1.0, abs=5e-3)


def test_fig3_falls_back_to_config_without_results(tmp_path):
    from pipeline.figures import fig3

    best = fig3.best_stds(_tiny_fig3_config(), None)
    assert {s: b.std for s, b in best.items()} == {
        "ddpm-linear": 2.5, "ddpm-cosine": 0.9, "flow-linear": 0.7, "flow-cosine": 0.82,
    }
    assert {b.kind for b in best.values()} == {"paper", "assumed"}


def test_fig3_reads_the_report_stages_long_table(tmp_path):
    """results/fig2.csv as pipeline.report writes it: FID in `reproduced` on `metric == fid` rows."""
    from pipeline.figures import fig3

    fig2 = tmp_path / "fig2.csv"
    pd.DataFrame([
        {"experiment": "fig2", "cell": "a", "status": "run", "schedule": "flow-cosine", "prediction": "",
         "std": 0.5, "metric": "fid", "reproduced": 30.0},
        {"experiment": "fig2", "cell": "b", "status": "run", "schedule": "flow-cosine", "prediction": "",
         "std": 1.1, "metric": "fid", "reproduced": 25.0},
        {"experiment": "fig2", "cell": "b", "status": "run", "schedule": "flow-cosine", "prediction": "",
         "std": 1.1, "metric": "is", "reproduced": 1.0},
        {"experiment": "fig2", "cell": "c", "status": "cited", "schedule": "flow-cosine", "prediction": "",
         "std": 2.0, "metric": "fid", "reproduced": None},
    ]).to_csv(fig2, index=False)
    best = fig3.best_stds(_tiny_fig3_config(), fig2)
    assert best["flow-cosine"].std == 1.1 and best["flow-cosine"].kind == "results"
    assert best["ddpm-linear"].kind == "paper"
