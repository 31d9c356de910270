"""FLOP counting on the meta device: networks, the SD-VAE, Inception-v3, the digits CNN and P/R distances.

Every architecture is built under ``torch.device("meta")`` and run once under
``torch.utils.flop_counter.FlopCounterMode``: nothing is allocated, no weights are read. Results are cached
per configuration (the counts are pure functions of the architecture).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

# stabilityai/sd-vae-ft-ema config.json (the SD 1.x KL-f8 autoencoder, 83,653,863 parameters).
SD_VAE_ARCHITECTURE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
    "norm_num_groups": 32, "sample_size": 256,
}


def _counted(module: Callable[..., Any], *inputs: Any) -> tuple[int, Any]:
    """(FLOPs, output) of one forward call under ``FlopCounterMode``, without grad."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        output = module(*inputs)
    return int(counter.get_total_flops()), output


def count_forward_flops(module: Callable[..., Any], *inputs: Any) -> int:
    """FLOPs (2 per multiply-add) of one forward call, counted by ``FlopCounterMode`` without grad."""
    return _counted(module, *inputs)[0]


def _spec_key(spec: Mapping[str, Any]) -> str:
    return json.dumps(dict(spec), sort_keys=True)


@cache
def _network_forward_flops(spec_json: str) -> float:
    import torch

    from pipeline.runconfig import build_network

    spec = json.loads(spec_json)
    with torch.device("meta"):
        net = build_network(spec)
        x = torch.zeros(1, net.in_channels, net.input_size, net.input_size)
        t = torch.zeros(1)
        y = torch.zeros(1, dtype=torch.int64)
    return float(count_forward_flops(net, x, t, y))


@cache
def _network_parameters(spec_json: str) -> int:
    import torch

    from pipeline.runconfig import build_network

    with torch.device("meta"):
        net = build_network(json.loads(spec_json))
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def network_parameters(spec: Mapping[str, Any]) -> int:
    """Trainable parameters of the network of a run config's ``network`` block (built on the meta device)."""
    return _network_parameters(_spec_key(spec))


def network_forward_flops(spec: Mapping[str, Any]) -> float:
    """FLOPs of one forward pass of one image through the network of a run config's ``network`` block."""
    return _network_forward_flops(_spec_key(spec))


def dit_paper_gflops(name: str, input_size: int = 32, in_channels: int = 4) -> float:
    """A DiT's forward cost in the DiT paper's unit ("Gflops" there are 1e9 multiply-adds, i.e. FLOPs / 2)."""
    spec = {"name": name, "input_size": input_size, "in_channels": in_channels, "learn_sigma": True}
    return network_forward_flops(spec) / 2e9


def train_flops_per_image(spec: Mapping[str, Any], grad_checkpointing: bool = False) -> float:
    """Forward + backward FLOPs per training image: 3 × forward (4 × with gradient checkpointing)."""
    return (4.0 if grad_checkpointing else 3.0) * network_forward_flops(spec)


@cache
def vae_flops(resolution: int, part: str = "encode") -> float:
    """FLOPs of the SD-VAE encoder (image → latent mean) or decoder (latent → image) for one image."""
    import torch
    from diffusers import AutoencoderKL

    if part not in ("encode", "decode"):
        raise ValueError(f"part must be 'encode' or 'decode', not {part!r}")
    with torch.device("meta"):
        vae = AutoencoderKL(**SD_VAE_ARCHITECTURE)
        image = torch.zeros(1, 3, resolution, resolution)
        latent = torch.zeros(1, 4, resolution // 8, resolution // 8)
    if part == "encode":
        return float(count_forward_flops(lambda x: vae.encode(x).latent_dist.mean, image))
    return float(count_forward_flops(lambda z: vae.decode(z).sample, latent))


def inception_architecture(folder: Path) -> Any:
    """torch-fidelity's ``inception-v3-compat`` with PyTorch's default initialisation, no weights loaded.

    Built on the current default device (``with torch.device("meta")`` for FLOP counting); ``folder``
    receives the empty weights file that torch-fidelity's constructor insists on reading.
    """
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Architecture(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:  # architecture only, no weights
            return None

    empty = Path(folder) / "empty.pt"
    torch.save({}, empty)
    return _Architecture("inception-v3-compat", ["2048", "logits_unbiased"],
                         feature_extractor_weights_path=str(empty))


@cache
def _inception_meta_pass(resolution: int) -> tuple[float, int, int]:
    """(FLOPs, pool dim, sFID spatial dim) of one image through :class:`eval.features.InceptionExtractor`'s
    network and layers, from one forward pass on the meta device."""
    import torch

    from eval.features import INCEPTION_SPATIAL_CHANNELS, INCEPTION_SPATIAL_MODULE, flatten_spatial_hwc

    spatial: list[int] = []

    def capture(module: Any, inputs: Any, output: Any) -> None:
        spatial.append(int(flatten_spatial_hwc(output, INCEPTION_SPATIAL_CHANNELS).shape[1]))

    with tempfile.TemporaryDirectory() as folder:
        with torch.device("meta"):
            net = inception_architecture(Path(folder))
            images = torch.zeros(1, 3, resolution, resolution, dtype=torch.uint8)
        net.get_submodule(INCEPTION_SPATIAL_MODULE).register_forward_hook(capture)
        flops, (pool, _logits) = _counted(net, images)
    return float(flops), int(pool.shape[1]), spatial[0]


def inception_flops(resolution: int = 256) -> float:
    """FLOPs of torch-fidelity's ``inception-v3-compat`` on one image (resized to 299 inside)."""
    return _inception_meta_pass(resolution)[0]


def inception_feature_dims(resolution: int = 256) -> dict[str, int]:
    """Feature sizes the metrics use: ``pool`` (pool_3, 2048) and ``spatial`` (ADM's sFID features,
    ``Mixed_6d.branch1x1`` NHWC ``[..., :7]``: 17·17·7 = 2023), read off the architecture."""
    _, pool, spatial = _inception_meta_pass(resolution)
    return {"pool": pool, "spatial": spatial}


@cache
def digits_classifier_flops() -> float:
    """FLOPs of the digits CNN (eval.digits_classifier) on one 8×8 image."""
    import torch

    from eval.digits_classifier import DigitsClassifier, DigitsClassifierConfig

    with torch.device("meta"):
        net = DigitsClassifier(DigitsClassifierConfig())
        images = torch.zeros(1, 1, 8, 8)
    return float(count_forward_flops(net.forward_features, images))


def digits_feature_dims() -> dict[str, int]:
    """Feature sizes of the digits CNN: ``pool`` (hidden layer) and ``spatial`` (4×4 map, first channels)."""
    from eval.digits_classifier import DigitsClassifierConfig

    config = DigitsClassifierConfig()
    side = config.image_size // 2
    return {"pool": config.hidden, "spatial": side * side * config.spatial_channels}


def precision_recall_flops(num_samples: int, num_reference: int, dim: int) -> float:
    """Distance FLOPs of k-NN precision/recall: radii in each set and the cross distances, 2·dim a pair."""
    pairs = num_reference**2 + num_samples**2 + num_samples * num_reference
    return 2.0 * dim * pairs
