"""Sampling stage: ADM npz format, per-sample determinism (batch size, world size, prefix), resume, grids."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.io import REPO_ROOT
from core.npz import write_npz_streaming
from models.dopri5 import dopri5_per_sample, guided_velocity
from models.samplers import SamplerConfig, sample
from models.schedules import get_schedule
from pipeline.checkpoints import save_checkpoint
from pipeline.runconfig import build_network
from pipeline.sample import (
    build_session,
    main,
    sample_to_npz,
)
from pipeline.sample_grid import sample_grid
from pipeline.sample_rows import FixedBatchNetwork, sample_labels, sample_noise, to_uint8
from tests.toy_networks import GaussianFlowOracle

torch.set_num_threads(1)

IDENTITY = {"name": "identity", "channels": 1}
MEAN, STD = 0.5, 0.3


def _tiny_dit_checkpoint(path: Path, schedule: str, prediction: str, learn_sigma: bool) -> Path:
    """DiT-T/2 on 8×8×1 'digits' with random (non-zero) weights; EMA and raw weights differ."""
    run = {"network": {"name": "DiT-T/2", "input_size": 8, "in_channels": 1, "num_classes": 10,
                       "learn_sigma": learn_sigma, "class_dropout_prob": 0.1},
           "schedule": schedule, "prediction": prediction, "input_scale": {"target_std": 0.82}}
    net = build_network(run["network"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        ema = {k: v.clone() for k, v in net.state_dict().items()}
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    save_checkpoint(path, {"step": 7, "model": net.state_dict(), "ema": ema, "config": run, "data_std": 0.5})
    return path


@pytest.fixture(scope="module")
def flow_ckpt(tmp_path_factory) -> Path:
    return _tiny_dit_checkpoint(tmp_path_factory.mktemp("ckpt") / "flow.pt", "flow-linear", "velocity", False)


@pytest.fixture(scope="module")
def ddpm_ckpt(tmp_path_factory) -> Path:
    return _tiny_dit_checkpoint(tmp_path_factory.mktemp("ckpt") / "ddpm.pt", "ddpm-linear", "noise", True)


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["arr_0", "arr_1"]
        return data["arr_0"], data["arr_1"]


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def test_per_sample_labels_and_noise_depend_only_on_seed_and_index():
    assert torch.equal(sample_labels(3, [5, 6, 7], 10), sample_labels(3, range(8), 10)[5:])
    assert torch.equal(sample_noise(3, [6], (1, 4, 4))[0], sample_noise(3, range(8), (1, 4, 4))[6])
    assert not torch.equal(sample_labels(3, range(50), 10), sample_labels(4, range(50), 10))
    labels = sample_labels(0, range(2000), 10)
    assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < 10
    counts = torch.bincount(labels, minlength=10)
    assert counts.min() > 150 and counts.max() < 250  # uniform: 200 ± a few sigma
    assert (labels[1:] < labels[:-1]).any()  # random class order, not sorted


def test_uint8_quantisation_matches_dit_and_inverts_the_model_space_map():
    u = torch.arange(256, dtype=torch.float32)
    images = (u / 127.5 - 1).view(1, 1, 16, 16)
    assert torch.equal(to_uint8(images).flatten().long(), torch.arange(256))
    x = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0]).view(1, 1, 1, 6)
    expected = torch.clamp(127.5 * x + 128, 0, 255).to(torch.uint8)  # DiT sample_ddp.py
    assert torch.equal(to_uint8(x).flatten(), expected.flatten())
    assert to_uint8(x).flatten().tolist() == [0, 0, 128, 255, 255, 255]


def test_fixed_batch_network_rows_do_not_depend_on_batch_composition(flow_ckpt):
    session, _ = build_session(flow_ckpt, SamplerConfig("euler", steps=2), 0, autoencoder=IDENTITY,
                               micro_batch=8)
    net = session.net
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(13, 1, 8, 8, generator=g), torch.rand(13, generator=g)
    y = torch.randint(11, (13,), generator=g)
    wrapped = FixedBatchNetwork(net, 8)
    whole = wrapped(x, t, y)
    assert torch.allclose(whole, net(x, t, y), atol=1e-5)
    for batch in (1, 3, 5):
        parts = torch.cat([wrapped(x[s:s + batch], t[s:s + batch], y[s:s + batch])
                           for s in range(0, 13, batch)])
        assert torch.equal(parts, whole)
    assert session.rows_are_position_invariant()


@pytest.mark.parametrize("schedule,prediction", [("flow-linear", "velocity"), ("flow-cosine", "noise"),
                                                 ("ddpm-linear", "noise")])
def test_per_sample_dopri5_solves_the_gaussian_flow(schedule, prediction):
    """For Gaussian data the probability-flow ODE is solved exactly by x_t = α·m + sqrt(α²s² + σ²)·w."""
    sched = get_schedule(schedule)
    net = GaussianFlowOracle(sched, prediction, MEAN, STD)
    z = torch.randn(24, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.zeros(24, dtype=torch.long)
    cfg = SamplerConfig("dopri5", atol=1e-6, rtol=1e-4)
    t0, t1 = sched.t_range(prediction)
    x, nfe = dopri5_per_sample(guided_velocity(net, sched, prediction, y, cfg), z, t0, t1, cfg.atol, cfg.rtol)
    ends = torch.tensor([t0, t1], dtype=torch.float64)
    a, s = sched.alpha(ends), sched.sigma(ends)
    w = (z - a[0] * MEAN) / torch.sqrt(a[0] ** 2 * STD**2 + s[0] ** 2)
    exact = a[1] * MEAN + torch.sqrt(a[1] ** 2 * STD**2 + s[1] ** 2) * w
    assert (x - exact).abs().max() < 2e-3
    assert nfe.min() >= 8 and (nfe - 2).remainder(6).eq(0).all()
    reference, _ = sample(net, sched, prediction, z, y, cfg)  # torchdiffeq, one step size for the batch
    assert (x - reference).abs().max() < 1e-2


def test_per_sample_dopri5_is_independent_of_batch_mates():
    sched = get_schedule("flow-cosine")
    net = GaussianFlowOracle(sched, "noise", MEAN, STD)
    scales = torch.logspace(-3, 1, 12, dtype=torch.float64).view(-1, 1, 1, 1)
    z = torch.randn(12, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * scales
    y = torch.zeros(12, dtype=torch.long)
    cfg = SamplerConfig("dopri5")
    t0, t1 = sched.t_range("noise")
    x, nfe = dopri5_per_sample(guided_velocity(net, sched, "noise", y, cfg), z, t0, t1, cfg.atol, cfg.rtol)
    for i in range(12):
        xi, ni = dopri5_per_sample(guided_velocity(net, sched, "noise", y[i:i + 1], cfg), z[i:i + 1], t0, t1,
                                   cfg.atol, cfg.rtol)
        assert torch.equal(xi, x[i:i + 1]) and ni.item() == nfe[i].item()
    assert len(set(nfe.tolist())) > 1  # each sample has its own step-size sequence


def test_streaming_npz_reads_like_savez(tmp_path):
    parts = [np.random.default_rng(i).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
             for i, n in enumerate((3, 5))]
    labels = np.arange(8, dtype=np.int64)
    write_npz_streaming(tmp_path / "s.npz", {"arr_0": ((8, 4, 4, 3), np.uint8, iter(parts)),
                                              "arr_1": ((8,), np.int64, iter([labels]))})
    images, read_labels = _npz(tmp_path / "s.npz")
    assert np.array_equal(images, np.concatenate(parts)) and np.array_equal(read_labels, labels)
    with pytest.raises(ValueError):
        write_npz_streaming(tmp_path / "bad.npz", {"arr_0": ((9, 4, 4, 3), np.uint8, iter(parts))})
    assert not (tmp_path / "bad.npz").exists()


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def test_cli_writes_adm_npz_and_sidecar(flow_ckpt, tmp_path):
    out = tmp_path / "s.npz"
    assert main(["--ckpt", str(flow_ckpt), "--sampler", "dopri5", "--cfg-scale", "4", "--num-samples", "12",
                 "--seed", "3", "--batch-size", "5", "--micro-batch", "8", "--out", str(out),
                 "--autoencoder", "identity", "--shard-size", "5", "--no-progress"]) == 0
    images, labels = _npz(out)
    assert images.dtype == np.uint8 and images.shape == (12, 8, 8, 1)
    assert labels.dtype == np.int64 and labels.shape == (12,) and 0 <= labels.min() and labels.max() < 10
    assert np.array_equal(labels, sample_labels(3, range(12), 10).numpy())
    assert len(np.unique(images)) > 20  # real images, not a constant
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["num_samples"] == 12 and side["seed"] == 3 and side["world_size"] == 1
    assert side["checkpoint"]["step"] == 7 and side["checkpoint"]["weights"] == "ema"
    assert side["sampler"]["kind"] == "dopri5" and side["sampler"]["cfg_scale"] == 4.0
    assert side["nfe"]["min"] <= side["nfe"]["mean"] <= side["nfe"]["max"] and side["nfe"]["min"] >= 8
    assert side["input_multiplier"] == pytest.approx(0.82 / 0.5)
    assert side["network_rows_position_invariant"] is True
    assert sum(side["label_counts"]) == 12 and side["provenance"]["git_commit"]
    assert not (tmp_path / "s.shards").exists()  # shards removed after a successful merge


@pytest.mark.parametrize("kind,steps", [("euler", 3), ("heun", 2), ("dopri5", 0), ("sde", 4)])
def test_flow_samples_do_not_depend_on_batch_size(flow_ckpt, kind, steps):
    session, _ = build_session(flow_ckpt, SamplerConfig(kind, steps=max(steps, 1), cfg_scale=2.0), 5,
                               autoencoder=IDENTITY, micro_batch=8)
    x8, y8, n8 = session.sample_model_space(range(11))
    parts = [session.sample_model_space(range(s, min(s + 3, 11))) for s in range(0, 11, 3)]
    x3, y3, n3 = (torch.cat(p) for p in zip(*parts))
    assert torch.equal(x3, x8) and torch.equal(y3, y8) and torch.equal(n3, n8)
    if kind != "dopri5":
        assert n8.tolist() == [steps * (2 if kind == "heun" else 1)] * 11


def test_npz_identical_for_batch_sizes_and_prefix(ddpm_ckpt, tmp_path):
    common = dict(num_samples=12, sampler="ddpm", steps=4, cfg_scale=1.5, seed=1, micro_batch=8,
                  autoencoder=IDENTITY, shard_size=5, progress=False)
    a = sample_to_npz(ddpm_ckpt, tmp_path / "b3.npz", batch_size=3, **common)
    sample_to_npz(ddpm_ckpt, tmp_path / "b8.npz", batch_size=8, **common)
    sample_to_npz(ddpm_ckpt, tmp_path / "n5.npz", batch_size=8, **{**common, "num_samples": 5})
    img3, lab3 = _npz(tmp_path / "b3.npz")
    img8, lab8 = _npz(tmp_path / "b8.npz")
    img5, lab5 = _npz(tmp_path / "n5.npz")
    assert np.array_equal(img3, img8) and np.array_equal(lab3, lab8)
    assert np.array_equal(img5, img3[:5]) and np.array_equal(lab5, lab3[:5])
    assert a["nfe"] == {"mean": 4.0, "min": 4, "max": 4, "total": 48}
    raw = sample_to_npz(ddpm_ckpt, tmp_path / "raw.npz", batch_size=8, use_ema=False, **common)
    assert raw["checkpoint"]["weights"] == "raw" and not np.array_equal(_npz(tmp_path / "raw.npz")[0], img8)


def test_resume_reuses_complete_shards(flow_ckpt, tmp_path):
    out, shards = tmp_path / "s.npz", tmp_path / "shards"
    kwargs = dict(num_samples=10, sampler="heun", steps=2, cfg_scale=3.0, seed=2, batch_size=4, micro_batch=8,
                  autoencoder=IDENTITY, shard_dir=shards, shard_size=4, keep_shards=True, progress=False)
    sample_to_npz(flow_ckpt, out, **kwargs)
    first = _npz(out)
    files = sorted(shards.glob("shard-*.npz"))
    assert [f.name for f in files] == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    stamps = {f.name: f.stat().st_mtime_ns for f in files}

    out.unlink()
    sample_to_npz(flow_ckpt, out, **kwargs)  # merge only
    assert all(f.stat().st_mtime_ns == stamps[f.name] for f in files)
    second = _npz(out)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))

    (shards / "shard-00001.npz").unlink()
    (shards / "shard-00002.npz").write_bytes(b"truncated")  # a broken file is recomputed
    sample_to_npz(flow_ckpt, out, **kwargs)
    assert (shards / "shard-00000.npz").stat().st_mtime_ns == stamps["shard-00000.npz"]
    third = _npz(out)
    assert all(np.array_equal(a, b) for a, b in zip(first, third))

    sample_to_npz(flow_ckpt, out, **{**kwargs, "cfg_scale": 1.0})  # other settings: shards are redone
    assert not np.array_equal(_npz(out)[0], first[0])


def test_autoencoder_comes_from_the_latents_index(flow_ckpt, tmp_path):
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"autoencoder": {"name": "identity", "spec": {"name": "identity"}}}))
    summary = sample_to_npz(flow_ckpt, tmp_path / "s.npz", num_samples=3, sampler="euler", steps=2,
                            latents_index=index, batch_size=3, micro_batch=4, progress=False)
    assert summary["autoencoder"]["spec"] == {"name": "identity", "channels": 1}
    with pytest.raises(FileNotFoundError):
        sample_to_npz(flow_ckpt, tmp_path / "t.npz", num_samples=3, sampler="euler", steps=2, progress=False)


def test_ddpm_sampler_needs_a_ddpm_checkpoint(flow_ckpt, tmp_path):
    with pytest.raises(ValueError):
        sample_to_npz(flow_ckpt, tmp_path / "s.npz", num_samples=2, sampler="ddpm", steps=3,
                      autoencoder=IDENTITY, progress=False)


def test_grid_png(ddpm_ckpt, tmp_path):
    out = tmp_path / "grid.png"
    summary = sample_grid(ddpm_ckpt, out, classes=[3, 1, 4], per_class=2, cfg_scale=4.0, sampler="ddpm",
                          steps=3, autoencoder=IDENTITY, micro_batch=8, upscale=4, padding=2)
    with Image.open(out) as image:
        assert image.size == (2 * (32 + 2) + 2, 3 * (32 + 2) + 2) and image.mode == "L"
    assert summary["classes"] == [3, 1, 4] and summary["per_class"] == 2
    assert json.loads(out.with_suffix(".json").read_text())["sampler"]["cfg_scale"] == 4.0


@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["dopri5", "sde"])
def test_two_processes_give_the_same_npz(flow_ckpt, tmp_path, kind):
    args = ["--ckpt", str(flow_ckpt), "--sampler", kind, "--steps", "6", "--cfg-scale", "2", "--num-samples", "10",
            "--seed", "4", "--micro-batch", "8", "--autoencoder", "identity", "--shard-size", "3",
            "--no-progress"]
    sample_to_npz(flow_ckpt, tmp_path / "one.npz", num_samples=10, sampler=kind, steps=6, cfg_scale=2.0, seed=4,
                  micro_batch=8, autoencoder=IDENTITY, shard_size=3, batch_size=10, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "pipeline.sample", "--", *args, "--batch-size", "2", "--out", str(tmp_path / "two.npz")]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    one, two = _npz(tmp_path / "one.npz"), _npz(tmp_path / "two.npz")
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])
    side = json.loads((tmp_path / "two.json").read_text())
    assert side["world_size"] == 2 and side["world_sizes_of_shards"] == [2]
