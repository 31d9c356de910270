"""Feature extractors: sFID layout, TF32 guard, the Inception loading path with local random weights
(never downloading), the digits classifier and the evaluate CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from sklearn.datasets import load_digits

from core.io import atomic_save_npz
from core.npz import iter_npz_rows as iter_npz_images
from core.precision import tf32_disabled
from eval import digits_classifier as dc
from eval.evaluate import main as evaluate_main
from eval.features import (
    DigitsExtractor,
    FeatureExtractor,
    InceptionExtractor,
    build_extractor,
    extract_npz,
    flatten_spatial_hwc,
    resolve_inception_weights,
)
from eval.metrics import feature_statistics, frechet_distance


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """A private, empty torch hub cache, no reachable proxy, and a download function that fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")

    def no_download(*args, **kwargs):
        raise AssertionError("attempted to download Inception weights")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", no_download)
    return tmp_path


def test_flatten_spatial_is_h_w_c_order_with_first_channels():
    n, c, h, w = 2, 192, 17, 17
    ni, ci, hi, wi = torch.meshgrid(*(torch.arange(s) for s in (n, c, h, w)), indexing="ij")
    code = ni * 1_000_000 + ci * 10_000 + hi * 100 + wi  # every entry names its own (n, c, h, w)
    flat = flatten_spatial_hwc(code, 7)
    assert flat.shape == (2, 2023)
    for sample, row, col, channel in [(0, 0, 0, 0), (1, 0, 0, 6), (0, 0, 1, 0), (1, 3, 5, 2), (0, 16, 16, 6)]:
        index = (row * w + col) * 7 + channel
        assert int(flat[sample, index]) == sample * 1_000_000 + channel * 10_000 + row * 100 + col
    assert int(flat.div(10_000, rounding_mode="floor").remainder(100).max()) == 6  # channels 0..6 only


def test_tf32_disabled_sets_and_restores_flags():
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = (conv.fp32_precision, matmul.fp32_precision)
    conv.fp32_precision = matmul.fp32_precision = "tf32"
    try:
        with tf32_disabled():
            assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
        assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
    finally:
        conv.fp32_precision, matmul.fp32_precision = before


def _random_inception_state_dict(monkeypatch) -> dict[str, torch.Tensor]:
    """A randomly initialised torch-fidelity Inception's state dict (its constructor insists on weights,
    so loading is skipped just for building this instance)."""
    with monkeypatch.context() as patch:
        patch.setattr(tf_inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    return model.state_dict()


def test_inception_loads_local_random_weights_and_gives_adm_shapes(offline, monkeypatch):
    weights = offline / "random-inception.pth"
    torch.save(_random_inception_state_dict(monkeypatch), weights)
    extractor = build_extractor("inception", weights, "cpu")
    assert isinstance(extractor, InceptionExtractor) and isinstance(extractor, FeatureExtractor)
    assert len(extractor.weights_sha256) == 64
    raw = []
    extractor.model.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, out: raw.append(out.clone()))
    images = np.random.default_rng(0).integers(0, 256, size=(3, 24, 24, 3), dtype=np.uint8)
    feats = extractor.extract(images, batch_size=2)
    assert feats["pool"].shape == (3, 2048)
    assert feats["logits"].shape == (3, 1008)
    assert feats["spatial"].shape == (3, 2023)
    assert all(value.dtype == np.float32 for value in feats.values())
    fc_weight = extractor.model.fc.weight.detach().numpy()
    np.testing.assert_allclose(feats["logits"], feats["pool"] @ fc_weight.T, rtol=1e-4, atol=1e-4)  # no bias
    raw_map = torch.cat(raw)
    assert raw_map.shape == (3, 192, 17, 17) and float(raw_map.min()) >= 0.0  # post-ReLU
    np.testing.assert_array_equal(feats["spatial"], flatten_spatial_hwc(raw_map, 7).numpy())
    with pytest.raises(ValueError, match="uint8"):
        extractor.extract_batch(images.astype(np.float32))


def test_inception_weights_come_from_hub_cache_or_fail_without_download(offline):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        resolve_inception_weights(None)
    cached = offline / "torch_home" / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"placeholder")
    assert resolve_inception_weights(None) == cached


def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    train, test = order[:1437], order[1437:]
    return images[train], labels[train], images[test], labels[test]


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    """Train/test npz files, a trained classifier file and its report (trained once via the CLI)."""
    root = tmp_path_factory.mktemp("digits")
    train_x, train_y, test_x, test_y = _digits_split()
    atomic_save_npz(root / "train.npz", arr_0=train_x, arr_1=train_y)
    atomic_save_npz(root / "test.npz", arr_0=test_x, arr_1=test_y)
    dc.main(["--train", str(root / "train.npz"), "--test", str(root / "test.npz"), "--out",
             str(root / "classifier.pt"), "--report", str(root / "report.json"), "--epochs", "8", "--seed", "3"])
    return root


def test_digits_classifier_cli_reaches_accuracy_and_records_it(digits_files):
    report = json.loads((digits_files / "report.json").read_text())
    assert report["test_accuracy"] > 0.9
    assert report["num_test"] == 360 and report["seed"] == 3
    assert report["provenance"]["seed"] == 3 and "versions" in report["provenance"]
    model, info = dc.load_digits_classifier(digits_files / "classifier.pt")
    assert info["state_dict_sha256"] == report["state_dict_sha256"]
    assert info["test_accuracy"] == report["test_accuracy"]
    _, _, test_x, test_y = _digits_split()
    assert dc.accuracy(model, test_x, test_y) == report["test_accuracy"]


def test_digits_training_is_deterministic_given_seed():
    train_x, train_y, test_x, test_y = _digits_split()
    runs = [dc.train_digits_classifier(train_x[:400], train_y[:400], test_x, test_y, seed=7, epochs=1)[1]
            for _ in range(2)]
    other = dc.train_digits_classifier(train_x[:400], train_y[:400], test_x, test_y, seed=8, epochs=1)[1]
    assert runs[0]["state_dict_sha256"] == runs[1]["state_dict_sha256"] != other["state_dict_sha256"]


def test_digits_classifier_file_with_altered_weights_is_rejected(digits_files, tmp_path):
    payload = torch.load(digits_files / "classifier.pt", weights_only=True)
    payload["state_dict"]["fc_logits.bias"] += 1.0
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(ValueError, match="hash"):
        dc.load_digits_classifier(tmp_path / "tampered.pt")


def test_digits_extractor_shapes_and_npz_streaming(digits_files):
    extractor = build_extractor("digits", digits_files / "classifier.pt")
    assert isinstance(extractor, DigitsExtractor) and isinstance(extractor, FeatureExtractor)
    streamed = extract_npz(extractor, digits_files / "test.npz", batch_size=100)
    with np.load(digits_files / "test.npz") as data:
        whole = extractor.extract(data["arr_0"], batch_size=1000)
        batches = list(iter_npz_images(digits_files / "test.npz", 100))
        np.testing.assert_array_equal(np.concatenate(batches), data["arr_0"])
    assert [len(b) for b in batches] == [100, 100, 100, 60]
    assert streamed["pool"].shape == (360, 128)
    assert streamed["logits"].shape == (360, 10)
    assert streamed["spatial"].shape == (360, 4 * 4 * 16)
    for key in whole:
        np.testing.assert_allclose(streamed[key], whole[key], rtol=1e-5, atol=1e-6)
    assert extractor.settings()["classifier_test_accuracy"] > 0.9


def test_evaluate_cli_identical_sets_noisy_samples_and_precomputed_reference(digits_files, tmp_path, capsys):
    weights = str(digits_files / "classifier.pt")
    test_npz = str(digits_files / "test.npz")
    same = evaluate_main([test_npz, test_npz, "--extractor", "digits", "--weights", weights,
                          "--out", str(tmp_path / "same.json"), "--device", "cpu"])
    printed = capsys.readouterr().out
    for label in ("Inception Score:", "FID:", "sFID:", "Precision:", "Recall:"):
        assert label in printed
    written = json.loads((tmp_path / "same.json").read_text())
    assert written["metrics"] == same["metrics"]
    assert abs(written["metrics"]["fid"]) < 1e-6 and abs(written["metrics"]["sfid"]) < 1e-6
    assert written["metrics"]["precision"] == written["metrics"]["recall"] == 1.0
    assert 5.0 < written["metrics"]["inception_score"] <= 10.0
    settings = written["settings"]
    assert settings["precision_recall"]["k"] == 3 and settings["inception_score"]["split_size"] == 5000
    assert settings["samples"]["num_samples"] == 360 and settings["reference"]["statistics"].startswith("computed")
    assert len(settings["extractor"]["weights_sha256"]) == 64 and "provenance" in written

    _, _, test_x, test_y = _digits_split()
    noise = np.random.default_rng(1).integers(-60, 61, size=test_x.shape)
    noisy = np.clip(test_x.astype(np.int64) + noise, 0, 255).astype(np.uint8)
    atomic_save_npz(tmp_path / "noisy.npz", arr_0=noisy, arr_1=test_y)
    noisy_result = evaluate_main([test_npz, str(tmp_path / "noisy.npz"), "--extractor", "digits",
                                  "--weights", weights, "--out", str(tmp_path / "noisy.json")])["metrics"]
    assert noisy_result["fid"] > 1e-3 and noisy_result["sfid"] > 1e-3

    # ADM-style reference: precomputed statistics (float32 mu, like ADM's file) take precedence over arr_0.
    extractor = build_extractor("digits", weights)
    train_feats = extract_npz(extractor, digits_files / "train.npz", batch_size=1000)
    mu, sigma = feature_statistics(train_feats["pool"])
    mu_s, sigma_s = feature_statistics(train_feats["spatial"])
    atomic_save_npz(tmp_path / "ref_stats.npz", arr_0=test_x, mu=mu.astype(np.float32), sigma=sigma,
                    mu_s=mu_s.astype(np.float32), sigma_s=sigma_s)
    with_stats = evaluate_main([str(tmp_path / "ref_stats.npz"), str(tmp_path / "noisy.npz"), "--extractor",
                                "digits", "--weights", weights, "--out", str(tmp_path / "stats.json")])
    noisy_feats = extract_npz(extractor, tmp_path / "noisy.npz", batch_size=1000)
    expected_fid = frechet_distance(*feature_statistics(noisy_feats["pool"]), mu.astype(np.float32), sigma)
    assert with_stats["metrics"]["fid"] == pytest.approx(expected_fid, abs=1e-6)
    assert with_stats["metrics"]["precision"] == pytest.approx(noisy_result["precision"])
    assert with_stats["settings"]["reference"]["statistics"].startswith("precomputed")
