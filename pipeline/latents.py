"""Precompute autoencoder latents into resumable safetensors shards (``python -m pipeline.latents``).

The folder layout (shards, ``index.json``) and its readers live in :mod:`pipeline.latent_reader`, so
training imports no encoding code. Shard ``i`` holds items ``[i·S, (i+1)·S)`` in dataset order and
rank ``r`` of ``W`` writes the shards with ``i % W == r``.

Shards are written atomically (:func:`core.io.atomic_write`), so a killed job leaves complete
shards or none; a rerun skips complete shards whose settings hash matches (any world size).
Posterior modes of an SD-VAE (``--posterior``): ``sample`` stores one frozen posterior draw per
image, whose noise for item ``i`` comes from a generator seeded with
``derive_seed(seed, "latents-posterior", i, "plain"|"flipped")`` (so latents do not depend on the
batch size or the number of ranks); ``mean`` the posterior mean; ``distribution`` the posterior's
mean and log-variance, from which training draws a fresh sample per step (twice the storage; see
:mod:`pipeline.latent_reader`). Rank 0 writes ``index.json`` once every shard exists.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from core.errors import InputError, run_cli
from core.io import (
    DataSourceError,
    atomic_write,
    atomic_write_json,
    config_hash,
    derive_seed,
    provenance,
    remove_stale_temporaries,
)
from core.shards import Shard, plan_shards, shards_of_rank
from pipeline.autoencoders import POSTERIOR_MODES, Autoencoder, build_autoencoder
from pipeline.datasets import ImageSource, open_image_source
from pipeline.latent_reader import DISTRIBUTION, FORMAT, INDEX_NAME, tensor_names
from pipeline.vae_weights import resolve_vae_location

# --------------------------------------------------------------------------------------------
# Statistics (streaming, mergeable: count, mean, M2 per channel)
# --------------------------------------------------------------------------------------------


def _per_channel(values: torch.Tensor) -> torch.Tensor:
    """``(N, C, h, w)`` → ``(C, N·h·w)`` float64."""
    return values.detach().to(torch.float64).transpose(0, 1).reshape(values.shape[1], -1)


def channel_moments(latents: torch.Tensor, logvar: torch.Tensor | None = None) -> dict[str, list[float]]:
    """Per-channel count, mean and sum of squared deviations (M2) of ``(N, C, h, w)`` latents, float64.

    With ``logvar`` the latents are posterior means and the moments are those of the samples
    ``mean + exp(0.5·logvar)·ε`` training draws: the mean stays ``E[mean]`` and M2 gains the summed
    posterior variances, ``Σ exp(logvar)`` (law of total variance: ``Var[mean] + E[exp(logvar)]``).
    """
    per_channel = _per_channel(latents)
    mean = per_channel.mean(dim=1)
    m2 = ((per_channel - mean[:, None]) ** 2).sum(dim=1)
    if logvar is not None:
        if logvar.shape != latents.shape:
            raise ValueError(f"logvar of shape {tuple(logvar.shape)} for latents of shape {tuple(latents.shape)}")
        m2 = m2 + _per_channel(logvar).exp().sum(dim=1)
    return {"count": [per_channel.shape[1]] * latents.shape[1], "mean": mean.tolist(), "m2": m2.tolist()}


def _merge(a: tuple[float, float, float], b: tuple[float, float, float]) -> tuple[float, float, float]:
    """Chan et al.'s pairwise merge of (count, mean, M2)."""
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    if n == 0:
        return 0.0, 0.0, 0.0
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n


def merge_moments(parts: Sequence[Mapping[str, list[float]]]) -> dict[str, Any]:
    """Combine :func:`channel_moments` records into per-channel and global mean/std (population std)."""
    channels = len(parts[0]["mean"])
    per_channel = [(0.0, 0.0, 0.0)] * channels
    for part in parts:
        for c in range(channels):
            per_channel[c] = _merge(per_channel[c], (part["count"][c], part["mean"][c], part["m2"][c]))
    overall = (0.0, 0.0, 0.0)
    for moments in per_channel:
        overall = _merge(overall, moments)
    return {
        "data_mean": overall[1],
        "data_std": (overall[2] / overall[0]) ** 0.5,
        "channel_mean": [m[1] for m in per_channel],
        "channel_std": [(m[2] / m[0]) ** 0.5 for m in per_channel],
        "num_values": int(overall[0]),
    }


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


class _CHWTensors(Dataset):
    """An image source as uint8 CHW tensors (conversion to model space happens on the device)."""

    def __init__(self, source: ImageSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.source[index]
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), label


def posterior_generators(seed: int, indices: Sequence[int], variant: str) -> list[torch.Generator]:
    """One CPU generator per dataset item, seeded by ``(seed, "latents-posterior", item, variant)``."""
    return [torch.Generator().manual_seed(derive_seed(seed, "latents-posterior", int(i), variant))
            for i in indices]


def _encode_variant(
    autoencoder: Autoencoder, x: torch.Tensor, indices: Sequence[int], seed: int, variant: str
) -> dict[str, torch.Tensor]:
    """``{"latents": …}`` of model-space images, plus ``"latents_logvar"`` in distribution mode (CPU)."""
    if autoencoder.posterior == DISTRIBUTION:
        mean, logvar = autoencoder.encode_distribution(x)
        return {"latents": mean.cpu(), "latents_logvar": logvar.cpu()}
    sampled = autoencoder.posterior == "sample"
    return {"latents": autoencoder.encode(x, posterior_generators(seed, indices, variant) if sampled else None).cpu()}


def encode_batch(
    autoencoder: Autoencoder, images_uint8: torch.Tensor, indices: Sequence[int], seed: int, flip: bool
) -> dict[str, torch.Tensor]:
    """Encode uint8 BCHW images (model space ``x/127.5 − 1``) and, if ``flip``, their mirror images.

    Returns the shard tensors of the batch (labels aside): ``latents``, ``latents_flipped`` with flips,
    and in distribution mode ``latents_logvar`` (and ``latents_flipped_logvar``).
    """
    device = getattr(autoencoder, "device", images_uint8.device)
    x = images_uint8.to(device).float() / 127.5 - 1.0
    out = _encode_variant(autoencoder, x, indices, seed, "plain")
    if flip:
        flipped = _encode_variant(autoencoder, x.flip(-1), indices, seed, "flipped")
        out.update({name.replace("latents", "latents_flipped", 1): value for name, value in flipped.items()})
    return out


def _shard_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors bytes of one shard (tests replace this to simulate a kill mid-write)."""
    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def _read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file."""
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def _existing_shard_ok(path: Path, settings_sha: str) -> bool:
    """True for a complete shard written with these settings; error for a shard of other settings."""
    if not path.exists():
        return False
    try:
        metadata = _read_metadata(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise DataSourceError(f"{path} is unreadable ({err}); delete it and rerun") from err
    if metadata.get("settings_sha256") != settings_sha:
        raise DataSourceError(f"{path} was written with different settings; delete {path.parent} "
                              f"or choose another output folder")
    return True


def _settings(source: ImageSource, autoencoder_spec: Mapping[str, Any], flip: bool, shard_size: int,
              seed: int) -> dict[str, Any]:
    """Everything that decides a shard's content (the root path and world size do not)."""
    source_identity = {k: v for k, v in source.describe().items() if k != "root"}
    ae_identity = {k: autoencoder_spec.get(k) for k in ("name", "posterior", "dtype", "channels")}
    return {"format": FORMAT, "source": source_identity, "autoencoder": ae_identity, "flip": bool(flip),
            "shard_size": int(shard_size), "seed": int(seed)}


def shard_moments(tensors: Mapping[str, torch.Tensor], flip: bool) -> dict[str, list[float]]:
    """:func:`channel_moments` of a shard: over its latents and flipped latents, as posteriors when it holds
    log-variances."""
    means = [tensors["latents"]] + ([tensors["latents_flipped"]] if flip else [])
    if "latents_logvar" not in tensors:
        return channel_moments(torch.cat(means))
    logvars = [tensors["latents_logvar"]] + ([tensors["latents_flipped_logvar"]] if flip else [])
    return channel_moments(torch.cat(means), torch.cat(logvars))


def _encode_device_description(autoencoder: Autoencoder) -> str:
    """Where a shard was encoded (numerics differ slightly between CPU, GPU and cuDNN TF32)."""
    device = torch.device(getattr(autoencoder, "device", "cpu"))
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cudnn tf32={torch.backends.cudnn.allow_tf32})"
    return device.type


def _encode_shards(
    source: ImageSource, autoencoder: Autoencoder, out_dir: Path, todo: Sequence[Shard], *,
    flip: bool, batch_size: int, seed: int, num_workers: int, settings_sha: str, rank: int, progress: bool,
) -> None:
    """Encode the ``todo`` shards in order and write each atomically as soon as it is complete."""
    batches = [list(range(b, min(b + batch_size, shard.stop)))
               for shard in todo for b in range(shard.start, shard.stop, batch_size)]
    loader = DataLoader(_CHWTensors(source), batch_sampler=batches, num_workers=num_workers,
                        pin_memory=torch.cuda.is_available())
    pending = iter(todo)
    shard = next(pending)
    names = tensor_names(flip, autoencoder.posterior == DISTRIBUTION)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    bar = tqdm(total=sum(map(len, todo)), desc=f"latents rank {rank}", unit="img", position=rank,
               mininterval=5, disable=not progress, file=sys.stderr)
    for indices, (images, labels) in zip(batches, loader):
        encoded = encode_batch(autoencoder, images, indices, seed, flip)
        for name, value in {**encoded, "labels": labels.to(torch.int64)}.items():
            parts[name].append(value)
        bar.update(len(indices))
        if indices[-1] + 1 < shard.stop:
            continue
        tensors = {key: torch.cat(value) for key, value in parts.items()}
        stats = shard_moments(tensors, flip)
        metadata = {"format": FORMAT, "settings_sha256": settings_sha, "shard": str(shard.index),
                    "start": str(shard.start), "stop": str(shard.stop), "rank": str(rank),
                    "moments": json.dumps(stats), "autoencoder": json.dumps(autoencoder.describe()),
                    "device": _encode_device_description(autoencoder)}
        with atomic_write(out_dir / shard.file) as handle:
            handle.write(_shard_bytes(tensors, metadata))
        parts = {key: [] for key in parts}
        shard = next(pending, None)
    bar.close()


# --------------------------------------------------------------------------------------------
# Index (rank 0, once every shard exists)
# --------------------------------------------------------------------------------------------


def wait_for_files(paths: Sequence[Path], timeout: float | None, poll: float = 2.0) -> None:
    """Block until every path exists (file-based barrier: works under torchrun and for plain processes)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while missing := [p for p in paths if not p.exists()]:
        if deadline is not None and time.monotonic() > deadline:
            raise DataSourceError(f"gave up waiting for {len(missing)} shard(s) from other ranks, "
                                  f"e.g. {missing[0]}")
        time.sleep(poll)


def write_index(
    out_dir: Path, source: ImageSource, plan: Sequence[Shard], settings: Mapping[str, Any],
    autoencoder_spec: Mapping[str, Any],
) -> dict[str, Any]:
    """Merge shard statistics and write ``index.json`` (every shard must exist)."""
    settings_sha = config_hash(settings, length=64)
    moments, label_counts, shards, devices = [], None, [], set()
    autoencoder: dict[str, Any] = {}
    latent_shape: list[int] = []
    for shard in plan:
        path = out_dir / shard.file
        if not _existing_shard_ok(path, settings_sha):
            raise DataSourceError(f"shard {path} is missing")
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            labels = handle.get_tensor("labels")
            latent_shape = list(handle.get_slice("latents").get_shape()[1:])
        counts = torch.bincount(labels, minlength=0)
        label_counts = counts if label_counts is None else _add_counts(label_counts, counts)
        moments.append(json.loads(metadata["moments"]))
        autoencoder = json.loads(metadata["autoencoder"])
        devices.add(metadata.get("device", "unknown"))
        shards.append({"file": shard.file, "start": shard.start, "stop": shard.stop,
                       "bytes": path.stat().st_size})
    stats = merge_moments(moments)
    flip = bool(settings["flip"])
    distribution = autoencoder.get("posterior") == DISTRIBUTION
    index = {
        "format": FORMAT,
        "num_items": plan[-1].stop if plan else 0,
        "latent_shape": latent_shape,
        "flip": flip,
        "tensors": tensor_names(flip, distribution),
        "shard_size": settings["shard_size"],
        "sharding": "shard i holds items [i*shard_size, (i+1)*shard_size) in dataset order; "
                    "rank r of W writes shards with i % W == r",
        "shards": shards,
        "num_classes": int(source.describe().get("num_classes", len(label_counts))),
        "label_counts": label_counts.tolist(),
        "source": source.describe(),
        "autoencoder": {**autoencoder, "spec": dict(autoencoder_spec)},
        "posterior": autoencoder.get("posterior"),
        "seed": settings["seed"],
        "encoded_on": sorted(devices),
        "stats_over": _stats_over(flip, distribution),
        **stats,
        "scale_factor": autoencoder.get("scale_factor"),
        "data_std_scaled": stats["data_std"] * float(autoencoder.get("scale_factor", 1.0)),
        "settings_sha256": settings_sha,
        "provenance": provenance(settings, settings["seed"]),
    }
    atomic_write_json(out_dir / INDEX_NAME, index)
    return index


def _stats_over(flip: bool, distribution: bool) -> str:
    """What ``index.json``'s statistics describe."""
    over = "latents" + (" and latents_flipped" if flip else "") + " (raw, unscaled)"
    if not distribution:
        return over
    return (f"posterior samples mean + exp(0.5*logvar)*eps of {over}: per channel mean E[mean], "
            f"variance Var[mean] + E[exp(logvar)]")


def _add_counts(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum two bincounts of different lengths."""
    size = max(len(a), len(b))
    return torch.nn.functional.pad(a, (0, size - len(a))) + torch.nn.functional.pad(b, (0, size - len(b)))


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def precompute_latents(
    source_spec: Mapping[str, Any],
    autoencoder_spec: Mapping[str, Any],
    out_dir: str | os.PathLike,
    flip: bool = False,
    shard_size: int = 1024,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 64,
    seed: int = 0,
    *,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    wait_timeout: float | None = None,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Encode this rank's missing shards; rank 0 then waits for all shards and writes the index.

    ``source_spec``: see :func:`pipeline.datasets.open_image_source`; ``autoencoder_spec``: see
    :func:`pipeline.autoencoders.build_autoencoder`. Returns the index on rank 0, ``None`` elsewhere.
    Data-source problems (missing folder, weights, foreign shards) raise :class:`DataSourceError`
    before any encoding.
    """
    out_dir = Path(out_dir)
    source = open_image_source(source_spec)
    spec = dict(autoencoder_spec)
    if spec.get("name") == "identity":
        spec.setdefault("channels", source.channels)
    else:
        spec.setdefault("posterior", "sample")
        spec.setdefault("dtype", "float32")
        if spec["posterior"] not in POSTERIOR_MODES:
            raise InputError(f"posterior {spec['posterior']!r}: one of {', '.join(POSTERIOR_MODES)}")
        resolve_vae_location(str(spec["name"]), spec.get("weights_dir"))
        if source.channels != 3:
            raise DataSourceError(f"the VAE {spec['name']} encodes RGB images; {source.describe()['dataset']} "
                                  f"has {source.channels} channel(s): use the identity autoencoder")
    settings = _settings(source, spec, flip, shard_size, seed)
    settings_sha = config_hash(settings, length=64)
    plan = plan_shards(len(source), shard_size, suffix=".safetensors")
    mine = shards_of_rank(plan, rank, world_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(*(out_dir / shard.file for shard in mine))
    todo = [shard for shard in mine if not _existing_shard_ok(out_dir / shard.file, settings_sha)]
    if todo:
        autoencoder = build_autoencoder(spec, device=device)
        _encode_shards(source, autoencoder, out_dir, todo, flip=flip, batch_size=batch_size, seed=seed,
                       num_workers=num_workers, settings_sha=settings_sha, rank=rank, progress=progress)
    if rank != 0:
        return None
    wait_for_files([out_dir / shard.file for shard in plan], wait_timeout)
    return write_index(out_dir, source, plan, settings, spec)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.latents",
                                     description="Precompute autoencoder latents into resumable shards "
                                                 "(plain process or torchrun; reads RANK/WORLD_SIZE/LOCAL_RANK).")
    parser.add_argument("--dataset", required=True, choices=["digits", "imagefolder"])
    parser.add_argument("--root", help="image-folder root (class-per-folder)")
    parser.add_argument("--split", default="train", choices=["train", "reference", "all"], help="digits split")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--autoencoder", default="identity",
                        help="identity, sd-vae-ft-ema, sd-vae-ft-mse, a hub id or a diffusers folder")
    parser.add_argument("--posterior", default="sample", choices=list(POSTERIOR_MODES),
                        help="SD-VAE: one frozen posterior sample per image, the posterior mean, or the "
                             "distribution (mean and log-variance; training samples it afresh, 2x storage)")
    parser.add_argument("--dtype", default="float32", help="VAE compute dtype (float32, bf16, fp16)")
    parser.add_argument("--weights-dir", help="folder of local weight copies (default $FASTERDIT_WEIGHTS_DIR "
                                              "or ./weights)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False,
                        help="also store the encoding of each horizontally flipped image")
    parser.add_argument("--out", required=True)
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="default: cuda:LOCAL_RANK when CUDA is available, else cpu")
    parser.add_argument("--wait-timeout", type=float, help="seconds rank 0 waits for other ranks' shards")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; data-source problems end with one ``error: ...`` line (SystemExit)."""
    args = _parser().parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = args.device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    source_spec = {"dataset": args.dataset, "root": args.root, "split": args.split, "image_size": args.image_size}
    ae_spec: dict[str, Any] = {"name": args.autoencoder}
    if args.autoencoder != "identity":
        ae_spec.update(posterior=args.posterior, dtype=args.dtype)
        if args.weights_dir:
            ae_spec["weights_dir"] = args.weights_dir
    try:
        index = precompute_latents(source_spec, ae_spec, args.out, flip=args.flip, shard_size=args.shard_size,
                                   rank=rank, world_size=world_size, batch_size=args.batch_size, seed=args.seed,
                                   num_workers=args.num_workers, device=device, wait_timeout=args.wait_timeout,
                                   progress=not args.no_progress)
    except DataSourceError as err:
        raise SystemExit(f"error: {err}") from None
    if index is not None:
        print(f"wrote {Path(args.out) / INDEX_NAME}: {index['num_items']} items {index['latent_shape']}, "
              f"data_std {index['data_std']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
