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
- ``extractor``: ``{kind: digits}`` (built by a rule) | ``{kind: inception, weights: <torch-fidelity's
  weights-inception-2015-12-05-6726825d.pth>}`` (see :mod:`pipeline.known_files` for where to get it)
- ``official_checkpoints.<preset>``: optional; ``stand-in`` | ``<path of the published checkpoint>``
  (presets ``dit-xl-2-256``, ``dit-xl-2-512``, ``sit-xl-2-256``)
- ``weights_dir``: optional folder of local weight copies (default $FASTERDIT_WEIGHTS_DIR or weights/)
- ``latents``: optional ``{shard_size, batch_size, num_workers, seed}``

Importing this module is cheap (no torch); its check lists directories, reads npz headers and hashes only
the Inception weights (~100 MB).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from core.errors import one_line
from core.io import DataSourceError
from core.npz import validate_adm_npz
from pipeline.datasets import DIGITS_IMAGE_SIZE, list_class_folders
from pipeline.known_files import (
    DIGITS,
    DIGITS_WEIGHTS,
    INCEPTION,
    KNOWN_FILES,
    OFFICIAL_CHECKPOINT_PRESETS,
    expected_sha256,
    file_sha256,
    known_file,
    sha256_matches,
    where_to_get,
)
from pipeline.presets import STAND_IN
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


DATA_PARTS = ("datasets", "references", "autoencoders", "extractor", "official_checkpoints")


def _check_datasets(config: Mapping[str, Any]) -> list[str]:
    """Every configured image-folder root is a class-per-folder tree; every kind is known."""
    errors: list[str] = []
    for name, entry in (config.get("datasets") or {}).items():
        kind = (entry or {}).get("kind")
        if kind == "imagefolder":
            errors += _check_imagefolder_root(entry.get("root"), f"data set {name}")
        elif kind != "digits":
            errors.append(f"data set {name}: unknown kind {kind!r} (digits or imagefolder)")
    return errors


def _get_it(path: Any) -> str:
    """``"; get it: <fetch command>"`` when ``path``'s file name is a known file, else ``""``."""
    entry = known_file(str(path)) if path else None
    return f"; {where_to_get(entry, path)}" if entry else ""


def _check_adm_reference(name: str, path: str, image_size: int | None) -> list[str]:
    """An ADM npz: exists (else where to get it), readable, ``arr_0`` uint8 NHWC at ``image_size``. No hashing."""
    if not Path(path).is_file():
        return [f"reference {name}: reference batch {path} does not exist{_get_it(path)}"]
    try:
        summary = validate_adm_npz(path)
    except DataSourceError as err:
        return [f"reference {name}: {err}"]
    if image_size and summary["shape"][1] != image_size:
        return [f"reference {name}: {path} holds {summary['shape'][1]} px images, not {image_size} px"]
    return []


def _check_references(config: Mapping[str, Any], datasets_checked: bool) -> list[str]:
    """Every reference: ADM batch checked as a file; built ones' image trees (unless the data sets'
    check already covers that root)."""
    errors: list[str] = []
    dataset_roots = [(d or {}).get("root") for d in (config.get("datasets") or {}).values()]
    for name in config.get("references") or {}:
        try:
            plan = reference_plan(config, name)
        except DataSourceError as err:
            errors.append(f"reference {name}: {err}")
            continue
        if plan["source"] == "npz":
            errors += _check_adm_reference(name, plan["root"], plan["image_size"])
        elif plan["source"] == "imagefolder" and not (datasets_checked and plan["root"] in dataset_roots):
            errors += _check_imagefolder_root(plan["root"], f"reference {name}")
    return errors


def _check_autoencoders(config: Mapping[str, Any]) -> list[str]:
    """Every sd-vae autoencoder's weights resolve to a local copy or a hub cache entry."""
    errors: list[str] = []
    for name in config.get("autoencoders") or {}:
        try:
            spec = autoencoder_spec(config, name)
            if spec["name"] != "identity":
                resolve_vae_location(spec["name"], spec.get("weights_dir"))
        except DataSourceError as err:
            errors.append(f"autoencoder {name}: {err}")
    return errors


def _check_inception_weights(path: Any) -> list[str]:
    """``extractor.weights``: an existing file whose SHA-256 agrees with torch-fidelity's published prefix."""
    entry = KNOWN_FILES[INCEPTION]
    expected = f"expected {entry.filename} ({entry.what})"
    if not path:
        return [f"extractor.weights: not set; {expected}; {where_to_get(entry)}"]
    if not Path(path).is_file():
        return [f"extractor.weights: {path} does not exist; {expected}; {where_to_get(entry, path)}"]
    try:
        digest = file_sha256(path)
    except OSError as err:
        return [f"extractor.weights: cannot read {path} ({one_line(err)})"]
    if not sha256_matches(entry, digest):
        return [f"extractor.weights: {path} has SHA-256 {digest}, expected SHA-256 {expected_sha256(entry)} "
                f"({entry.filename}, {entry.what}); {where_to_get(entry, path)}"]
    return []


def _check_extractor(config: Mapping[str, Any], required: bool) -> list[str]:
    """``extractor``: kind inception needs its weights file (kind digits is built by a rule)."""
    extractor = config.get("extractor")
    if extractor is None:
        return ["extractor: not configured (kind: digits or inception)"] if required else []
    if not isinstance(extractor, Mapping):
        return ["extractor: must be a mapping with kind: digits or inception"]
    kind = extractor.get("kind")
    if kind == "inception":
        return _check_inception_weights(extractor.get("weights"))
    return _check_digits_weights() if kind == "digits" else [
        f"extractor.kind: unknown kind {kind!r} (digits or inception)"]


def _check_digits_weights() -> list[str]:
    """The shipped digits CNN (``eval/weights/digits-classifier.pt``) has its recorded SHA-256: every machine
    scores mini/smoke with the same weights."""
    entry, path = KNOWN_FILES[DIGITS], Path(__file__).resolve().parents[1] / DIGITS_WEIGHTS
    if not path.is_file():
        return [f"extractor: {DIGITS_WEIGHTS} (the shipped digits feature CNN) is missing from this checkout"]
    digest = file_sha256(path)
    if not sha256_matches(entry, digest):
        return [f"extractor: {DIGITS_WEIGHTS} has SHA-256 {digest}, not the shipped {entry.sha256} "
                f"(eval/weights/README.md: restore it with git, or retrain and record the new hash)"]
    return []


def _check_official_checkpoints(config: Mapping[str, Any]) -> list[str]:
    """``official_checkpoints.<preset>``: ``stand-in`` or an existing file (hashed later, by the import step)."""
    entries = config.get("official_checkpoints")
    if entries is None:
        return []
    if not isinstance(entries, Mapping):
        return [f"official_checkpoints: must map a preset ({', '.join(OFFICIAL_CHECKPOINT_PRESETS)}) "
                f"to {STAND_IN!r} or a file path"]
    errors: list[str] = []
    for name, value in entries.items():
        key = f"official_checkpoints.{name}"
        if name not in OFFICIAL_CHECKPOINT_PRESETS:
            errors.append(f"{key}: unknown preset (known: {', '.join(OFFICIAL_CHECKPOINT_PRESETS)})")
        elif not value or not isinstance(value, str):
            errors.append(f"{key}: give {STAND_IN!r} or the path of {KNOWN_FILES[name].filename}, not {value!r}")
        elif value != STAND_IN and not Path(value).is_file():
            entry = KNOWN_FILES[name]
            errors.append(f"{key}: {value} does not exist; expected {entry.filename} ({entry.what}); "
                          f"{where_to_get(entry, value)}")
    return errors


def _parts(needs: Iterable[str] | str | None) -> set[str]:
    """The parts to check: all for None; an unknown part is a programming error (ValueError)."""
    if needs is None:
        return set(DATA_PARTS)
    parts = {needs} if isinstance(needs, str) else set(needs)
    unknown = sorted(parts - set(DATA_PARTS))
    if unknown:
        raise ValueError(f"unknown data-check parts {', '.join(unknown)} (known: {', '.join(DATA_PARTS)})")
    return parts


def check_data_sources(config: Mapping[str, Any], needs: Iterable[str] | str | None = None) -> list[str]:
    """One message per missing or malformed data source of a scale config (empty list = all fine).

    ``needs``: the parts to check, among :data:`DATA_PARTS` (None: all of them):

    - ``datasets``: every image-folder root is a class-per-folder tree;
    - ``references``: ADM batch readable, ``arr_0`` uint8 NHWC at the resolution its name says (a missing
      one of a known name says where to get it; never hashed here); built: its image tree;
    - ``autoencoders``: every sd-vae's weights resolve locally;
    - ``extractor``: kind inception: ``extractor.weights`` exists and its SHA-256 starts with the prefix
      torch-fidelity publishes (hashes ~100 MB, cached per path, size and mtime);
    - ``official_checkpoints``: every preset is ``stand-in`` or an existing file (not hashed here; the
      import step records the SHA-256).

    Cheap enough for DAG time: lists directories, reads npz headers and hashes the Inception weights only;
    imports no torch. Every message is one line, naming what to fix.
    """
    parts = _parts(needs)
    errors: list[str] = []
    if "datasets" in parts:
        errors += _check_datasets(config)
    if "references" in parts:
        errors += _check_references(config, datasets_checked="datasets" in parts)
    if "autoencoders" in parts:
        errors += _check_autoencoders(config)
    if "extractor" in parts:
        errors += _check_extractor(config, required=needs is not None)
    if "official_checkpoints" in parts:
        errors += _check_official_checkpoints(config)
    return errors
