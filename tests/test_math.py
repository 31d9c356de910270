"""Schedules, targets, timesteps, losses, EMA: values that fail if a formula is wrong."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from models.ddpm import (
    DDPMChain,
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    normal_kl,
    respaced_indices,
)
from models.ema import make_ema, update_ema
from models.losses import (
    LossConfig,
    direction_loss,
    draw_training_randomness,
    mse_loss,
    rescale_data,
    training_losses,
)
from models.schedules import (
    FlowCosine,
    FlowLinear,
    cosine_alphas_cumprod,
    ddpm_cosine,
    ddpm_linear,
    get_schedule,
    interpolate,
    relative_snr,
)
from models.targets import to_data_and_noise, to_velocity, training_target, velocity_target
from models.timesteps import (
    LossWeight,
    TimestepSampling,
    loss_weight,
    sample_logit_normal,
    sample_timesteps,
    timestep_density,
)
from tests.toy_networks import TinyConvNet

ALL = ["ddpm-linear", "ddpm-cosine", "flow-linear", "flow-cosine"]
T64 = torch.float64


def test_flow_coefficients_at_chosen_times():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=T64)
    lin, cos = FlowLinear(), FlowCosine()
    assert torch.allclose(lin.alpha(t), t) and torch.allclose(lin.sigma(t), 1 - t)
    assert torch.allclose(cos.alpha(t), torch.tensor([0.0, math.sin(math.pi / 8), math.sqrt(0.5), 1.0], dtype=T64))
    assert torch.allclose(cos.sigma(t), torch.tensor([1.0, math.cos(math.pi / 8), math.sqrt(0.5), 0.0], dtype=T64),
                          atol=1e-12)


def test_ddpm_linear_alpha_bar_is_the_cumulative_product():
    s = ddpm_linear()
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    assert np.allclose(s.alphas_cumprod.numpy(), abar, rtol=1e-12)
    assert abar[-1] == pytest.approx(4.0358e-5, rel=1e-3)  # the well-known ᾱ_T of DDPM's linear schedule
    k = torch.tensor([0, 10, 500, 999], dtype=T64)
    t = s.time_of_index(k)
    assert torch.allclose(s.alpha(t) ** 2, torch.tensor(abar[[0, 10, 500, 999]]), rtol=1e-10)
    assert torch.allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones(4, dtype=T64))
    assert torch.allclose(s.model_time(t), k)


def test_ddpm_cosine_matches_its_closed_form_where_unclipped():
    abar = cosine_alphas_cumprod(1000, 0.008)
    u = np.arange(1, 1001) / 1000
    f = np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    assert np.allclose(abar.numpy()[:990], f[:990], rtol=1e-9)
    assert (ddpm_cosine().betas <= 0.999 + 1e-12).all()


@pytest.mark.parametrize("name", ALL)
def test_time_derivatives_match_finite_differences(name):
    s = get_schedule(name)
    t = torch.tensor([0.2, 0.4701, 0.63, 0.9], dtype=T64)
    h = 1e-7 if not s.discrete else 1e-5
    for f, df in ((s.alpha, s.d_alpha), (s.sigma, s.d_sigma)):
        fd = (f(t + h) - f(t - h)) / (2 * h)
        assert torch.allclose(df(t), fd, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_relative_snr_is_monotone_and_eq3(name):
    s = get_schedule(name)
    t = torch.linspace(0.01, 0.99, 200, dtype=T64)
    snr = relative_snr(t, s)
    assert torch.allclose(snr, s.alpha(t) ** 2 / s.sigma(t) ** 2)
    assert torch.allclose(torch.log(snr), s.log_snr(t), rtol=1e-9, atol=1e-9)
    assert (torch.diff(snr) > 0).all()  # more signal as t goes to data


def test_eq1_interpolation_and_flow_linear_velocity():
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(4, 2, 3, 3, generator=g, dtype=T64), torch.randn(4, 2, 3, 3, generator=g, dtype=T64)
    t = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=T64)
    xt = interpolate(x, eps, t, FlowLinear())
    assert torch.allclose(xt[0], eps[0]) and torch.allclose(xt[3], x[3])
    assert torch.allclose(xt[1], 0.3 * x[1] + 0.7 * eps[1])
    assert torch.allclose(velocity_target(x, eps, t, FlowLinear()), x - eps)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("kind", ["noise", "velocity", "data"])
def test_prediction_conversions_recover_data_and_noise(name, kind):
    s = get_schedule(name)
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(3, 2, 4, 4, generator=g, dtype=T64), torch.randn(3, 2, 4, 4, generator=g, dtype=T64)
    t = torch.tensor([0.1, 0.5, 0.85], dtype=T64)
    xt = interpolate(x, eps, t, s)
    pred = training_target(kind, x, eps, t, s)
    x_hat, eps_hat = to_data_and_noise(pred, kind, xt, t, s)
    assert torch.allclose(x_hat, x, atol=1e-8) and torch.allclose(eps_hat, eps, atol=1e-8)
    assert torch.allclose(to_velocity(pred, kind, xt, t, s), velocity_target(x, eps, t, s), atol=1e-8)


def test_direction_loss_values():
    g = torch.Generator().manual_seed(2)
    v = torch.randn(3, 4, 5, 5, generator=g)
    assert torch.allclose(direction_loss(v, v), torch.zeros(3), atol=1e-6)
    assert torch.allclose(direction_loss(-v, v), torch.full((3,), 2.0), atol=1e-6)
    w = torch.randn(3, 4, 5, 5, generator=g)
    scale = torch.rand(3, 1, 5, 5, generator=g) + 0.1  # positive, per position
    assert torch.allclose(direction_loss(w * scale, v), direction_loss(w, v), atol=1e-6)
    # Eq. 8 by hand for one sample: mean over H×W of cosines over channels.
    cos = (w[0] * v[0]).sum(0) / (w[0].norm(dim=0) * v[0].norm(dim=0))
    assert direction_loss(w, v)[0] == pytest.approx(1 - cos.mean().item(), abs=1e-6)


def test_rescale_and_mse():
    x = torch.randn(10, 1, 4, 4) * 3.0
    assert torch.allclose(rescale_data(x, 0.82, 3.0), x * 0.82 / 3.0)
    assert torch.allclose(mse_loss(x, torch.zeros_like(x)), (x**2).flatten(1).mean(1))


def test_logit_normal_matches_scipy():
    g = torch.Generator().manual_seed(3)
    for mu, sigma in [(0.0, 1.0), (-0.5, 1.0), (0.5, 0.6)]:
        t = sample_logit_normal(20000, mu, sigma, g).double().numpy()
        logit = np.log(t) - np.log1p(-t)
        assert stats.kstest(logit, stats.norm(loc=mu, scale=sigma).cdf).pvalue > 1e-3
        # and the density f_s integrates to one and matches a histogram
        grid = torch.linspace(1e-4, 1 - 1e-4, 20001, dtype=T64)
        dens = timestep_density(grid, TimestepSampling("lognorm", mu, sigma))
        assert torch.trapezoid(dens, grid).item() == pytest.approx(1.0, abs=1e-3)


def test_sample_timesteps_discretizes_for_ddpm_and_respects_range():
    g = torch.Generator().manual_seed(4)
    s = ddpm_linear()
    t = sample_timesteps(5000, TimestepSampling(), s, (0.0, 1.0), g)
    k = s.index(t)
    assert torch.allclose(k, torch.round(k), atol=1e-6)
    assert k.min() >= 0 and k.max() <= 999
    t = sample_timesteps(5000, TimestepSampling("lognorm", 0, 1), FlowLinear(), (1e-3, 1 - 1e-3), g)
    assert t.min() >= 1e-3 and t.max() <= 1 - 1e-3


def test_loss_weights():
    s, t = FlowLinear(), torch.tensor([0.25, 0.5, 0.9], dtype=T64)
    assert torch.allclose(loss_weight(t, LossWeight(), s), torch.ones(3, dtype=T64))
    snr = (t / (1 - t)) ** 2
    assert torch.allclose(loss_weight(t, LossWeight("snr"), s), snr)
    assert torch.allclose(loss_weight(t, LossWeight("min-snr", 5.0), s), snr.clamp(max=5))


def test_min_snr_weight_is_the_published_one_for_each_target():
    """Hang et al. 2023 (Min-SNR-γ): weight min(SNR, γ) on the x₀-MSE, i.e. min(SNR, γ)/SNR on an ε-MSE.

    Worked numbers on the linear flow (t = 1 at data, SNR = (t/(1−t))², x₀-error = (1−t)·velocity error):
    t = 0.25: SNR = 1/9 → data 1/9, noise 1, velocity (1/9)·0.75² = 0.0625;
    t = 0.9: SNR = 81 → data 5, noise 5/81, velocity 5·0.1² = 0.05.
    """
    s, t, w = FlowLinear(), torch.tensor([0.25, 0.9], dtype=T64), LossWeight("min-snr", 5.0)
    expected = {"data": [1 / 9, 5.0], "noise": [1.0, 5 / 81], "velocity": [0.0625, 0.05]}
    for prediction, values in expected.items():
        assert torch.allclose(loss_weight(t, w, s, prediction), torch.tensor(values, dtype=T64)), prediction
    ddpm = ddpm_linear()  # on DDPM with ε-prediction: min(SNR, γ)/SNR, the paper's Eq. for ε-loss
    tk = ddpm.time_of_index(torch.tensor([10.0, 500.0, 990.0], dtype=T64))
    snr = torch.exp(ddpm.log_snr(tk))
    assert torch.allclose(loss_weight(tk, w, ddpm, "noise"), snr.clamp(max=5.0) / snr)


def test_training_losses_follow_algorithm_2_for_flow_linear():
    torch.manual_seed(0)
    net = TinyConvNet(channels=1, num_classes=10)
    s = FlowLinear()
    cfg = LossConfig(prediction="velocity", timesteps=TimestepSampling("lognorm", 0, 1), direction_loss=True)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    draw = draw_training_randomness(x.shape, s, cfg, torch.Generator().manual_seed(5))
    terms = training_losses(net, x, y, draw, s, cfg)
    t4 = draw.t.view(-1, 1, 1, 1)
    x_t = t4 * x + (1 - t4) * draw.noise
    y_in = torch.where(draw.drop, torch.full_like(y, 10), y)
    pred = net(x_t, draw.t, y_in)
    v = x - draw.noise
    assert torch.allclose(terms["mse"], ((pred - v) ** 2).flatten(1).mean(1), atol=1e-6)
    cos = torch.nn.functional.cosine_similarity(pred, v, dim=1)
    assert torch.allclose(terms["direction"], 1 - cos.flatten(1).mean(1), atol=1e-6)
    assert torch.allclose(terms["loss"], terms["mse"] + terms["direction"])


def test_draw_is_reproducible_and_sliceable():
    s, cfg = FlowLinear(), LossConfig()
    a = draw_training_randomness((8, 1, 4, 4), s, cfg, torch.Generator().manual_seed(9))
    b = draw_training_randomness((8, 1, 4, 4), s, cfg, torch.Generator().manual_seed(9))
    assert torch.equal(a.t, b.t) and torch.equal(a.noise, b.noise) and torch.equal(a.drop, b.drop)
    assert torch.equal(a.slice(4, 8).noise, a.noise[4:8])


def test_learned_sigma_hybrid_loss_on_ddpm():
    torch.manual_seed(0)
    net = TinyConvNet(channels=1, num_classes=10, learn_sigma=True)
    s = ddpm_linear()
    cfg = LossConfig(prediction="noise")
    x, y = torch.rand(6, 1, 8, 8) * 2 - 1, torch.randint(0, 10, (6,))
    draw = draw_training_randomness(x.shape, s, cfg, torch.Generator().manual_seed(5))
    terms = training_losses(net, x, y, draw, s, cfg)
    assert set(terms) == {"mse", "vb", "loss"}
    assert torch.isfinite(terms["vb"]).all() and (terms["vb"] >= 0).all()
    terms["loss"].mean().backward()
    with pytest.raises(ValueError, match="needs noise prediction"):
        training_losses(net, x, y, draw, s, LossConfig(prediction="velocity"))


def test_learned_sigma_on_a_flow_gets_no_loss_as_sit_trains_it():
    """SiT trains DiT with learn_sigma=True and drops the σ half of the output: only the prediction half counts."""
    torch.manual_seed(0)
    net = TinyConvNet(channels=1, num_classes=10, learn_sigma=True)
    s, cfg = FlowLinear(), LossConfig(prediction="velocity")
    x, y = torch.rand(6, 1, 8, 8) * 2 - 1, torch.randint(0, 10, (6,))
    draw = draw_training_randomness(x.shape, s, cfg, torch.Generator().manual_seed(5))
    terms = training_losses(net, x, y, draw, s, cfg)
    assert set(terms) == {"mse", "loss"} and torch.equal(terms["loss"], terms["mse"])
    out = net(interpolate(x, draw.noise, draw.t, s), s.model_time(draw.t), torch.where(draw.drop, 10, y))
    expected = mse_loss(out.chunk(2, dim=1)[0], training_target("velocity", x, draw.noise, draw.t, s))
    assert torch.allclose(terms["mse"], expected)


def test_vlb_pieces():
    m, lv = torch.randn(5, dtype=T64), torch.randn(5, dtype=T64)
    assert torch.allclose(normal_kl(m, lv, m, lv), torch.zeros(5, dtype=T64))
    # KL of two 1-D Gaussians against the closed form
    kl = normal_kl(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0), torch.log(torch.tensor(4.0)))
    assert kl.item() == pytest.approx(0.5 * (math.log(4) + (1 + 1) / 4 - 1))
    # The discretised likelihood over all 256 bins sums to one.
    bins = torch.linspace(-1, 1, 256, dtype=T64)
    ll = discretized_gaussian_log_likelihood(bins, torch.tensor(0.1, dtype=T64), torch.tensor(-1.0, dtype=T64))
    assert torch.exp(ll).sum().item() == pytest.approx(1.0, abs=1e-6)
    assert respaced_indices(1000, 250)[[0, -1]].tolist() == [0, 999]
    chain = DDPMChain.from_schedule(ddpm_linear(), 250)
    assert len(chain.ks) == 250 and (chain.betas > 0).all() and (chain.betas < 1).all()


def _iddpm_space_timesteps(num_timesteps: int, section_counts: list[int]) -> list[int]:
    """IDDPM's ``respace.space_timesteps`` (which DiT's ``diffusion/respace.py`` keeps), transcribed as the oracle."""
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cursor = 0.0
        for _ in range(count):
            steps.append(start + round(cursor))
            cursor += stride
        start += size
    return sorted(set(steps))


def test_respacing_equals_dit_space_timesteps_for_every_step_count():
    for n in range(1, 1001):
        assert respaced_indices(1000, n).tolist() == _iddpm_space_timesteps(1000, [n]), n
    # Worked values: at N = 21 the running sum reaches 499.4999… (→ 499) where 10·stride is 499.5 (→ 500);
    # N = 1 is [0], not [999].
    assert respaced_indices(1000, 21).tolist()[9:12] == [450, 499, 549]
    assert respaced_indices(1000, 1).tolist() == [0]


def test_decoder_nll_uses_the_tanh_cdf_of_iddpm():
    """IDDPM ``losses.approx_standard_normal_cdf``: 0.5·(1 + tanh(√(2/π)(x + 0.044715x³))); at x = 1 it is
    0.8411919906 (the exact Φ(1) = 0.8413447461)."""
    assert approx_standard_normal_cdf(torch.tensor(1.0, dtype=T64)).item() == pytest.approx(0.8411919906, abs=1e-9)
    x, mean, log_scale = torch.tensor(0.0, dtype=T64), torch.tensor(0.0, dtype=T64), torch.tensor(-3.0, dtype=T64)
    half_bin = math.exp(3.0) / 255
    expected = math.log(0.5 * (math.tanh(math.sqrt(2 / math.pi) * (half_bin + 0.044715 * half_bin**3))) * 2)
    assert discretized_gaussian_log_likelihood(x, mean, log_scale).item() == pytest.approx(expected, rel=1e-12)


def test_ema_update():
    model = torch.nn.Linear(3, 2)
    ema = make_ema(model)
    before = ema.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    update_ema(ema, model, decay=0.9)
    assert torch.allclose(ema.weight, 0.9 * before + 0.1 * model.weight)
    assert not any(p.requires_grad for p in ema.parameters())


def test_uniform_ddpm_steps_are_equally_likely():
    g = torch.Generator().manual_seed(11)
    s = ddpm_linear()
    k = torch.round(s.index(sample_timesteps(400000, TimestepSampling(), s, (0.0, 1.0), g))).long()
    counts = torch.bincount(k, minlength=1000).double() / 400000
    assert counts[0].item() == pytest.approx(1e-3, rel=0.2) and counts[999].item() == pytest.approx(1e-3, rel=0.2)
