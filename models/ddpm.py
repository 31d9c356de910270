"""DDPM machinery for the DiT baseline: respacing, posteriors, learned-σ, the hybrid VLB, ancestral steps.

Follows Ho et al. (2020) and Nichol & Dhariwal (2021) as DiT uses them; written on top of
:class:`models.schedules.DDPMSchedule` so the network still sees the DDPM index ``k`` as its time input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from models.schedules import DDPMSchedule

Tensor = torch.Tensor
# Fixed variances of a network without learned σ (IDDPM ModelVarType): ``fixed-large`` (β, DiT's
# create_diffusion(learn_sigma=False) default, sigma_small=False) or ``fixed-small`` (β̃, the posterior's).
FIXED_VARIANCES = ("fixed-large", "fixed-small")


def respaced_indices(num_steps: int, sample_steps: int) -> Tensor:
    """The DDPM indices an N-step sampler visits (ascending), exactly as DiT's ``space_timesteps(T, [N])``.

    One section: a float cursor advances by (T−1)/(N−1) and each index is Python's ``round`` (ties to even) of
    its running sum, so N = 250 gives 0, 4, 8, …, 999 and N = 1 gives [0] (IDDPM ``respace.py``, which DiT uses).
    """
    if not 1 <= sample_steps <= num_steps:
        raise ValueError(f"sample_steps must be in [1, {num_steps}], got {sample_steps}")
    stride = (num_steps - 1) / (sample_steps - 1) if sample_steps > 1 else 1.0
    indices, cursor = [], 0.0
    for _ in range(sample_steps):
        indices.append(round(cursor))
        cursor += stride  # accumulated, not i·stride: the two round differently for many N
    return torch.tensor(indices, dtype=torch.long)


@dataclass
class DDPMChain:
    """A (possibly respaced) Markov chain over DDPM indices ``ks`` with its own βs, in float64."""

    ks: Tensor
    alphas_cumprod: Tensor

    @classmethod
    def from_schedule(cls, schedule: DDPMSchedule, sample_steps: int | None = None) -> DDPMChain:
        ks = respaced_indices(schedule.num_steps, sample_steps or schedule.num_steps)
        return cls(ks=ks, alphas_cumprod=schedule.alphas_cumprod[ks])

    @property
    def alphas_cumprod_prev(self) -> Tensor:
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

    @property
    def betas(self) -> Tensor:
        return 1 - self.alphas_cumprod / self.alphas_cumprod_prev

    @property
    def posterior_variance(self) -> Tensor:
        """β̃_i = β_i (1 − ᾱ_{i−1}) / (1 − ᾱ_i)."""
        return self.betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)

    @property
    def posterior_log_variance_clipped(self) -> Tensor:
        """log β̃ with the i = 0 entry (which is 0) replaced by β̃_1, as IDDPM does."""
        var = self.posterior_variance
        if len(var) == 1:
            return torch.log(self.betas)
        return torch.log(torch.cat([var[1:2], var[1:]]))

    def gather(self, values: Tensor, i: Tensor, like: Tensor) -> Tensor:
        return values.to(like.device)[i].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def predict_data_from_noise(self, x_k: Tensor, i: Tensor, eps: Tensor) -> Tensor:
        abar = self.gather(self.alphas_cumprod, i, x_k)
        return (x_k - torch.sqrt(1 - abar) * eps) / torch.sqrt(abar)

    def posterior_mean(self, x0: Tensor, x_k: Tensor, i: Tensor) -> Tensor:
        """Mean of q(x_{i−1} | x_i, x_0)."""
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        c0 = self.betas * torch.sqrt(abar_prev) / (1 - abar)
        ck = (1 - abar_prev) * torch.sqrt(1 - self.betas) / (1 - abar)
        return self.gather(c0, i, x0) * x0 + self.gather(ck, i, x_k) * x_k

    @property
    def fixed_large_log_variance(self) -> Tensor:
        """log β with the i = 0 entry replaced by β̃_1: IDDPM's FIXED_LARGE, ``log(append(β̃[1], β[1:]))``."""
        if len(self.betas) == 1:
            return torch.log(self.betas)
        return torch.log(torch.cat([self.posterior_variance[1:2], self.betas[1:]]))

    def model_log_variance(self, i: Tensor, like: Tensor, var_values: Tensor | None,
                           fixed: str = "fixed-large") -> Tensor:
        """Learned-range log variance (IDDPM) when ``var_values`` is given, else the ``fixed`` one: ``fixed-large``
        (:attr:`fixed_large_log_variance`, DiT's default without learned σ) or ``fixed-small`` (β̃, clipped)."""
        min_log = self.gather(self.posterior_log_variance_clipped, i, like)
        if var_values is None:
            if fixed not in FIXED_VARIANCES:
                raise ValueError(f"fixed variance must be one of {FIXED_VARIANCES}, got {fixed!r}")
            if fixed == "fixed-large":
                return self.gather(self.fixed_large_log_variance, i, like).expand_as(like)
            return min_log.expand_as(like)
        max_log = self.gather(torch.log(self.betas), i, like)
        frac = (var_values + 1) / 2
        return frac * max_log + (1 - frac) * min_log


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """The tanh approximation of the standard normal CDF that IDDPM and DiT use in the decoder NLL:
    ½·(1 + tanh(√(2/π)·(x + 0.044715·x³)))."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """Log-likelihood of data in [−1, 1] quantised to 256 bins under N(mean, e^{2·log_scale}), elementwise.

    The CDF is :func:`approx_standard_normal_cdf`, as in IDDPM/DiT, so the hybrid loss's step-0 term is theirs
    (the exact normal CDF differs by up to ~0.08 bits/dim).
    """
    centred = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centred + 1.0 / 255))
    cdf_min = approx_standard_normal_cdf(inv_std * (centred - 1.0 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def vlb_terms(
    chain: DDPMChain, x0: Tensor, x_k: Tensor, i: Tensor, eps_pred: Tensor, var_values: Tensor
) -> Tensor:
    """Per-sample VLB term L_{i} in bits/dim for the learned-σ hybrid loss (Nichol & Dhariwal 2021).

    The mean enters through ``eps_pred`` and should be detached by the caller, so this term only trains σ.
    At i = 0 it is the decoder's discretised negative log-likelihood.
    """
    true_mean = chain.posterior_mean(x0, x_k, i)
    true_logvar = chain.gather(chain.posterior_log_variance_clipped, i, x_k).expand_as(x_k)
    model_mean = chain.posterior_mean(chain.predict_data_from_noise(x_k, i, eps_pred), x_k, i)
    model_logvar = chain.model_log_variance(i, x_k, var_values)
    kl = normal_kl(true_mean, true_logvar, model_mean, model_logvar).flatten(1).mean(1) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar).flatten(1).mean(1)
    return torch.where(i == 0, nll / math.log(2.0), kl)


def ancestral_step(
    chain: DDPMChain,
    x_k: Tensor,
    i: int,
    eps_pred: Tensor,
    var_values: Tensor | None,
    noise: Tensor,
    fixed_variance: str = "fixed-large",
) -> Tensor:
    """One step x_i → x_{i−1} of ancestral sampling (no noise at the last step i = 0); without learned σ
    (``var_values`` None) the variance is ``fixed_variance`` (:data:`FIXED_VARIANCES`)."""
    idx = torch.full((x_k.shape[0],), i, dtype=torch.long, device=x_k.device)
    x0 = chain.predict_data_from_noise(x_k, idx, eps_pred)
    mean = chain.posterior_mean(x0, x_k, idx)
    if i == 0:
        return mean
    logvar = chain.model_log_variance(idx, x_k, var_values, fixed_variance)
    return mean + torch.exp(0.5 * logvar) * noise
