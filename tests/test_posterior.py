"""SD-VAE latents in ``posterior: distribution`` mode: shards hold mean and log-variance, statistics are those
of the samples training sees, and training draws a fresh posterior sample per step from the step generator
(world-size independent, bit-exact on resume). The fixed modes (``sample``, ``mean``, identity) are unchanged."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from core.io import DataSourceError, config_hash, derive_seed
from models.losses import draw_training_randomness
from pipeline import latents as lat
from pipeline import train as train_module
from pipeline.autoencoders import SDVAE
from pipeline.data_config import latents_cli_args
from pipeline.datasets import ImageFolderDataset, open_image_source
from pipeline.latent_reader import LatentDataset, load_latent_set, load_latents
from pipeline.latents import channel_moments, merge_moments, precompute_latents
from pipeline.runconfig import build_schedule, input_multiplier, loss_config, with_defaults
from pipeline.train_data import (
    DataOrder,
    InMemoryBatches,
    LoaderBatches,
    draw_step,
    open_latents,
    rank_slice,
    scaled_inputs,
)
from tests.test_data_helpers import make_image_tree, make_tiny_vae
from tests.test_train import assert_same_state, continue_and_compare_with_fresh, fit, make_run

CPU = torch.device("cpu")
NAMES = ["latents", "labels", "latents_flipped", "latents_logvar", "latents_flipped_logvar"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    tree = tmp_path_factory.mktemp("tree")
    make_image_tree(tree)  # 9 images in 3 classes
    return {"tree": tree, "vae": make_tiny_vae(tmp_path_factory.mktemp("weights") / "tiny-vae")}


def _source(assets) -> dict:
    return {"dataset": "imagefolder", "root": str(assets["tree"]), "image_size": 16}


def _encode(assets, out: Path, posterior: str, flip: bool = True, **kwargs) -> dict:
    return precompute_latents(_source(assets), {"name": str(assets["vae"]), "posterior": posterior}, out,
                              flip=flip, shard_size=4, batch_size=3, seed=7, progress=False, **kwargs)


@pytest.fixture(scope="module")
def dist_dir(assets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distribution")
    _encode(assets, out, "distribution")
    return out


@pytest.fixture(scope="module")
def sample_dir(assets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    _encode(assets, out, "sample")
    return out


def _run(folder: Path, **overrides) -> dict:
    network = {"name": "DiT-T/2", "input_size": 8, "in_channels": 4, "num_classes": 3, "learn_sigma": False,
               "class_dropout_prob": 0.1}
    return make_run(folder, **{"network": network, "global_batch": 4, **overrides})


def _objective(run: dict):
    full = with_defaults(run)
    return build_schedule(full), loss_config(full)


def _independent_step_noise(seed: int, step: int, shape: tuple[int, ...], run: dict):
    """The step's flips and posterior noise, drawn here in the documented order (times, noise, drops, flips
    when the run flips, ε)."""
    schedule, cfg = _objective(run)
    generator = torch.Generator().manual_seed(derive_seed(seed, "step", step))
    draw_training_randomness(shape, schedule, cfg, generator, CPU)
    flips = torch.rand(shape[0], generator=generator) < 0.5 if run["flip"] else None
    return flips, torch.randn(shape, generator=generator)


def _global_inputs(folder: Path, run: dict, step: int, world_size: int, streamed: bool = False) -> torch.Tensor:
    """Step ``step``'s Algorithm 2 inputs of the whole global batch, assembled from ``world_size`` rank slices."""
    data = open_latents(folder)
    schedule, cfg = _objective(run)
    shape = (run["global_batch"], *data.latent_shape)
    order = DataOrder(run["seed"], data.num_items, run["global_batch"])
    source = LoaderBatches(data, CPU, run["flip"], 0) if streamed else InMemoryBatches(data, CPU, run["flip"])
    _, flips, eps = draw_step(run["seed"], step, shape, schedule, cfg, run["flip"], CPU, posterior=data.distribution)
    parts = []
    for rank in range(world_size):
        part = rank_slice(run["global_batch"], world_size, rank)
        batch = next(source.batches(order, step, step + 1, part))
        parts.append(scaled_inputs(batch.latents, batch.flipped, None if flips is None else flips[part], 0.5,
                                   batch.logvar, batch.flipped_logvar, None if eps is None else eps[part]))
    return torch.cat(parts)


# ------------------------------------------------------------------------------------ the autoencoder


def test_sdvae_returns_the_diffusers_posterior(assets):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    vae = SDVAE(str(assets["vae"]), posterior="distribution")
    mean, logvar = vae.encode_distribution(x)
    with torch.no_grad():
        dist = vae.vae.encode(x).latent_dist
    assert mean.dtype == logvar.dtype == torch.float32 and mean.shape == logvar.shape == (2, 4, 8, 8)
    assert torch.equal(mean, dist.mean) and torch.equal(logvar, dist.logvar)
    sampled = SDVAE(str(assets["vae"]), posterior="sample").encode(x, torch.Generator().manual_seed(3))
    assert torch.equal(vae.encode(x, torch.Generator().manual_seed(3)), sampled)  # encode still samples
    with pytest.raises(ValueError, match="posterior must be one of"):
        SDVAE(str(assets["vae"]), posterior="frozen")


# ------------------------------------------------------------------------------------ the shards


def test_shards_hold_mean_and_logvar_of_every_image(assets, dist_dir, tmp_path):
    index = load_latent_set(dist_dir).index
    assert index["posterior"] == "distribution" and index["tensors"] == NAMES
    assert index["autoencoder"]["posterior"] == "distribution" and "E[exp(logvar)]" in index["stats_over"]
    for shard in index["shards"]:
        with safe_open(str(dist_dir / shard["file"]), framework="pt") as handle:
            assert sorted(handle.keys()) == sorted(NAMES)
            assert all(handle.get_tensor(n).dtype == torch.float32 for n in NAMES if n != "labels")
    got = load_latent_set(dist_dir)
    images = ImageFolderDataset(assets["tree"], 16)
    x = torch.stack([torch.from_numpy(images[i][0]).permute(2, 0, 1) for i in range(len(images))]).float()
    vae = SDVAE(str(assets["vae"]), posterior="distribution")
    mean, logvar = vae.encode_distribution(x / 127.5 - 1)
    mean_f, logvar_f = vae.encode_distribution((x / 127.5 - 1).flip(-1))
    for stored, expected in ((got.latents, mean), (got.logvar, logvar), (got.flipped, mean_f),
                             (got.flipped_logvar, logvar_f)):
        torch.testing.assert_close(stored, expected, rtol=1e-5, atol=1e-5)
    assert got.logvar.min() >= -30 and got.logvar.max() <= 20 and not torch.equal(got.logvar, got.flipped_logvar)
    # The stored mean is the posterior mean of `mean` mode (same encoder, same batches).
    _encode(assets, tmp_path / "mean", "mean")
    torch.testing.assert_close(load_latents(tmp_path / "mean")[0], got.latents, rtol=0, atol=0)


def test_the_mode_is_part_of_the_folder_settings(assets, dist_dir, sample_dir):
    source = open_image_source(_source(assets))
    hashes = {mode: config_hash(lat._settings(source, {"name": "vae", "posterior": mode}, True, 4, 7))
              for mode in ("sample", "mean", "distribution")}
    assert len(set(hashes.values())) == 3
    with pytest.raises(DataSourceError, match="different settings"):
        _encode(assets, sample_dir, "distribution")
    config = {"datasets": {"tree": {"kind": "imagefolder", "root": str(assets["tree"])}},
              "autoencoders": {"vae": {"kind": "sd-vae", "path": str(assets["vae"]), "posterior": "distribution"}}}
    args = latents_cli_args(config, "tree", 16, "vae", flip=True)
    assert args[args.index("--posterior") + 1] == "distribution"
    assert lat._parser().parse_args([*map(str, args), "--out", "x"]).posterior == "distribution"


# ------------------------------------------------------------------------------------ statistics


def test_channel_moments_of_a_distribution_by_hand():
    mean = torch.tensor([[[[1.0, 3.0]], [[0.0, 2.0]]], [[[2.0, 2.0]], [[4.0, -2.0]]]])  # (2, 2, 1, 2)
    logvar = torch.tensor([[[[0.0, 0.5]], [[-1.0, 1.0]]], [[[-30.0, 2.0]], [[0.25, 0.0]]]])
    moments = channel_moments(mean, logvar)
    # channel 0: means 1, 3, 2, 2 (mean 2, Σ(m − 2)² = 2); Σ exp(logvar) = 1 + e^0.5 + e^-30 + e^2
    # channel 1: means 0, 2, 4, −2 (mean 1, Σ(m − 1)² = 1 + 1 + 9 + 9 = 20); Σ exp(logvar) = e^-1 + e + e^0.25 + 1
    m2 = [2 + 1 + math.exp(0.5) + math.exp(-30) + math.exp(2), 20 + math.exp(-1) + math.e + math.exp(0.25) + 1]
    assert moments["count"] == [4, 4] and moments["mean"] == pytest.approx([2.0, 1.0], rel=1e-15)
    assert moments["m2"] == pytest.approx(m2, rel=1e-14)
    stats = merge_moments([moments])
    assert stats["channel_std"] == pytest.approx([(moments["m2"][c] / 4) ** 0.5 for c in range(2)], rel=1e-14)
    without = channel_moments(mean)
    assert without["m2"] == pytest.approx([2.0, 20.0], rel=1e-15) and without["mean"] == moments["mean"]


def test_distribution_statistics_match_a_monte_carlo_sample():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(6, 3, 2, 2, generator=g) * torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1, 1) + 1.0
    logvar = torch.rand(6, 3, 2, 2, generator=g) * 3 - 2.5
    halves = [channel_moments(mean[:2], logvar[:2]), channel_moments(mean[2:], logvar[2:])]  # merged per shard
    exact = merge_moments(halves)
    samples = mean + torch.exp(0.5 * logvar) * torch.randn(40000, *mean.shape, generator=g)
    per_channel = samples.double().transpose(0, 2).reshape(3, -1)
    assert exact["channel_mean"] == pytest.approx(per_channel.mean(1).tolist(), abs=4e-3)
    assert exact["channel_std"] == pytest.approx(per_channel.std(1, unbiased=False).tolist(), rel=4e-3)
    assert exact["data_std"] == pytest.approx(samples.double().std(unbiased=False).item(), rel=4e-3)


def test_index_statistics_are_those_training_sees(dist_dir):
    got = load_latent_set(dist_dir)
    means = torch.cat([got.latents, got.flipped]).double()
    variances = torch.cat([got.logvar, got.flipped_logvar]).double().exp()
    per_mean = means.transpose(0, 1).reshape(4, -1)
    per_var = variances.transpose(0, 1).reshape(4, -1)
    channel_var = per_mean.var(1, unbiased=False) + per_var.mean(1)
    index = got.index
    assert index["channel_mean"] == pytest.approx(per_mean.mean(1).tolist(), rel=1e-10)
    assert index["channel_std"] == pytest.approx(channel_var.sqrt().tolist(), rel=1e-10)
    total_var = means.var(unbiased=False) + variances.mean()
    assert index["data_std"] == pytest.approx(total_var.sqrt().item(), rel=1e-10)
    assert index["data_std"] > means.std(unbiased=False).item()  # the posterior noise adds variance


# ------------------------------------------------------------------------------------ training draws


def _expected_inputs(folder: Path, run: dict, step: int, multiplier: float) -> torch.Tensor:
    """``(mean + exp(0.5·logvar)·ε) × multiplier`` of step ``step``'s global batch, ε and flips drawn here."""
    got = load_latent_set(folder)
    flips, eps = _independent_step_noise(run["seed"], step, (run["global_batch"], 4, 8, 8), run)
    idx = DataOrder(run["seed"], len(got.labels), run["global_batch"]).batch_items(step)
    mask = flips.view(-1, 1, 1, 1)
    mean = torch.where(mask, got.flipped[idx], got.latents[idx])
    logvar = torch.where(mask, got.flipped_logvar[idx], got.logvar[idx])
    return (mean + torch.exp(0.5 * logvar) * eps) * multiplier


def test_each_draw_is_mean_plus_std_times_the_step_noise(dist_dir):
    run = _run(dist_dir)
    data = open_latents(dist_dir)
    assert data.distribution and data.nbytes == 9 * 4 * 8 * 8 * 4 * 4
    for step in (0, 5):
        expected = _expected_inputs(dist_dir, run, step, 0.5)
        for streamed in (False, True):
            assert torch.equal(_global_inputs(dist_dir, run, step, 1, streamed), expected)


def test_the_training_loop_feeds_fresh_posterior_samples(dist_dir, tmp_path, monkeypatch):
    run = _run(dist_dir)
    fed, real = [], train_module.scaled_inputs
    monkeypatch.setattr(train_module, "scaled_inputs", lambda *args, **kwargs: fed.append(real(*args, **kwargs))
                        or fed[-1])
    fit(run, 0, 3, tmp_path)
    multiplier = input_multiplier(with_defaults(run), open_latents(dist_dir).data_std)
    assert len(fed) == 3
    for step in range(3):
        assert torch.equal(fed[step], _expected_inputs(dist_dir, run, step, multiplier))


def test_the_same_image_gets_a_new_sample_at_every_step(dist_dir):
    run = _run(dist_dir, global_batch=9, flip=False)  # every step holds all 9 images
    got = load_latent_set(dist_dir)
    order = DataOrder(run["seed"], 9, 9)
    seen = []
    for step in (0, 1):
        x = _global_inputs(dist_dir, run, step, 1)
        seen.append(x[torch.argsort(order.batch_items(step))])  # back to item order
        _, eps = _independent_step_noise(run["seed"], step, (9, 4, 8, 8), run)
        eps = eps[torch.argsort(order.batch_items(step))]
        assert torch.equal(seen[-1], (got.latents + torch.exp(0.5 * got.logvar) * eps) * 0.5)
    for item in range(9):
        assert not torch.allclose(seen[0][item], seen[1][item])


def test_one_and_two_ranks_see_the_same_global_inputs(dist_dir):
    run = _run(dist_dir)
    for step in (0, 3):
        single = _global_inputs(dist_dir, run, step, 1)
        assert torch.equal(_global_inputs(dist_dir, run, step, 2), single)
        assert torch.equal(_global_inputs(dist_dir, run, step, 2, streamed=True), single)


def test_training_resumes_bit_identically_in_distribution_mode(dist_dir, tmp_path):
    run = _run(dist_dir)
    done, reference = fit(run, 0, 6, tmp_path / "reference")
    assert done["status"] == "completed"
    _, mid = fit(run, 0, 3, tmp_path / "split")
    _, resumed = fit(run, 3, 6, tmp_path / "split", init=mid)
    assert_same_state(resumed, reference)
    _, streamed = fit(run, 0, 6, tmp_path / "streamed", in_memory=False, num_workers=0)
    assert_same_state(streamed, reference)
    # Stopped by the time budget mid-segment, resumed from the rolling checkpoint: equal to a fresh run.
    summary, _ = fit(run, 0, 100000, tmp_path / "budget", time_budget_minutes=0.005, budget_margin_minutes=0.0)
    assert summary["status"] == "time_budget"
    continue_and_compare_with_fresh(run, summary["step"], tmp_path / "budget")


# ------------------------------------------------------------------------------------ fixed modes unchanged


@pytest.fixture(scope="module")
def identity_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("identity")
    precompute_latents({"dataset": "digits", "split": "reference"}, {"name": "identity"}, out, flip=True,
                       shard_size=128, progress=False)
    return out


@pytest.mark.parametrize("which", ["identity", "sample", "mean"])
def test_fixed_modes_draw_and_feed_exactly_as_before(which, identity_dir, sample_dir, assets, tmp_path):
    folder = {"identity": identity_dir, "sample": sample_dir}.get(which)
    if folder is None:
        folder = tmp_path / "mean"
        _encode(assets, folder, "mean")
    latents, labels, flipped, index = load_latents(folder)
    assert "latents_logvar" not in index["tensors"] and index["posterior"] == ("none" if which == "identity" else which)
    data = open_latents(folder)
    assert not data.distribution and data.nbytes == latents.numel() * 4 * 2
    run = _run(folder, global_batch=4)
    schedule, cfg = _objective(run)
    shape = (4, *latents.shape[1:])
    order = DataOrder(run["seed"], len(labels), 4)
    for step in (0, 2):
        draw, flips, eps = draw_step(run["seed"], step, shape, schedule, cfg, True, CPU)
        assert eps is None
        # The draws of before this change: times, noise, drops, flips from the step generator, in that order.
        generator = torch.Generator().manual_seed(derive_seed(run["seed"], "step", step))
        old = draw_training_randomness(shape, schedule, cfg, generator, CPU)
        old_flips = torch.rand(4, generator=generator) < 0.5
        assert torch.equal(draw.t, old.t) and torch.equal(draw.noise, old.noise) and torch.equal(draw.drop, old.drop)
        assert torch.equal(flips, old_flips)
        with_eps = draw_step(run["seed"], step, shape, schedule, cfg, True, CPU, posterior=True)
        assert torch.equal(with_eps.draw.noise, draw.noise) and torch.equal(with_eps.flips, flips)
        idx = order.batch_items(step)
        old_x = torch.where(old_flips.view(-1, 1, 1, 1), flipped[idx], latents[idx]) * 0.5
        for streamed in (False, True):
            source = LoaderBatches(data, CPU, True, 0) if streamed else InMemoryBatches(data, CPU, True)
            batch = next(source.batches(order, step, step + 1, slice(0, 4)))
            assert batch.logvar is None and batch.flipped_logvar is None and torch.equal(batch.labels, labels[idx])
            assert torch.equal(scaled_inputs(batch.latents, batch.flipped, flips, 0.5), old_x)
    assert len(LatentDataset(folder)[0]) == 3


# ------------------------------------------------------------------------------------ mismatched readers


def test_a_distribution_folder_is_refused_by_fixed_latent_readers(dist_dir, sample_dir):
    for read in (load_latents, LatentDataset):
        with pytest.raises(DataSourceError, match="holds posterior distributions") as err:
            read(dist_dir)
        assert "\n" not in str(err.value) and "posterior mean" in str(err.value)
    with pytest.raises(DataSourceError, match="no log-variance"):
        LatentDataset(sample_dir, distribution=True)
    item = LatentDataset(dist_dir, distribution=True)[2]
    got = load_latent_set(dist_dir)
    assert len(item) == 5 and torch.equal(item[3], got.logvar[2]) and torch.equal(item[4], got.flipped_logvar[2])
    with pytest.raises(ValueError, match="posterior noise"):
        scaled_inputs(got.latents[:2], None, None, 1.0, got.logvar[:2])
