"""U-ViT (Bao et al., CVPR 2023): a ViT whose inputs are all tokens, with long skip connections.

The time and the class label enter as two extra tokens in front of the image patches; the first
half of the blocks store their outputs, which the second half receive back through a linear map of
the concatenation ``[x, skip]`` (the long skips); a 3×3 convolution may follow the unpatchify.

Architecture, sizes and initialisation follow the released ``libs/uvit.py`` of thu-ml/U-ViT
(read, not copied); module names match its state-dict keys so an official checkpoint would load.
The ImageNet latent configurations (``configs/imagenet{256,512}_uvit_{large,huge}.py``):

=============  =====  ====  ======  =====  =====  ====  ===========  ==========  =============
name           latent patch width   depth  heads  mlp   qkv bias     time MLP    final conv
=============  =====  ====  ======  =====  =====  ====  ===========  ==========  =============
U-ViT-L/2      32×32  2     1024    20     16     4     no           no          yes
U-ViT-L/4      64×64  4     1024    20     16     4     no           no          yes
U-ViT-H/2      32×32  2     1152    28     16     4     no           no          no
U-ViT-H/4      64×64  4     1152    28     16     4     no           no          no
=============  =====  ====  ======  =====  =====  ====  ===========  ==========  =============

``depth`` is the config's value: ``depth/2`` in-blocks, one mid-block and ``depth/2`` out-blocks, i.e.
the paper's 21 (L) and 29 (H) layers. All have 4 latent channels and 1001 label rows (1000 classes and
the null class of classifier-free guidance). U-ViT-L/2 has 286,763,172 parameters (the paper's
"287M"), U-ViT-H/2 500,832,016 (the paper's "501M").

Differences on purpose:

* the class count is ``num_classes`` *without* the null class (the label table has
  ``num_classes + 1`` rows, the last being the null class), so U-ViT's ``num_classes=1001`` is
  ``num_classes=1000`` here, with an identical table;
* U-ViT has no learned-σ head: ``learn_sigma=True`` is refused;
* ``forward_with_cfg`` goes through ``models.guidance.guided_forward``; labels are never dropped here;
* weight initialisation can draw from an explicit ``torch.Generator`` (``init_generator``);
* attention is ``models.vit_layers.Attention`` (U-ViT's ``qkv``/``proj`` layout).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.dit import timestep_embedding
from models.guidance import GuidedNetwork
from models.unet import default_init_
from models.vit_layers import Attention, Mlp, PatchEmbed

POS_EMBED_STD = 0.02
LINEAR_STD = 0.02


class UViTBlock(nn.Module):
    """Pre-norm transformer block; out-blocks first fuse the long skip: ``x ← W·[x, skip] + b``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, skip: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UViT(GuidedNetwork):
    """U-ViT for class-conditional latents: ``net(x, t_model, y) -> (B, in_channels, H, W)``.

    Token order is ``[label, time, patch_0, …, patch_{N−1}]`` with a learned position embedding
    over all of them. The time token is the ``embed_dim``-wide sinusoidal embedding of ``t_model``
    (through an MLP only if ``mlp_time_embed``).
    """

    supports_learned_sigma = False

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        embed_dim: int = 1024,
        depth: int = 20,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        mlp_time_embed: bool = False,
        conv: bool = True,
        skip: bool = True,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        learn_sigma: bool = False,
        grad_checkpointing: bool = False,
        init_generator: torch.Generator | None = None,
    ):
        super().__init__()
        if learn_sigma:
            raise ValueError("U-ViT has no learned-sigma head; use learn_sigma=False")
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
        if depth % 2:
            raise ValueError(f"U-ViT needs an even depth (depth/2 in- and out-blocks), got {depth}")
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels
        self.learn_sigma = False
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.class_dropout_prob = class_dropout_prob  # used by the training loss, never here
        self.grad_checkpointing = grad_checkpointing
        self.grid_size = input_size // patch_size
        self.extras = 2  # label token, time token

        self.patch_embed = PatchEmbed(input_size, patch_size, in_channels, embed_dim, bias=True)
        self.time_embed = (
            nn.Sequential(nn.Linear(embed_dim, 4 * embed_dim), nn.SiLU(), nn.Linear(4 * embed_dim, embed_dim))
            if mlp_time_embed
            else nn.Identity()
        )
        self.label_emb = nn.Embedding(num_classes + 1, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + self.grid_size**2, embed_dim))
        self.in_blocks = nn.ModuleList(
            [UViTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth // 2)]
        )
        self.mid_block = UViTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias)
        self.out_blocks = nn.ModuleList(
            [UViTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, skip=skip) for _ in range(depth // 2)]
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder_pred = nn.Linear(embed_dim, patch_size**2 * in_channels)
        self.final_layer = nn.Conv2d(in_channels, in_channels, 3, padding=1) if conv else nn.Identity()
        self.initialize_weights(init_generator)

    @torch.no_grad()
    def initialize_weights(self, generator: torch.Generator | None = None) -> None:
        """U-ViT's initialisation: position table and every linear weight ~ N(0, 0.02²) truncated to
        [−2, 2], linear biases 0, LayerNorms (1, 0); patch embedding, final conv and label table keep
        PyTorch's defaults (re-drawn from ``generator`` when one is given)."""
        if generator is not None:
            for module in (self.patch_embed.proj, self.final_layer, self.label_emb):
                default_init_(module, generator)
        nn.init.trunc_normal_(self.pos_embed, std=POS_EMBED_STD, a=-2.0, b=2.0, generator=generator)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=LINEAR_STD, a=-2.0, b=2.0, generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, G², p·p·C)`` → image ``(B, C, G·p, G·p)``; values run (row, column, channel)."""
        b, g, p, c = tokens.shape[0], self.grid_size, self.patch_size, self.out_channels
        x = tokens.reshape(b, g, g, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p)

    def _run(self, block: UViTBlock, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, skip, use_reentrant=False)
        return block(x, skip)

    def forward(self, x: torch.Tensor, t_model: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x)
        time_token = self.time_embed(timestep_embedding(t_model, self.embed_dim).to(patches.dtype))
        label_token = self.label_emb(y)
        h = torch.cat([label_token[:, None], time_token[:, None], patches], dim=1) + self.pos_embed
        skips = []
        for block in self.in_blocks:
            h = self._run(block, h)
            skips.append(h)
        h = self._run(self.mid_block, h)
        for block in self.out_blocks:
            h = self._run(block, h, skips.pop())
        h = self.decoder_pred(self.norm(h))[:, self.extras :]
        return self.final_layer(self.unpatchify(h))


# name → (default input_size, patch, embed_dim, depth, heads, final conv). The first four are U-ViT's
# ImageNet latent configs; Mini and T are CPU-scale configs of this harness (not in U-ViT).
UVIT_CONFIGS: dict[str, tuple[int, int, int, int, int, bool]] = {
    "U-ViT-L/2": (32, 2, 1024, 20, 16, True),
    "U-ViT-L/4": (64, 4, 1024, 20, 16, True),
    "U-ViT-H/2": (32, 2, 1152, 28, 16, False),
    "U-ViT-H/4": (64, 4, 1152, 28, 16, False),
    "U-ViT-Mini/2": (16, 2, 128, 6, 4, True),
    "U-ViT-T/2": (8, 2, 64, 4, 4, True),
}
OFFICIAL_UVIT_MODELS: tuple[str, ...] = ("U-ViT-L/2", "U-ViT-L/4", "U-ViT-H/2", "U-ViT-H/4")


def _factory(name: str) -> Callable[..., UViT]:
    input_size, patch, width, depth, heads, conv = UVIT_CONFIGS[name]

    def build(**kwargs) -> UViT:
        kwargs.setdefault("input_size", input_size)
        kwargs.setdefault("conv", conv)
        return UViT(patch_size=patch, embed_dim=width, depth=depth, num_heads=heads, **kwargs)

    build.__name__ = "UViT_" + name.removeprefix("U-ViT-").replace("/", "_")
    build.__doc__ = f"{name}: width {width}, depth {depth} (+1 mid block), {heads} heads, patch {patch}."
    return build


UViT_models: dict[str, Callable[..., UViT]] = {name: _factory(name) for name in UVIT_CONFIGS}
