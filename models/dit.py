"""DiT (Peebles & Xie, 2023) as published: an adaLN-Zero transformer on latent patches.

Architecture, sizes and initialisation follow DiT's released ``models.py`` (read, not copied); module
names match its state-dict keys so an official checkpoint would load. Differences on purpose:

* the label embedder never drops labels itself (``models.losses.training_losses`` applies the drops);
* ``forward_with_cfg`` guides every prediction channel unless ``legacy_channels=3`` is asked for;
* weight initialisation can draw from an explicit ``torch.Generator`` (``init_generator``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.guidance import GuidedNetwork
from models.vit_layers import Attention, Mlp, PatchEmbed

FREQUENCY_EMBEDDING_SIZE = 256
MAX_PERIOD = 10000


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of tokens ``x (B, T, D)`` by per-sample ``shift, scale (B, D)``."""
    return x * (1 + scale[:, None]) + shift[:, None]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = MAX_PERIOD) -> torch.Tensor:
    """Sinusoidal features ``[cos(t·f_k), sin(t·f_k)]``, ``f_k = max_period^(−k/half)``; (B,) → (B, dim)."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """MAE-style 1-D embedding ``[sin(pos·ω), cos(pos·ω)]``, ``ω_k = 10000^(−2k/dim)``; (M,) → (M, dim)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2))
    angles = positions.double()[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Fixed 2-D sin-cos position table ``(grid_size², dim)`` in DiT's layout (float32).

    Tokens run row-major (token ``r·G + c`` is row ``r``, column ``c``, as ``PatchEmbed`` flattens);
    the first ``dim/2`` channels encode the column, the last ``dim/2`` the row.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64, device=device)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols.reshape(-1)), sincos_1d(dim // 2, rows.reshape(-1))], dim=1)
    return emb.float()


class TimestepEmbedder(nn.Module):
    """Scalar model time → hidden vector: 256-d sinusoidal features, then Linear–SiLU–Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = FREQUENCY_EMBEDDING_SIZE):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    """Class id → hidden vector. With ``class_dropout_prob > 0`` the table has an extra null row
    (id ``num_classes``) for classifier-free guidance. Labels are never dropped here."""

    def __init__(self, num_classes: int, hidden_size: int, class_dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.class_dropout_prob = class_dropout_prob
        has_null_row = class_dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + int(has_null_row), hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (shift/scale/gate for attention and MLP)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(
            in_features=hidden_size,
            hidden_features=int(hidden_size * mlp_ratio),
            act_layer=partial(nn.GELU, approximate="tanh"),
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_a[:, None] * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        x = x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm, then a linear map from tokens to ``p²·out_channels`` values."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def _xavier_uniform_(weight: torch.Tensor, generator: torch.Generator | None) -> None:
    """Xavier-uniform on a weight viewed as ``(fan_out, fan_in)`` (conv kernels are flattened)."""
    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1), generator=generator)


class DiT(GuidedNetwork):
    """Diffusion transformer: ``net(x, t_model, y) -> (B, out_channels, H, W)`` (docs/conventions.md).

    ``pos_embed`` is a frozen ``nn.Parameter`` (as in DiT), so it counts in ``parameters()`` but
    is never trained. ``grad_checkpointing`` recomputes each block in the backward pass.
    """

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        grad_checkpointing: bool = False,
        init_generator: torch.Generator | None = None,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.learn_sigma = learn_sigma
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.class_dropout_prob = class_dropout_prob
        self.grad_checkpointing = grad_checkpointing

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.grid_size = input_size // patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size**2, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights(init_generator)

    @torch.no_grad()
    def initialize_weights(self, generator: torch.Generator | None = None) -> None:
        """DiT's initialisation; random draws use ``generator`` (on the parameters' device) if given.

        Linears: xavier-uniform, zero bias. Patch embedding like a linear: xavier-uniform on the
        flattened kernel, zero bias (DiT at ed81ce2). Label table and the timestep MLP weights:
        N(0, 0.02). adaLN modulation outputs and the final linear: zero. Without a generator the
        global RNG is consumed in DiT's order, so ``torch.manual_seed(s)`` gives the same initial
        weights as DiT's released code.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                _xavier_uniform_(module.weight, generator)
                nn.init.zeros_(module.bias)
        self.pos_embed.copy_(sincos_2d(self.hidden_size, self.grid_size, self.pos_embed.device)[None])

        _xavier_uniform_(self.x_embedder.proj.weight, generator)
        nn.init.zeros_(self.x_embedder.proj.bias)

        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02, generator=generator)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02, generator=generator)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02, generator=generator)

        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, G², p·p·C)`` → image ``(B, C, G·p, G·p)``.

        Token ``r·G + c`` is patch (row r, column c); its values run (row in patch, column in patch, channel).
        """
        b, g, p, c = tokens.shape[0], self.grid_size, self.patch_size, self.out_channels
        x = tokens.reshape(b, g, g, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p)

    def forward(self, x: torch.Tensor, t_model: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tokens = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t_model) + self.y_embedder(y)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, c, use_reentrant=False)
            else:
                tokens = block(tokens, c)
        return self.unpatchify(self.final_layer(tokens, c))


# (depth, hidden_size, num_heads). Official sizes from the DiT paper / code; the last two are ours.
DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "XL": (28, 1152, 16),
    "L": (24, 1024, 16),
    "B": (12, 768, 12),
    "S": (12, 384, 6),
    "Mini": (6, 128, 4),  # CPU-scale config of this harness (not in DiT)
    "T": (4, 64, 4),  # "tiny": smoke-test config of this harness (not in DiT)
}
OFFICIAL_SIZES = ("XL", "L", "B", "S")
PATCH_SIZES = (2, 4, 8)
SMALL_PATCH_SIZES = (2, 4)


def _factory(size: str, patch_size: int) -> Callable[..., DiT]:
    depth, hidden_size, num_heads = DIT_SIZES[size]

    def build(**kwargs) -> DiT:
        return DiT(depth=depth, hidden_size=hidden_size, num_heads=num_heads, patch_size=patch_size, **kwargs)

    build.__name__ = f"DiT_{size}_{patch_size}"
    build.__doc__ = f"DiT-{size}/{patch_size}: depth {depth}, hidden {hidden_size}, {num_heads} heads."
    return build


DiT_models: dict[str, Callable[..., DiT]] = {
    f"DiT-{size}/{p}": _factory(size, p)
    for size in DIT_SIZES
    for p in (PATCH_SIZES if size in OFFICIAL_SIZES else SMALL_PATCH_SIZES)
}
OFFICIAL_DIT_MODELS: tuple[str, ...] = tuple(f"DiT-{s}/{p}" for s in OFFICIAL_SIZES for p in PATCH_SIZES)
