"""Samplers integrate an analytic flow (Gaussian data, exact predictor) to the right distribution."""

from __future__ import annotations

import pytest
import torch

from models.guidance import guided_forward
from models.samplers import SamplerConfig, sample
from models.schedules import get_schedule
from tests.toy_networks import GaussianFlowOracle, TinyConvNet

MEAN, STD = 0.5, 0.3


def _run(schedule_name, prediction, cfg, n=2000, learn_sigma=False, class_shift=0.0):
    schedule = get_schedule(schedule_name)
    net = GaussianFlowOracle(schedule, prediction, MEAN, STD, learn_sigma=learn_sigma, class_shift=class_shift)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.zeros(n, dtype=torch.long)
    step = lambda i: torch.randn(noise.shape, generator=g, dtype=torch.float64)  # noqa: E731
    x, nfe = sample(net, schedule, prediction, noise, y, cfg, step_noise=step)
    return x, nfe


@pytest.mark.parametrize(
    "schedule,prediction,cfg,tol",
    [
        ("flow-linear", "velocity", SamplerConfig("euler", steps=200), 0.02),
        ("flow-linear", "velocity", SamplerConfig("heun", steps=20), 0.02),
        ("flow-linear", "velocity", SamplerConfig("dopri5"), 0.02),
        ("flow-cosine", "velocity", SamplerConfig("dopri5"), 0.02),
        ("flow-linear", "noise", SamplerConfig("heun", steps=50), 0.03),
        ("flow-cosine", "noise", SamplerConfig("dopri5"), 0.03),
        ("ddpm-linear", "noise", SamplerConfig("ddpm", steps=250), 0.03),
        ("ddpm-cosine", "noise", SamplerConfig("ddpm", steps=100), 0.03),
        ("ddpm-linear", "noise", SamplerConfig("heun", steps=50), 0.03),
    ],
)
def test_sampler_lands_on_the_data_distribution(schedule, prediction, cfg, tol):
    x, nfe = _run(schedule, prediction, cfg)
    assert x.mean().item() == pytest.approx(MEAN, abs=tol)
    assert x.std().item() == pytest.approx(STD, abs=tol)
    assert nfe > 0
    if cfg.kind in ("euler", "ddpm"):
        assert nfe == cfg.steps
    if cfg.kind == "heun":
        assert nfe == 2 * cfg.steps


def test_learned_sigma_network_samples_with_ddpm():
    x, _ = _run("ddpm-linear", "noise", SamplerConfig("ddpm", steps=50), n=1000, learn_sigma=True)
    assert x.mean().item() == pytest.approx(MEAN, abs=0.04)
    assert x.std().item() == pytest.approx(STD, abs=0.04)


def test_guidance_scales_the_class_offset():
    shift = 0.4
    x1, _ = _run("flow-linear", "velocity", SamplerConfig("heun", steps=20, cfg_scale=1.0), class_shift=shift)
    x2, _ = _run("flow-linear", "velocity", SamplerConfig("heun", steps=20, cfg_scale=2.0), class_shift=shift)
    assert x1.mean().item() == pytest.approx(MEAN + shift, abs=0.02)
    assert x2.mean().item() == pytest.approx(MEAN + 2 * shift, abs=0.02)


def test_guidance_scale_one_is_conditional_and_legacy_channels():
    torch.manual_seed(0)
    net = TinyConvNet(channels=2, num_classes=10, learn_sigma=True)
    x, t, y = torch.randn(3, 2, 8, 8), torch.rand(3) * 999, torch.tensor([1, 2, 3])
    assert torch.allclose(guided_forward(net, x, t, y, 1.0), net(x, t, y))
    cond, uncond = net(x, t, y), net(x, t, torch.full_like(y, 10))
    full = guided_forward(net, x, t, y, 4.0)
    assert torch.allclose(full[:, :2], uncond[:, :2] + 4 * (cond[:, :2] - uncond[:, :2]), atol=1e-5)
    assert torch.allclose(full[:, 2:], cond[:, 2:])  # σ channels are never guided
    legacy = guided_forward(net, x, t, y, 4.0, legacy_channels=1)
    assert torch.allclose(legacy[:, :1], full[:, :1]) and torch.allclose(legacy[:, 1:], cond[:, 1:])


def test_ddpm_sampler_rejects_flows():
    with pytest.raises(ValueError):
        _run("flow-linear", "velocity", SamplerConfig("ddpm", steps=10), n=4)
