"""Finite-sample noise of a sample set's metrics: a seeded bootstrap over its features, the reference held fixed.

Each of ``resamples`` replicates draws N rows with replacement from the sample set's N feature rows
(``numpy.random.Generator(PCG64(seed))``, multinomial counts) and recomputes FID (pool features), sFID (spatial) and
the Inception Score (logits, ADM's consecutive splits of the resampled rows) against the same reference
statistics; the images are never re-sampled or re-encoded. The standard deviation of the replicates is the
metric's bootstrap standard error (``se``); the replicates' mean is recorded too, because a resample's duplicates
raise FID a little (the point estimate stays the full set's). Precision and recall have no bootstrap: their
k-NN manifolds would have to be rebuilt per replicate.

The Fréchet distance of a replicate uses ``tr (Σ₁Σ₂)^½ = Σ √λ(S Σ₁ S)`` with ``S = Σ₂^½`` computed once (the
reference is fixed), which equals the ``sqrtm`` form for covariance matrices and is many times faster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from eval.metrics import ADM_IS_SPLIT_SIZE, inception_score_per_split

DEFAULT_RESAMPLES = 200
DEFAULT_SEED = 0
METHOD = ("nonparametric bootstrap over the sample set's feature rows (multinomial counts, PCG64 seed), "
          "reference statistics fixed; se = std of the replicates (ddof 1)")


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The PSD square root of a symmetric matrix (negative eigenvalues from rounding clipped to 0)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


class FixedReferenceFID:
    """Fréchet distance to one fixed Gaussian (μ₂, Σ₂), for many (μ₁, Σ₁)."""

    def __init__(self, mu: np.ndarray, sigma: np.ndarray):
        self.mu = np.asarray(mu, np.float64)
        self.sigma = np.asarray(sigma, np.float64)
        self.root = _symmetric_sqrt(self.sigma)
        self.trace = float(np.trace(self.sigma))

    def __call__(self, mu: np.ndarray, sigma: np.ndarray) -> float:
        diff = mu - self.mu
        inner = self.root @ sigma @ self.root
        root_trace = float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum())
        return float(diff @ diff + np.trace(sigma) + self.trace - 2 * root_trace)


def weighted_statistics(features: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of the rows of ``features`` repeated ``counts`` times (float64)."""
    x = np.asarray(features, np.float64)
    n = float(counts.sum())
    mu = counts @ x / n
    centred = x - mu
    sigma = (centred * counts[:, None]).T @ centred / (n - 1)
    return mu, sigma


def bootstrap_metrics(sample_features: Mapping[str, np.ndarray], pool_stats: tuple[np.ndarray, np.ndarray],
                      spatial_stats: tuple[np.ndarray, np.ndarray], resamples: int = DEFAULT_RESAMPLES,
                      seed: int = DEFAULT_SEED, split_size: int = ADM_IS_SPLIT_SIZE) -> dict[str, Any]:
    """Bootstrap standard errors of FID, sFID and IS of one sample set (module docstring)."""
    if resamples < 2:
        raise ValueError(f"resamples must be >= 2, got {resamples}")
    pool, spatial, logits = (np.asarray(sample_features[k]) for k in ("pool", "spatial", "logits"))
    n = pool.shape[0]
    rng = np.random.Generator(np.random.PCG64(seed))
    fid, sfid = FixedReferenceFID(*pool_stats), FixedReferenceFID(*spatial_stats)
    replicates: dict[str, list[float]] = {"fid": [], "sfid": [], "inception_score": []}
    for _ in range(resamples):
        counts = rng.multinomial(n, np.full(n, 1.0 / n)).astype(np.float64)
        replicates["fid"].append(fid(*weighted_statistics(pool, counts)))
        replicates["sfid"].append(sfid(*weighted_statistics(spatial, counts)))
        rows = np.repeat(np.arange(n), counts.astype(np.int64))
        rng.shuffle(rows)  # IS splits are consecutive rows: a resample's rows in random order
        replicates["inception_score"].append(float(np.mean(inception_score_per_split(logits[rows], split_size))))
    return {
        "method": METHOD,
        "resamples": int(resamples),
        "seed": int(seed),
        "se": {name: float(np.std(values, ddof=1)) for name, values in replicates.items()},
        "replicate_mean": {name: float(np.mean(values)) for name, values in replicates.items()},
        "not_bootstrapped": ["precision", "recall"],
    }
