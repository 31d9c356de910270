"""Builders shared by the data, autoencoder and latent tests (no tests here).

- :func:`make_image_tree`: a tiny class-per-folder tree of random PNG/JPEG images.
- :func:`make_tiny_vae`: a randomly initialised diffusers AutoencoderKL saved with ``save_pretrained``,
  so tests go through the real ``from_pretrained`` loading path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Folder name -> number of images; created out of sorted order on purpose.
TREE_CLASSES = {"n0300_cat": 3, "n0100_ant": 2, "n0200_bee": 4}


def make_image_tree(root: Path, classes: dict[str, int] | None = None, size: tuple[int, int] = (24, 18),
                    seed: int = 0) -> list[tuple[str, int]]:
    """Write random RGB images under ``root/<class>/``; return ``(relative path, label)`` in dataset order.

    The first class gets one image in a nested sub-folder, and every class a non-image file and a
    hidden file that the reader must skip.
    """
    classes = classes or TREE_CLASSES
    rng = np.random.default_rng(seed)
    expected = []
    for label, name in enumerate(sorted(classes)):
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "notes.txt").write_text("not an image")
        (folder / ".hidden.png").write_bytes(b"")
        paths = []
        for k in range(classes[name]):
            sub = folder / "nested" if (label == 0 and k == 0) else folder
            sub.mkdir(exist_ok=True)
            ext = ".JPEG" if k % 2 else ".png"
            path = sub / f"img_{k:02d}{ext}"
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, quality=95) if ext == ".JPEG" else Image.fromarray(pixels).save(path)
            paths.append(str(path.relative_to(root)))
        expected += [(p, label) for p in sorted(paths)]
    return expected


def make_tiny_vae(path: Path, seed: int = 0) -> Path:
    """A 2-level AutoencoderKL (downsample 2, 4 latent channels, scaling 0.18215) saved at ``path``."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16,
    )
    vae.save_pretrained(path)
    return path
