"""SiT's SDE sampler (issue 17 item 2): the score it builds from the velocity, and its samples on Gaussian data."""

from __future__ import annotations

import pytest
import torch

from models.samplers import SamplerConfig, sample, score_from_velocity
from models.schedules import get_schedule
from tests.toy_networks import GaussianFlowOracle

T64 = torch.float64
MEAN, STD = 0.5, 0.3


@pytest.mark.parametrize("name", ["flow-linear", "flow-cosine"])
@pytest.mark.parametrize("t_value", [0.05, 0.5, 0.9])
def test_the_score_from_the_velocity_is_the_gaussian_score(name, t_value):
    """Data N(m, s²): x_t ~ N(α·m, α²s² + σ²), so ∇ log p_t(x) = −(x − α·m)/(α²s² + σ²) exactly."""
    schedule = get_schedule(name)
    oracle = GaussianFlowOracle(schedule, "velocity", MEAN, STD)
    x = torch.randn(16, 1, 8, 8, dtype=T64, generator=torch.Generator().manual_seed(0))
    t = torch.full((16,), t_value, dtype=T64)
    v = oracle(x, t, torch.full((16,), 10))
    a, s = schedule.alpha(t).view(-1, 1, 1, 1), schedule.sigma(t).view(-1, 1, 1, 1)
    exact = -(x - a * MEAN) / (a**2 * STD**2 + s**2)
    assert torch.allclose(score_from_velocity(v, x, t, schedule), exact, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["flow-linear", "flow-cosine"])
def test_sde_samples_follow_the_data_distribution(name):
    schedule = get_schedule(name)
    oracle = GaussianFlowOracle(schedule, "velocity", MEAN, STD)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(64, 1, 8, 8, dtype=T64, generator=g)
    x, nfe = sample(oracle, schedule, "velocity", noise, torch.full((64,), 10), SamplerConfig("sde", steps=250),
                    step_noise=lambda _i: torch.randn(noise.shape, dtype=T64, generator=g))
    assert nfe == 250                                         # 249 Euler-Maruyama steps + SiT's last "Mean" step
    assert float(x.mean()) == pytest.approx(MEAN, abs=0.01)
    assert float(x.std()) == pytest.approx(STD, rel=0.05)


def test_the_sde_sampler_refuses_a_ddpm_schedule_and_one_step():
    oracle = GaussianFlowOracle(get_schedule("ddpm-linear"), "noise", MEAN, STD)
    with pytest.raises(ValueError, match="sde sampler integrates a flow"):
        sample(oracle, get_schedule("ddpm-linear"), "noise", torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=int),
               SamplerConfig("sde", steps=10))
    flow = get_schedule("flow-linear")
    with pytest.raises(ValueError, match="steps >= 2"):
        sample(GaussianFlowOracle(flow, "velocity", MEAN, STD), flow, "velocity", torch.zeros(2, 1, 8, 8),
               torch.zeros(2, dtype=int), SamplerConfig("sde", steps=1))


def test_sde_sample_sets_are_named_and_parsed():
    from pipeline.registry import parse_sample_tag, sample_tag

    tag = sample_tag({"kind": "sde", "steps": 250}, 1.5, 50000, 0)
    assert tag == "sde250-cfg1.5-n50000-seed0" and parse_sample_tag(tag)["kind"] == "sde"


def test_the_cli_checks_the_sde_steps_before_any_work():
    from core.errors import InputError
    from pipeline.sample import check_sampler_settings

    with pytest.raises(InputError, match="--steps: expected an integer >= 2 for the sde sampler"):
        check_sampler_settings(sampler="sde", steps=1, cfg_scale=1.0, atol=1e-6, rtol=1e-3, seed=0, micro_batch=4)
