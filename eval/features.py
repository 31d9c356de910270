"""Feature extractors behind one interface: Inception-v3 (ADM protocol) and the digits classifier.

Every extractor maps uint8 NHWC images to three float32 arrays:
``pool`` (N, D) for FID and precision/recall, ``logits`` (N, K) for the Inception Score and
``spatial`` (N, Ds) for sFID, the latter flattened in H, W, C order as ADM does.
Weights are read from local files only; nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from core.errors import InputError, safe_torch_load
from core.io import portable_path
from core.npz import iter_npz_rows
from core.precision import tf32_disabled

# ADM keeps the first 7 of the 192 channels of TF `mixed_6/conv` (= Mixed_6d.branch1x1): 17·17·7 = 2023.
INCEPTION_SPATIAL_CHANNELS = 7
INCEPTION_SPATIAL_MODULE = "Mixed_6d.branch1x1"
DEFAULT_BATCH_SIZE = {"inception": 64, "digits": 1000}


@runtime_checkable
class FeatureExtractor(Protocol):
    """What the metrics need from a feature network."""

    name: str
    weights_sha256: str

    def extract_batch(self, images_uint8_nhwc: np.ndarray) -> dict[str, np.ndarray]:
        """Features of one batch: keys ``pool``, ``logits``, ``spatial`` (float32, one row per image)."""
        ...

    def extract(self, images_uint8_nhwc: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
        """Features of a whole array, computed ``batch_size`` images at a time."""
        ...

    def settings(self) -> dict[str, Any]:
        """Everything that identifies the extractor in a metrics JSON."""
        ...


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def flatten_spatial_hwc(feature_map: torch.Tensor, channels: int | None) -> torch.Tensor:
    """(N, C, H, W) → (N, H·W·c): channels last, keep channels ``[:channels]``, flatten in H, W, C order.

    This is ADM's sFID layout (``spatial[..., :7]`` on an NHWC tensor, then a row-major reshape).
    """
    if feature_map.dim() != 4:
        raise ValueError(f"expected an NCHW feature map, got shape {tuple(feature_map.shape)}")
    channels_last = feature_map.movedim(1, -1)
    if channels is not None:
        channels_last = channels_last[..., :channels]
    return channels_last.reshape(feature_map.shape[0], -1)


def _check_images(images: np.ndarray, channels: int) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != channels:
        raise ValueError(f"expected uint8 NHWC images with C={channels} (values 0..255), "
                         f"got {images.dtype} {images.shape}")
    return images


class _BatchedExtractor:
    """``extract`` in terms of ``extract_batch``; subclasses set ``name``, ``weights_sha256``."""

    name: str
    weights_sha256: str

    def extract_batch(self, images_uint8_nhwc: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def extract(self, images_uint8_nhwc: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
        batches = (images_uint8_nhwc[start:start + batch_size]
                   for start in range(0, len(images_uint8_nhwc), batch_size))
        return extract_from_batches(self, batches)


def extract_from_batches(extractor: FeatureExtractor, batches: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``extractor`` over an iterable of uint8 NHWC batches and concatenate the features."""
    parts: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        for key, value in extractor.extract_batch(batch).items():
            parts.setdefault(key, []).append(value)
    if not parts:
        raise ValueError("no images to extract features from")
    return {key: np.concatenate(values, axis=0) for key, values in parts.items()}


class InceptionExtractor(_BatchedExtractor):
    """torch-fidelity's ``inception-v3-compat`` (TF 2015-12-05 graph ported to PyTorch), ADM's layers.

    pool = pool_3 (2048), logits = unbiased logits (1008, no fc bias), spatial = ``Mixed_6d.branch1x1``
    (TF ``mixed_6/conv``, post-ReLU, 192×17×17) → channels last → ``[..., :7]`` → 2023 dims.
    Images go in at their own resolution; torch-fidelity resizes to 299 like TF1.
    """

    name = "inception-v3-compat"

    def __init__(self, weights_path: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu") -> None:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = resolve_inception_weights(weights_path)
        self.weights_path = str(path)
        self.weights_sha256 = file_sha256(path)
        # torch-fidelity loads the file with weights_only=False; refuse anything that is not plain tensors.
        state = safe_torch_load(path, what="Inception weights file")
        if not isinstance(state, dict) or not all(torch.is_tensor(value) for value in state.values()):
            raise InputError(f"{path}: Inception weights must be a state dict of tensors")
        del state
        self.device = torch.device(device)
        self.model = FeatureExtractorInceptionV3(
            self.name, ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
        ).to(self.device)
        self._captured: list[torch.Tensor] = []
        self.model.get_submodule(INCEPTION_SPATIAL_MODULE).register_forward_hook(self._capture_spatial)

    def _capture_spatial(self, module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._captured.append(flatten_spatial_hwc(output, INCEPTION_SPATIAL_CHANNELS).float())

    @torch.no_grad()
    def extract_batch(self, images_uint8_nhwc: np.ndarray) -> dict[str, np.ndarray]:
        images = _check_images(images_uint8_nhwc, channels=3)
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).contiguous()
        self._captured.clear()
        with tf32_disabled():
            pool, logits = self.model(x)
        (spatial,) = self._captured
        self._captured.clear()
        return {"pool": pool.cpu().numpy(), "logits": logits.cpu().numpy(), "spatial": spatial.cpu().numpy()}

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "weights_path": portable_path(self.weights_path),
                "weights_sha256": self.weights_sha256,
                "pool": "pool_3 (2048)", "logits": "unbiased logits (1008)",
                "spatial": f"{INCEPTION_SPATIAL_MODULE} NHWC[..., :{INCEPTION_SPATIAL_CHANNELS}] (2023)",
                "tf32": False}


def resolve_inception_weights(weights_path: str | os.PathLike | None) -> Path:
    """The given file, else torch-fidelity's file name in the torch hub cache; never downloads."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    if weights_path is not None:
        path = Path(weights_path)
    else:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(URL_INCEPTION_V3)
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights not found at {path}. Put torch-fidelity's "
            f"{os.path.basename(URL_INCEPTION_V3)} there or pass its path; nothing is downloaded at run time."
        )
    return path


class DigitsExtractor(_BatchedExtractor):
    """The digits CNN of :mod:`eval.digits_classifier`: pool = penultimate (128), logits (10),
    spatial = 4×4 map, channels ``[:spatial_channels]``, H, W, C order."""

    name = "digits-cnn"

    def __init__(self, weights_path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        from eval.digits_classifier import load_digits_classifier

        self.weights_path = str(weights_path)
        self.weights_sha256 = file_sha256(weights_path)
        self.device = torch.device(device)
        self.model, self.info = load_digits_classifier(weights_path, self.device)

    @torch.no_grad()
    def extract_batch(self, images_uint8_nhwc: np.ndarray) -> dict[str, np.ndarray]:
        from eval.digits_classifier import images_to_model_space

        images = _check_images(images_uint8_nhwc, channels=1)
        side = self.model.config.image_size
        if images.shape[1:3] != (side, side):
            raise ValueError(f"digits classifier expects {side}×{side} images, got {images.shape[1:3]}")
        with tf32_disabled():
            out = self.model.forward_features(images_to_model_space(images).to(self.device))
        spatial = flatten_spatial_hwc(out["spatial"], self.model.config.spatial_channels)
        return {"pool": out["pool"].cpu().numpy(), "logits": out["logits"].cpu().numpy(),
                "spatial": spatial.cpu().numpy()}

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "weights_path": portable_path(self.weights_path),
                "weights_sha256": self.weights_sha256,
                "state_dict_sha256": self.info["state_dict_sha256"],
                "classifier_test_accuracy": self.info["test_accuracy"], "config": self.info["config"],
                "pool": f"penultimate ({self.info['config']['hidden']})", "logits": "logits (10)",
                "spatial": f"4x4 map NHWC[..., :{self.info['config']['spatial_channels']}]", "tf32": False}


def build_extractor(kind: str, weights_path: str | os.PathLike | None = None,
                    device: str | torch.device = "cpu") -> FeatureExtractor:
    """``kind`` ∈ {"inception", "digits"}; Inception falls back to the torch hub cache when no path is given."""
    if kind == "inception":
        return InceptionExtractor(weights_path, device)
    if kind == "digits":
        if weights_path is None:
            raise ValueError("the digits extractor needs --weights (a file from eval.digits_classifier)")
        return DigitsExtractor(weights_path, device)
    raise ValueError(f"unknown extractor {kind!r}; expected 'inception' or 'digits'")


def extract_npz(extractor: FeatureExtractor, path: str | os.PathLike, batch_size: int,
                key: str = "arr_0") -> dict[str, np.ndarray]:
    """Features of the images stored under ``key`` in an ADM npz, streamed batch by batch."""
    return extract_from_batches(extractor, iter_npz_rows(path, batch_size, key))
