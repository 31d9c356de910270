"""Expand the experiment registry (config/experiments.yaml) under a scale into runs, milestones and cells.

Pure Python and cheap to import (no torch): the Snakefile calls :func:`load_registry` at parse time.

- A *run* is a complete training recipe (pipeline.runconfig keys) identified by
  ``<protocol>-<readable slug>-<hash of the recipe>``; cells that need the same recipe share the run.
- A run's *milestones* are the steps its cells need plus segment boundaries (``segment_every``), so
  each training job is one segment between consecutive milestones.
- A *cell* is one table entry or figure point: (run, milestone, sampler, cfg, sample count, seed, metrics,
  the paper's value).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.io import config_hash
from models.families import reference_time_input
from pipeline import config as config_files
from pipeline.config import EXPERIMENTS_FILE
from pipeline.paths import at_scale, paths_for
from pipeline.presets import PRESETS, STAND_IN
from pipeline.run_defaults import RUN_DEFAULTS


@dataclass(frozen=True)
class Cell:
    """One figure point or table entry, evaluated on one seed's run."""

    experiment: str
    block: str
    id: str
    seed: int
    run_id: str
    protocol: str
    milestone: int          # the paper's step (the label, e.g. 400000)
    step: int               # the step at this scale
    sampler: dict[str, Any]
    cfg: float
    num_samples: int
    metrics: tuple[str, ...]
    scale: str              # the scale whose folders hold the cell's files (pipeline.paths)
    coords: dict[str, Any] = field(default_factory=dict)   # sweep coordinates (schedule, std, ...)
    paper: dict[str, Any] = field(default_factory=dict)
    cfg_channels: int | None = None  # channels guidance acts on (None: all, or no guidance at cfg 1)
    paper_also: list[dict[str, Any]] = field(default_factory=list)  # other paper values of this sample set
    citation: str = ""      # where the `paper` values come from (calibration cells)

    @property
    def sample_tag(self) -> str:
        return sample_tag(self.sampler, self.cfg, self.num_samples, self.seed, self.cfg_channels)

    @property
    def target(self) -> str:
        """The cell's JSON (all seeds of the cell in one file)."""
        return paths_for(self.scale)("cell", experiment=self.experiment, cell=self.id)

    @property
    def metrics_path(self) -> str:
        return paths_for(self.scale)("metrics", run=self.run_id, step=self.step, tag=self.sample_tag)

    @property
    def samples_path(self) -> str:
        return paths_for(self.scale)("samples", run=self.run_id, step=self.step, tag=self.sample_tag)


@dataclass
class Registry:
    """Everything the DAG needs, expanded for one scale."""

    scale: str
    runs: dict[str, dict[str, Any]]
    run_protocol: dict[str, str]
    milestones: dict[str, list[int]]
    cells: dict[str, list[Cell]]
    experiments: dict[str, dict[str, Any]]
    protocols: dict[str, dict[str, Any]]
    # Runs whose checkpoint is a published file (calibration blocks): run id -> {preset, layout, source}, with
    # source the scale's official_checkpoints entry (a local path, or `stand-in`: trained here, exported, imported).
    imported: dict[str, dict[str, Any]] = field(default_factory=dict)

    def is_trained(self, run_id: str) -> bool:
        """Whether this DAG trains the run (every run but those imported from a published file)."""
        return _is_trained(self.imported, run_id)

    def checkpoint_path(self, run_id: str, step: int) -> str:
        """The checkpoint a run's sample sets read: its milestone, or for an imported run the harness checkpoint
        made from the published file (``work/<scale>/imported/<run>/step<N>.pt``)."""
        kind = "imported_checkpoint" if run_id in self.imported else "checkpoint"
        return paths_for(self.scale)(kind, run=run_id, step=step)

    def previous_milestone(self, run_id: str, step: int) -> int | None:
        """The milestone a segment ending at ``step`` starts from (None for the first segment)."""
        steps = self.milestones[run_id]
        if step not in steps:
            raise KeyError(f"step {step} is not a milestone of run {run_id}: {steps}")
        i = steps.index(step)
        return steps[i - 1] if i > 0 else None

    def all_cells(self) -> list[Cell]:
        return [c for cells in self.cells.values() for c in cells]

    def default_cells(self) -> list[Cell]:
        """The cells of the default DAG: every experiment but the alternative readings (``alternative:``)."""
        return [c for exp, cells in self.cells.items() if not self.experiments.get(exp, {}).get("alternative")
                for c in cells]

    def cell_groups(self, experiment: str) -> dict[str, list[Cell]]:
        """Cells of an experiment grouped by id (one entry per seed)."""
        groups: dict[str, list[Cell]] = {}
        for cell in self.cells[experiment]:
            groups.setdefault(cell.id, []).append(cell)
        return groups


def _is_trained(imported: Mapping[str, Mapping[str, Any]], run_id: str) -> bool:
    return run_id not in imported or imported[run_id]["source"] == STAND_IN


def published_run(where: str, preset_name: str, built: Mapping[str, Any], protocol: Mapping[str, Any],
                  source: str, stand_ins: Mapping[str, Any]) -> dict[str, Any]:
    """The run of a calibration cell: the recipe under its protocol (``built``) must be the preset's model
    (schedule, prediction, learned σ). A stand-in is ``built`` itself, trained here -- allowed only where the
    scale's networks are stand-ins (at the paper scale it would train the published model from scratch). A
    published file's run is the preset's run config with the defaults filled (its identity holds no training-only
    key of the scale), and the protocol must describe it: its network and its steps."""
    preset = PRESETS[preset_name]
    run = preset["run"]
    for key, ours, theirs in (("schedule", built["schedule"], run["schedule"]),
                              ("prediction", built["prediction"], run["prediction"]),
                              ("learn_sigma", built["network"].get("learn_sigma"), run["network"]["learn_sigma"])):
        if ours != theirs:
            raise ValueError(f"{where}: the recipe's {key} {ours!r} is not {preset_name}'s {theirs!r}")
    if source == STAND_IN:
        if not (stand_ins or {}).get("networks"):
            raise ValueError(f"official_checkpoints.{preset_name}: `stand-in` is for scales whose networks are "
                             f"stand-ins (mini, smoke); here it would train {run['network']['name']} from scratch: "
                             f"give the published file's path")
        return dict(built)
    if built["network"] != run["network"]:
        raise ValueError(f"{where}: protocol network {built['network']} is not {preset_name}'s {run['network']}")
    if round(float(protocol["steps"])) != preset["step"]:
        raise ValueError(f"{where}: protocol steps {protocol['steps']} are not {preset_name}'s {preset['step']}")
    return {**copy.deepcopy(RUN_DEFAULTS), **copy.deepcopy(run), "seed": int(built["seed"])}


def sample_tag(sampler: Mapping[str, Any], cfg: float, num: int, seed: int, cfg_channels: int | None = 3) -> str:
    """Readable name of a sample set: e.g. ``dopri5-cfg1.5-n50000-seed0`` or ``ddpm250-cfg1-n10000-seed0``.

    Guidance on the reference's 3 channels is the plain name; any other channel choice of a guided set is
    named: ``…-cfg1.5allch-…`` (every channel) or ``…-cfg1.5ch2-…``. A DDPM sampler with DiT's fixed-large
    variance (or learned σ) is ``ddpm250``; with the fixed-small one ``ddpm250small``.
    """
    kind = sampler["kind"]
    steps = "" if kind == "dopri5" else str(sampler["steps"])
    if kind == "ddpm" and sampler.get("variance") == "fixed-small":
        steps += "small"
    channels = "" if cfg == 1 or cfg_channels == 3 else "allch" if cfg_channels is None else f"ch{cfg_channels}"
    return f"{kind}{steps}-cfg{cfg:g}{channels}-n{num}-seed{seed}"


def guided_channels(cfg: float, cfg_channels: Any) -> int | None:
    """The ``--legacy-cfg-channels`` value of a sample set: None for no guidance (cfg 1) or ``all``."""
    return None if float(cfg) == 1.0 or cfg_channels in (None, "all") else int(cfg_channels)


def parse_sample_tag(tag: str) -> dict[str, Any]:
    """Inverse of :func:`sample_tag`: ``dopri5-cfg1.5-n1000-seed0`` -> kind, steps, cfg, n, seed."""
    m = re.fullmatch(r"(ddpm|euler|heun|dopri5|sde)(\d*)(small)?-cfg([0-9.]+)(allch|ch\d+)?-n(\d+)-seed(\d+)", tag)
    if not m:
        raise ValueError(f"bad sample tag {tag!r}")
    kind, steps, small, cfg, channels, n, seed = m.groups()
    cfg_channels = 3 if channels is None else None if channels == "allch" else int(channels[2:])
    return {"kind": kind, "steps": int(steps) if steps else 0, "cfg": float(cfg), "n": int(n), "seed": int(seed),
            "cfg_channels": cfg_channels, **({"variance": "fixed-small"} if small else {})}


def _slug_value(value: Any) -> str:
    text = value if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def _timesteps_slug(ts: Mapping[str, Any]) -> str:
    if ts.get("kind", "uniform") == "uniform":
        return "uniform"
    return f"lognorm{ts.get('mu', 0.0):g}_{ts.get('sigma', 1.0):g}"


def run_slug(protocol: str, run: Mapping[str, Any]) -> str:
    """A readable description of a run's recipe (the hash, appended elsewhere, makes it unique)."""
    scale = run["input_scale"]
    scale_part = f"std{scale['target_std']:g}" if "target_std" in scale else f"x{scale.get('factor', 1.0):g}"
    parts = [protocol, run["schedule"], run["prediction"], scale_part, _timesteps_slug(run["timesteps"])]
    if run.get("direction_loss"):
        parts.append("dirloss")
    if run["network"].get("learn_sigma"):
        parts.append("learnsigma")
    parts.append(f"seed{run['seed']}")
    return "-".join(_slug_value(p) for p in parts)


def _resolve(value: Any, scale_cfg: Mapping[str, Any]) -> Any:
    """Names such as ``std_grid`` refer to lists in the scale config."""
    if isinstance(value, str) and value in scale_cfg:
        return scale_cfg[value]
    return value


def _sweep_points(sweep: Mapping[str, Any], scale_cfg: Mapping[str, Any]) -> list[tuple[dict, dict]]:
    """Cartesian product of a sweep: list of (coords for labels, recipe overrides)."""
    points: list[tuple[dict, dict]] = [({}, {})]
    for key, raw in sweep.items():
        values = _resolve(raw, scale_cfg)
        if not isinstance(values, list):   # a name the scale does not define would sweep its letters
            raise ValueError(f"sweep.{key}: {raw!r} is neither a list nor a list the scale config names")
        new_points = []
        for coords, overrides in points:
            for value in values:
                label, val = (value["label"], value["value"]) if isinstance(value, dict) and "label" in value \
                    else (value, value)
                c, o = dict(coords), copy.deepcopy(overrides)
                c[key] = label
                if key == "std":
                    o["input_scale"] = {"target_std": float(val)}
                else:
                    o[key] = val
                new_points.append((c, o))
        points = new_points
    return points


def _cell_id(block: str, coords: Mapping[str, Any]) -> str:
    parts = [block] + [f"{k}{_slug_value(v)}" if k == "std" else _slug_value(v) for k, v in coords.items()]
    return "-".join(parts)


def build_run(recipe: Mapping[str, Any], overrides: Mapping[str, Any], protocol: Mapping[str, Any],
              seed: int, latents: str) -> dict[str, Any]:
    """A complete run config (pipeline.runconfig keys) from recipe + overrides + protocol."""
    merged: dict[str, Any] = {**copy.deepcopy(dict(recipe)), **copy.deepcopy(dict(overrides))}
    network = copy.deepcopy(protocol["network"])
    network.setdefault("num_classes", protocol["_num_classes"])
    network.setdefault("in_channels", protocol["_latent_channels"])
    network.setdefault("input_size", protocol["_latent_size"])
    if "learn_sigma" in merged:
        network["learn_sigma"] = bool(merged.pop("learn_sigma"))
    # The family's reference time input on flows (models.families), written whenever it is not DiT's `unit`, so
    # a U-ViT / LDM-UNet run's identity says what its network is fed; a protocol may set another (assumed:).
    if "time_input" not in network and reference_time_input(network["name"]) != "unit":
        network["time_input"] = reference_time_input(network["name"])
    input_scale = merged.pop("input_scale", "baseline")
    if input_scale == "baseline":
        input_scale = copy.deepcopy(protocol["baseline_input_scale"])
    run = {
        "network": network,
        "schedule": merged.pop("schedule", copy.deepcopy(RUN_DEFAULTS["schedule"])),
        "prediction": merged.pop("prediction", copy.deepcopy(RUN_DEFAULTS["prediction"])),
        "input_scale": input_scale,
        "timesteps": merged.pop("timesteps", copy.deepcopy(RUN_DEFAULTS["timesteps"])),
        "loss_weight": merged.pop("loss_weight", copy.deepcopy(RUN_DEFAULTS["loss_weight"])),
        "direction_loss": bool(merged.pop("direction_loss", copy.deepcopy(RUN_DEFAULTS["direction_loss"]))),
        "direction_weight": float(merged.pop("direction_weight", copy.deepcopy(RUN_DEFAULTS["direction_weight"]))),
        "optimizer": copy.deepcopy(protocol["optimizer"]),
        "global_batch": int(protocol["global_batch"]),
        "ema_decay": float(protocol["ema_decay"]),
        "seed": int(seed),
        "flip": bool(protocol["flip"]),
        "precision": protocol["precision"],
        "tf32": bool(protocol["tf32"]),
        "latents": latents,
    }
    if merged:
        raise ValueError(f"unknown recipe keys: {sorted(merged)}")
    return run


# Channel count and spatial size of what the network sees, per autoencoder kind.
def _latent_geometry(autoencoder: Mapping[str, Any], resolution: int) -> tuple[int, int]:
    if autoencoder["kind"] == "identity":
        return 1, resolution
    return 4, resolution // 8


def scale_of(scale_cfg: Mapping[str, Any]) -> str:
    """The name of a loaded scale config (its folders: pipeline.paths)."""
    return str(scale_cfg.get("scale") or scale_cfg["scale_name"])


def latents_dir(protocol: Mapping[str, Any], scale: str) -> str:
    """Where a protocol's latents live: one folder per (data set, resolution, autoencoder, flip) in the scale's
    work folder."""
    flip = "flip" if protocol["flip"] else "noflip"
    return at_scale(f"work/latents/{protocol['dataset']}-{protocol['resolution']}px-{protocol['autoencoder']}-"
                    f"{flip}", scale)


def reference_path(protocol: Mapping[str, Any], scale: str) -> str:
    """The reference npz a protocol's metrics compare against.

    Always a path under work/<scale>/: a rule builds it from the data set or links the ADM batch named in the
    scale's ``references``, so a dry run never needs the real file.
    """
    return at_scale(f"work/reference/{protocol['reference']}.npz", scale)


def _protocol(scale_cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    protocol = copy.deepcopy(scale_cfg["protocols"][name])
    dataset = scale_cfg["datasets"][protocol["dataset"]]
    autoencoder = scale_cfg["autoencoders"][protocol["autoencoder"]]
    channels, size = _latent_geometry(autoencoder, int(protocol["resolution"]))
    protocol.update(_num_classes=int(dataset["num_classes"]), _latent_channels=channels, _latent_size=size)
    protocol.setdefault("milestone_scale", 1.0)
    protocol.setdefault("segment_every", 0)
    return protocol


def scaled_step(paper_step: int, protocol: Mapping[str, Any]) -> int:
    """A paper milestone at this scale (at least 1 step)."""
    return max(1, round(paper_step * float(protocol["milestone_scale"])))


def load_experiments(path: Path = EXPERIMENTS_FILE) -> dict[str, Any]:
    """The experiment registry, schema-checked (:func:`pipeline.config.load_experiments`)."""
    return config_files.load_experiments(path)


def expand(experiments: Mapping[str, Any], scale_cfg: Mapping[str, Any]) -> Registry:
    """Expand the registry for one scale."""
    recipes = experiments["recipes"]
    protocols = {name: _protocol(scale_cfg, name) for name in scale_cfg["protocols"]}
    runs: dict[str, dict[str, Any]] = {}
    run_protocol: dict[str, str] = {}
    needed: dict[str, set[int]] = {}
    cells: dict[str, list[Cell]] = {}
    imported: dict[str, dict[str, Any]] = {}
    official = scale_cfg.get("official_checkpoints") or {}
    scale_name = scale_of(scale_cfg)

    def add_cell(exp: str, block: Mapping[str, Any], cell_id: str, recipe_name: str, overrides: Mapping,
                 milestone: Any, cfg: Any, metrics: list[str], coords: dict, paper: dict,
                 cfg_channels: Any = None, paper_also: list | None = None, sampler_name: str | None = None,
                 citation: str = "") -> None:
        pname = block["protocol"]
        protocol = protocols[pname]
        checkpoint = block.get("checkpoint")
        if checkpoint is not None and checkpoint not in official:
            raise ValueError(f"{exp}/{cell_id}: official_checkpoints.{checkpoint} is not set at this scale (the "
                             f"published file's path)")
        if checkpoint is not None and milestone not in (None, "final"):
            raise ValueError(f"{exp}/{cell_id}: milestone: a cell of a published checkpoint evaluates its final "
                             f"step only")
        paper_step = round(protocol["steps"] / protocol["milestone_scale"]) if milestone in (None, "final") \
            else int(milestone)
        step = scaled_step(paper_step, protocol) if milestone not in (None, "final") else int(protocol["steps"])
        if step > int(protocol["steps"]):
            raise ValueError(f"{exp}/{cell_id}: milestone {milestone} is past protocol {pname}'s last step")
        for seed in protocol["seeds"]:
            run = build_run(recipes[recipe_name], overrides, protocol, seed, latents_dir(protocol, scale_name))
            if checkpoint is not None:
                run = published_run(f"{exp}/{cell_id}", checkpoint, run, protocol, official[checkpoint],
                                    scale_cfg.get("stand_ins") or {})
            run_id = f"{run_slug(pname, run)}-{config_hash(run)}"
            spec = None if checkpoint is None else {"preset": checkpoint, "layout": PRESETS[checkpoint]["layout"],
                                                    "source": official[checkpoint]}
            if run_id in runs and imported.get(run_id) != spec:
                raise ValueError(f"{exp}/{cell_id}: its run {run_id} is also another cell's, with another "
                                 f"checkpoint ({imported.get(run_id)} vs {spec}); give the cells distinct recipes")
            runs[run_id] = run
            run_protocol[run_id] = pname
            needed.setdefault(run_id, set()).add(step)
            if spec is not None:
                imported[run_id] = spec
            sampler_key = sampler_name or ("ddpm" if run["schedule"].startswith("ddpm") else "flow")
            if sampler_key not in protocol["samplers"]:
                raise ValueError(f"{exp}/{cell_id}: sampler {sampler_key!r} is not one of protocol {pname}'s "
                                 f"samplers ({', '.join(protocol['samplers'])})")
            sampler = dict(protocol["samplers"][sampler_key])
            if run["network"].get("learn_sigma"):
                sampler.pop("variance", None)  # learned sigma: the fixed variance plays no part
            scale = float(protocol["cfg"] if cfg is None else cfg)
            channels = protocol.get("cfg_channels", 3) if cfg_channels is None else cfg_channels
            cells.setdefault(exp, []).append(Cell(
                experiment=exp, block=block["name"], id=cell_id, seed=int(seed), run_id=run_id, protocol=pname,
                milestone=paper_step, step=step, sampler=sampler,
                cfg=scale, num_samples=int(protocol["num_samples"]),
                metrics=tuple(metrics), scale=scale_name, coords=coords, paper=paper,
                cfg_channels=guided_channels(scale, channels),
                paper_also=copy.deepcopy(list(paper_also or [])), citation=citation,
            ))

    for exp, spec in experiments["experiments"].items():
        cells.setdefault(exp, [])
        if spec["kind"] == "grid":
            continue
        for block in spec["blocks"]:
            if "cells" in block:
                for c in block["cells"]:
                    add_cell(exp, block, c["id"], c["recipe"], c.get("overrides", {}), c.get("milestone"),
                             c.get("cfg"), c["metrics"], {}, dict(c.get("paper", {})), c.get("cfg_channels"),
                             c.get("paper_also"), c.get("sampler"), c.get("citation", ""))
            else:
                for coords, sweep_overrides in _sweep_points(block.get("sweep", {}), scale_cfg):
                    overrides = {**copy.deepcopy(block.get("overrides", {})), **sweep_overrides}
                    add_cell(exp, block, _cell_id(block["name"], coords), block["recipe"], overrides,
                             block.get("milestone"), block.get("cfg"), block["metrics"], coords, {})

    milestones = {}
    for run_id, steps in needed.items():
        # A run imported from a published file has one milestone (nothing is trained, so no segments).
        every = int(protocols[run_protocol[run_id]]["segment_every"]) if _is_trained(imported, run_id) else 0
        top = max(steps)
        bounds = set(range(every, top, every)) if every > 0 else set()
        milestones[run_id] = sorted(steps | bounds)
    return Registry(scale=scale_name, runs=runs, run_protocol=run_protocol,
                    milestones=milestones, cells=cells, experiments=dict(experiments["experiments"]),
                    protocols=protocols, imported=imported)


def grid_spec(registry: Registry, experiments: Mapping[str, Any], scale_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The sample-grid experiment (Figs. 8-10): run, step, classes, cfg; adds the run if needed."""
    block = experiments["experiments"]["grids"]["blocks"][0]
    protocol = registry.protocols[block["protocol"]]
    seed = protocol["seeds"][0]
    run = build_run(experiments["recipes"][block["recipe"]], {}, protocol, seed,
                    latents_dir(protocol, registry.scale))
    run_id = f"{run_slug(block['protocol'], run)}-{config_hash(run)}"
    step = scaled_step(int(block["milestone"]), protocol)
    if run_id not in registry.runs:
        registry.runs[run_id] = run
        registry.run_protocol[run_id] = block["protocol"]
    registry.milestones[run_id] = sorted(set(registry.milestones.get(run_id, [])) | {step})
    return {"run_id": run_id, "step": step, "milestone": int(block["milestone"]), "cfg": float(block["cfg"]),
            "classes": list(_resolve(block["classes"], scale_cfg)), "per_class": int(scale_cfg["grid_per_class"]),
            "sampler": protocol["samplers"]["flow"], "seed": seed,
            "cfg_channels": guided_channels(float(block["cfg"]), protocol.get("cfg_channels", 3))}


def load_registry(scale_cfg: Mapping[str, Any], path: Path = EXPERIMENTS_FILE) -> tuple[Registry, dict[str, Any]]:
    """Read, expand and return (registry, grid spec) for a scale config."""
    experiments = load_experiments(path)
    registry = expand(experiments, scale_cfg)
    grid = grid_spec(registry, experiments, scale_cfg)
    return registry, grid
