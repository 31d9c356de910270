"""A small CNN trained on sklearn digits: the feature extractor of the embedded default dataset.

Images are 8×8 grayscale uint8 NHWC (C = 1, values 0..255), as in ADM npz files. The network plays
the role Inception-v3 plays for ImageNet: its penultimate features feed FID and precision/recall,
its logits the Inception Score and an intermediate 4×4 spatial map sFID.

CLI: ``python -m eval.digits_classifier --train TRAIN.npz --test TEST.npz --out classifier.pt
--report report.json [--seed 0] [--epochs 20]``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import InputError, one_line, positive_int, require_file, run_cli, safe_torch_load
from core.io import atomic_save_torch, atomic_write_json, provenance

FORMAT_TAG = "fasterdit-digits-classifier/1"


@dataclass(frozen=True)
class DigitsClassifierConfig:
    """Architecture of :class:`DigitsClassifier`; saved with the weights."""

    conv1_channels: int = 32
    conv2_channels: int = 64
    hidden: int = 128
    num_classes: int = 10
    image_size: int = 8
    spatial_channels: int = 16  # channels of the 4×4 map kept for sFID (like ADM's [..., :7])


class DigitsClassifier(nn.Module):
    """conv 1→32 → ReLU → conv 32→64 → ReLU → maxpool 2 (spatial map) → fc 128 → ReLU (pool) → fc 10."""

    def __init__(self, config: DigitsClassifierConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        c1, c2 = config.conv1_channels, config.conv2_channels
        side = config.image_size // 2
        self.conv1 = nn.Conv2d(1, c1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        self.fc_hidden = nn.Linear(c2 * side * side, config.hidden)
        self.fc_logits = nn.Linear(config.hidden, config.num_classes)
        if generator is not None:
            self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """PyTorch's default layer initialisation, drawn from ``generator`` instead of the global RNG."""
        for layer in (self.conv1, self.conv2, self.fc_hidden, self.fc_logits):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            fan_in = layer.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(layer.bias, -bound, bound, generator=generator)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: (N, 1, 8, 8) in model space [-1, 1]. Returns spatial (N, C, 4, 4), pool (N, 128), logits."""
        spatial = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        pool = F.relu(self.fc_hidden(spatial.flatten(1)))
        return {"spatial": spatial, "pool": pool, "logits": self.fc_logits(pool)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["logits"]


def images_to_model_space(images_uint8_nhwc: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC (C = 1) → float32 NCHW in [-1, 1] (``x/127.5 − 1``)."""
    images = torch.as_tensor(images_uint8_nhwc)
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 1:
        raise ValueError(f"expected uint8 NHWC images with C=1, got {images.dtype} {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of every tensor, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def accuracy(model: DigitsClassifier, images_uint8_nhwc: np.ndarray, labels: np.ndarray,
             batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on uint8 NHWC images."""
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        x = images_to_model_space(images_uint8_nhwc[start:start + batch_size]).to(device)
        y = torch.as_tensor(labels[start:start + batch_size], dtype=torch.int64, device=device)
        correct += int((model(x).argmax(dim=1) == y).sum())
    return correct / len(labels)


def train_digits_classifier(
    images_uint8_nhwc: np.ndarray,
    labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    seed: int = 0,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 2e-3,
    config: DigitsClassifierConfig | None = None,
    device: str | torch.device = "cpu",
) -> tuple[DigitsClassifier, dict[str, Any]]:
    """Train with Adam and cross-entropy; initialisation and shuffling come from a generator seeded by ``seed``.

    Returns the model (eval mode) and a report with train/test accuracy and the weights' SHA-256.
    """
    config = config or DigitsClassifierConfig()
    generator = torch.Generator().manual_seed(seed)
    model = DigitsClassifier(config, generator).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    x_all = images_to_model_space(images_uint8_nhwc).to(device)
    y_all = torch.as_tensor(labels, dtype=torch.int64, device=device)
    if not (0 <= int(y_all.min()) and int(y_all.max()) < config.num_classes):
        raise ValueError(f"labels must lie in [0, {config.num_classes})")
    last_loss = torch.tensor(float("nan"))
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y_all), generator=generator).to(device)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            last_loss = loss.detach()
    model.eval()
    report = {
        "test_accuracy": accuracy(model, test_images, test_labels),
        "train_accuracy": accuracy(model, images_uint8_nhwc, labels),
        "final_batch_loss": float(last_loss),
        "num_train": int(len(labels)),
        "num_test": int(len(test_labels)),
        "seed": int(seed),
        "epochs": int(epochs),
        "batch_size": int(batch_size),
        "lr": float(lr),
        "config": asdict(config),
        "state_dict_sha256": state_dict_sha256(model.state_dict()),
    }
    return model, report


def save_digits_classifier(model: DigitsClassifier, report: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Atomically save state dict, config, test accuracy and the state dict's SHA-256."""
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    payload = {
        "format": FORMAT_TAG,
        "config": asdict(model.config),
        "state_dict": state,
        "state_dict_sha256": state_dict_sha256(state),
        "test_accuracy": float(report["test_accuracy"]),
        "seed": int(report.get("seed", -1)),
        "epochs": int(report.get("epochs", -1)),
    }
    atomic_save_torch(payload, path)


def load_digits_classifier(path: str | os.PathLike, device: str | torch.device = "cpu",
                           ) -> tuple[DigitsClassifier, dict[str, Any]]:
    """Load a classifier saved by :func:`save_digits_classifier`; checks the format tag and weights hash."""
    payload = safe_torch_load(path, what="digits classifier file")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
        raise InputError(f"{path}: not a digits classifier file ({FORMAT_TAG})")
    digest = state_dict_sha256(payload["state_dict"])
    if digest != payload["state_dict_sha256"]:
        raise InputError(f"{path}: weights hash {digest} does not match the recorded "
                         f"{payload['state_dict_sha256']}")
    model = DigitsClassifier(DigitsClassifierConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval().requires_grad_(False)
    info = {key: payload[key] for key in ("config", "state_dict_sha256", "test_accuracy", "seed", "epochs")}
    return model, info


def _read_labeled_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(arr_0, arr_1)`` of an ADM npz with labels; a bad file is one :class:`InputError` naming it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return data["arr_0"], data["arr_1"]
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise InputError(f"{path}: not an ADM npz with images and labels (arr_0, arr_1): {one_line(err)}") from None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="ADM npz: arr_0 uint8 (N, 8, 8, 1), arr_1 labels")
    parser.add_argument("--test", required=True, help="ADM npz of the test split")
    parser.add_argument("--out", required=True, help="classifier file (.pt)")
    parser.add_argument("--report", required=True, help="JSON report (accuracy, hash, provenance)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=positive_int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    require_file(args.train, "training split npz")
    require_file(args.test, "test split npz")
    train_images, train_labels = _read_labeled_npz(args.train)
    test_images, test_labels = _read_labeled_npz(args.test)
    model, report = train_digits_classifier(train_images, train_labels, test_images, test_labels,
                                            seed=args.seed, epochs=args.epochs, device=args.device)
    save_digits_classifier(model, report, args.out)
    settings = {"train": args.train, "test": args.test, "out": args.out, "epochs": args.epochs,
                "device": args.device}
    atomic_write_json(args.report, {**report, "provenance": provenance(settings, args.seed)})
    print(f"digits classifier: test accuracy {report['test_accuracy']:.4f} -> {args.out}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
