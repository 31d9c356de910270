"""The data keys of a scale config, read at Snakefile time: configured names → image-source and
autoencoder specs, reference plans and stage CLI arguments (workflow/rules/data.smk), and the check
that every data source exists before a job starts (the Snakefile's ``onstart``).

Keys read from a scale config (config/scales/<scale>.yaml):

- ``datasets.<name>``: ``{kind: digits}`` | ``{kind: imagefolder, root: <class-per-folder tree>}``
- ``autoencoders.<name>``: ``{kind: identity}`` | ``{kind: sd-vae, path: <short name|hub id|folder>,
  posterior: sample|mean|distribution, dtype: float32, weights_dir: <folder>}`` (posterior default
  ``sample``; it is part of the latent folder's settings hash, see :func:`pipeline.latents._settings`)
- ``references.<name>``: ``"built"`` (name = ``<dataset>-<res>``) | ``<path of an ADM npz, used as is>`` |
  ``{dataset, resolution, root, num, seed}`` (built from an image tree)
- ``weights_dir``: optional folder of local weight copies (default $FASTERDIT_WEIGHTS_DIR or weights/)
- ``latents``: optional ``{shard_size, batch_size, num_workers, seed}``

Importing this module is cheap (no torch): it lists directories and reads npz headers only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from core.io import DataSourceError
from core.npz import validate_adm_npz
from pipeline.datasets import DIGITS_IMAGE_SIZE, list_class_folders
from pipeline.vae_weights import resolve_vae_location

DEFAULT_LATENT_SETTINGS = {"shard_size": 1024, "batch_size": 64, "seed": 0}


def autoencoder_spec(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``config["autoencoders"][name]`` as a :func:`pipeline.autoencoders.build_autoencoder` spec."""
    entries = config.get("autoencoders") or {}
    if name not in entries:
        raise DataSourceError(f"unknown autoencoder {name!r} (configured: {', '.join(entries) or 'none'})")
    entry = entries[name] or {}
    kind = entry.get("kind", "identity" if name == "identity" else "sd-vae")
    if kind == "identity":
        return {"name": "identity"}
    if kind != "sd-vae":
        raise DataSourceError(f"autoencoder {name}: unknown kind {kind!r} (identity or sd-vae)")
    spec = {"name": str(entry.get("path") or name), "posterior": entry.get("posterior", "sample"),
            "dtype": entry.get("dtype", "float32")}
    if entry.get("weights_dir") or config.get("weights_dir"):
        spec["weights_dir"] = str(entry.get("weights_dir") or config.get("weights_dir"))
    return spec


def dataset_entry(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``config["datasets"][name]``, with a clear error when it is not configured."""
    datasets = config.get("datasets") or {}
    if name not in datasets:
        raise DataSourceError(f"unknown data set {name!r} (configured: {', '.join(datasets) or 'none'})")
    return dict(datasets[name])


def source_spec(config: Mapping[str, Any], dataset: str, resolution: int, split: str = "train") -> dict[str, Any]:
    """The :func:`open_image_source` spec of a configured data set at ``resolution``."""
    entry = dataset_entry(config, dataset)
    if entry.get("kind") == "digits":
        if int(resolution) != DIGITS_IMAGE_SIZE:
            raise DataSourceError(f"data set {dataset} (digits) exists at {DIGITS_IMAGE_SIZE} px only, "
                                  f"asked for {resolution} px")
        return {"dataset": "digits", "split": split, "image_size": DIGITS_IMAGE_SIZE}
    if entry.get("kind") == "imagefolder":
        return {"dataset": "imagefolder", "root": entry.get("root"), "image_size": int(resolution)}
    raise DataSourceError(f"data set {dataset}: unknown kind {entry.get('kind')!r} (digits or imagefolder)")


def reference_plan(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """How ``config["references"][name]`` is made: keyword arguments of :func:`write_reference_npz`
    plus ``source``."""
    references = config.get("references") or {}
    if name not in references:
        raise DataSourceError(f"unknown reference {name!r} (configured: {', '.join(references) or 'none'})")
    entry = references[name]
    match = re.fullmatch(r"(.+)-(\d+)", name)
    if isinstance(entry, str) and entry != "built":
        return {"source": "npz", "root": entry, "image_size": int(match.group(2)) if match else None}
    fields = dict(entry) if isinstance(entry, Mapping) else {}
    dataset = fields.get("dataset") or (match.group(1) if match else None)
    resolution = fields.get("resolution") or (int(match.group(2)) if match else None)
    if dataset is None or resolution is None:
        raise DataSourceError(f"reference {name}: name it <dataset>-<resolution> or give dataset and resolution")
    spec = source_spec(config, dataset, int(resolution), split="reference")
    plan = {"num": fields.get("num"), "seed": int(fields.get("seed", 0))}
    if spec["dataset"] == "digits":
        return {"source": "digits", "split": "reference", "image_size": DIGITS_IMAGE_SIZE, **plan}
    return {"source": "imagefolder", "root": fields.get("root") or spec["root"], "image_size": int(resolution),
            **plan}


def _cli_flags(options: Mapping[str, Any]) -> list[str]:
    """``{"image_size": 8, "flip": True, "root": None}`` → ``["--image-size", "8", "--flip"]`` (None/False dropped)."""
    flags = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flags += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return flags


def reference_cli_args(config: Mapping[str, Any], name: str) -> list[str]:
    """Arguments of ``python -m pipeline.data reference`` (without ``--out``) for a configured reference."""
    plan = reference_plan(config, name)
    return ["reference", "--dataset", plan.pop("source"), *_cli_flags(plan)]


def latents_cli_args(config: Mapping[str, Any], dataset: str, resolution: int, autoencoder: str, flip: bool,
                     num_workers: int = 0) -> list[str]:
    """Arguments of ``python -m pipeline.latents`` (without ``--out``) for a configured combination."""
    spec = source_spec(config, dataset, resolution)
    ae = autoencoder_spec(config, autoencoder)
    settings = {**DEFAULT_LATENT_SETTINGS, "num_workers": num_workers, **(config.get("latents") or {})}
    options = {"dataset": spec["dataset"], "root": spec.get("root"),
               "split": spec.get("split"), "image_size": spec["image_size"], "autoencoder": ae["name"],
               "posterior": ae.get("posterior"), "dtype": ae.get("dtype"), "weights_dir": ae.get("weights_dir"),
               **{key: settings[key] for key in ("shard_size", "batch_size", "num_workers", "seed")}}
    return [*_cli_flags(options), "--flip" if flip else "--no-flip"]


def _check_imagefolder_root(root: Any, what: str) -> list[str]:
    """A one-item error list when ``root`` is not a class-per-folder tree, else ``[]``."""
    if not root:
        return [f"{what}: no root folder configured"]
    try:
        list_class_folders(root)
    except DataSourceError as err:
        return [f"{what}: {err}"]
    return []


def check_data_sources(config: Mapping[str, Any]) -> list[str]:
    """One message per missing or malformed data source of a scale config (empty list = all fine).

    Checks every configured image-folder root, reference (ADM batch: readable, ``arr_0`` uint8 NHWC at
    the resolution its name says; built: its data set) and autoencoder's weights. Cheap enough for
    DAG time: lists directories and reads npz headers, imports no torch.
    """
    errors: list[str] = []
    for name, entry in (config.get("datasets") or {}).items():
        kind = (entry or {}).get("kind")
        if kind == "imagefolder":
            errors += _check_imagefolder_root(entry.get("root"), f"data set {name}")
        elif kind != "digits":
            errors.append(f"data set {name}: unknown kind {kind!r} (digits or imagefolder)")
    for name in config.get("references") or {}:
        try:
            plan = reference_plan(config, name)
        except DataSourceError as err:
            errors.append(f"reference {name}: {err}")
            continue
        if plan["source"] == "npz":
            try:
                summary = validate_adm_npz(plan["root"])
            except DataSourceError as err:
                errors.append(f"reference {name}: {err}")
                continue
            if plan["image_size"] and summary["shape"][1] != plan["image_size"]:
                errors.append(f"reference {name}: {plan['root']} holds {summary['shape'][1]} px images, "
                              f"not {plan['image_size']} px")
        elif plan["source"] == "imagefolder":
            dataset_roots = [d.get("root") for d in (config.get("datasets") or {}).values()]
            if plan["root"] not in dataset_roots:
                errors += _check_imagefolder_root(plan["root"], f"reference {name}")
    for name in config.get("autoencoders") or {}:
        try:
            spec = autoencoder_spec(config, name)
            if spec["name"] != "identity":
                resolve_vae_location(spec["name"], spec.get("weights_dir"))
        except DataSourceError as err:
            errors.append(f"autoencoder {name}: {err}")
    return errors
