"""Latent precomputation: shapes, determinism, flips, statistics, resume after a kill, 2-rank sharding."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch.utils.data import DataLoader

from core.io import DataSourceError, derive_seed
from pipeline import latents as lat
from pipeline.autoencoders import SDVAE
from pipeline.datasets import ImageFolderDataset, digits_split
from pipeline.latent_reader import LatentDataset, collate_latents, load_latents
from pipeline.latents import precompute_latents
from tests.test_data_helpers import make_image_tree, make_tiny_vae

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    make_image_tree(root, classes={"n03_c": 3, "n01_a": 2, "n02_b": 4})
    return root


@pytest.fixture(scope="module")
def assets(tree, tmp_path_factory):
    return {"tree": tree, "vae": make_tiny_vae(tmp_path_factory.mktemp("weights") / "tiny-vae")}


def _tree_spec(assets):
    return {"dataset": "imagefolder", "root": str(assets["tree"]), "image_size": 16}


def _vae_spec(assets, posterior="sample"):
    return {"name": str(assets["vae"]), "posterior": posterior}


# ------------------------------------------------------------------------------------ digits / identity


def test_digits_identity_latents_are_the_pixels_with_flips_and_stats(tmp_path):
    index = precompute_latents({"dataset": "digits"}, {"name": "identity"}, tmp_path, flip=True,
                               shard_size=400, batch_size=128, progress=False)
    latents, labels, flipped, saved = load_latents(tmp_path)
    images, expected_labels = digits_split()["train"]
    expected = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert latents.shape == (1497, 1, 8, 8) and latents.dtype == torch.float32
    torch.testing.assert_close(latents, expected, rtol=0, atol=0)
    torch.testing.assert_close(flipped, expected.flip(-1), rtol=0, atol=0)
    assert torch.equal(labels, torch.from_numpy(expected_labels))
    both = torch.cat([latents, flipped]).double()
    assert saved == index
    assert index["data_std"] == pytest.approx(both.std(unbiased=False).item(), rel=1e-12)
    assert index["data_mean"] == pytest.approx(both.mean().item(), rel=1e-12)
    assert index["channel_std"] == pytest.approx([both.std(unbiased=False).item()], rel=1e-12)
    assert index["latent_shape"] == [1, 8, 8] and index["num_items"] == 1497 and index["flip"] is True
    assert [s["file"] for s in index["shards"]] == [f"shard-0000{i}.safetensors" for i in range(4)]
    assert index["label_counts"] == np.bincount(expected_labels).tolist()
    assert index["autoencoder"]["name"] == "identity" and index["scale_factor"] == 1.0
    assert "git_commit" in index["provenance"] and index["encoded_on"] == ["cpu"]
    z5, y5, zf5 = LatentDataset(tmp_path)[405]
    assert torch.equal(z5, latents[405]) and torch.equal(zf5, flipped[405]) and int(y5) == int(labels[405])


def test_no_flip_stores_no_flipped_tensor_and_dataset_reads_back(tmp_path):
    precompute_latents({"dataset": "digits", "split": "reference"}, {"name": "identity"}, tmp_path,
                       shard_size=128, batch_size=50, progress=False)
    latents, labels, flipped, index = load_latents(tmp_path)
    assert flipped is None and index["tensors"] == ["latents", "labels"] and latents.shape[0] == 300
    ds = LatentDataset(tmp_path)
    assert len(ds) == 300
    for i in (0, 127, 128, 299, -1):
        z, y, zf = ds[i]
        assert torch.equal(z, latents[i]) and int(y) == int(labels[i]) and zf is None
    with pytest.raises(IndexError):
        ds[300]
    ds_copy = pickle.loads(pickle.dumps(ds))
    batch = next(iter(DataLoader(ds_copy, batch_size=7, collate_fn=collate_latents)))
    assert batch[0].shape == (7, 1, 8, 8) and batch[2] is None and torch.equal(batch[1], labels[:7])


# ------------------------------------------------------------------------------------ VAE path


def test_vae_latents_shapes_determinism_and_flip(tmp_path, assets):
    index = precompute_latents(_tree_spec(assets), _vae_spec(assets), tmp_path / "a", flip=True,
                               shard_size=4, batch_size=3, seed=7, progress=False)
    z, y, zf, _ = load_latents(tmp_path / "a")
    assert z.shape == (9, 4, 8, 8) and zf.shape == (9, 4, 8, 8)
    assert y.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert index["posterior"] == "sample" and index["scale_factor"] == pytest.approx(0.18215)
    assert index["data_std_scaled"] == pytest.approx(index["data_std"] * 0.18215)
    # Same settings, other batch size: same latents (per-item noise streams).
    precompute_latents(_tree_spec(assets), _vae_spec(assets), tmp_path / "b", flip=True,
                       shard_size=4, batch_size=2, seed=7, progress=False)
    z_b, _, zf_b, _ = load_latents(tmp_path / "b")
    torch.testing.assert_close(z_b, z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(zf_b, zf, rtol=1e-5, atol=1e-5)
    # The flipped latent is the encoding of the mirrored image with its own noise stream.
    ds = ImageFolderDataset(assets["tree"], 16)
    x = torch.from_numpy(ds[5][0]).permute(2, 0, 1)[None].float() / 127.5 - 1
    vae = SDVAE(str(assets["vae"]), posterior="sample")
    gen = torch.Generator().manual_seed(derive_seed(7, "latents-posterior", 5, "flipped"))
    torch.testing.assert_close(zf[5:6], vae.encode(x.flip(-1), gen), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(zf, z.flip(-1), atol=1e-3)
    # Another seed changes the sampled latents; the posterior mean ignores the seed.
    precompute_latents(_tree_spec(assets), _vae_spec(assets), tmp_path / "c", shard_size=4, seed=8,
                       progress=False)
    assert not torch.allclose(load_latents(tmp_path / "c")[0], z)
    means = [precompute_latents(_tree_spec(assets), _vae_spec(assets, "mean"), tmp_path / f"m{s}", shard_size=9,
                                seed=s, progress=False) for s in (1, 2)]
    torch.testing.assert_close(load_latents(tmp_path / "m1")[0], load_latents(tmp_path / "m2")[0], rtol=0, atol=0)
    assert means[0]["posterior"] == "mean"


# ------------------------------------------------------------------------------------ resume


def test_resume_after_a_kill_skips_complete_shards_and_matches_a_clean_run(tmp_path, monkeypatch):
    spec, ae = {"dataset": "digits", "split": "reference"}, {"name": "identity"}
    clean = precompute_latents(spec, ae, tmp_path / "clean", flip=True, shard_size=64, progress=False)
    out = tmp_path / "killed"
    real_bytes, calls = lat._shard_bytes, []

    def dying_bytes(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill while writing shard 2")
        return real_bytes(*args, **kwargs)

    monkeypatch.setattr(lat, "_shard_bytes", dying_bytes)
    with pytest.raises(KeyboardInterrupt):
        precompute_latents(spec, ae, out, flip=True, shard_size=64, progress=False)
    monkeypatch.setattr(lat, "_shard_bytes", real_bytes)
    assert sorted(p.name for p in out.iterdir()) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    # A SIGKILL during a write leaves a temp file behind: the rerun removes it.
    (out / ".shard-00002.safetensors.abc123.tmp").write_bytes(b"half a shard")
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("shard-*")}
    resumed = precompute_latents(spec, ae, out, flip=True, shard_size=64, progress=False)
    assert {n: (out / n).stat().st_ino for n in before} == {n: v[0] for n, v in before.items()}
    assert not list(out.glob(".*.tmp"))
    assert len(resumed["shards"]) == 5
    for key in ("data_std", "channel_mean", "channel_std", "label_counts", "settings_sha256"):
        assert resumed[key] == clean[key]
    a, b = load_latents(out), load_latents(tmp_path / "clean")
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    with pytest.raises(DataSourceError, match="different settings"):
        precompute_latents(spec, ae, out, flip=False, shard_size=64, progress=False)


def test_index_detects_a_changed_shard(tmp_path):
    precompute_latents({"dataset": "digits", "split": "reference"}, {"name": "identity"}, tmp_path,
                       shard_size=100, progress=False)
    with open(tmp_path / "shard-00001.safetensors", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(DataSourceError, match="has changed"):
        load_latents(tmp_path)


# ------------------------------------------------------------------------------------ CLI errors


def test_cli_fails_with_one_line_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as missing_root:
        lat.main(["--dataset", "imagefolder", "--root", str(tmp_path / "imagenet" / "train"),
                  "--image-size", "256", "--out", str(out)])
    with pytest.raises(SystemExit) as missing_vae:
        lat.main(["--dataset", "digits", "--autoencoder", "sd-vae-ft-mse", "--weights-dir",
                  str(tmp_path / "w"), "--out", str(out)])
    for info in (missing_root, missing_vae):
        assert str(info.value.code).startswith("error: ") and "\n" not in str(info.value.code)
    assert "imagenet/train does not exist" in str(missing_root.value.code)
    assert "hf download stabilityai/sd-vae-ft-mse" in str(missing_vae.value.code)
    assert not out.exists()


# ------------------------------------------------------------------------------------ 2 ranks


@pytest.mark.distributed
def test_two_ranks_under_torchrun_cover_every_image_once(tmp_path, tree):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "pipeline.latents", "--dataset", "imagefolder", "--root", str(tree),
           "--image-size", "16", "--autoencoder", "identity", "--flip",
           "--shard-size", "2", "--batch-size", "2", "--seed", "3", "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    index = json.loads((out / "index.json").read_text())
    assert [(s["start"], s["stop"]) for s in index["shards"]] == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 9)]
    for i, shard in enumerate(index["shards"]):
        with safe_open(str(out / shard["file"]), framework="pt") as handle:
            assert handle.metadata()["rank"] == str(i % 2)
    z, y, zf, _ = load_latents(out)
    ds = ImageFolderDataset(tree, 16)
    pixels = torch.from_numpy(np.stack([ds[i][0] for i in range(len(ds))])).permute(0, 3, 1, 2) / 127.5 - 1
    assert y.tolist() == ds.labels.tolist()
    torch.testing.assert_close(z, pixels, rtol=0, atol=0)  # item i, exactly once, in dataset order
    torch.testing.assert_close(zf, pixels.flip(-1), rtol=0, atol=0)
    # Resuming with another world size reuses every shard: the settings hash ignores the world size.
    single = precompute_latents({"dataset": "imagefolder", "root": str(tree), "image_size": 16},
                                {"name": "identity"}, out, flip=True, shard_size=2,
                                seed=3, progress=False)
    assert single["settings_sha256"] == index["settings_sha256"] and single["data_std"] == index["data_std"]


def test_vae_on_grey_digits_is_refused_before_any_work(tmp_path, assets):
    with pytest.raises(DataSourceError, match="encodes RGB images"):
        precompute_latents({"dataset": "digits"}, _vae_spec(assets), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
