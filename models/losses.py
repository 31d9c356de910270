"""Training objective: data rescaling, MSE (Eq. 2), velocity direction loss (Eq. 8), Algorithm 2."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.ddpm import DDPMChain, vlb_terms
from models.schedules import DDPMSchedule, Schedule, interpolate
from models.targets import PREDICTIONS, training_target
from models.timesteps import LossWeight, TimestepSampling, loss_weight, sample_timesteps

Tensor = torch.Tensor


def rescale_data(x: Tensor, target_std: float, data_std: float) -> Tensor:
    """Algorithm 2, step 1 (data shifting): ``x · target_std / data_std``."""
    return x * (target_std / data_std)


def mse_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Eq. 2 generalised to any target: per-sample mean of ``(target − pred)²`` over C, H, W."""
    return ((pred.float() - target.float()) ** 2).flatten(1).mean(1)


def direction_loss(pred: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Eq. 8: ``1 − mean_{h,w} cos(v_gt^{(h,w)}, v_pred^{(h,w)})``, cosine over channels, per sample.

    0 for equal directions, 2 for opposite ones, invariant to positive rescaling. Computed in float32
    (a bf16 normalisation can overflow; REPA #46).
    """
    cos = F.cosine_similarity(pred.float(), target.float(), dim=1, eps=eps)
    return 1 - cos.flatten(1).mean(1)


@dataclass(frozen=True)
class LossConfig:
    """Everything about the objective that a run config decides."""

    prediction: str = "velocity"
    timesteps: TimestepSampling = field(default_factory=TimestepSampling)
    loss_weight: LossWeight = field(default_factory=LossWeight)
    direction_loss: bool = False
    direction_weight: float = 1.0
    class_dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, not {self.prediction!r}")


@dataclass
class TrainingDraw:
    """The random part of one training batch: times, noise and class-drop mask."""

    t: Tensor
    noise: Tensor
    drop: Tensor

    def slice(self, start: int, stop: int) -> TrainingDraw:
        return TrainingDraw(self.t[start:stop], self.noise[start:stop], self.drop[start:stop])


def draw_training_randomness(
    shape: tuple[int, ...],
    schedule: Schedule,
    cfg: LossConfig,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> TrainingDraw:
    """Draw times, noise and label drops for a whole (global) batch from one generator.

    The training engine draws for the global batch and slices per rank, so the numbers do not depend
    on the world size.
    """
    n = shape[0]
    t = sample_timesteps(n, cfg.timesteps, schedule, schedule.t_range(cfg.prediction), generator, device)
    noise = torch.randn(shape, generator=generator, device=device)
    drop = torch.rand(n, generator=generator, device=device) < cfg.class_dropout
    return TrainingDraw(t=t, noise=noise, drop=drop)


def training_losses(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    draw: TrainingDraw,
    schedule: Schedule,
    cfg: LossConfig,
) -> dict[str, Tensor]:
    """Algorithm 2 (FasterDiT training), generalised to every schedule and target of Sections 3–4.

    ``x`` is already rescaled (:func:`rescale_data`). Per-sample terms: ``mse`` (Eq. 2 on the chosen
    target, times f_l(t)), ``direction`` (Eq. 8, when enabled), ``vb`` (the learned-σ hybrid term of the DiT
    baseline on DDPM schedules; on flows a learned-σ network's σ half gets no loss, as SiT trains its DiT) and
    their sum ``loss``.
    """
    t = draw.t.to(x.device)
    noise = draw.noise.to(x.device, x.dtype)
    x_t = interpolate(x, noise, t, schedule)
    y_in = torch.where(draw.drop.to(y.device), torch.full_like(y, net.num_classes), y)
    out = net(x_t, schedule.model_time(t).to(x.dtype), y_in)
    pred, var_values = (out.chunk(2, dim=1) if net.learn_sigma else (out, None))
    target = training_target(cfg.prediction, x, noise, t, schedule)
    weight = loss_weight(t, cfg.loss_weight, schedule, cfg.prediction).to(torch.float32)
    terms = {"mse": weight * mse_loss(pred, target)}
    loss = terms["mse"]
    if cfg.direction_loss:
        terms["direction"] = direction_loss(pred, target)
        loss = loss + cfg.direction_weight * terms["direction"]
    # Flows: the σ half of a learned-σ network gets no loss, as SiT trains its learn_sigma DiT.
    if var_values is not None and isinstance(schedule, DDPMSchedule):
        if cfg.prediction != "noise":
            raise ValueError("learned sigma on a DDPM schedule needs noise prediction (the VLB term is defined on ε)")
        chain = DDPMChain.from_schedule(schedule)
        k = torch.round(schedule.index(t)).long()
        terms["vb"] = vlb_terms(chain, x.float(), x_t.float(), k, pred.detach().float(), var_values.float())
        terms["vb"] = terms["vb"] * (schedule.num_steps / 1000.0)
        loss = loss + terms["vb"]
    terms["loss"] = loss
    return terms

