"""Sample grids for chosen classes (the paper's Figs. 8–10: one row per class, cfg 4.0) as a PNG.

Row ``r`` shows class ``classes[r]``; cell ``(r, c)`` is sample index ``r·per_class + c`` of the seed, so it
uses that index's initial noise (and DDPM step noise) from :mod:`pipeline.sample` with the label replaced
by the row's class. A grid is therefore reproducible from (checkpoint, sampler, cfg, seed, classes).

Refused before any sampling, with one :class:`~core.errors.InputError` line: bad flags, a missing or unreadable
checkpoint or one whose weights hold NaN/inf, and another run writing the same PNG (:func:`core.locks.output_lock`).
A grid whose samples come out with NaN/inf stops before quantisation (naming the samples) and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.errors import InputError, run_cli
from core.io import atomic_write, atomic_write_json, provenance
from core.locks import output_lock
from core.precision import set_tf32
from models.samplers import SamplerConfig
from pipeline.sample import (
    DEFAULT_MICRO_BATCH,
    add_sampler_arguments,
    build_session,
    check_checkpoint_path,
    check_sampler_settings,
)

MIN_CELL_PIXELS = 64


def tile_images(images: np.ndarray, rows: int, padding: int = 2, pad_value: int = 255) -> np.ndarray:
    """uint8 NHWC images (row-major, ``rows`` rows) → one uint8 HWC canvas with ``padding`` pixels between."""
    n, h, w, c = images.shape
    if n % rows:
        raise ValueError(f"{n} images do not fill {rows} rows")
    cols = n // rows
    canvas = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c), pad_value, np.uint8)
    for k, image in enumerate(images):
        r, col = divmod(k, cols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        canvas[top:top + h, left:left + w] = image
    return canvas


def upscale_nearest(images: np.ndarray, factor: int) -> np.ndarray:
    """Enlarge NHWC images by an integer factor (nearest neighbour), e.g. 8×8 digits for viewing."""
    if factor <= 1:
        return images
    return images.repeat(factor, axis=1).repeat(factor, axis=2)


def write_png(path: str | os.PathLike, canvas: np.ndarray) -> None:
    """Save an HWC uint8 canvas (1 or 3 channels) as PNG, atomically."""
    image = Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas)
    with atomic_write(path) as handle:
        image.save(handle, format="PNG")


def sample_grid(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    *,
    classes: Sequence[int],
    per_class: int = 8,
    cfg_scale: float = 4.0,
    sampler: str = "dopri5",
    steps: int = 250,
    atol: float = 1e-6,
    rtol: float = 1e-3,
    legacy_cfg_channels: int | None = None,
    ddpm_variance: str = "fixed-large",
    seed: int = 0,
    use_ema: bool = True,
    autoencoder: str | Mapping[str, Any] | None = None,
    latents_index: str | os.PathLike | None = None,
    micro_batch: int = DEFAULT_MICRO_BATCH,
    device: str = "auto",
    tf32: bool = True,
    upscale: int | None = None,
    padding: int = 2,
) -> dict[str, Any]:
    """Write the grid PNG ``out`` and its JSON sidecar (``out`` with ``.json``); returns the sidecar.

    Settings are checked and the output lock of ``out`` taken before any work (a second run for the same PNG
    refuses at once)."""
    check_grid_settings(classes=classes, per_class=per_class, upscale=upscale, padding=padding)
    check_sampler_settings(sampler=sampler, steps=steps, cfg_scale=cfg_scale, atol=atol, rtol=rtol, seed=seed,
                           micro_batch=micro_batch, legacy_cfg_channels=legacy_cfg_channels,
                           ddpm_variance=ddpm_variance)
    ckpt = check_checkpoint_path(ckpt)
    with output_lock(out):
        return _grid_locked(ckpt, out, classes=classes, per_class=per_class, cfg_scale=cfg_scale, sampler=sampler,
                            steps=steps, atol=atol, rtol=rtol, legacy_cfg_channels=legacy_cfg_channels,
                            ddpm_variance=ddpm_variance, seed=seed, use_ema=use_ema, autoencoder=autoencoder,
                            latents_index=latents_index,
                            micro_batch=micro_batch, device=device, tf32=tf32, upscale=upscale, padding=padding)


def check_grid_settings(*, classes: Sequence[int], per_class: int, upscale: int | None, padding: int) -> None:
    """The grid's own flags, one :class:`~core.errors.InputError` line naming the flag."""
    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not classes or not all(is_int(c) and c >= 0 for c in classes):
        raise InputError(f"--classes: expected one or more class ids >= 0, got {list(classes)!r}")
    if not (is_int(per_class) and per_class >= 1):
        raise InputError(f"--per-class: expected an integer >= 1, got {per_class!r}")
    if upscale is not None and not (is_int(upscale) and upscale >= 1):
        raise InputError(f"--upscale: expected an integer >= 1, got {upscale!r}")
    if not (is_int(padding) and padding >= 0):
        raise InputError(f"--padding: expected an integer >= 0, got {padding!r}")


def _grid_locked(
    ckpt: Path, out: str | os.PathLike, *, classes: Sequence[int], per_class: int, cfg_scale: float, sampler: str,
    steps: int, atol: float, rtol: float, legacy_cfg_channels: int | None, ddpm_variance: str, seed: int,
    use_ema: bool,
    autoencoder: str | Mapping[str, Any] | None, latents_index: str | os.PathLike | None, micro_batch: int,
    device: str, tf32: bool, upscale: int | None, padding: int,
) -> dict[str, Any]:
    began = time.monotonic()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    set_tf32(tf32, deterministic_kernels=True)
    cfg = SamplerConfig(kind=sampler, steps=steps, cfg_scale=float(cfg_scale),
                        legacy_cfg_channels=legacy_cfg_channels, atol=float(atol), rtol=float(rtol),
                        ddpm_variance=ddpm_variance)
    session, description = build_session(ckpt, cfg, seed, use_ema=use_ema, autoencoder=autoencoder,
                                         latents_index=latents_index, micro_batch=micro_batch, device=device)
    bad = [c for c in classes if not 0 <= int(c) < session.net.num_classes]
    if bad:
        raise InputError(f"--classes: {bad} are outside the checkpoint's classes [0, {session.net.num_classes})")
    labels = torch.tensor([int(c) for c in classes for _ in range(per_class)], dtype=torch.int64)
    batch = session.generate(range(len(labels)), labels=labels)
    size = batch.images.shape[1]
    factor = upscale if upscale is not None else max(1, MIN_CELL_PIXELS // size)
    canvas = tile_images(upscale_nearest(batch.images, factor), rows=len(classes), padding=padding)
    write_png(out, canvas)
    summary = {
        **description,
        "png": Path(out).name,
        "classes": [int(c) for c in classes],
        "per_class": int(per_class),
        "layout": "row r = classes[r]; cell (r, c) uses the noise of sample index r*per_class + c",
        "upscale": factor,
        "canvas_shape": list(canvas.shape),
        "nfe": {"mean": float(batch.nfe.mean()), "min": int(batch.nfe.min()), "max": int(batch.nfe.max())},
        "tf32": bool(tf32),
        "seconds": time.monotonic() - began,
    }
    summary["provenance"] = provenance({k: v for k, v in summary.items() if k != "seconds"}, seed)
    atomic_write_json(Path(out).with_suffix(".json"), summary)
    return summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sample_grid",
                                     description="Sample grid PNG for chosen classes (paper Figs. 8-10).")
    add_sampler_arguments(parser)
    parser.add_argument("--classes", type=int, nargs="+", required=True, help="one grid row per class")
    parser.add_argument("--per-class", type=int, default=8, help="samples per row")
    parser.add_argument("--cfg-scale", type=float, default=4.0, help="paper Figs. 8-10: 4.0")
    parser.add_argument("--upscale", type=int, default=None,
                        help="nearest-neighbour enlargement "
                             f"(default: cells of at least {MIN_CELL_PIXELS} px)")
    parser.add_argument("--padding", type=int, default=2)
    parser.add_argument("--out", required=True, type=Path, help="the PNG; sidecar: same name, .json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    summary = sample_grid(
        args.ckpt, args.out, classes=args.classes, per_class=args.per_class, cfg_scale=args.cfg_scale,
        sampler=args.sampler, steps=args.steps, atol=args.atol, rtol=args.rtol,
        legacy_cfg_channels=args.legacy_cfg_channels, ddpm_variance=args.ddpm_variance, seed=args.seed,
        use_ema=not args.raw_weights,
        autoencoder=args.autoencoder, latents_index=args.latents_index, micro_batch=args.micro_batch,
        device=args.device, tf32=args.tf32, upscale=args.upscale, padding=args.padding,
    )
    print(f"wrote {args.out}: {len(args.classes)}x{args.per_class} grid, canvas {summary['canvas_shape']}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
