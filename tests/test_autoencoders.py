"""Identity and SD-VAE autoencoders behind one interface, loaded through diffusers' real from_pretrained."""

from __future__ import annotations

import pytest
import torch

from core.io import DataSourceError
from pipeline.autoencoders import SDVAE, Autoencoder, IdentityAutoencoder, build_autoencoder, standard_normal
from pipeline.vae_weights import resolve_vae_location
from tests.test_data_helpers import make_tiny_vae

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    return make_tiny_vae(tmp_path_factory.mktemp("weights") / "tiny-vae")


def _images(batch: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_identity_is_a_lossless_autoencoder():
    ae = build_autoencoder({"name": "identity", "channels": 1})
    assert isinstance(ae, Autoencoder) and isinstance(ae, IdentityAutoencoder)
    assert (ae.latent_channels, ae.downsample, ae.scale_factor) == (1, 1, 1.0)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    z = ae.encode(x, torch.Generator().manual_seed(0))
    assert torch.equal(z, x) and z.data_ptr() != x.data_ptr()
    assert torch.equal(ae.decode(z), x)
    with pytest.raises(ValueError):
        ae.encode(torch.zeros(1, 3, 8, 8))


def test_sdvae_attributes_and_shapes(vae_dir):
    ae = build_autoencoder({"name": str(vae_dir), "posterior": "mean"})
    assert isinstance(ae, SDVAE) and isinstance(ae, Autoencoder)
    assert (ae.latent_channels, ae.downsample) == (4, 2)
    assert ae.scale_factor == pytest.approx(0.18215)
    z = ae.encode(_images())
    assert z.shape == (3, 4, 8, 8) and z.dtype == torch.float32
    images = ae.decode(z)
    assert images.shape == (3, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert ae.describe()["posterior"] == "mean" and ae.describe()["location"] == str(vae_dir)


def test_posterior_mean_is_deterministic_and_sample_follows_the_generator(vae_dir):
    mean_ae = SDVAE(str(vae_dir), posterior="mean")
    sample_ae = SDVAE(str(vae_dir), posterior="sample")
    x = _images()
    torch.testing.assert_close(mean_ae.encode(x), mean_ae.encode(x), rtol=0, atol=0)
    a = sample_ae.encode(x, torch.Generator().manual_seed(1))
    b = sample_ae.encode(x, torch.Generator().manual_seed(1))
    c = sample_ae.encode(x, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, mean_ae.encode(x))


def test_sample_matches_diffusers_posterior_sample(vae_dir):
    ae = SDVAE(str(vae_dir), posterior="sample")
    x = _images(batch=1)
    ours = ae.encode(x, torch.Generator().manual_seed(5))
    with torch.no_grad():
        theirs = ae.vae.encode(x).latent_dist.sample(torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, theirs)


def test_per_item_generators_make_noise_batch_independent(vae_dir):
    ae = SDVAE(str(vae_dir), posterior="sample")
    x = _images(batch=3)
    seeds = [11, 12, 13]
    batched = ae.encode(x, [torch.Generator().manual_seed(s) for s in seeds])
    single = torch.cat([ae.encode(x[i: i + 1], [torch.Generator().manual_seed(s)]) for i, s in enumerate(seeds)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
    noise = standard_normal((2, 3), [torch.Generator().manual_seed(0) for _ in range(2)], torch.device("cpu"))
    torch.testing.assert_close(noise[0], noise[1])
    with pytest.raises(ValueError, match="generators"):
        standard_normal((3, 2), [torch.Generator()], torch.device("cpu"))


def test_short_name_is_found_in_the_weights_dir(vae_dir, tmp_path):
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "sd-vae-ft-ema").symlink_to(vae_dir)
    assert resolve_vae_location("sd-vae-ft-ema", weights) == str(weights / "sd-vae-ft-ema")
    assert resolve_vae_location("stabilityai/sd-vae-ft-ema", weights) == str(weights / "sd-vae-ft-ema")
    ae = build_autoencoder({"name": "sd-vae-ft-ema", "weights_dir": str(weights), "posterior": "mean"})
    assert ae.latent_channels == 4 and ae.name == "sd-vae-ft-ema"


def test_missing_weights_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.delenv("FASTERDIT_WEIGHTS_DIR", raising=False)
    with pytest.raises(DataSourceError) as err:
        build_autoencoder({"name": "sd-vae-ft-ema", "weights_dir": str(tmp_path / "w")})
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "w" / "sd-vae-ft-ema") in message
    assert "hf download stabilityai/sd-vae-ft-ema" in message
    with pytest.raises(DataSourceError, match="does not exist"):
        SDVAE(str(tmp_path / "no_such_vae"))
    (tmp_path / "empty_vae").mkdir()
    (tmp_path / "empty_vae" / "config.json").write_text("{}")
    with pytest.raises(DataSourceError, match="not a diffusers AutoencoderKL folder"):
        SDVAE(str(tmp_path / "empty_vae"))
