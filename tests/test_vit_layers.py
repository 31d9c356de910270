"""models/vit_layers.py computes what timm's ViT blocks compute, with the same parameter names."""

import pytest
import torch
from torch import nn

from models.vit_layers import Attention, Mlp, PatchEmbed

timm_vit = pytest.importorskip("timm.models.vision_transformer")


def _copy_and_compare(ours: nn.Module, theirs: nn.Module, x: torch.Tensor) -> None:
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


def test_attention_matches_timm():
    torch.manual_seed(0)
    _copy_and_compare(Attention(64, num_heads=4, qkv_bias=True),
                      timm_vit.Attention(64, num_heads=4, qkv_bias=True), torch.randn(3, 16, 64))


def test_mlp_matches_timm():
    torch.manual_seed(0)
    act = lambda: nn.GELU(approximate="tanh")  # noqa: E731
    _copy_and_compare(Mlp(64, 256, act_layer=act), timm_vit.Mlp(64, 256, act_layer=act), torch.randn(3, 16, 64))


def test_patch_embed_matches_timm():
    torch.manual_seed(0)
    _copy_and_compare(PatchEmbed(8, 2, 4, 32), timm_vit.PatchEmbed(8, 2, 4, 32, bias=True), torch.randn(2, 4, 8, 8))


def test_patch_embed_rejects_wrong_geometry():
    with pytest.raises(ValueError, match="multiple"):
        PatchEmbed(9, 2, 4, 32)
    with pytest.raises(ValueError, match="8x8"):
        PatchEmbed(8, 2, 4, 32)(torch.randn(1, 4, 16, 16))


def test_networks_do_not_import_timm():
    import subprocess
    import sys

    code = "import sys, models.networks; sys.exit('timm' in sys.modules or 'torchvision' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
