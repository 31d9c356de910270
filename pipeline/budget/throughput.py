"""Devices, the published throughputs the step model is fitted to, and measured rates: config/throughput.yaml
plus an optional benchmark file (``python -m benchmarks.run_all``).

Time = FLOPs / (devices × peak[precision] × utilisation) (+ the per-step costs of
:mod:`pipeline.budget.step_model` for training on GPUs). Peaks are vendor figures; utilisations are fitted to
published DiT-XL/2 training throughputs (:attr:`Throughput.step_model`) unless a benchmark file measured them
on its device.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from pipeline.budget.step_model import StepModel, fit_step_model, published_and_predicted, time_ratio

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
    memory_gbps: float = 0.0          # memory bandwidth (optimizer and EMA passes); 0: not modelled
    allreduce_gbps: float = 0.0       # NCCL all-reduce bus bandwidth between the GPUs of one node

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
                  step_overhead_s=float(entry.get("step_overhead_s", 0.0)),
                  memory_gbps=float(entry.get("memory_gbps", 0.0)),
                  allreduce_gbps=float(entry.get("allreduce_gbps", 0.0)))


def _network_identity(spec: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes two ``network`` blocks the same for a measured rate: name, geometry and learned σ."""
    return (spec["name"], int(spec.get("input_size", 0)), int(spec.get("in_channels", 0)),
            bool(spec.get("learn_sigma", False)))


@dataclass
class Throughput:
    """Devices, the published throughputs (calibration, checks) and assumptions (config/throughput.yaml), plus
    an optional benchmark file's measured device and exact rates."""

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

    @cached_property
    def step_model(self) -> StepModel:
        """The training-step model fitted to the ``calibration`` entries (pipeline.budget.step_model).

        Computed once per table (it counts the FLOPs of the calibration networks)."""
        return fit_step_model(self.calibration, self.devices, self.assumptions.get("step_model", {}))

    def utilisation(self, device: Device, key: str, tokens_per_gpu: float | None = None) -> tuple[float, str]:
        """(utilisation, where it comes from) for a device, precision key and tokens per GPU (``None``: a
        convolution network)."""
        if key in device.utilisation:
            return device.utilisation[key], f"utilisation measured on {device.name}"
        model = self.step_model
        if key not in model.utilisation:
            raise KeyError(f"no utilisation for {key} on {device.name}: add a calibration entry or a measured "
                           f"file")
        where = "convolutions" if tokens_per_gpu is None else f"{tokens_per_gpu:,.0f} tokens per GPU"
        return (model.compute_utilisation(key, tokens_per_gpu),
                f"fitted step model, {where}")

    @cached_property
    def flat_step_model(self) -> StepModel:
        """The same fit with the token exponent held at 0 (no penalty for few tokens per GPU): the optimistic
        reading the data cannot rule out, shown beside the default in the validation and the budget range."""
        return self.variant(alpha=0.0).step_model

    def variant(self, **step_model: float) -> Throughput:
        """This table with ``assumptions.step_model`` updated (e.g. ``alpha=0`` or ``min_tokens=0``): refitted."""
        assumptions = {**self.assumptions, "step_model": {**self.assumptions.get("step_model", {}), **step_model}}
        return replace(self, assumptions=assumptions)

    def validation(self) -> list[dict[str, Any]]:
        """Predicted against published for every source: the fitted entries, the held-out checks (each with
        the ratio under :attr:`flat_step_model` too), and the sources not used."""
        rows = []
        for role, entries in (("fit", self.calibration), ("check", self.checks)):
            for entry in entries:
                published, predicted, unit = published_and_predicted(entry, self.devices, self.step_model)
                flat = published_and_predicted(entry, self.devices, self.flat_step_model)
                rows.append({"id": entry["id"], "role": role, "device": entry["device"], "gpus": int(entry["gpus"]),
                             "precision": entry["precision"], "unit": unit, "published": published,
                             "predicted": predicted, "ratio": time_ratio(published, predicted, unit),
                             "flat_ratio": time_ratio(*flat),
                             "explained": bool(entry.get("outside_range_explained", False)),
                             "note": str(entry.get("note", "")).strip(), "source": str(entry["source"]).strip()})
        for entry in self.assumptions.get("unused_sources", []):
            rows.append({"id": entry["id"], "role": "not used", "device": entry.get("device", ""),
                         "gpus": entry.get("gpus", ""), "precision": entry.get("precision", ""), "unit": "",
                         "published": None, "predicted": None, "ratio": None, "flat_ratio": None,
                         "explained": False, "note": str(entry["note"]).strip(),
                         "source": str(entry["source"]).strip()})
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
