"""Tests for models/dit.py: official sizes, shapes, adaLN-Zero init, guidance, checkpointing."""

from __future__ import annotations

import math

import pytest
import torch

from models.dit import (
    DIT_SIZES,
    OFFICIAL_DIT_MODELS,
    DiT,
    DiT_models,
    sincos_2d,
    timestep_embedding,
)

torch.set_num_threads(1)


def dit_param_count(
    depth: int,
    hidden: int,
    patch: int,
    input_size: int = 32,
    in_channels: int = 4,
    num_classes: int = 1000,
    learn_sigma: bool = True,
) -> int:
    """Closed-form parameter count of DiT (class dropout > 0, so the label table has a null row).

    With D = hidden, p = patch, C = in_channels, O = 2C if learn_sigma else C, N = (input_size/p)²,
    K = num_classes, L = depth:

      patch embedding (conv p×p, bias)      C·p²·D + D
      fixed pos_embed (frozen nn.Parameter)  N·D
      timestep MLP 256 → D → D               256·D + D + D² + D
      label table incl. null row             (K + 1)·D
      per block: qkv 3D²+3D, proj D²+D, fc1 4D²+4D, fc2 4D²+D, adaLN 6D²+6D  = 18D² + 15D
      final adaLN D → 2D                     2D² + 2D
      final linear D → p²·O                  p²·O·D + p²·O

    Check for DiT-XL/2 (D=1152, L=28, p=2, N=256, C=4, O=8, K=1000):
      19,584 + 294,912 + 1,624,320 + 1,153,152 + 28·23,905,152 + 2,656,512 + 36,896 = 675,129,632,
    the count of the official implementation.
    """
    d, p = hidden, patch
    n_tokens = (input_size // p) ** 2
    out = 2 * in_channels if learn_sigma else in_channels
    return (
        in_channels * p * p * d + d
        + n_tokens * d
        + 256 * d + d + d * d + d
        + (num_classes + 1) * d
        + depth * (18 * d * d + 15 * d)
        + 2 * d * d + 2 * d
        + p * p * out * d + p * p * out
    )  # fmt: skip


# Official counts at 256 px (input_size 32, in_channels 4, learn_sigma, 1000 classes). DiT-XL/2 is the
# published 675,129,632; the others were evaluated from the closed form above (whose terms were read off
# the layer list of facebookresearch/DiT models.py) and are the literal expectations.
OFFICIAL_PARAM_COUNTS = {
    "DiT-XL/2": 675_129_632,
    "DiT-XL/4": 675_074_432,
    "DiT-XL/8": 675_683_072,
    "DiT-L/2": 458_102_816,
    "DiT-L/4": 458_053_760,
    "DiT-L/8": 458_594_816,
    "DiT-B/2": 130_512_416,
    "DiT-B/4": 130_475_648,
    "DiT-B/8": 130_881_536,
    "DiT-S/2": 32_963_360,
    "DiT-S/4": 32_945_024,
    "DiT-S/8": 33_148_160,
}


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def perturb_(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Add noise to every trainable parameter so zero-initialised layers stop hiding conditioning."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(std * torch.randn(p.shape, generator=g))
    return model


def tiny(seed: int = 0, **kwargs) -> DiT:
    kwargs.setdefault("input_size", 8)
    kwargs.setdefault("in_channels", 4)
    kwargs.setdefault("num_classes", 10)
    model = DiT_models["DiT-T/2"](init_generator=torch.Generator().manual_seed(seed), **kwargs)
    return perturb_(model, seed).eval()


def inputs(model: DiT, batch: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.in_channels, model.input_size, model.input_size, generator=g)
    t = torch.rand(batch, generator=g) * 999
    y = torch.randint(0, model.num_classes, (batch,), generator=g)
    return x, t, y


# ---------------------------------------------------------------- sizes


def test_formula_reproduces_published_xl2_count():
    assert dit_param_count(28, 1152, 2) == 675_129_632


@pytest.mark.parametrize("name", OFFICIAL_DIT_MODELS)
def test_official_param_counts(name):
    size, patch = name.removeprefix("DiT-").split("/")
    depth, hidden, _ = DIT_SIZES[size]
    with torch.device("meta"):
        model = DiT_models[name]()
    assert count_params(model) == OFFICIAL_PARAM_COUNTS[name] == dit_param_count(depth, hidden, int(patch))
    assert model.pos_embed.requires_grad is False


def test_registry_keys_and_official_sizes():
    assert set(OFFICIAL_PARAM_COUNTS) == set(OFFICIAL_DIT_MODELS) <= set(DiT_models)
    expected = {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6)}
    for name in OFFICIAL_DIT_MODELS:
        with torch.device("meta"):
            m = DiT_models[name]()
        size, patch = name.removeprefix("DiT-").split("/")
        assert (m.depth, m.hidden_size, m.num_heads) == expected[size]
        assert m.patch_size == int(patch)
    assert {"DiT-T/2", "DiT-Mini/2"} <= set(DiT_models)


def test_small_config_counts_match_formula():
    for name in ("DiT-T/2", "DiT-T/4", "DiT-Mini/2", "DiT-Mini/4"):
        size, patch = name.removeprefix("DiT-").split("/")
        depth, hidden, _ = DIT_SIZES[size]
        for sigma in (True, False):
            with torch.device("meta"):
                m = DiT_models[name](input_size=16, in_channels=3, num_classes=7, learn_sigma=sigma)
            assert count_params(m) == dit_param_count(depth, hidden, int(patch), 16, 3, 7, sigma)


def test_no_class_dropout_means_no_null_row():
    m = DiT_models["DiT-T/2"](input_size=8, num_classes=10, class_dropout_prob=0.0)
    assert m.y_embedder.embedding_table.num_embeddings == 10
    m = DiT_models["DiT-T/2"](input_size=8, num_classes=10, class_dropout_prob=0.1)
    assert m.y_embedder.embedding_table.num_embeddings == 11
    assert m.class_dropout_prob == m.y_embedder.class_dropout_prob == 0.1


# ---------------------------------------------------------------- shapes and layout


@pytest.mark.parametrize("learn_sigma", [True, False])
@pytest.mark.parametrize(
    ("name", "input_size", "in_channels"),
    [("DiT-T/2", 8, 1), ("DiT-T/2", 32, 4), ("DiT-Mini/2", 8, 1), ("DiT-T/4", 32, 4)],
)
def test_forward_shape(name, input_size, in_channels, learn_sigma):
    kwargs = {"input_size": input_size, "in_channels": in_channels, "learn_sigma": learn_sigma}
    m = DiT_models[name](num_classes=5, **kwargs)
    x, t, y = inputs(m, batch=2)
    out = m(x, t, y)
    expected_c = 2 * in_channels if learn_sigma else in_channels
    assert m.out_channels == expected_c
    assert {k: getattr(m, k) for k in kwargs} == kwargs and m.num_classes == 5
    assert out.shape == (2, expected_c, input_size, input_size)


def test_unpatchify_inverts_patch_order():
    """Token r·G+c holds patch (r, c), values ordered (row in patch, column in patch, channel)."""
    m = DiT_models["DiT-T/4"](input_size=16, in_channels=3, learn_sigma=False)
    g, p, c = m.grid_size, m.patch_size, m.out_channels
    img = torch.randn(2, c, g * p, g * p)
    tokens = torch.empty(2, g * g, p * p * c)
    for r in range(g):
        for col in range(g):
            patch = img[:, :, r * p : (r + 1) * p, col * p : (col + 1) * p]  # (B, C, p, p)
            tokens[:, r * g + col] = patch.permute(0, 2, 3, 1).reshape(2, -1)
    assert torch.equal(m.unpatchify(tokens), img)


def test_pos_embed_layout():
    dim, grid = 16, 3
    emb = sincos_2d(dim, grid)
    assert emb.shape == (grid * grid, dim) and emb.dtype == torch.float32
    omega = [1.0 / 10000 ** (k / (dim // 4)) for k in range(dim // 4)]
    for r in range(grid):
        for c in range(grid):
            expected = (
                [math.sin(c * w) for w in omega] + [math.cos(c * w) for w in omega]
                + [math.sin(r * w) for w in omega] + [math.cos(r * w) for w in omega]
            )  # fmt: skip
            torch.testing.assert_close(emb[r * grid + c], torch.tensor(expected), rtol=0, atol=1e-6)
    m = DiT_models["DiT-T/2"](input_size=8)
    torch.testing.assert_close(m.pos_embed[0], sincos_2d(64, 4))


def test_timestep_embedding():
    t = torch.tensor([0.0, 3.0, 500.5])
    emb = timestep_embedding(t, 256)
    assert emb.shape == (3, 256)
    torch.testing.assert_close(emb[0], torch.cat([torch.ones(128), torch.zeros(128)]))
    freqs = torch.exp(-math.log(10000) * torch.arange(128) / 128)
    torch.testing.assert_close(emb[2, :128], torch.cos(500.5 * freqs))
    torch.testing.assert_close(emb[2, 128:], torch.sin(500.5 * freqs))
    assert timestep_embedding(t, 7).shape == (3, 7)


# ---------------------------------------------------------------- initialisation


def test_zero_init_output_is_zero():
    m = DiT_models["DiT-T/2"](input_size=8, num_classes=10)
    x, t, y = inputs(m)
    assert torch.count_nonzero(m(x, t, y)) == 0
    for block in m.blocks:
        assert torch.count_nonzero(block.adaLN_modulation[-1].weight) == 0
        assert torch.count_nonzero(block.adaLN_modulation[-1].bias) == 0


def test_init_statistics():
    m = DiT_models["DiT-Mini/2"](input_size=8, num_classes=1000)
    qkv = m.blocks[0].attn.qkv.weight  # (3D, D): xavier bound sqrt(6/(4D))
    bound = math.sqrt(6 / (qkv.shape[0] + qkv.shape[1]))
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.9 * bound
    assert torch.count_nonzero(m.blocks[0].attn.qkv.bias) == 0
    assert abs(m.y_embedder.embedding_table.weight.std().item() - 0.02) < 0.002
    assert abs(m.t_embedder.mlp[0].weight.std().item() - 0.02) < 0.002
    w = m.x_embedder.proj.weight
    patch_bound = math.sqrt(6 / (w.shape[0] + w[0].numel()))
    assert w.abs().max() <= patch_bound
    assert torch.count_nonzero(m.x_embedder.proj.bias) == 0


def test_init_deterministic_under_manual_seed():
    torch.manual_seed(123)
    a = DiT_models["DiT-T/2"](input_size=8)
    torch.manual_seed(123)
    b = DiT_models["DiT-T/2"](input_size=8)
    torch.manual_seed(124)
    c = DiT_models["DiT-T/2"](input_size=8)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.blocks[0].attn.qkv.weight, c.blocks[0].attn.qkv.weight)


def test_init_generator_ignores_global_rng():
    torch.manual_seed(1)
    a = DiT_models["DiT-T/2"](input_size=8, init_generator=torch.Generator().manual_seed(7))
    torch.manual_seed(2)
    b = DiT_models["DiT-T/2"](input_size=8, init_generator=torch.Generator().manual_seed(7))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


# ---------------------------------------------------------------- labels and guidance


def test_null_class_accepted_and_conditions_output():
    m = tiny()
    x, t, y = inputs(m)
    null = torch.full_like(y, m.num_classes)
    out_null = m(x, t, null)
    assert torch.isfinite(out_null).all()
    assert not torch.allclose(out_null, m(x, t, y))


def test_forward_never_drops_labels_in_train_mode():
    m = tiny(class_dropout_prob=0.5).train()
    x, t, y = inputs(m, batch=8)
    with torch.no_grad():
        first = m(x, t, y)
        for _ in range(3):
            torch.testing.assert_close(m(x, t, y), first, rtol=0, atol=0)


def test_guidance_scale_one_is_conditional():
    m = tiny()
    x, t, y = inputs(m)
    with torch.no_grad():
        torch.testing.assert_close(m.forward_with_cfg(x, t, y, 1.0), m(x, t, y))


@pytest.mark.parametrize("scale", [0.0, 1.5, 4.0])
def test_guidance_all_channels(scale):
    m = tiny()
    x, t, y = inputs(m)
    with torch.no_grad():
        cond = m(x, t, y)
        uncond = m(x, t, torch.full_like(y, m.num_classes))
        out = m.forward_with_cfg(x, t, y, scale)
    c = m.in_channels
    torch.testing.assert_close(out[:, :c], uncond[:, :c] + scale * (cond[:, :c] - uncond[:, :c]))
    torch.testing.assert_close(out[:, c:], cond[:, c:])  # learned-σ channels stay conditional


def test_guidance_legacy_three_channels():
    m = tiny()
    assert m.in_channels == 4 and m.out_channels == 8
    x, t, y = inputs(m)
    scale = 4.0
    with torch.no_grad():
        cond = m(x, t, y)
        uncond = m(x, t, torch.full_like(y, m.num_classes))
        out = m.forward_with_cfg(x, t, y, scale, legacy_channels=3)
    torch.testing.assert_close(out[:, :3], uncond[:, :3] + scale * (cond[:, :3] - uncond[:, :3]))
    torch.testing.assert_close(out[:, 3:], cond[:, 3:])
    assert not torch.allclose(out[:, :3], cond[:, :3])


# ---------------------------------------------------------------- gradient checkpointing


def test_grad_checkpointing_matches():
    plain = tiny(seed=3).train()
    ckpt = tiny(seed=3, grad_checkpointing=True).train()
    assert ckpt.grad_checkpointing and not plain.grad_checkpointing
    x, t, y = inputs(plain)
    outs, grads = [], []
    for m in (plain, ckpt):
        out = m(x, t, y)
        (out**2).mean().backward()
        outs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad})
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7, msg=name)
    assert plain.pos_embed.grad is None and ckpt.pos_embed.grad is None
