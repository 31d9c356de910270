"""ADM metrics on synthetic features, checked against torch-fidelity's feature-level functions,
brute-force k-NN and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_prc import calculate_precision_recall_full, calculate_precision_recall_part

from eval import metrics
from eval.features import flatten_spatial_hwc
from eval.metrics import (
    feature_statistics,
    frechet_distance,
    inception_score,
    inception_score_per_split,
    manifold_radii,
    precision_recall,
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _relu_features(seed: int, n: int, d: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return np.maximum(rng.normal(size=(n, d)) @ mixing * scale + shift, 0.0)


def _torch_fidelity_fid(feats_1: np.ndarray, feats_2: np.ndarray) -> float:
    stats_1 = fid_features_to_statistics(torch.from_numpy(feats_1.astype(np.float64)))
    stats_2 = fid_features_to_statistics(torch.from_numpy(feats_2.astype(np.float64)))
    return fid_statistics_to_metric(stats_1, stats_2, verbose=False)["frechet_inception_distance"]


def test_feature_statistics_match_numpy_cov_and_torch_fidelity():
    feats = _relu_features(0, 700, 24).astype(np.float32)
    mu, sigma = feature_statistics(feats, block_size=128)
    reference = fid_features_to_statistics(torch.from_numpy(feats.astype(np.float64)))
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, reference["mu"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=0, atol=1e-12)


def test_fid_equals_torch_fidelity():
    # Same statistics into both: ours uses sqrtm (ADM/TTUR), torch-fidelity the eigenvalue form.
    real = _relu_features(1, 900, 32)
    fake = _relu_features(2, 800, 32, shift=0.3, scale=1.2)
    ours = frechet_distance(*feature_statistics(fake), *feature_statistics(real))
    assert ours > 1.0
    assert ours == pytest.approx(_torch_fidelity_fid(fake, real), abs=1e-6)


def test_sfid_equals_torch_fidelity_on_flattened_spatial_maps():
    # sFID = the same Fréchet distance on spatial maps flattened channels-last ([..., :7], H, W, C).
    rng = np.random.default_rng(3)
    maps_real = torch.from_numpy(np.maximum(rng.normal(size=(600, 12, 3, 3)), 0))
    maps_fake = torch.from_numpy(np.maximum(rng.normal(0.2, 1.1, size=(600, 12, 3, 3)), 0))
    real = flatten_spatial_hwc(maps_real, 7).numpy()
    fake = flatten_spatial_hwc(maps_fake, 7).numpy()
    assert real.shape == (600, 63)
    ours = frechet_distance(*feature_statistics(fake), *feature_statistics(real))
    assert ours == pytest.approx(_torch_fidelity_fid(fake, real), abs=1e-6)


def test_fid_closed_form_1d_and_identical_sets_give_zero():
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 4 + 9 - 2 * 6, abs=1e-12)
    feats = _relu_features(4, 500, 32)
    assert abs(frechet_distance(*feature_statistics(feats), *feature_statistics(feats))) < 1e-6


def test_fid_rejects_large_imaginary_component():
    # sqrtm(diag(-1, 1)) = diag(i, 1): ADM's second safeguard raises.
    with pytest.raises(ValueError, match="Imaginary|imaginary"):
        frechet_distance(np.zeros(2), np.diag([1.0, 1.0]), np.zeros(2), np.diag([-1.0, 1.0]))


def test_fid_retries_with_eps_when_sqrtm_is_not_finite(monkeypatch):
    calls = []
    real_sqrtm = metrics.linalg.sqrtm

    def flaky_sqrtm(matrix):
        calls.append(matrix.copy())
        return np.full_like(matrix, np.nan) if len(calls) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(metrics.linalg, "sqrtm", flaky_sqrtm)
    sigma1, sigma2 = np.diag([1.0, 2.0]), np.diag([3.0, 0.5])
    with pytest.warns(RuntimeWarning, match="singular"):
        value = frechet_distance(np.zeros(2), sigma1, np.zeros(2), sigma2, eps=1e-3)
    offset = np.eye(2) * 1e-3
    np.testing.assert_allclose(calls[1], (sigma1 + offset) @ (sigma2 + offset))
    expected = 3.0 + 3.5 - 2 * (np.sqrt(1.001 * 3.001) + np.sqrt(2.001 * 0.501))
    assert value == pytest.approx(expected, abs=1e-12)


def test_inception_score_equals_torch_fidelity_without_shuffle():
    # torch-fidelity splits into `splits` equal chunks after an optional shuffle; with shuffle=False and
    # N = splits·5000 its chunks are exactly ADM's consecutive 5000-sample splits.
    rng = np.random.default_rng(5)
    logits = rng.normal(scale=3.0, size=(10000, 40)).astype(np.float32)
    ours = inception_score(logits)
    theirs = isc_features_to_metric(torch.from_numpy(logits), splits=2, shuffle=False)["inception_score_mean"]
    assert len(inception_score_per_split(logits)) == 2
    assert ours == pytest.approx(theirs, abs=1e-6)
    # a single split (split_size >= N) is torch-fidelity's splits=1
    single = isc_features_to_metric(torch.from_numpy(logits[:3000]), splits=1, shuffle=False)
    assert inception_score(logits[:3000]) == pytest.approx(single["inception_score_mean"], abs=1e-6)


def test_inception_score_one_hot_and_class_sorted_order():
    classes = 10
    labels = np.arange(10000) % classes
    one_hot_logits = np.eye(classes)[labels] * 50.0
    assert inception_score(one_hot_logits) == pytest.approx(classes, rel=1e-9)
    # ADM's contiguous splits collapse IS on class-sorted files; the last split may be shorter.
    sorted_logits = one_hot_logits[np.argsort(labels, kind="stable")]
    assert inception_score(sorted_logits) == pytest.approx(classes / 2, rel=1e-9)
    assert inception_score_per_split(one_hot_logits[:12000 // 2 + 1], split_size=5000).shape == (2,)


def _brute_force_precision_recall(ref: np.ndarray, samples: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x):
        d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
        return np.sort(d, axis=1)[:, k]

    cross = np.sqrt(((samples[:, None, :] - ref[None, :, :]) ** 2).sum(-1))
    precision = (cross <= radii(ref)[None, :]).any(axis=1).mean()
    recall = (cross <= radii(samples)[:, None]).any(axis=0).mean()
    return float(precision), float(recall)


@pytest.fixture(scope="module")
def point_clouds() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(6)
    ref = rng.normal(size=(300, 16)).astype(np.float32)
    samples = (rng.normal(size=(420, 16)) * 0.8 + 0.5).astype(np.float32)
    return ref, samples


def test_precision_recall_equals_brute_force_and_torch_fidelity(point_clouds):
    ref, samples = point_clouds
    ours = precision_recall(ref, samples, k=3, block_size=37)
    brute = _brute_force_precision_recall(ref.astype(np.float64), samples.astype(np.float64), k=3)
    assert 0.05 < ours[0] < 0.95 and 0.05 < ours[1] < 0.95
    assert ours == pytest.approx(brute, abs=1e-6)
    # torch-fidelity 0.4.0 convention: features_1 = generated, features_2 = real.
    full = calculate_precision_recall_full(torch.from_numpy(samples), torch.from_numpy(ref), 3, 50)
    part = calculate_precision_recall_part(torch.from_numpy(samples), torch.from_numpy(ref), 3, 50)
    assert ours == pytest.approx(full, abs=1e-6)
    assert ours == pytest.approx(part, abs=1e-6)
    # block size does not change the result
    assert precision_recall(ref, samples, k=3, block_size=10000) == ours


def test_precision_recall_identical_sets_and_swap(point_clouds):
    ref, samples = point_clouds
    assert precision_recall(ref, ref, k=3, block_size=64) == (1.0, 1.0)
    precision, recall = precision_recall(ref, samples, k=3, block_size=64)
    assert precision_recall(samples, ref, k=3, block_size=64) == (recall, precision)


def test_manifold_radii_are_kth_neighbour_counting_self():
    points = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]])
    # distances from 0: 0, 1, 3, 6, 10 -> k=3 radius 6; from 10: 0, 4, 7, 9, 10 -> 9
    radii = manifold_radii(points, k=3, block_size=2)
    assert radii.tolist() == pytest.approx([6.0, 5.0, 3.0, 5.0, 9.0])
