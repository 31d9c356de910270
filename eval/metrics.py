"""ADM's sample-quality metrics on precomputed features: FID, sFID, Inception Score, precision, recall.

Follows OpenAI's ``evaluations/evaluator.py`` (guided-diffusion), see
``/work/shared/reference/eval-protocol.md``: float64 Gaussian statistics, Fréchet distance via
``sqrtm`` with ADM's two safeguards, IS over consecutive splits of 5000 in file order, and the
k-NN manifold precision/recall of Kynkäänniemi et al. with k = 3 and no radius clamping.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import linalg

from core.npz import npz_array_shape
from core.precision import tf32_disabled
from eval.features import FeatureExtractor, extract_npz

ADM_IS_SPLIT_SIZE = 5000
ADM_PR_NEIGHBOURHOOD = 3
ADM_PR_BLOCK_SIZE = 10000
ADM_FID_EPS = 1e-6


def feature_statistics(features: np.ndarray, block_size: int = 10000) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (``np.cov(rowvar=False)``) in float64, accumulated in row blocks."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need a (N >= 2, D) feature matrix, got shape {features.shape}")
    mu = features.mean(axis=0, dtype=np.float64)
    sigma = np.zeros((features.shape[1], features.shape[1]), dtype=np.float64)
    for start in range(0, features.shape[0], block_size):
        centred = features[start:start + block_size].astype(np.float64) - mu
        sigma += centred.T @ centred
    return mu, sigma / (features.shape[0] - 1)


def _quiet_sqrtm(matrix: np.ndarray) -> np.ndarray:
    """``scipy.linalg.sqrtm`` without its singular-matrix warning (ADM passes ``disp=False``, removed in
    SciPy 1.18); the caller checks the result itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        return linalg.sqrtm(matrix)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = ADM_FID_EPS) -> float:
    """Fréchet distance ‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½) between two Gaussians, in float64.

    ADM's safeguards: (1) a non-finite ``sqrtm`` is recomputed with ``eps·I`` added to both
    covariances; (2) a complex result is accepted (real part kept) only if the imaginary part of its
    diagonal is within 1e-3 of zero, else ``ValueError``.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = _quiet_sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: sqrtm of the covariance product is singular; adding {eps} to the diagonals",
                      RuntimeWarning, stacklevel=2)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _quiet_sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score_per_split(logits: np.ndarray, split_size: int = ADM_IS_SPLIT_SIZE) -> np.ndarray:
    """exp(E_x KL(p(y|x) ‖ p(y))) on consecutive chunks of ``split_size`` rows in file order (last may be short).

    ``logits`` are pre-softmax (for Inception: the unbiased 1008 logits); computed in float64.
    """
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if logits.dim() != 2 or logits.shape[0] == 0:
        raise ValueError(f"need (N, K) logits, got shape {tuple(logits.shape)}")
    scores = []
    for chunk in logits.split(split_size):
        log_p = torch.log_softmax(chunk, dim=1)
        log_marginal = torch.logsumexp(log_p, dim=0) - np.log(chunk.shape[0])
        kl = (log_p.exp() * (log_p - log_marginal)).sum(dim=1)
        scores.append(float(kl.mean().exp()))
    return np.asarray(scores)


def inception_score(logits: np.ndarray, split_size: int = ADM_IS_SPLIT_SIZE) -> float:
    """ADM's Inception Score: the mean of :func:`inception_score_per_split` (no std)."""
    return float(np.mean(inception_score_per_split(logits, split_size)))


def _as_tensor(features: np.ndarray | torch.Tensor, device: torch.device | None, dtype: torch.dtype) -> torch.Tensor:
    tensor = torch.as_tensor(features)
    if tensor.dim() != 2:
        raise ValueError(f"need (N, D) features, got shape {tuple(tensor.shape)}")
    return tensor.to(device=device, dtype=dtype)


def manifold_radii(features: torch.Tensor, k: int = ADM_PR_NEIGHBOURHOOD,
                   block_size: int = ADM_PR_BLOCK_SIZE) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (the point itself counts as
    the 0-th), computed blockwise with a running k+1 smallest, so memory is one block × block matrix."""
    if features.shape[0] <= k:
        raise ValueError(f"need more than k={k} points for k-NN radii, got {features.shape[0]}")
    radii = []
    for rows in features.split(block_size):
        nearest = None
        for cols in features.split(block_size):
            candidates = torch.cdist(rows, cols)
            if nearest is not None:
                candidates = torch.cat([nearest, candidates], dim=1)
            nearest = candidates.topk(min(k + 1, candidates.shape[1]), dim=1, largest=False).values
        radii.append(nearest[:, k])
    return torch.cat(radii)


def precision_recall(ref_features: np.ndarray | torch.Tensor, sample_features: np.ndarray | torch.Tensor,
                     k: int = ADM_PR_NEIGHBOURHOOD, block_size: int = ADM_PR_BLOCK_SIZE,
                     device: str | torch.device | None = None,
                     dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """Improved precision and recall (k-NN manifolds, ``<=``, no clamping), as ADM's ``ManifoldEstimator``.

    Precision = share of samples inside some reference ball; recall = share of reference points
    inside some sample ball. Euclidean distances in ``dtype``, TF32 off (ADM uses fp16 squared distances on GPU,
    which moves P/R by about 1e-3). Cross distances are visited once, block by block.
    """
    device = torch.device(device) if device is not None else None
    ref = _as_tensor(ref_features, device, dtype)
    samples = _as_tensor(sample_features, device, dtype)
    if ref.shape[1] != samples.shape[1]:
        raise ValueError(f"feature dims differ: {ref.shape[1]} vs {samples.shape[1]}")
    with tf32_disabled():
        ref_radii = manifold_radii(ref, k, block_size)
        sample_radii = manifold_radii(samples, k, block_size)
        sample_inside = torch.zeros(samples.shape[0], dtype=torch.bool, device=samples.device)
        ref_inside = torch.zeros(ref.shape[0], dtype=torch.bool, device=ref.device)
        for s_start in range(0, samples.shape[0], block_size):
            s_block = slice(s_start, s_start + block_size)
            for r_start in range(0, ref.shape[0], block_size):
                r_block = slice(r_start, r_start + block_size)
                distances = torch.cdist(samples[s_block], ref[r_block])
                sample_inside[s_block] |= (distances <= ref_radii[r_block][None, :]).any(dim=1)
                ref_inside[r_block] |= (distances <= sample_radii[s_block][:, None]).any(dim=0)
    return float(sample_inside.double().mean()), float(ref_inside.double().mean())


@dataclass
class ReferenceSet:
    """What the metrics need from the reference: Gaussian statistics and the features for P/R."""

    pool_stats: tuple[np.ndarray, np.ndarray]
    spatial_stats: tuple[np.ndarray, np.ndarray]
    pool_features: np.ndarray
    statistics_source: str
    num_images: int


def reference_from_features(features: Mapping[str, np.ndarray]) -> ReferenceSet:
    """Reference statistics computed from the reference set's own features."""
    return ReferenceSet(
        pool_stats=feature_statistics(features["pool"]),
        spatial_stats=feature_statistics(features["spatial"]),
        pool_features=np.asarray(features["pool"]),
        statistics_source="computed from arr_0",
        num_images=int(len(features["pool"])),
    )


def load_reference(npz_path: str | os.PathLike, extractor: FeatureExtractor, batch_size: int) -> ReferenceSet:
    """Reference from an npz: ADM's precomputed ``mu``/``sigma``/``mu_s``/``sigma_s`` when present (cast to
    float64), else statistics of ``arr_0``'s features; ``arr_0``'s pool features always serve P/R."""
    features = extract_npz(extractor, npz_path, batch_size)
    with np.load(npz_path) as data:
        keys = set(data.files)
        if "mu" not in keys:
            return reference_from_features(features)
        missing = {"mu", "sigma", "mu_s", "sigma_s"} - keys
        if missing:
            raise ValueError(f"{npz_path} has precomputed 'mu' but lacks {sorted(missing)}")
        pool_stats = (data["mu"].astype(np.float64), data["sigma"].astype(np.float64))
        spatial_stats = (data["mu_s"].astype(np.float64), data["sigma_s"].astype(np.float64))
    for label, stats, key in (("pool", pool_stats, "pool"), ("spatial", spatial_stats, "spatial")):
        if stats[0].shape != (features[key].shape[1],):
            raise ValueError(f"{npz_path}: precomputed {label} statistics have dim {stats[0].shape} but "
                             f"extractor {extractor.name} gives {features[key].shape[1]}")
    return ReferenceSet(pool_stats, spatial_stats, features["pool"], "precomputed in npz (mu, sigma, mu_s, sigma_s)",
                        int(npz_array_shape(npz_path)[0]))


def compute_all_metrics(sample_features: Mapping[str, np.ndarray], reference: ReferenceSet,
                        split_size: int = ADM_IS_SPLIT_SIZE, k: int = ADM_PR_NEIGHBOURHOOD,
                        block_size: int = ADM_PR_BLOCK_SIZE, eps: float = ADM_FID_EPS,
                        device: str | torch.device | None = None) -> dict[str, Any]:
    """IS (sample logits), FID (pool), sFID (spatial), precision and recall (pool vs reference arr_0)."""
    is_splits = inception_score_per_split(sample_features["logits"], split_size)
    sample_pool_stats = feature_statistics(sample_features["pool"])
    sample_spatial_stats = feature_statistics(sample_features["spatial"])
    precision, recall = precision_recall(reference.pool_features, sample_features["pool"], k, block_size, device)
    return {
        "inception_score": float(np.mean(is_splits)),
        "fid": frechet_distance(*sample_pool_stats, *reference.pool_stats, eps=eps),
        "sfid": frechet_distance(*sample_spatial_stats, *reference.spatial_stats, eps=eps),
        "precision": precision,
        "recall": recall,
        "inception_score_per_split": [float(score) for score in is_splits],
    }
