"""Hostile and mistaken input to every CLI: one ``error:`` line naming the file or key, exit ≠ 0, nothing written.

Each case runs a stage's ``main`` through :func:`core.errors.run_cli` (what ``python -m`` does) in this
process; a few run as real subprocesses to check the wiring, ``--debug`` and that a hostile checkpoint never
executes anything. "Nothing written" means the case's folder holds the same files after the run as before
(hidden ``.*.lock`` files and the empty folders that hold them aside: a lock holds no result and is reused by
the next run).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from core.errors import InputError, run_cli, safe_torch_load
from core.io import REPO_ROOT, atomic_write, remove_stale_temporaries
from core.locks import lock_path, output_lock

PYTHON = sys.executable


class _Hostile:
    """Pickles to a call of ``os.system``: loading it without ``weights_only`` would run a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good and bad input files shared by the cases (built once; cases never write into this folder)."""
    from pipeline.latents import precompute_latents
    from tests.test_sample import _tiny_dit_checkpoint

    root = tmp_path_factory.mktemp("inputs")
    made: dict[str, Path] = {}
    made["latents"] = root / "latents"
    precompute_latents({"dataset": "digits", "split": "train"}, {"name": "identity"}, made["latents"],
                       shard_size=512, progress=False)
    made["ckpt"] = _tiny_dit_checkpoint(root / "good.pt", "flow-linear", "velocity", False)
    made["random_bytes"] = root / "random.pt"
    made["random_bytes"].write_bytes(np.random.default_rng(0).bytes(4096))
    made["truncated"] = root / "truncated.pt"
    made["truncated"].write_bytes(made["ckpt"].read_bytes()[:2000])
    made["hostile"] = root / "hostile.pt"
    made["marker"] = root / "PWNED"
    buffer = io.BytesIO()
    torch.save({"format": 1, "payload": _Hostile(made["marker"])}, buffer)
    made["hostile"].write_bytes(buffer.getvalue())
    assert not made["marker"].exists()
    made["text"] = root / "notes.txt"
    made["text"].write_text("not an npz\n")
    made["bad_json"] = root / "bad.json"
    made["bad_json"].write_text("{network: DiT")
    made["list_json"] = root / "list.json"
    made["list_json"].write_text("[1, 2]")
    made["bad_yaml"] = root / "bad.yaml"
    made["bad_yaml"].write_text("claims: [unclosed\n")
    made["no_arr0"] = root / "no_arr0.npz"
    np.savez(made["no_arr0"], images=np.zeros((4, 8, 8, 1), np.uint8))
    made["digits_ref"] = root / "ref.npz"
    rng = np.random.default_rng(1)
    np.savez(made["digits_ref"], arr_0=rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8),
             arr_1=rng.integers(0, 10, 16))
    folder = root / "images" / "class0"
    folder.mkdir(parents=True)
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "good.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG body")
    made["images"] = root / "images"
    return made


def good_run(files: dict[str, Path], **overrides) -> dict:
    run = {"network": {"name": "DiT-T/2", "input_size": 8, "in_channels": 1, "num_classes": 10, "learn_sigma": False},
           "schedule": "flow-linear", "prediction": "velocity", "input_scale": {"target_std": 0.82},
           "optimizer": {"lr": 1e-3}, "global_batch": 8, "ema_decay": 0.99, "seed": 0,
           "latents": str(files["latents"])}
    for key, value in overrides.items():
        block, _, sub = key.partition(".")
        if sub:
            run[block] = {**run.get(block, {}), sub: value}
        else:
            run[key] = value
    return run


# ------------------------------------------------------------------------------------------------ harness


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".lock"))}


def call(main: Callable, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """``(exit code, stderr)`` of ``run_cli(main, argv)``, argparse's and SystemExit's exits included."""
    capsys.readouterr()
    try:
        code = run_cli(main, argv)
        err = capsys.readouterr().err
    except SystemExit as stop:
        err = capsys.readouterr().err
        if isinstance(stop.code, str):
            code, err = 1, err + stop.code + "\n"
        else:
            code = int(stop.code or 0)
    return code, err


def assert_one_error_line(code: int, err: str, *needles: str) -> str:
    """Exit ≠ 0, no traceback, one error line (the last) holding every needle; returns that line."""
    assert code != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert "weights_only=False" not in err
    return errors[0]


@dataclass(frozen=True)
class Case:
    """One bad input: the stage, its arguments (``{name}`` fills in from the shared files or the case folder
    ``{out}``), and what the error line must name."""

    id: str
    module: str
    argv: tuple[str, ...]
    needles: tuple[str, ...]
    run_config: dict | None = None  # written to {out}/run.json before the call


def _fill(text: str, files: dict[str, Path], out: Path) -> str:
    return text.format(out=out, **{k: str(v) for k, v in files.items()})


TRAIN = ("--start", "0", "--stop", "2", "--out", "{out}/m.pt", "--rolling-dir", "{out}/rolling",
         "--log-dir", "{out}/logs", "--device", "cpu")
RUN = ("--run-config", "{out}/run.json", *TRAIN)
SAMPLE = ("--autoencoder", '{{"name": "identity", "channels": 1}}',
          "--num-samples", "4", "--out", "{out}/s.npz", "--device", "cpu", "--sampler", "euler", "--steps", "2")
CELL_SPEC = json.dumps([{
    "experiment": "fig2", "block": "b", "id": "c", "seed": 0, "run_id": "r", "protocol": "p", "milestone": 1,
    "step": 1, "sampler": {"kind": "euler"}, "cfg": 1.0, "num_samples": 4, "metrics": ["fid"],
    "scale": "mini"}]).replace(
    "{", "{{").replace("}", "}}")
EVAL = ("--extractor", "digits", "--out", "{out}/m.json", "--device", "cpu")

CASES: list[Case] = [
    # pipeline.train: the run config
    Case("train-missing-run-config", "pipeline.train", ("--run-config", "{out}/none.json", *TRAIN),
         ("none.json", "not found")),
    Case("train-run-config-not-json", "pipeline.train", ("--run-config", "{bad_json}", *TRAIN),
         ("bad.json", "JSON")),
    Case("train-run-config-a-list", "pipeline.train", ("--run-config", "{list_json}", *TRAIN),
         ("list.json", "JSON object")),
    Case("train-run-json-not-json", "pipeline.train", ("--run-json", "{{oops", *TRAIN), ("--run-json",)),
    Case("train-unknown-key", "pipeline.train", RUN, ("lerning_rate",), {"lerning_rate": 1e-4}),
    Case("train-unknown-optimizer-key", "pipeline.train", RUN, ("optimizer.lrr",), {"optimizer.lrr": 1e-4}),
    Case("train-target-std-zero", "pipeline.train", RUN, ("target_std",), {"input_scale.target_std": 0}),
    Case("train-target-std-negative", "pipeline.train", RUN, ("target_std",), {"input_scale.target_std": -1.0}),
    Case("train-global-batch-zero", "pipeline.train", RUN, ("global_batch",), {"global_batch": 0}),
    Case("train-ema-decay-above-one", "pipeline.train", RUN, ("ema_decay",), {"ema_decay": 1.5}),
    Case("train-lr-negative", "pipeline.train", RUN, ("optimizer.lr",), {"optimizer.lr": -1.0}),
    Case("train-unknown-schedule", "pipeline.train", RUN, ("schedule",), {"schedule": "ddpm-quadratic"}),
    Case("train-unknown-network", "pipeline.train", RUN, ("DiT-Q/9",), {"network.name": "DiT-Q/9"}),
    Case("train-no-latents-folder", "pipeline.train", RUN, ("nowhere",), {"latents": "{out}/nowhere"}),
    # pipeline.train: the segment
    Case("train-stop-before-start", "pipeline.train",
         ("--run-config", "{out}/run.json", "--start", "5", "--stop", "3", *TRAIN[4:]), ("start",), {}),
    Case("train-resume-without-init", "pipeline.train",
         ("--run-config", "{out}/run.json", "--start", "4", "--stop", "8", *TRAIN[4:]), ("--init",), {}),
    Case("train-corrupt-init", "pipeline.train",
         ("--run-config", "{out}/run.json", "--start", "4", "--stop", "8", "--init", "{random_bytes}",
          *TRAIN[4:]), ("random.pt", "not a readable checkpoint"), {}),
    Case("train-log-every-zero", "pipeline.train", (*RUN, "--log-every", "0"), ("--log-every",), {}),
    # pipeline.sample
    Case("sample-missing-ckpt", "pipeline.sample", ("--ckpt", "{out}/none.pt", *SAMPLE), ("none.pt",)),
    Case("sample-random-bytes-ckpt", "pipeline.sample", ("--ckpt", "{random_bytes}", *SAMPLE),
         ("random.pt", "not a readable checkpoint")),
    Case("sample-truncated-ckpt", "pipeline.sample", ("--ckpt", "{truncated}", *SAMPLE),
         ("truncated.pt", "not a readable checkpoint")),
    Case("sample-hostile-ckpt", "pipeline.sample", ("--ckpt", "{hostile}", *SAMPLE),
         ("hostile.pt", "not a readable checkpoint")),
    Case("sample-metrics-without-reference", "pipeline.sample",
         ("--ckpt", "{ckpt}", *SAMPLE, "--metrics-out", "{out}/m.json"), ("--reference",)),
    Case("sample-missing-reference", "pipeline.sample",
         ("--ckpt", "{ckpt}", *SAMPLE, "--metrics-out", "{out}/m.json", "--reference", "{out}/none.npz"),
         ("none.npz",)),
    Case("sample-zero-samples", "pipeline.sample", ("--ckpt", "{ckpt}", *SAMPLE, "--num-samples", "0"),
         ("--num-samples",)),
    Case("sample-zero-micro-batch", "pipeline.sample", ("--ckpt", "{ckpt}", *SAMPLE, "--micro-batch", "0"),
         ("--micro-batch",)),
    # eval.evaluate
    Case("evaluate-missing-reference", "eval.evaluate", ("{out}/none.npz", "{digits_ref}", *EVAL),
         ("none.npz", "does not exist")),
    Case("evaluate-missing-samples", "eval.evaluate", ("{digits_ref}", "{out}/none.npz", *EVAL),
         ("none.npz", "does not exist")),
    Case("evaluate-samples-not-npz", "eval.evaluate", ("{digits_ref}", "{text}", *EVAL), ("notes.txt",)),
    Case("evaluate-samples-without-arr0", "eval.evaluate", ("{digits_ref}", "{no_arr0}", *EVAL),
         ("no_arr0.npz",)),
    Case("evaluate-missing-weights", "eval.evaluate",
         ("{digits_ref}", "{digits_ref}", *EVAL, "--weights", "{out}/none.pt"), ("none.pt",)),
    Case("evaluate-corrupt-weights", "eval.evaluate",
         ("{digits_ref}", "{digits_ref}", *EVAL, "--weights", "{random_bytes}"), ("random.pt",)),
    Case("evaluate-hostile-weights", "eval.evaluate",
         ("{digits_ref}", "{digits_ref}", *EVAL, "--weights", "{hostile}"), ("hostile.pt",)),
    Case("evaluate-zero-batch", "eval.evaluate", ("{digits_ref}", "{digits_ref}", *EVAL, "--batch-size", "0"),
         ("--batch-size",)),
    # eval.digits_classifier
    Case("classifier-missing-train", "eval.digits_classifier",
         ("--train", "{out}/none.npz", "--test", "{digits_ref}", "--out", "{out}/c.pt", "--report", "{out}/c.json"),
         ("none.npz",)),
    Case("classifier-train-not-npz", "eval.digits_classifier",
         ("--train", "{text}", "--test", "{digits_ref}", "--out", "{out}/c.pt", "--report", "{out}/c.json"),
         ("notes.txt",)),
    Case("classifier-zero-epochs", "eval.digits_classifier",
         ("--train", "{digits_ref}", "--test", "{digits_ref}", "--out", "{out}/c.pt", "--report", "{out}/c.json",
          "--epochs", "0"), ("--epochs",)),
    # pipeline.data / pipeline.latents
    Case("data-missing-image-folder", "pipeline.data",
         ("reference", "--dataset", "imagefolder", "--root", "{out}/none", "--image-size", "8",
          "--out", "{out}/r.npz"), ("none",)),
    Case("data-corrupt-jpeg", "pipeline.data",
         ("reference", "--dataset", "imagefolder", "--root", "{images}", "--image-size", "8", "--workers", "1",
          "--out", "{out}/r.npz"), ("broken.jpg", "not a readable image")),
    Case("data-check-missing-config", "pipeline.data", ("check", "{out}/none.yaml"), ("none.yaml",)),
    Case("data-check-bad-yaml", "pipeline.data", ("check", "{bad_yaml}"), ("bad.yaml",)),
    Case("latents-missing-image-folder", "pipeline.latents",
         ("--dataset", "imagefolder", "--root", "{out}/none", "--image-size", "8", "--out", "{out}/lat"),
         ("none",)),
    Case("latents-corrupt-jpeg", "pipeline.latents",
         ("--dataset", "imagefolder", "--root", "{images}", "--image-size", "8", "--out", "{out}/lat",
          "--no-progress"), ("broken.jpg",)),
    # results stages
    Case("cells-specs-not-json", "pipeline.cells",
         ("--specs", "[oops", "--metrics", "{digits_ref}", "--scale", "mini", "--out", "{out}/c.json"),
         ("--specs",)),
    Case("cells-empty-specs", "pipeline.cells",
         ("--specs", "[]", "--metrics", "{out}/none.json", "--scale", "mini", "--out", "{out}/c.json"),
         ("--specs",)),
    Case("cells-missing-metrics", "pipeline.cells",
         ("--specs", CELL_SPEC, "--metrics", "{out}/none.json", "--scale", "mini", "--out", "{out}/c.json"),
         ("none.json", "not found")),
    Case("cells-metrics-not-json", "pipeline.cells",
         ("--specs", CELL_SPEC, "--metrics", "{text}", "--scale", "mini", "--out", "{out}/c.json"),
         ("notes.txt",)),
    Case("report-missing-cell", "pipeline.report",
         ("fig2", "--cells", "{out}/none.json", "--csv", "{out}/t.csv"), ("none.json",)),
    Case("audit-missing-claims", "pipeline.audit",
         ("--claims", "{out}/none.yaml", "--results", "{out}", "--out", "{out}/a.csv"), ("none.yaml",)),
    Case("audit-bad-claims-yaml", "pipeline.audit",
         ("--claims", "{bad_yaml}", "--results", "{out}", "--out", "{out}/a.csv"), ("bad.yaml",)),
    Case("budget-unknown-scale", "pipeline.budget.cli", ("--scale", "huge", "--out", "{out}/b.csv"), ("huge",)),
    Case("budget-unknown-gpu", "pipeline.budget.cli",
         ("--scale", "mini", "--gpu", "TPU-v9", "--out", "{out}/b.csv"), ("TPU-v9",)),
    Case("fig3-missing-config", "pipeline.figures.fig3",
         ("--config", "{out}/none.yaml", "--fig-dir", "{out}/f", "--csv", "{out}/f.csv", "--summary",
          "{out}/f.json"), ("none.yaml",)),
    Case("snr-pdf-zero-std", "pipeline.snr_pdf",
         ("--schedule", "flow-linear", "--std", "0", "--out", "{out}/p.csv", "--summary", "{out}/p.json"),
         ("--std",)),
    Case("snr-pdf-zero-sigma", "pipeline.snr_pdf",
         ("--schedule", "flow-linear", "--sampling", "lognorm", "--sigma", "0", "--out", "{out}/p.csv",
          "--summary", "{out}/p.json"), ("--sigma",)),
    Case("fasterdit-unknown-stage", "pipeline.cli", ("trian",), ("trian",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_ends_in_one_line(case: Case, files: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    import importlib

    torch.set_num_threads(1)
    out = tmp_path / "case"
    out.mkdir()
    if case.run_config is not None:
        overrides = {k: (_fill(v, files, out) if isinstance(v, str) else v) for k, v in case.run_config.items()}
        (out / "run.json").write_text(json.dumps(good_run(files, **overrides)))
    before = _snapshot(out)
    argv = [_fill(arg, files, out) for arg in case.argv]
    code, err = call(importlib.import_module(case.module).main, argv, capsys)
    assert_one_error_line(code, err, *(_fill(n, files, out) for n in case.needles))
    assert _snapshot(out) == before, "a bad input wrote files"
    assert not files["marker"].exists(), "a hostile file ran a command"


def test_at_least_forty_distinct_cases() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 40


# ------------------------------------------------------------------------------------------------ locks


def test_a_held_lock_refuses_a_second_training_run(files: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    from pipeline import train

    (tmp_path / "run.json").write_text(json.dumps(good_run(files)))
    argv = ["--run-config", str(tmp_path / "run.json"), *(_fill(a, files, tmp_path) for a in TRAIN)]
    with output_lock(tmp_path / "m.pt"):
        code, err = call(train.main, argv, capsys)
    assert_one_error_line(code, err, "m.pt", "another run is writing it", f"pid {os.getpid()}")
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "logs").exists()
    assert call(train.main, argv, capsys)[0] == 0  # released: the next run takes it
    assert (tmp_path / "m.pt").exists()


def test_lock_is_released_when_its_holder_dies(tmp_path: Path) -> None:
    out = tmp_path / "x.npz"
    holder = subprocess.Popen([PYTHON, "-c", "import sys, time; from core.locks import output_lock\n"
                               f"with output_lock({str(out)!r}):\n print('held', flush=True); time.sleep(60)"],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match="another run is writing it"), output_lock(out):
            pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out):  # the kernel dropped the dead holder's lock
        assert lock_path(out).exists()


# ------------------------------------------------------------------------------------------------ temp files


def test_stale_temporaries_of_dead_writers_go_live_ones_stay(tmp_path: Path) -> None:
    out = tmp_path / "shard.npz"
    sleeper = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"])
    dead = subprocess.run([PYTHON, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import platform

    host = platform.node().replace(".", "_") or "host"
    try:
        live_tmp = tmp_path / f".shard.npz.{host}-{sleeper.pid}.abc.tmp"
        dead_tmp = tmp_path / f".shard.npz.{host}-{int(dead.stdout)}.def.tmp"
        own_tmp = tmp_path / f".shard.npz.{host}-{os.getpid()}.ghi.tmp"
        legacy_tmp = tmp_path / ".shard.npz.x1y2z3.tmp"
        foreign_tmp = tmp_path / ".shard.npz.other_host-1.jkl.tmp"
        for tmp in (live_tmp, dead_tmp, own_tmp, legacy_tmp, foreign_tmp):
            tmp.write_bytes(b"partial")
        remove_stale_temporaries(out)
        assert live_tmp.exists() and own_tmp.exists() and foreign_tmp.exists()
        assert not dead_tmp.exists() and not legacy_tmp.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_atomic_write_names_its_temp_file_after_its_writer(tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    with atomic_write(out, "w") as handle:
        (tmp,) = tmp_path.glob(".a.json.*.tmp")
        assert f"-{os.getpid()}." in tmp.name
        handle.write("{}")
    assert out.read_text() == "{}" and not list(tmp_path.glob(".a.json.*.tmp"))


# ------------------------------------------------------------------------------------------------ real processes


def test_hostile_checkpoint_never_runs_its_payload(files: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="not a readable checkpoint") as info:
        safe_torch_load(files["hostile"])
    assert "weights_only" not in str(info.value)
    assert not files["marker"].exists()
    assert pickle.loads  # the payload is a real os.system reduce, refused by torch's weights-only unpickler


@pytest.mark.parametrize("entry", [["-m", "pipeline.sample"], ["-m", "pipeline.cli", "sample"]])
def test_python_m_prints_one_line_and_debug_the_traceback(entry: list[str], files: dict[str, Path],
                                                           tmp_path: Path) -> None:
    argv = [PYTHON, *entry, "--ckpt", str(files["random_bytes"]), "--num-samples", "2", "--out",
            str(tmp_path / "s.npz"), "--device", "cpu"]
    plain = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines() == [
        f"error: {files['random_bytes']}: not a readable checkpoint (truncated, corrupt, not written by torch.save, "
        "or holding objects other than tensors and plain values)"]
    debug = subprocess.run([*argv, "--debug"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert not _snapshot(tmp_path)


def test_yaml_configs_load_safely(tmp_path: Path) -> None:
    """A YAML tag that would build a Python object is refused by every loader (yaml.safe_load)."""
    from pipeline.config import load_claims

    bad = tmp_path / "claims.yaml"
    bad.write_text("claims: !!python/object/apply:os.system ['touch PWNED']\n")
    with pytest.raises(Exception) as info:
        load_claims(bad)
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
    assert "claims.yaml" in str(info.value) or isinstance(info.value, yaml.YAMLError)
