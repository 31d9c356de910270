"""The LDM UNet (Rombach et al., CVPR 2022) in its class-conditional ImageNet LDM-4 configuration.

Architecture and initialisation follow CompVis' ``ldm/modules/diffusionmodules/openaimodel.py``
(``UNetModel``) and ``ldm/modules/attention.py`` (``SpatialTransformer``), read, not copied; module
names match their state-dict keys (``input_blocks.1.0.in_layers.0.weight`` …). The class label is an
entry of a learned table (LDM's ``ClassEmbedder``, trained jointly: ``cond_stage_trainable``), fed as a
single context token to the cross-attention of every spatial transformer (``conditioning_key:
crossattn``).

The published model is ``configs/latent-diffusion/cin256-v2.yaml`` (the "LDM-4" / "LDM-4-G" of LDM's
Table 3, "400M" parameters), on 64×64×3 VQ-f4 latents::

    in/out channels 3, model_channels 192, channel_mult (1, 2, 3, 5), num_res_blocks 2,
    attention_resolutions (8, 4, 2) (downsampling factors), num_heads 1 (legacy head width = channels),
    use_spatial_transformer, transformer_depth 1, context_dim 512; ClassEmbedder(n_classes=1001, 512).

Its exact size: UNet 400,920,579 + class table 1001·512 = 512,512, i.e. **401,433,091** parameters
(``LDMUNet()`` with the defaults below). For this harness's SD-VAE latents (4 channels; 32×32 at 256 px,
64×64 at 512 px) pass ``in_channels=4`` (and ``input_size``): only the first and last convolutions change
(401,436,548 parameters). Attention stays at the same *downsampling factors* (8, 4, 2) as LDM's config
says, i.e. on 16×16, 8×8 and 4×4 feature maps for 32×32 latents (LDM-4 attends on 32×32, 16×16 and 8×8
maps of its 64×64 latents); 64×64 latents (512 px) give LDM-4's own attention resolutions.

diffusers mapping (same parameter count, verified in ``tests/test_networks.py``)::

    UNet2DConditionModel(in_channels=3, out_channels=3, block_out_channels=(192, 384, 576, 960),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                          "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2, cross_attention_dim=512, attention_head_dim=1,  # diffusers: = number of heads
        flip_sin_to_cos=True, freq_shift=0)                                  # + nn.Embedding(1001, 512)

We implement the network ourselves instead of wrapping diffusers so that weights can be drawn from an
explicit ``torch.Generator``, state-dict keys follow LDM, and the label path is part of the module.

Differences on purpose:

* ``num_classes`` excludes the null class: the table has ``num_classes + 1`` rows (LDM's 1001), the last
  being the null class of classifier-free guidance; labels are never dropped here;
* ``learn_sigma=True`` doubles the output channels (as ADM's UNet does); LDM itself predicts ε only;
* guidance through ``models.guidance.guided_forward``; gradient checkpointing per UNet stage.

One file (~420 lines) on purpose, as LDM's ``openaimodel.py``: the blocks only make sense together.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.dit import timestep_embedding
from models.guidance import GuidedNetwork

NORM_GROUPS = 32


@torch.no_grad()
def default_init_(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """PyTorch's default initialisation of one layer, drawn from ``generator``.

    Linear/conv: weight kaiming-uniform with ``a = √5`` (bound ``1/√fan_in``), bias U(±1/√fan_in);
    embedding: N(0, 1); Layer/GroupNorm: (1, 0).
    """
    if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
        nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
        if module.bias is not None:
            fan_in = module.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(module.bias, -bound, bound, generator=generator)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, generator=generator)
    elif isinstance(module, nn.LayerNorm | nn.GroupNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back (LDM's ``normalization``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(NORM_GROUPS, channels)


class ResBlock(nn.Module):
    """GroupNorm–SiLU–conv, add the projected time embedding, GroupNorm–SiLU–dropout–conv (zero-init);
    1×1 conv on the skip path when the width changes."""

    def __init__(
        self, channels: int, emb_channels: int, out_channels: int | None = None, dropout: float = 0.0
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """3×3 convolution with stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a 3×3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` over ``context`` (self-attention when ``context`` is None);
    bias-free q/k/v projections, biased output projection."""

    def __init__(
        self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None, dropout: float = 0.0
    ):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(context)), self._split(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q·kᵀ/√dim_head)·v
        b, _, n, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class GEGLU(nn.Module):
    """``a · GELU(g)`` with ``[a, g] = W·x + b``."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU to ``mult·dim``, dropout, linear back to ``dim``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, mult * dim), nn.Dropout(dropout), nn.Linear(mult * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the context, gated feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, dropout: float = 0.0):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim=context_dim, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm, 1×1 conv to tokens, transformer blocks, 1×1 conv back (zero-init), residual."""

    def __init__(
        self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int, dropout: float = 0.0
    ):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(NORM_GROUPS, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, context_dim, dropout) for _ in range(depth)]
        )
        self.proj_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            h = block(h, context)
        h = h.transpose(1, 2).reshape(b, -1, height, width)
        return x + self.proj_out(h)


class UNetStage(nn.ModuleList):
    """One entry of ``input_blocks``/``output_blocks``: layers fed the time embedding or the context
    as each needs (LDM's ``TimestepEmbedSequential``)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class ClassEmbedder(nn.Module):
    """Class id → one context token ``(B, 1, dim)`` (LDM's ``ClassEmbedder``)."""

    def __init__(self, n_classes: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_classes, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding(y)[:, None]


class LDMUNet(GuidedNetwork):
    """LDM's class-conditional UNet: ``net(x, t_model, y) -> (B, out_channels, H, W)``.

    Defaults are the published LDM-4 ImageNet model (``cin256-v2.yaml``), see the module docstring.
    ``attention_resolutions`` are downsampling factors; the middle block always attends.
    Heads: ``num_head_channels`` wide if given (> 0), else ``num_heads`` per layer (LDM's legacy rule).
    """

    supports_learned_sigma = True

    def __init__(
        self,
        input_size: int = 64,
        in_channels: int = 3,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 5),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (8, 4, 2),
        num_heads: int = 1,
        num_head_channels: int = -1,
        transformer_depth: int = 1,
        context_dim: int = 512,
        dropout: float = 0.0,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        learn_sigma: bool = False,
        grad_checkpointing: bool = False,
        init_generator: torch.Generator | None = None,
    ):
        super().__init__()
        factor = 2 ** (len(channel_mult) - 1)
        if input_size % factor:
            raise ValueError(f"input_size {input_size} is not a multiple of the UNet's downsampling {factor}")
        self.input_size = input_size
        self.in_channels = in_channels
        self.learn_sigma = learn_sigma
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.model_channels = model_channels
        self.channel_mult = tuple(channel_mult)
        self.attention_resolutions = tuple(attention_resolutions)
        self.num_classes = num_classes
        self.class_dropout_prob = class_dropout_prob  # used by the training loss, never here
        self.grad_checkpointing = grad_checkpointing
        emb_dim = 4 * model_channels

        def attention(ch: int) -> SpatialTransformer:
            heads = ch // num_head_channels if num_head_channels > 0 else num_heads
            return SpatialTransformer(ch, heads, ch // heads, transformer_depth, context_dim, dropout)

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.class_embedder = ClassEmbedder(num_classes + 1, context_dim)

        self.input_blocks = nn.ModuleList([UNetStage([nn.Conv2d(in_channels, model_channels, 3, padding=1)])])
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * model_channels, dropout)]
                ch = mult * model_channels
                if ds in self.attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(UNetStage(layers))
                skip_channels.append(ch)
            if level != len(self.channel_mult) - 1:
                self.input_blocks.append(UNetStage([Downsample(ch)]))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = UNetStage(
            [ResBlock(ch, emb_dim, dropout=dropout), attention(ch), ResBlock(ch, emb_dim, dropout=dropout)]
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, model_channels * mult, dropout)]
                ch = model_channels * mult
                if ds in self.attention_resolutions:
                    layers.append(attention(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(UNetStage(layers))

        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), nn.Conv2d(model_channels, self.out_channels, 3, padding=1)
        )
        self.initialize_weights(init_generator)

    @torch.no_grad()
    def initialize_weights(self, generator: torch.Generator | None = None) -> None:
        """LDM's initialisation: PyTorch defaults everywhere (re-drawn from ``generator`` if given),
        then zero the last conv of every ResBlock, every ``proj_out`` and the output conv."""
        if generator is not None:
            for module in self.modules():
                default_init_(module, generator)
        zeroed = [self.out[-1]]
        for module in self.modules():
            if isinstance(module, ResBlock):
                zeroed.append(module.out_layers[-1])
            elif isinstance(module, SpatialTransformer):
                zeroed.append(module.proj_out)
        for layer in zeroed:
            for p in layer.parameters():
                p.zero_()

    def _run(
        self, stage: UNetStage, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(stage, h, emb, context, use_reentrant=False)
        return stage(h, emb, context)

    def forward(self, x: torch.Tensor, t_model: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t_model, self.model_channels).to(x.dtype))
        context = self.class_embedder(y).to(x.dtype)
        h, skips = x, []
        for stage in self.input_blocks:
            h = self._run(stage, h, emb, context)
            skips.append(h)
        h = self._run(self.middle_block, h, emb, context)
        for stage in self.output_blocks:
            h = self._run(stage, torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h)


# name → keyword arguments of LDMUNet. "LDM-UNet" is the published cin256-v2 model; Mini and T are
# CPU-scale configs of this harness (not in LDM), sized for 16×16 and 8×8 inputs.
UNET_CONFIGS: dict[str, dict] = {
    "LDM-UNet": {},
    "LDM-UNet-Mini": {
        "input_size": 16, "model_channels": 64, "channel_mult": (1, 2, 2), "num_res_blocks": 2,
        "attention_resolutions": (2, 4), "num_head_channels": 32, "context_dim": 128,
    },
    "LDM-UNet-T": {
        "input_size": 8, "model_channels": 32, "channel_mult": (1, 2), "num_res_blocks": 1,
        "attention_resolutions": (2,), "num_heads": 1, "context_dim": 64,
    },
}  # fmt: skip
OFFICIAL_UNET_MODELS: tuple[str, ...] = ("LDM-UNet",)


def _factory(name: str) -> Callable[..., LDMUNet]:
    config = UNET_CONFIGS[name]

    def build(**kwargs) -> LDMUNet:
        return LDMUNet(**{**config, **kwargs})

    build.__name__ = name.replace("-", "_")
    build.__doc__ = (
        f"{name}: LDMUNet({', '.join(f'{k}={v}' for k, v in config.items()) or 'LDM-4 defaults'})."
    )
    return build


UNet_models: dict[str, Callable[..., LDMUNet]] = {name: _factory(name) for name in UNET_CONFIGS}
