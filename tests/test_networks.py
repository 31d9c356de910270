"""Tests for the Table 2/3 networks: U-ViT, the LDM UNet, DiT at 512 px, and the shared registry."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from models.dit import DiT_models
from models.losses import LossConfig, draw_training_randomness, training_losses
from models.networks import (
    NETWORKS,
    PAPER_NETWORKS,
    build,
    family,
    parameter_count,
    supports_learned_sigma,
)
from models.schedules import get_schedule
from models.unet import OFFICIAL_UNET_MODELS, LDMUNet, SpatialTransformer, UNet_models
from models.uvit import OFFICIAL_UVIT_MODELS, UVIT_CONFIGS, UViT, UViT_models
from pipeline.config import STAND_INS, load_scale, network_for_scale
from pipeline.runconfig import build_network

torch.set_num_threads(1)

SMALL_NETWORKS = ("DiT-T/2", "U-ViT-T/2", "U-ViT-Mini/2", "LDM-UNet-T", "LDM-UNet-Mini")


# ---------------------------------------------------------------- closed-form parameter counts


def uvit_param_count(
    width: int,
    depth: int,
    patch: int,
    input_size: int,
    in_channels: int = 4,
    num_classes: int = 1000,
    conv: bool = True,
) -> int:
    """Parameters of U-ViT (thu-ml/U-ViT ``libs/uvit.py``: qkv without bias, no time MLP).

    With D = width, p = patch, C = in_channels, N = (input_size/p)², K = num_classes (+1 null row):

      patch embedding (conv p×p, bias)              C·p²·D + D
      label table (U-ViT's num_classes = K + 1)     (K + 1)·D
      position table over [label, time, patches]    (2 + N)·D
      depth + 1 blocks (depth/2 in, 1 mid, depth/2 out), each:
        2 LayerNorms 4D, qkv 3D², proj D² + D, fc1 4D² + 4D, fc2 4D² + D  = 12D² + 10D
      depth/2 long-skip linears 2D → D              2D² + D each
      final LayerNorm                               2D
      decoder linear D → p²·C                       p²·C·D + p²·C
      final 3×3 conv C → C (if conv)                9C² + C

    U-ViT-L/2 (D=1024, depth 20, p=2, N=256, C=4, K=1000, conv):
      17,408 + 1,025,024 + 264,192 + 21·12,593,152 + 10·2,098,176 + 2,048 + 16,400 + 148
      = 286,763,172  (the paper's "287M"; Table 1 of Bao et al.).
    """
    d, p, c = width, patch, in_channels
    n_tokens = (input_size // p) ** 2
    return (
        c * p * p * d + d
        + (num_classes + 1) * d
        + (2 + n_tokens) * d
        + (depth + 1) * (12 * d * d + 10 * d)
        + (depth // 2) * (2 * d * d + d)
        + 2 * d
        + p * p * c * d + p * p * c
        + (9 * c * c + c if conv else 0)
    )  # fmt: skip


def ldm_unet_param_count(
    in_channels: int = 3,
    out_channels: int = 3,
    model_channels: int = 192,
    channel_mult: tuple[int, ...] = (1, 2, 3, 5),
    num_res_blocks: int = 2,
    attention_resolutions: tuple[int, ...] = (8, 4, 2),
    context_dim: int = 512,
    num_classes: int = 1000,
) -> int:
    """Parameters of CompVis' ``openaimodel.UNetModel`` (spatial transformers, depth 1) plus LDM's
    ``ClassEmbedder``, walked block by block from the config as LDM builds it:

      ResBlock(i → o, emb E = 4·model_channels):  GN 2i, conv 9io + o, emb linear E·o + o, GN 2o,
                                                  conv 9o² + o, skip 1×1 io + o if i ≠ o
      SpatialTransformer(c, context X) (inner width = c for any head count):
          GN 2c, proj_in c² + c, self-attn 4c² + c, cross-attn 2c² + 2Xc + c,
          GEGLU c·8c + 8c, ff out 4c·c + c, 3 LayerNorms 6c, proj_out c² + c
      Downsample / Upsample: 3×3 conv 9c² + c;  time MLP: M·E + E + E² + E;  class table (K + 1)·X
      in conv 9·C_in·M + M;  out: GN 2M, conv 9·M·C_out + C_out.
    """
    m, e = model_channels, 4 * model_channels

    def res(i: int, o: int) -> int:
        return 2 * i + 9 * i * o + o + e * o + o + 2 * o + 9 * o * o + o + (i * o + o if i != o else 0)

    def attn(c: int) -> int:
        return (2 * c + c * c + c + 4 * c * c + c + 2 * c * c + 2 * context_dim * c + c
                + 8 * c * c + 8 * c + 4 * c * c + c + 6 * c + c * c + c)  # fmt: skip

    def conv3(c: int) -> int:
        return 9 * c * c + c

    total = m * e + e + e * e + e + (num_classes + 1) * context_dim + 9 * in_channels * m + m
    skips, ch, ds = [m], m, 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            total += res(ch, mult * m)
            ch = mult * m
            total += attn(ch) if ds in attention_resolutions else 0
            skips.append(ch)
        if level < len(channel_mult) - 1:
            total += conv3(ch)
            skips.append(ch)
            ds *= 2
    total += 2 * res(ch, ch) + attn(ch)
    for level, mult in reversed(list(enumerate(channel_mult))):
        for i in range(num_res_blocks + 1):
            total += res(ch + skips.pop(), mult * m)
            ch = mult * m
            total += attn(ch) if ds in attention_resolutions else 0
            if level and i == num_res_blocks:
                total += conv3(ch)
                ds //= 2
    return total + 2 * m + 9 * m * out_channels + out_channels


# Published sizes. U-ViT: the paper's Table 1 (L 287M, H 501M); exact counts from uvit_param_count,
# whose terms were read off thu-ml/U-ViT's libs/uvit.py and configs/imagenet{256,512}_uvit_*.py.
UVIT_PARAM_COUNTS = {
    "U-ViT-L/2": 286_763_172,
    "U-ViT-L/4": 286_861_524,
    "U-ViT-H/2": 500_832_016,
    "U-ViT-H/4": 500_942_656,
}
# LDM-4 ImageNet (configs/latent-diffusion/cin256-v2.yaml; LDM paper: "400M"): the UNet has
# 400,920,579 parameters (also what diffusers' UNet2DConditionModel with the mapped config counts,
# see test_ldm_unet_matches_diffusers) and the jointly trained ClassEmbedder 1001·512 = 512,512.
LDM_UNET_PARAMS = 400_920_579
LDM_CLASS_TABLE_PARAMS = 1001 * 512
LDM_PARAM_COUNT = 401_433_091
# DiT at 512 px (input_size 64): the 256-px count (tests/test_dit.py) plus the larger frozen sin-cos
# position table, (64/2)² − (32/2)² = 768 more rows of width D.
DIT_512_PARAM_COUNTS = {
    "DiT-B/2": 130_512_416 + 768 * 768,  # 131,102,240
    "DiT-L/2": 458_102_816 + 768 * 1024,  # 458,889,248
}


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return NETWORKS[name](**kwargs)


def perturb_(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Add noise to every trainable parameter so zero-initialised layers stop hiding conditioning."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(std * torch.randn(p.shape, generator=g))
    return model


def tiny(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    kwargs.setdefault("input_size", 8)
    kwargs.setdefault("in_channels", 4)
    kwargs.setdefault("num_classes", 10)
    net = NETWORKS[name](init_generator=torch.Generator().manual_seed(seed), **kwargs)
    return perturb_(net, seed).eval()


def inputs(net, batch: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, net.in_channels, net.input_size, net.input_size, generator=g)
    t = torch.rand(batch, generator=g) * 999
    y = torch.randint(0, net.num_classes, (batch,), generator=g)
    return x, t, y


# ---------------------------------------------------------------- published parameter counts


def test_uvit_closed_form_reproduces_published_l2():
    assert uvit_param_count(1024, 20, 2, 32) == 286_763_172
    assert round(286_763_172 / 1e6) == 287 and round(500_832_016 / 1e6) == 501


@pytest.mark.parametrize("name", OFFICIAL_UVIT_MODELS)
def test_uvit_official_param_counts(name):
    input_size, patch, width, depth, _, conv = UVIT_CONFIGS[name]
    net = on_meta(name)
    expected = uvit_param_count(width, depth, patch, input_size, conv=conv)
    assert count_params(net) == UVIT_PARAM_COUNTS[name] == expected
    assert net.label_emb.num_embeddings == 1001  # U-ViT's num_classes=1001 (1000 + null)


def test_uvit_l2_configuration_matches_release():
    """configs/imagenet256_uvit_large.py: img 32, patch 2, 4 channels, 1024 wide, depth 20, 16 heads,
    mlp 4, qkv_bias False, mlp_time_embed False, num_classes 1001, conv True."""
    net = on_meta("U-ViT-L/2")
    assert (net.input_size, net.patch_size, net.in_channels, net.embed_dim) == (32, 2, 4, 1024)
    assert len(net.in_blocks) == len(net.out_blocks) == 10  # + mid block = the paper's 21 layers
    assert net.in_blocks[0].attn.num_heads == 16 and net.in_blocks[0].attn.qkv.bias is None
    assert net.in_blocks[0].mlp.fc1.out_features == 4096
    assert isinstance(net.time_embed, torch.nn.Identity)
    assert all(b.skip_linear is None for b in [*net.in_blocks, net.mid_block])
    assert all(b.skip_linear is not None for b in net.out_blocks)
    assert isinstance(net.final_layer, torch.nn.Conv2d)
    assert net.pos_embed.shape == (1, 2 + 256, 1024)
    assert isinstance(on_meta("U-ViT-H/2").final_layer, torch.nn.Identity)  # huge configs: conv=False


def test_uvit_state_dict_keys_follow_release():
    keys = set(on_meta("U-ViT-T/2").state_dict())
    expected = {
        "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "label_emb.weight",
        "in_blocks.0.norm1.weight", "in_blocks.0.attn.qkv.weight", "in_blocks.0.attn.proj.bias",
        "in_blocks.0.mlp.fc1.weight", "in_blocks.0.mlp.fc2.bias", "mid_block.norm2.weight",
        "out_blocks.0.skip_linear.weight", "out_blocks.1.skip_linear.bias", "norm.weight",
        "decoder_pred.weight", "decoder_pred.bias", "final_layer.weight", "final_layer.bias",
    }  # fmt: skip
    assert expected <= keys
    assert "in_blocks.0.attn.qkv.bias" not in keys


def test_ldm_unet_closed_form_matches_published_count():
    assert ldm_unet_param_count() == LDM_PARAM_COUNT == LDM_UNET_PARAMS + LDM_CLASS_TABLE_PARAMS
    assert round(LDM_PARAM_COUNT / 1e8) * 100 == 400  # LDM paper: 400M


def test_ldm_unet_published_param_count():
    net = on_meta("LDM-UNet")
    assert count_params(net) == LDM_PARAM_COUNT
    assert count_params(net) - count_params(net.class_embedder) == LDM_UNET_PARAMS
    assert net.class_embedder.embedding.weight.shape == (1001, 512)
    # Harness variant: 4-channel SD-VAE latents; only the first and last convolutions change.
    harness = on_meta("LDM-UNet", in_channels=4, input_size=32)
    assert count_params(harness) == ldm_unet_param_count(4, 4) == LDM_PARAM_COUNT + 9 * 192 + 9 * 192 + 1
    sigma = on_meta("LDM-UNet", in_channels=4, input_size=32, learn_sigma=True)
    assert count_params(sigma) == ldm_unet_param_count(4, 8)


@pytest.mark.parametrize("name", ["LDM-UNet-T", "LDM-UNet-Mini"])
def test_small_unet_counts_match_closed_form(name):
    from models.unet import UNET_CONFIGS

    cfg = UNET_CONFIGS[name]
    net = on_meta(name, in_channels=1, num_classes=10)
    expected = ldm_unet_param_count(
        1, 1, cfg["model_channels"], cfg["channel_mult"], cfg["num_res_blocks"],
        cfg["attention_resolutions"], cfg["context_dim"], 10,
    )  # fmt: skip
    assert count_params(net) == expected


@pytest.mark.slow
def test_ldm_unet_matches_diffusers():
    """The documented diffusers mapping builds a UNet of exactly LDM-4's size (without class table)."""
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        ref = diffusers.UNet2DConditionModel(
            sample_size=64, in_channels=3, out_channels=3, block_out_channels=(192, 384, 576, 960),
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
            up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
            layers_per_block=2, cross_attention_dim=512, attention_head_dim=1,
            flip_sin_to_cos=True, freq_shift=0,
        )  # fmt: skip
    assert count_params(ref) == LDM_UNET_PARAMS


def test_ldm_unet_structure_matches_cin256_v2():
    """cin256-v2: 12 input and 12 output stages; attention at downsampling 2, 4, 8 (levels 1–3) and in
    the middle; one head as wide as the stage; widths 192·(1, 2, 3, 5)."""
    net = on_meta("LDM-UNet")
    assert len(net.input_blocks) == len(net.output_blocks) == 12
    with_attn_in = [
        i for i, s in enumerate(net.input_blocks) if any(isinstance(m, SpatialTransformer) for m in s)
    ]
    with_attn_out = [
        i for i, s in enumerate(net.output_blocks) if any(isinstance(m, SpatialTransformer) for m in s)
    ]
    assert with_attn_in == [4, 5, 7, 8, 10, 11]
    assert with_attn_out == list(range(9))
    mid_attn = net.middle_block[1]
    assert isinstance(mid_attn, SpatialTransformer) and mid_attn.proj_in.out_channels == 960
    block = mid_attn.transformer_blocks[0]
    assert block.attn1.heads == 1 and block.attn2.to_k.in_features == 512
    widths = [s[0].out_layers[-1].out_channels for s in net.input_blocks if hasattr(s[0], "out_layers")]
    assert sorted(set(widths)) == [192, 384, 576, 960]
    assert net.time_embed[0].out_features == 768


def test_ldm_unet_state_dict_keys_follow_openaimodel():
    keys = set(on_meta("LDM-UNet").state_dict())
    expected = {
        "time_embed.0.weight", "time_embed.2.bias", "input_blocks.0.0.weight",
        "input_blocks.1.0.in_layers.0.weight", "input_blocks.1.0.in_layers.2.weight",
        "input_blocks.1.0.emb_layers.1.weight", "input_blocks.1.0.out_layers.3.weight",
        "input_blocks.3.0.op.weight", "input_blocks.4.0.skip_connection.weight",
        "input_blocks.4.1.norm.weight", "input_blocks.4.1.proj_in.weight",
        "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight",
        "input_blocks.4.1.transformer_blocks.0.attn2.to_out.0.bias",
        "input_blocks.4.1.transformer_blocks.0.ff.net.0.proj.weight",
        "input_blocks.4.1.transformer_blocks.0.ff.net.2.weight",
        "input_blocks.4.1.transformer_blocks.0.norm3.weight", "input_blocks.4.1.proj_out.weight",
        "middle_block.1.transformer_blocks.0.attn2.to_k.weight", "output_blocks.2.2.conv.weight",
        "output_blocks.11.0.skip_connection.weight", "out.0.weight", "out.2.weight", "out.2.bias",
        "class_embedder.embedding.weight",
    }  # fmt: skip
    assert expected <= keys


@pytest.mark.parametrize("name", sorted(DIT_512_PARAM_COUNTS))
def test_dit_512_param_counts(name):
    assert count_params(on_meta(name, input_size=64)) == DIT_512_PARAM_COUNTS[name]
    assert parameter_count(name, input_size=64) == DIT_512_PARAM_COUNTS[name]


# ---------------------------------------------------------------- forward shapes


@pytest.mark.parametrize("pixels", [256, 512])
@pytest.mark.parametrize(
    ("name", "learn_sigma"),
    [("U-ViT-L/2", False), ("LDM-UNet", False), ("LDM-UNet", True), ("DiT-B/2", True), ("DiT-L/2", False)],
)
def test_paper_scale_forward_shapes(name, learn_sigma, pixels):
    """Shapes of the paper-scale networks on SD-VAE latents (f = 8, 4 channels), run on the meta device."""
    size = pixels // 8
    with torch.device("meta"):
        net = build(name, input_size=size, in_channels=4, num_classes=1000, learn_sigma=learn_sigma)
        x = torch.empty(2, 4, size, size)
        out = net(x, torch.empty(2), torch.zeros(2, dtype=torch.long))
        guided = net.forward_with_cfg(x, torch.empty(2), torch.zeros(2, dtype=torch.long), 4.0)
    expected = (2, 8 if learn_sigma else 4, size, size)
    assert out.shape == guided.shape == expected
    attributes = (net.input_size, net.in_channels, net.out_channels, net.learn_sigma)
    assert attributes == (size, 4, expected[1], learn_sigma)


@pytest.mark.parametrize(("input_size", "in_channels"), [(8, 1), (16, 1), (8, 4), (16, 3)])
@pytest.mark.parametrize("name", SMALL_NETWORKS)
def test_small_forward_shapes(name, input_size, in_channels):
    net = NETWORKS[name](input_size=input_size, in_channels=in_channels, num_classes=10)
    x, t, y = inputs(net, batch=2)
    with torch.no_grad():
        out = net(x, t, y)
    assert out.shape == (2, net.out_channels, input_size, input_size)
    assert torch.isfinite(out).all()
    assert net.num_classes == 10 and net.input_size == input_size and net.in_channels == in_channels


def test_unet_learn_sigma_doubles_output():
    net = UNet_models["LDM-UNet-T"](input_size=8, in_channels=3, num_classes=10, learn_sigma=True)
    assert net.out_channels == 6 and net.learn_sigma
    assert net(*inputs(net, batch=2)).shape == (2, 6, 8, 8)


def test_uvit_refuses_learned_sigma():
    with pytest.raises(ValueError, match="learned-sigma"):
        UViT_models["U-ViT-T/2"](learn_sigma=True)
    net = UViT_models["U-ViT-T/2"](learn_sigma=False)
    assert net.out_channels == net.in_channels and not net.learn_sigma


def test_input_size_validation():
    with pytest.raises(ValueError, match="multiple"):
        UViT_models["U-ViT-T/2"](input_size=9)
    with pytest.raises(ValueError, match="multiple"):
        UNet_models["LDM-UNet-Mini"](input_size=6)  # needs multiples of 4


# ---------------------------------------------------------------- registry


def test_registry_contents():
    assert set(DiT_models) | set(UViT_models) | set(UNet_models) == set(NETWORKS)
    for names in PAPER_NETWORKS.values():
        assert set(names) <= set(NETWORKS)
    assert PAPER_NETWORKS["table2"] == ("DiT-B/2", "DiT-L/2")
    assert PAPER_NETWORKS["table3"] == ("U-ViT-L/2", "LDM-UNet")
    assert {family(n) for n in NETWORKS} == {"DiT", "U-ViT", "LDM-UNet"}
    assert supports_learned_sigma("DiT-XL/2") and supports_learned_sigma("LDM-UNet")
    assert not supports_learned_sigma("U-ViT-L/2")
    with pytest.raises(ValueError, match="unknown network"):
        family("ResNet-50")
    assert OFFICIAL_UNET_MODELS == ("LDM-UNet",)


def test_stand_ins():
    for paper_name, by_scale in STAND_INS.items():
        assert network_for_scale(paper_name, "paper") == paper_name
        for scale in ("mini", "smoke"):
            small = network_for_scale(paper_name, scale)
            assert small == by_scale[scale] and family(small) == family(paper_name)
            assert parameter_count(small, input_size=16, in_channels=1, num_classes=10) < 20_000_000
    with pytest.raises(ValueError, match="stand-in"):
        network_for_scale("DiT-S/2", "mini")


@pytest.mark.parametrize("name", ["U-ViT-T/2", "LDM-UNet-T"])
def test_runconfig_builds_through_registry(name):
    spec = {"name": name, "input_size": 8, "in_channels": 1, "num_classes": 10, "learn_sigma": False,
            "class_dropout_prob": 0.1, "grad_checkpointing": False}  # fmt: skip
    net = build_network(spec)
    assert isinstance(net, UViT | LDMUNet)
    assert (net.input_size, net.in_channels, net.num_classes, net.class_dropout_prob) == (8, 1, 10, 0.1)


# ---------------------------------------------------------------- labels, guidance, init


@pytest.mark.parametrize("name", ["U-ViT-T/2", "LDM-UNet-T"])
def test_label_table_has_null_row_and_conditions_output(name):
    net = tiny(name)
    table = net.label_emb if isinstance(net, UViT) else net.class_embedder.embedding
    assert table.num_embeddings == net.num_classes + 1
    x, t, y = inputs(net)
    with torch.no_grad():
        cond, null = net(x, t, y), net(x, t, torch.full_like(y, net.num_classes))
        other = net(x, t, (y + 1) % net.num_classes)
    assert torch.isfinite(null).all()
    assert not torch.allclose(cond, null) and not torch.allclose(cond, other)


@pytest.mark.parametrize("name", ["U-ViT-T/2", "LDM-UNet-T"])
def test_forward_never_drops_labels_in_train_mode(name):
    net = tiny(name, class_dropout_prob=0.5).train()
    x, t, y = inputs(net, batch=8)
    with torch.no_grad():
        first = net(x, t, y)
        for _ in range(3):
            torch.testing.assert_close(net(x, t, y), first, rtol=0, atol=0)


@pytest.mark.parametrize("scale", [1.0, 0.0, 4.0])
@pytest.mark.parametrize(
    ("name", "learn_sigma"), [("U-ViT-T/2", False), ("LDM-UNet-T", False), ("LDM-UNet-T", True)]
)
def test_guidance(name, learn_sigma, scale):
    net = tiny(name, learn_sigma=learn_sigma)
    x, t, y = inputs(net)
    with torch.no_grad():
        cond = net(x, t, y)
        uncond = net(x, t, torch.full_like(y, net.num_classes))
        out = net.forward_with_cfg(x, t, y, scale)
    c = net.in_channels
    torch.testing.assert_close(out[:, :c], uncond[:, :c] + scale * (cond[:, :c] - uncond[:, :c]))
    torch.testing.assert_close(out[:, c:], cond[:, c:])  # learned-σ channels stay conditional
    if scale != 1.0:
        assert not torch.allclose(out[:, :c], cond[:, :c])


def test_uvit_long_skips_pair_shallow_with_deep():
    """Out-block i receives the output of in-block depth/2 − 1 − i (U-ViT's stack of skips)."""
    net = tiny("U-ViT-Mini/2")
    in_outputs, skips_received = [], []
    hooks = [b.register_forward_hook(lambda _m, _a, out: in_outputs.append(out)) for b in net.in_blocks]
    hooks += [
        b.register_forward_pre_hook(lambda _m, args: skips_received.append(args[1])) for b in net.out_blocks
    ]
    with torch.no_grad():
        net(*inputs(net))
    for h in hooks:
        h.remove()
    assert len(in_outputs) == len(skips_received) == 3
    for i, skip in enumerate(skips_received):
        assert skip is in_outputs[len(in_outputs) - 1 - i]


def test_unet_zero_init_output():
    net = UNet_models["LDM-UNet-T"](input_size=8, num_classes=10)
    assert torch.count_nonzero(net(*inputs(net))) == 0
    for name, p in net.named_parameters():
        if name.startswith("out.2") or ".proj_out." in name or "out_layers.3" in name:
            assert torch.count_nonzero(p) == 0, name


def test_uvit_init_statistics():
    net = UViT_models["U-ViT-Mini/2"](init_generator=torch.Generator().manual_seed(0))
    fc1 = net.in_blocks[0].mlp.fc1.weight
    assert abs(fc1.std().item() - 0.02) < 0.001 and fc1.abs().max() < 0.02 * 6
    assert torch.count_nonzero(net.in_blocks[0].mlp.fc1.bias) == 0
    assert abs(net.pos_embed.std().item() - 0.02) < 0.002
    assert abs(net.label_emb.weight.std().item() - 1.0) < 0.1  # PyTorch's N(0, 1) embedding default
    assert torch.equal(net.norm.weight, torch.ones_like(net.norm.weight))


@pytest.mark.parametrize("name", ["U-ViT-T/2", "LDM-UNet-T"])
def test_init_generator_ignores_global_rng(name):
    torch.manual_seed(1)
    a = NETWORKS[name](input_size=8, init_generator=torch.Generator().manual_seed(7))
    torch.manual_seed(2)
    b = NETWORKS[name](input_size=8, init_generator=torch.Generator().manual_seed(7))
    c = NETWORKS[name](input_size=8, init_generator=torch.Generator().manual_seed(8))
    differs = False
    for (key, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), key
        differs |= not torch.equal(pa, pc)
    assert differs


@pytest.mark.parametrize("name", ["U-ViT-T/2", "LDM-UNet-T"])
def test_grad_checkpointing_matches(name):
    plain = tiny(name, seed=3).train()
    ckpt = tiny(name, seed=3, grad_checkpointing=True).train()
    x, t, y = inputs(plain)
    outs, grads = [], []
    for net in (plain, ckpt):
        out = net(x, t, y)
        (out**2).mean().backward()
        outs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-6)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-5, atol=1e-7, msg=key)


# ---------------------------------------------------------------- a few training steps on digits


@pytest.mark.parametrize("name", ["DiT-T/2", "U-ViT-T/2", "LDM-UNet-T"])
def test_training_steps_reduce_loss_on_digits(name):
    """Flow-linear velocity loss (Algorithm 2 with default options) on a fixed batch of the embedded
    scikit-learn digits (8×8×1 in [−1, 1], 10 classes): a few AdamW steps lower it."""
    digits = load_digits()
    x = torch.tensor(digits.images[:32], dtype=torch.float32)[:, None] / 8 - 1
    y = torch.tensor(digits.target[:32], dtype=torch.long)
    net = NETWORKS[name](input_size=8, in_channels=1, num_classes=10, learn_sigma=False,
                         init_generator=torch.Generator().manual_seed(0)).train()  # fmt: skip
    schedule, cfg = get_schedule("flow-linear"), LossConfig(prediction="velocity")
    draw = draw_training_randomness(tuple(x.shape), schedule, cfg, torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss = training_losses(net, x, y, draw, schedule, cfg)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = training_losses(net, x, y, draw, schedule, cfg)["loss"].mean().item()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert final < 0.9 * losses[0]


@pytest.mark.parametrize("scale", ["mini", "smoke"])
def test_scale_configs_use_the_registered_stand_ins(scale):
    paper = load_scale("paper")["protocols"]
    small = load_scale(scale)["protocols"]
    for name, protocol in small.items():
        expected = network_for_scale(paper[name]["network"]["name"], scale)
        assert protocol["network"]["name"] == expected, (scale, name)
