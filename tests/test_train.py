"""Training engine: exact resume (split, SIGKILL, SIGTERM, time budget), DDP = single process, NaN guard,
checkpoint round-trip, data order and logging. A tiny DiT on 8×8×1 digits latents, one thread."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from core.errors import InputError
from core.io import REPO_ROOT
from models.losses import draw_training_randomness
from pipeline.checkpoints import load_checkpoint, load_network
from pipeline.runconfig import build_schedule, loss_config, with_defaults
from pipeline.train import EXIT_RESUMABLE, ROLLING_NAME, NonFiniteLossError, main, train
from pipeline.train_data import DataOrder, draw_step, epoch_permutation, rank_slice
from pipeline.train_log import LOG_NAME, PLOT_NAME, read_log

STOP = 40
PYTHON = sys.executable
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def latents_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.latents import precompute_latents

    out = tmp_path_factory.mktemp("latents")
    precompute_latents({"dataset": "digits", "split": "train"}, {"name": "identity"}, out, flip=True,
                       shard_size=512, progress=False)
    return out


def make_run(latents_dir: Path, **overrides) -> dict:
    run = {
        "network": {"name": "DiT-T/2", "input_size": 8, "in_channels": 1, "num_classes": 10,
                    "learn_sigma": False, "class_dropout_prob": 0.1},
        "schedule": "flow-linear", "prediction": "velocity",
        "input_scale": {"target_std": 0.82},
        "timesteps": {"kind": "lognorm", "mu": 0.0, "sigma": 1.0},
        "direction_loss": True,
        "optimizer": {"lr": 1e-3},
        "global_batch": 8, "ema_decay": 0.99, "seed": 3, "flip": True,
        "latents": str(latents_dir),
    }
    run.update(overrides)
    return run


@pytest.fixture(scope="module")
def run(latents_dir: Path) -> dict:
    return make_run(latents_dir)


def fit(run: dict, start: int, stop: int, root: Path, init: Path | None = None, log_every: int = 5, **kwargs):
    out = root / f"m{stop}.pt"
    summary = train(run, start, stop, out, init, root / "rolling", root / "logs", log_every=log_every,
                    **kwargs)
    return summary, out


@pytest.fixture(scope="module")
def reference(run: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run 0 → STOP."""
    summary, out = fit(run, 0, STOP, tmp_path_factory.mktemp("reference"))
    assert summary["status"] == "completed"
    return out


def tensors(obj, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a nested checkpoint structure, with its path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            yield from tensors(obj[key], f"{prefix}/{key}")
    elif isinstance(obj, list | tuple):
        for i, item in enumerate(obj):
            yield from tensors(item, f"{prefix}/{i}")


def assert_same_state(a: Path | dict, b: Path | dict, atol: float | None = None) -> None:
    """Model, EMA and optimizer state equal bit for bit (``atol=None``) or within ``atol``.

    Adam's moments are also allowed a relative 1e-5: the direction loss's first gradient on the zero-
    initialised output layer is ~1e7 (cosine at a zero prediction), so its moments reach 1e6 and 1e11.
    """
    a = load_checkpoint(a) if isinstance(a, Path) else a
    b = load_checkpoint(b) if isinstance(b, Path) else b
    assert a["step"] == b["step"] and a["data_position"] == b["data_position"]
    for key in ("model", "ema", "opt"):
        left, right = dict(tensors(a[key])), dict(tensors(b[key]))
        assert left.keys() == right.keys() and left
        for name in left:
            if atol is None:
                assert torch.equal(left[name], right[name]), f"{key}{name} differs"
            else:
                rtol = 1e-5 if key == "opt" else 0.0
                torch.testing.assert_close(left[name], right[name], atol=atol, rtol=rtol, msg=f"{key}{name}")
    assert a["opt"]["param_groups"] == b["opt"]["param_groups"]


def log_steps(log_dir: Path) -> list[int]:
    return [record["step"] for record in read_log(log_dir / LOG_NAME)]


# ------------------------------------------------------------------------------------------
# Data order and per-step randomness
# ------------------------------------------------------------------------------------------


def test_data_order_is_a_function_of_the_step() -> None:
    order = DataOrder(seed=5, num_items=10, global_batch=4)
    stream = torch.cat([order.batch_items(s) for s in range(5)])  # 20 items = 2 epochs
    assert torch.equal(stream[:10], epoch_permutation(5, 0, 10))
    assert torch.equal(stream[10:20], epoch_permutation(5, 1, 10))
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert not torch.equal(epoch_permutation(5, 0, 10), epoch_permutation(5, 1, 10))
    # step 2 straddles the epoch boundary (positions 8..11); a fresh order gives the same ids
    assert torch.equal(DataOrder(5, 10, 4).batch_items(2), stream[8:12])


def test_step_randomness_is_sliced_not_redrawn(run: dict) -> None:
    full = with_defaults(run)
    schedule, cfg = build_schedule(full), loss_config(full)
    draw, flips, eps = draw_step(3, 7, (8, 1, 8, 8), schedule, cfg, True, torch.device("cpu"))
    # posterior noise (a distribution latent folder) is drawn after everything else: the rest is unchanged
    again, flips_again, eps_again = draw_step(3, 7, (8, 1, 8, 8), schedule, cfg, True, torch.device("cpu"),
                                              posterior=True)
    assert torch.equal(draw.noise, again.noise) and torch.equal(flips, flips_again)
    assert eps is None and eps_again.shape == (8, 1, 8, 8)
    halves = [draw.slice(rank_slice(8, 2, r).start, rank_slice(8, 2, r).stop) for r in range(2)]
    assert torch.equal(torch.cat([h.noise for h in halves]), draw.noise)
    other = draw_training_randomness((8, 1, 8, 8), schedule, cfg, torch.Generator().manual_seed(0))
    assert not torch.equal(other.noise, draw.noise)


def test_global_batch_must_divide_world_size() -> None:
    assert rank_slice(12, 4, 3) == slice(9, 12)
    with pytest.raises(ValueError, match="not divisible by the world size 5"):
        rank_slice(12, 5, 0)


# ------------------------------------------------------------------------------------------
# Exact resume
# ------------------------------------------------------------------------------------------


def test_split_segments_are_bit_identical(run: dict, reference: Path, tmp_path: Path) -> None:
    first, mid = fit(run, 0, STOP // 2, tmp_path)
    second, out = fit(run, STOP // 2, STOP, tmp_path, init=mid)
    assert first["status"] == second["status"] == "completed"
    assert second["resumed_from"] == str(mid) and second["steps_run"] == STOP // 2
    assert_same_state(out, reference)
    assert not (tmp_path / "rolling" / ROLLING_NAME).exists()
    assert log_steps(tmp_path / "logs") == list(range(5, STOP + 1, 5))
    assert (tmp_path / "logs" / PLOT_NAME).stat().st_size > 0


def test_streamed_loader_matches_in_memory(run: dict, tmp_path: Path) -> None:
    _, memory = fit(run, 0, 6, tmp_path / "memory", in_memory=True)
    _, streamed = fit(run, 0, 6, tmp_path / "streamed", in_memory=False, num_workers=0)
    assert_same_state(memory, streamed)


@pytest.mark.slow
def test_sigkill_mid_segment_then_rerun_is_bit_identical(run: dict, reference: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.json"
    config.write_text(json.dumps(run))
    out, rolling_dir, log_dir = tmp_path / "m.pt", tmp_path / "rolling", tmp_path / "logs"
    argv = ["--run-config", str(config), "--start", "0", "--stop", str(STOP), "--out", str(out),
            "--rolling-dir", str(rolling_dir), "--log-dir", str(log_dir), "--rolling-every-steps", "3",
            "--log-every", "2", "--device", "cpu"]
    child = subprocess.Popen([PYTHON, "-m", "pipeline.train", *argv], cwd=REPO_ROOT, env=CHILD_ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rolling = rolling_dir / ROLLING_NAME
    deadline = time.monotonic() + 300
    while not rolling.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.05)  # let it run past the rolling step, so the kill lands mid-interval
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    assert not out.exists()
    killed_at = load_checkpoint(rolling)["step"]
    assert 0 < killed_at < STOP

    assert main(argv) == 0
    assert_same_state(out, reference)
    steps = log_steps(log_dir)
    assert steps == sorted(set(steps)) and steps[-1] == STOP
    assert not rolling.exists()


def continue_and_compare_with_fresh(run: dict, k: int, root: Path) -> None:
    """Resuming the segment's rolling save at step ``k`` to ``k + 2`` equals a fresh ``0 → k + 2`` run."""
    resumed, out = fit(run, 0, k + 2, root)
    assert resumed["resumed_from"] == str(root / "rolling" / ROLLING_NAME) and resumed["steps_run"] == 2
    _, fresh = fit(run, 0, k + 2, root / "fresh")
    assert_same_state(out, fresh)


def test_sigterm_saves_resumable_checkpoint(run: dict, tmp_path: Path) -> None:
    """SIGTERM (here sent to this very process once the first log line exists) → save, exit code 75."""
    config = tmp_path / "run.json"
    config.write_text(json.dumps(run))
    log_dir = tmp_path / "logs"
    done = threading.Event()

    def terminate_when_logging() -> None:
        deadline = time.monotonic() + 300
        while not done.is_set() and not log_steps(log_dir) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # a late signal must not end pytest
    sender = threading.Thread(target=terminate_when_logging)
    sender.start()
    try:
        code = main(["--run-config", str(config), "--start", "0", "--stop", "100000",
                     "--out", str(tmp_path / "never.pt"), "--rolling-dir", str(tmp_path / "rolling"),
                     "--log-dir", str(log_dir), "--log-every", "4", "--device", "cpu"])
    finally:
        done.set()
        sender.join()
        signal.signal(signal.SIGTERM, previous)
    assert code == EXIT_RESUMABLE
    k = load_checkpoint(tmp_path / "rolling" / ROLLING_NAME)["step"]
    assert k >= 4 and log_steps(log_dir)[-1] == k  # the partial window is logged at the stop step
    assert not (tmp_path / "never.pt").exists()
    continue_and_compare_with_fresh(run, k, tmp_path)


def test_time_budget_stops_early_and_resumes(run: dict, tmp_path: Path) -> None:
    summary, out = fit(run, 0, 100000, tmp_path, time_budget_minutes=0.02, budget_margin_minutes=0.0)
    assert summary["status"] == "time_budget" and not out.exists()
    k = load_checkpoint(tmp_path / "rolling" / ROLLING_NAME)["step"]
    assert 0 < k == summary["step"] < 100000
    continue_and_compare_with_fresh(run, k, tmp_path)


def test_periodic_ema_grids_leave_training_unchanged(run: dict, tmp_path: Path) -> None:
    """Issue 19 item 6: `--grid-every 2` writes EMA sample grids at steps 2 and 4 of a 0 -> 6 segment (none at the
    milestone), each with its sidecar; the milestone is bit-identical to a segment without grids."""
    from PIL import Image

    _, with_grids = fit(run, 0, 6, tmp_path / "grids", grid_every=2)
    _, plain = fit(run, 0, 6, tmp_path / "plain")
    assert_same_state(with_grids, plain)
    grids = sorted((tmp_path / "grids" / "logs" / "grids").glob("*.png"))
    assert [g.name for g in grids] == ["step00000002.png", "step00000004.png"]
    sidecar = json.loads(grids[0].with_suffix(".json").read_text())
    assert sidecar["classes"] == list(range(8)) and sidecar["per_class"] == 4 and sidecar["checkpoint"]["step"] == 2
    assert sidecar["checkpoint"]["weights"] == "ema"
    assert Image.open(grids[0]).size == tuple(reversed(sidecar["canvas_shape"][:2]))


# ------------------------------------------------------------------------------------------
# DDP
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_gloo_ddp_matches_single_process(run: dict, tmp_path: Path) -> None:
    steps = 6
    config = tmp_path / "run.json"
    config.write_text(json.dumps(run))
    torchrun = Path(PYTHON).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "pipeline.train", "--",
         "--run-config", str(config), "--start", "0", "--stop", str(steps), "--out", str(tmp_path / "ddp.pt"),
         "--rolling-dir", str(tmp_path / "ddp-rolling"), "--log-dir", str(tmp_path / "ddp-logs"),
         "--log-every", "3", "--check-every", "2", "--device", "cpu"],
        cwd=REPO_ROOT, env=CHILD_ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    _, single = fit(run, 0, steps, tmp_path / "single", log_every=3)
    ddp = load_checkpoint(tmp_path / "ddp.pt")
    assert ddp["world_size"] == 2
    assert_same_state(ddp, single, atol=1e-6)
    ddp_log = read_log(tmp_path / "ddp-logs" / LOG_NAME)
    single_log = read_log(tmp_path / "single" / "logs" / LOG_NAME)
    assert [r["step"] for r in ddp_log] == [3, 6] and ddp_log[-1]["world_size"] == 2
    assert len(single_log) == len(ddp_log)
    for a, b in zip(ddp_log, single_log):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5)


# ------------------------------------------------------------------------------------------
# NaN guard, checkpoint contents, logging, precision
# ------------------------------------------------------------------------------------------


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(latents_dir: Path, tmp_path: Path, capsys):
    exploding = make_run(latents_dir, optimizer={"lr": 1e30})
    config = tmp_path / "run.json"
    config.write_text(json.dumps(exploding))
    rolling = tmp_path / "rolling" / ROLLING_NAME
    code = main(["--run-config", str(config), "--start", "0", "--stop", "20", "--out", str(tmp_path / "m.pt"),
                 "--rolling-dir", str(rolling.parent), "--log-dir", str(tmp_path / "logs"),
                 "--rolling-every-steps", "1", "--device", "cpu"])
    assert code == 1
    message = capsys.readouterr().err
    assert "non-finite loss at step" in message and f"last good checkpoint: {rolling}" in message
    assert not (tmp_path / "m.pt").exists()
    kept = load_checkpoint(rolling)
    bad_step = int(message.split("non-finite loss at step ")[1].split()[0])
    assert kept["step"] == bad_step >= 1
    assert all(torch.isfinite(t).all() for _, t in tensors({k: kept[k] for k in ("model", "ema", "opt")}))
    with pytest.raises(NonFiniteLossError, match=f"non-finite loss at step {bad_step}"):
        fit(exploding, 0, 20, tmp_path, rolling_every_steps=1)


def test_config_round_trips_through_checkpoint(run: dict, reference: Path, latents_dir: Path) -> None:
    ckpt = load_checkpoint(reference)
    assert ckpt["config"] == with_defaults(run)
    assert ckpt["step"] == STOP and ckpt["data_position"] == STOP * run["global_batch"]
    index = json.loads((latents_dir / "index.json").read_text())
    assert ckpt["data_std"] == index["data_std"]
    assert ckpt["provenance"]["config"] == ckpt["config"] and ckpt["provenance"]["git_commit"]
    assert set(ckpt["rng"]) == {"torch", "cuda"}
    net, loaded_run, _ = load_network(reference)
    assert loaded_run == ckpt["config"]
    assert all(torch.equal(v, ckpt["ema"][k]) for k, v in net.state_dict().items())
    # the stored config is a valid run config: it resumes a segment by itself
    assert with_defaults(ckpt["config"]) == ckpt["config"]


def test_resume_needs_matching_init(run: dict, reference: Path, latents_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither --init nor a usable"):
        fit(run, 10, 20, tmp_path)
    with pytest.raises(ValueError, match=f"is at step {STOP}, but this segment starts at 10"):
        fit(run, 10, 20, tmp_path, init=reference)
    with pytest.raises(ValueError, match="another run config"):
        fit(make_run(latents_dir, seed=4), STOP, STOP + 1, tmp_path, init=reference)


def test_log_records_loss_terms_separately(reference: Path) -> None:
    records = read_log(reference.parent / "logs" / LOG_NAME)
    assert [r["step"] for r in records] == list(range(5, STOP + 1, 5))
    for record in records:
        expected = {"loss", "mse", "direction", "grad_norm", "lr", "it_s", "images_s", "max_mem_mb"}
        assert expected <= record.keys()
        assert math.isclose(record["loss"], record["mse"] + record["direction"], rel_tol=1e-5)
    assert records[-1]["loss"] < records[0]["loss"]


def test_bf16_learned_sigma_ddpm_run(latents_dir: Path, tmp_path: Path) -> None:
    run = make_run(latents_dir, schedule="ddpm-linear", prediction="noise", timesteps={"kind": "uniform"},
                   direction_loss=False, precision="bf16", flip=False,
                   network={"name": "DiT-T/2", "input_size": 8, "in_channels": 1, "num_classes": 10,
                            "learn_sigma": True, "grad_checkpointing": True})
    summary, out = fit(run, 0, 5, tmp_path)
    record = summary["last_record"]
    assert summary["status"] == "completed" and out.exists()
    assert {"mse", "vb"} <= record.keys() and math.isfinite(record["loss"])


def test_resume_refuses_a_re_encoded_latent_folder(run: dict, reference: Path, tmp_path: Path) -> None:
    """A run's hash holds its latent folder's path only: a checkpoint records the folder's settings hash, and
    resuming on a folder re-encoded with other settings (e.g. another posterior mode) is one error line."""
    from pipeline.checkpoints import load_checkpoint, save_checkpoint
    from pipeline.latent_reader import read_index

    ckpt = load_checkpoint(reference)
    assert ckpt["latents_settings_sha256"] == read_index(run["latents"])["settings_sha256"]
    ckpt["latents_settings_sha256"] = "0" * 64
    other = tmp_path / "other.pt"
    save_checkpoint(other, ckpt)
    with pytest.raises(ValueError, match="latents with settings 000000000000"):
        fit(run, STOP, STOP + 1, tmp_path, init=other)


def test_job_logs_get_progress_lines_and_tensorboard_the_same_numbers(run: dict, tmp_path: Path, capsys) -> None:
    """Issue 19 item 6: without a terminal, a plain line per log window (step, loss terms, it/s, ETA, memory);
    with --tensorboard, event files holding train.jsonl's numbers; a resumed segment purges later events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipeline.train_log import read_log

    fit(run, 0, 10, tmp_path, progress=False, tensorboard=tmp_path / "tb")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train: step ")]
    assert [line.split()[2] for line in lines] == ["5/10", "10/10"]
    assert all("loss " in line and " it/s" in line and "ETA " in line and "peak memory" in line for line in lines)
    records = read_log(tmp_path / "logs" / "train.jsonl")
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = events.Scalars("train/loss")
    assert [e.step for e in scalars] == [r["step"] for r in records] == [5, 10]
    assert [e.value for e in scalars] == pytest.approx([r["loss"] for r in records], rel=1e-6)
    assert {"train/mse", "train/direction", "train/it_s", "train/lr"} <= set(events.Tags()["scalars"])
    # Throughput (issue 20 item 3): model FLOPs per image from the FLOP counter; no MFU without a known peak (CPU).
    from pipeline.budget.flops import train_flops_per_image

    flops = train_flops_per_image({k: v for k, v in run["network"].items()})
    assert records[-1]["train_tflop_per_image"] == pytest.approx(flops / 1e12)
    assert records[-1]["images_s_per_device"] == records[-1]["images_s"] and "mfu" not in records[-1]


def test_mfu_is_model_flops_over_the_devices_peak() -> None:
    from pipeline.train_log import TrainingCost, progress_line

    cost = TrainingCost(flops_per_image=3e9, precision_key="bf16", peak_flops=312e12, device_row="A100-SXM4-80GB")
    fields = cost.fields(images_s=8 * 1000.0, world_size=8)
    assert fields["images_s_per_device"] == 1000.0 and fields["mfu"] == pytest.approx(1000 * 3e9 / 312e12)
    record = {"step": 50, "loss": 0.5, "it_s": 31.25, "images_s": 8000.0, "max_mem_mb": 1024, "world_size": 8,
              **fields}
    line = progress_line(record, 0, 100, 0)
    assert "(1000 per device)" in line and "MFU 1.0% of A100-SXM4-80GB bf16" in line and "ETA 0m02s" in line


def test_a_resumed_segment_purges_the_tensorboard_events_after_its_step(tmp_path: Path) -> None:
    """As truncate_log does for train.jsonl: after a resume from step 5, step 10 holds the new segment's value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipeline.train_log import TensorBoardLog

    first = TensorBoardLog(tmp_path, resumed_step=0)
    first.write({"step": 5, "loss": 1.0})
    first.write({"step": 10, "loss": 2.0})   # a step the killed segment logged past its last checkpoint
    first.close()
    again = TensorBoardLog(tmp_path, resumed_step=5)
    again.write({"step": 10, "loss": 3.0})
    again.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(5, 1.0), (10, 3.0)]


def test_compiled_training_agrees_with_eager_and_resumes_exactly(run: dict, tmp_path: Path) -> None:
    """Issue 20 item 2: `compile: true` (torch.compile, inductor on the CPU) trains what eager trains, to float
    rounding (max |Δ| ≤ 1e-4 on every weight and optimizer state after 6 steps), and a compiled run split into two
    segments is bit-identical to one compiled segment."""
    _, eager = fit(run, 0, 6, tmp_path / "eager")
    _, whole = fit(run, 0, 6, tmp_path / "whole", compile=True)
    _, half = fit(run, 0, 3, tmp_path / "split", compile=True)
    _, split = fit(run, 3, 6, tmp_path / "split", init=half, compile=True)
    assert_same_state(whole, split)
    assert_same_state(eager, whole, atol=1e-4)


def test_compile_without_a_compiler_is_one_clear_error(monkeypatch) -> None:
    import shutil

    from pipeline.train import require_compiler

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(InputError, match="needs a C.. compiler .* or set compile: false"):
        require_compiler(torch.device("cpu"))
