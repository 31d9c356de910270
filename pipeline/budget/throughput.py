"""Devices, the published calibration points and measured rates: config/throughput.yaml plus an optional
benchmark file (``python -m benchmarks.run_all``).

Time = FLOPs / (devices × peak[precision] × utilisation[precision]). Peaks are vendor figures; utilisations
are derived from published DiT-XL/2 training throughputs (:meth:`Throughput.calibration_points`) unless a
benchmark file measured them on its device.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from pipeline.budget.flops import train_flops_per_image, vae_flops

ROOT = Path(__file__).resolve().parents[2]
THROUGHPUT_FILE = ROOT / "config" / "throughput.yaml"


@dataclass(frozen=True)
class Device:
    """A GPU type or CPU: peak FLOP/s per precision (TFLOP/s), optional measured utilisation and overhead."""

    name: str
    kind: str
    peak_tflops: dict[str, float]
    utilisation: dict[str, float] = field(default_factory=dict)
    step_overhead_s: float = 0.0

    def precision_key(self, precision: str, tf32: bool) -> str:
        """``bf16``; fp32 runs use ``tf32`` on a GPU that has it when TF32 is on, else ``fp32``."""
        if precision == "bf16" and "bf16" in self.peak_tflops:
            return "bf16"
        if self.kind == "gpu" and tf32 and "tf32" in self.peak_tflops:
            return "tf32"
        return "fp32"

    def peak(self, key: str) -> float:
        """Peak FLOP/s for a precision key."""
        if key not in self.peak_tflops:
            raise KeyError(f"device {self.name} has no {key} peak; known: {sorted(self.peak_tflops)}")
        return float(self.peak_tflops[key]) * 1e12


def _device(name: str, entry: Mapping[str, Any]) -> Device:
    """A device from a table or benchmark entry (its ``source`` is a citation for readers, not read)."""
    return Device(name=name, kind=str(entry.get("kind", "gpu")),
                  peak_tflops={k: float(v) for k, v in entry["peak_tflops"].items()},
                  utilisation={k: float(v) for k, v in (entry.get("utilisation") or {}).items()},
                  step_overhead_s=float(entry.get("step_overhead_s", 0.0)))


def _calibration_step_flops(entry: Mapping[str, Any]) -> float:
    """FLOPs of one training step of a calibration or check entry (SD-VAE encoding included if on the fly)."""
    per_image = train_flops_per_image(entry["network"], bool(entry.get("grad_checkpointing", False)))
    if entry.get("vae_encode_resolution"):
        per_image += vae_flops(int(entry["vae_encode_resolution"]), "encode")
    return float(entry["global_batch"]) * per_image


def _network_identity(spec: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes two ``network`` blocks the same for a measured rate: name, geometry and learned σ."""
    return (spec["name"], int(spec.get("input_size", 0)), int(spec.get("in_channels", 0)),
            bool(spec.get("learn_sigma", False)))


@dataclass
class Throughput:
    """Devices, the published calibration points and assumptions (config/throughput.yaml), plus an optional
    benchmark file's measured device and exact rates."""

    devices: dict[str, Device]
    default_device: str
    calibration: list[dict[str, Any]]
    checks: list[dict[str, Any]]
    assumptions: dict[str, Any]
    measured_train: list[dict[str, Any]] = field(default_factory=list)
    measured_sample: list[dict[str, Any]] = field(default_factory=list)
    measured_device: str | None = None
    measured_source: str | None = None
    sources: list[str] = field(default_factory=list)

    def calibration_points(self) -> list[dict[str, Any]]:
        """Each published throughput turned into achieved FLOP/s per GPU and utilisation of the peak."""
        points = []
        for entry in self.calibration:
            device = self.devices[entry["device"]]
            step_flops = _calibration_step_flops(entry)
            achieved = float(entry["it_s"]) * step_flops / int(entry["gpus"])
            peak = device.peak(entry["precision"])
            points.append({"id": entry["id"], "precision": entry["precision"], "device": device.name,
                           "gpus": int(entry["gpus"]), "it_s": float(entry["it_s"]),
                           "step_tflop": step_flops / 1e12, "achieved_tflops_per_gpu": achieved / 1e12,
                           "peak_tflops": peak / 1e12, "utilisation": achieved / peak,
                           "source": entry["source"]})
        return points

    @cached_property
    def derived_utilisation(self) -> dict[str, tuple[float, str]]:
        """Utilisation per precision: geometric mean of the calibration points of that precision.

        Computed once per table (it counts the FLOPs of the calibration networks).
        """
        groups: dict[str, list[dict[str, Any]]] = {}
        for point in self.calibration_points():
            groups.setdefault(point["precision"], []).append(point)
        return {key: (math.exp(sum(math.log(p["utilisation"]) for p in pts) / len(pts)),
                      "derived from " + ", ".join(p["id"] for p in pts))
                for key, pts in groups.items()}

    def utilisation(self, device: Device, key: str) -> tuple[float, str]:
        """(utilisation, where it comes from) for a device and precision key."""
        if key in device.utilisation:
            return device.utilisation[key], f"utilisation measured on {device.name}"
        if key in self.derived_utilisation:
            return self.derived_utilisation[key]
        raise KeyError(f"no utilisation for {key} on {device.name}: add a calibration entry or a measured "
                       f"file")

    def check_predictions(self) -> list[dict[str, Any]]:
        """Published end-to-end figures versus what this model predicts for them."""
        rows = []
        for entry in self.checks:
            device = self.devices[entry["device"]]
            util, _ = self.utilisation(device, entry["precision"])
            capacity = int(entry["gpus"]) * device.peak(entry["precision"]) * util
            step_s = _calibration_step_flops(entry) / capacity
            predicted = step_s * int(entry["steps"]) / 3600
            rows.append({"id": entry["id"], "predicted_hours": predicted,
                         "reported_hours": float(entry["reported_hours"]),
                         "ratio": predicted / float(entry["reported_hours"]), "source": entry["source"]})
        return rows

    def dopri5_nfe(self, atol: float, rtol: float) -> tuple[float, str]:
        """(mean NFE of adaptive dopri5 at these tolerances, where it comes from): measured or assumed."""
        table = self.assumptions.get("dopri5_nfe", {})
        key = f"{atol:g}/{rtol:g}"
        if key in table:
            return float(table[key]), f"dopri5 NFE at atol/rtol {key}: {table[key]:g}"
        return float(table.get("default", 250)), f"dopri5 NFE {table.get('default', 250):g} (assumed default)"

    def find_measured(self, entries: list[dict[str, Any]], device: Device, spec: Mapping[str, Any], key: str,
                      batch: float | None = None) -> dict[str, Any] | None:
        """An exact measured rate for (device, network, geometry, precision) among ``entries``, if any;
        with ``batch``, only one measured at that per-process batch (training rates)."""
        want = _network_identity(spec)
        for entry in entries:
            if (entry.get("device") == device.name and _network_identity(entry["network"]) == want
                    and (batch is None or float(entry["batch"]) == float(batch)) and entry["precision"] == key):
                return entry
        return None


def _merge_assumptions(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, one level deep (a mapping updates the mapping it replaces)."""
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, Mapping) else value
    return merged


def load_throughput(path: str | Path = THROUGHPUT_FILE, measured: str | Path | None = None) -> Throughput:
    """The throughput table, plus a benchmark file's measured device and rates (which take precedence)."""
    table = yaml.safe_load(Path(path).read_text())
    devices = {name: _device(name, entry) for name, entry in table["devices"].items()}
    tp = Throughput(devices=devices, default_device=str(table["default_device"]),
                    calibration=list(table.get("calibration", [])), checks=list(table.get("checks", [])),
                    assumptions=dict(table.get("assumptions", {})), sources=[str(path)])
    if measured is not None:
        data = json.loads(Path(measured).read_text())
        section = data.get("budget_calibration", data)
        device = _device(section["device"]["name"], section["device"])
        tp.devices[device.name] = device
        tp.measured_device = device.name
        tp.measured_source = str(measured)
        tp.measured_train = [{**e, "device": device.name} for e in section.get("train", [])]
        tp.measured_sample = [{**e, "device": device.name} for e in section.get("sample", [])]
        tp.assumptions = _merge_assumptions(tp.assumptions, section.get("assumptions", {}))
        tp.sources.append(str(measured))
    return tp
