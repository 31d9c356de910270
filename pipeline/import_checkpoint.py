"""Published checkpoints in: a foreign file (DiT, SiT, U-ViT, LDM layout) turned into a harness checkpoint.

``python -m pipeline.import_checkpoint FILE --preset dit-xl-2-256 --out work/imported/dit-xl-2-256.pt``

The file is read from a local path only (never downloaded) with ``torch.load(weights_only=True)``. Layouts:

* ``dit`` (facebookresearch/DiT ``DiT-XL-2-256x256.pt``, ``-512x512.pt``) and ``sit`` (willisma/SiT
  ``SiT-XL-2-256.pt``): a state dict with the keys of ``models/dit.py``; a training checkpoint ``{"model", "ema",
  ...}`` gives its ``ema`` (as both repositories' ``find_model`` does);
* ``uvit`` (baofff/U-ViT ``nnet_ema.pth``): a state dict with the keys of ``models/uvit.py``;
* ``ldm`` (CompVis/latent-diffusion ``cin256-v2``): ``state_dict`` holding the UNet under ``model.diffusion_model.``
  and the class embedder as ``cond_stage_model.embedding.weight``; the first stage (VAE) is left out, and so is
  a ``model_ema.*`` copy (LitEma's dot-less names): the released inference checkpoints hold the weights to sample
  under ``model.diffusion_model.``.

The weights must fit the preset's (or ``--run-json``'s) network exactly: the first missing key, unexpected key or
shape mismatch is one :class:`~core.errors.InputError` line. The harness checkpoint holds the weights as both
``ema`` and ``model`` (the published files are EMA weights), the published training step, the run config the
published protocol implies, and ``source``: the file's name, size, SHA-256 and layout. ``pipeline.sample`` then
reads it like any other checkpoint.

``--export --layout L`` goes the other way: a harness checkpoint's EMA weights in a reference code's file layout
(the calibration stand-ins at mini/smoke; ``python -m pipeline.import_checkpoint CKPT --export --layout dit --out
F``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from core.errors import InputError, require_file, run_cli, safe_torch_load
from core.io import atomic_save_torch, portable_path, provenance
from pipeline.checkpoints import load_checkpoint, save_checkpoint
from pipeline.presets import LAYOUTS, LDM_CLASS_EMBEDDER, LDM_PREFIX, PRESETS
from pipeline.runconfig import RunConfig, build_network


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tensors(state: Any, path: Path, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(f"{path}: {where} is not a state dict of tensors")
    return dict(state)


def official_state_dict(raw: Any, layout: str, path: Path) -> dict[str, torch.Tensor]:
    """The network's weights out of a foreign file's contents, renamed to this harness's keys (module docstring)."""
    if layout not in LAYOUTS:
        raise InputError(f"--layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "ldm":
        state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else raw
        state = _tensors(state, path, "its 'state_dict'")
        out = {k[len(LDM_PREFIX):]: v for k, v in state.items() if k.startswith(LDM_PREFIX)}
        out.update({new: state[old] for old, new in LDM_CLASS_EMBEDDER.items() if old in state})
        if not out:
            raise InputError(f"{path}: no '{LDM_PREFIX}*' weights (not an LDM checkpoint)")
        return out
    if isinstance(raw, Mapping) and "ema" in raw and isinstance(raw["ema"], Mapping):
        return _tensors(raw["ema"], path, "its 'ema'")
    return _tensors(raw, path, "the file")


def check_fits(state: Mapping[str, torch.Tensor], net: torch.nn.Module, path: Path, network: str) -> None:
    """Every key and shape of the network, exactly: the first difference is one error line."""
    expected = net.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise InputError(f"{path}: no weight {key!r} for {network} (first missing key)")
        if tuple(state[key].shape) != tuple(value.shape):
            raise InputError(f"{path}: weight {key!r} has shape {tuple(state[key].shape)}, {network} needs "
                             f"{tuple(value.shape)}")
    extra = [key for key in state if key not in expected]
    if extra:
        raise InputError(f"{path}: weight {extra[0]!r} is not part of {network} (first of {len(extra)} unexpected)")


def import_checkpoint(source: str | Path, out: str | Path, run: Mapping[str, Any], layout: str,
                      step: int) -> dict[str, Any]:
    """Write the harness checkpoint of a foreign file; returns its ``source`` record."""
    path = require_file(source, "checkpoint to import")
    config = RunConfig.from_json(run).to_json()
    raw = safe_torch_load(path, what="checkpoint to import", map_location="cpu")
    state = official_state_dict(raw, layout, path)
    net = build_network(config["network"])
    check_fits(state, net, path, config["network"]["name"])
    net.load_state_dict(state)  # dtype and device as the harness builds them
    weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
    real = path.resolve()  # the published file itself when `source` is a link to it (work/official/<run>.pt)
    record = {"file": portable_path(real), "bytes": real.stat().st_size, "sha256": sha256_of(real),
              "layout": layout}
    save_checkpoint(out, {"step": int(step), "model": weights, "ema": weights, "config": config, "data_std": 1.0,
                          "source": record, "provenance": provenance({"config": config, "source": record}, None)})
    return record


def official_layout(state: Mapping[str, torch.Tensor], layout: str) -> dict[str, Any]:
    """A harness state dict as its reference code saves it (the inverse of :func:`official_state_dict`): DiT, SiT
    and U-ViT a plain state dict (as ``DiT-XL-2-256x256.pt``), LDM ``{"state_dict": …}`` with the UNet under
    ``model.diffusion_model.`` and the class embedder as ``cond_stage_model.embedding.weight``."""
    if layout not in LAYOUTS:
        raise InputError(f"--layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    weights = {key: value.detach().clone() for key, value in state.items()}
    if layout != "ldm":
        return weights
    renamed = {new: old for old, new in LDM_CLASS_EMBEDDER.items()}
    return {"state_dict": {renamed.get(key, LDM_PREFIX + key): value for key, value in weights.items()}}


def export_checkpoint(ckpt: str | Path, out: str | Path, layout: str) -> None:
    """Write the EMA weights of a harness checkpoint in a reference code's file layout (:func:`official_layout`):
    what the calibration stand-ins import back, and what the tests build as an official file."""
    checkpoint = load_checkpoint(ckpt)
    if not isinstance(checkpoint.get("ema"), Mapping):
        raise InputError(f"{ckpt}: harness checkpoint without 'ema' weights")
    atomic_save_torch(official_layout(checkpoint["ema"], layout), out)


def _run_config(args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    if args.step is not None and args.step < 0:
        raise InputError(f"--step: expected an integer >= 0, got {args.step}")
    if args.preset is not None:
        if args.run_json is not None:
            raise InputError("give --preset or --run-json, not both")
        preset = PRESETS[args.preset]
        return dict(preset["run"]), args.layout or preset["layout"], preset["step"] if args.step is None else args.step
    if args.run_json is None or args.layout is None:
        raise InputError("give --preset, or --run-json with --layout")
    inline = args.run_json.lstrip().startswith("{")
    try:
        run = json.loads(args.run_json if inline else require_file(args.run_json, "run config").read_text())
    except ValueError as err:
        raise InputError(f"{'--run-json' if inline else args.run_json}: not JSON ({err})") from None
    if not isinstance(run, dict):
        raise InputError(f"{'--run-json' if inline else args.run_json}: expected a JSON object (a run config)")
    return run, args.layout, 0 if args.step is None else args.step


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.import_checkpoint", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the published file (a local path; nothing is downloaded)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a published model: its layout, network and protocol")
    parser.add_argument("--run-json", help="run config of the network (instead of --preset): a JSON file or object")
    parser.add_argument("--layout", choices=LAYOUTS, help="key layout (default: the preset's)")
    parser.add_argument("--step", type=int, help="training steps of the published model (default: the preset's)")
    parser.add_argument("--out", required=True, type=Path, help="the harness checkpoint to write")
    parser.add_argument("--export", action="store_true",
                        help="the other way: write SOURCE (a harness checkpoint)'s EMA weights in --layout's file "
                             "layout to --out")
    args = parser.parse_args(argv)
    if args.export:
        if args.layout is None or args.preset is not None or args.run_json is not None or args.step is not None:
            raise InputError("--export takes --layout (and none of --preset, --run-json, --step)")
        export_checkpoint(args.source, args.out, args.layout)
        print(f"wrote {args.out}: the EMA weights of {args.source} in the {args.layout} layout")
        return 0
    run, layout, step = _run_config(args)
    record = import_checkpoint(args.source, args.out, run, layout, step)
    print(f"wrote {args.out}: {run['network']['name']} from {record['file']} ({layout} layout, sha256 "
          f"{record['sha256'][:16]}…)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
