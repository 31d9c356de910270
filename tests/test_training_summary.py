"""results/<scale>/training.csv (issue 20 item 3, "shown in the report"): per-run throughput from train.jsonl."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from core.errors import InputError
from pipeline.training_summary import main, summarise

ROOT = Path(__file__).resolve().parents[1]


def write_log(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_a_run_row_holds_the_medians_of_its_log_windows(tmp_path):
    gpu = write_log(tmp_path / "a" / "log", [
        {"step": 100, "it_s": 2.0, "images_s": 512.0, "images_s_per_device": 64.0, "mfu": 0.40, "max_mem_mb": 900.0,
         "world_size": 8, "precision_key": "bf16", "mem_kind": "cuda_max_allocated", "train_tflop_per_image": 0.7},
        {"step": 200, "it_s": 3.0, "images_s": 768.0, "images_s_per_device": 96.0, "mfu": 0.60, "max_mem_mb": 950.0,
         "world_size": 8, "precision_key": "bf16", "mem_kind": "cuda_max_allocated", "train_tflop_per_image": 0.7},
        {"step": 300, "it_s": 4.0, "images_s": 1024.0, "images_s_per_device": 128.0, "mfu": 0.80, "max_mem_mb": 920.0,
         "world_size": 8, "precision_key": "bf16", "mem_kind": "cuda_max_allocated", "train_tflop_per_image": 0.7}])
    row = summarise("run-a", gpu)
    assert row["last_step"] == 300 and row["windows"] == 3 and row["world_size"] == 8
    assert row["it_s"] == 3.0 and row["images_s_per_device"] == 96.0 and row["mfu"] == pytest.approx(0.6)
    assert row["peak_memory_mb"] == 950.0
    cpu = write_log(tmp_path / "b" / "log", [{"step": 5, "it_s": 10.0, "images_s": 80.0, "max_mem_mb": 300.0}])
    out = tmp_path / "training.csv"
    assert main(["--run-logs", f"run-b={cpu}", f"run-a={gpu}", "--out", str(out)]) == 0
    table = pd.read_csv(out, comment="#")
    assert list(table["run"]) == ["run-a", "run-b"] and pd.isna(table.loc[1, "mfu"])   # no known peak on a CPU
    assert out.read_text().startswith("# provenance: ") and str(tmp_path) not in out.read_text()


def test_a_missing_log_is_one_line_and_writes_nothing(tmp_path):
    with pytest.raises(InputError, match="no training log"):
        summarise("x", tmp_path / "nowhere")
    proc = subprocess.run([sys.executable, "-m", "pipeline.training_summary", "--run-logs", f"x={tmp_path}",
                           "--out", str(tmp_path / "t.csv")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no training log" in proc.stderr
    assert not (tmp_path / "t.csv").exists()
