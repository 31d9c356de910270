"""eval.bootstrap: the seeded bootstrap of FID / sFID / IS over a sample set's features (issue 16, item 1)."""

from __future__ import annotations

import numpy as np
import pytest

from eval.bootstrap import FixedReferenceFID, bootstrap_metrics, weighted_statistics
from eval.metrics import feature_statistics, frechet_distance


def _features(rng: np.random.Generator, n: int, d: int = 4, shift: float = 0.3) -> dict[str, np.ndarray]:
    pool = rng.normal(shift, 1.0, size=(n, d))
    return {"pool": pool, "spatial": pool[:, :3] * 2.0, "logits": rng.normal(size=(n, 5))}


def test_the_fixed_reference_form_equals_adms_frechet_distance():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 6)), rng.normal(0.5, 2.0, size=(400, 6)) @ rng.normal(size=(6, 6))
    mu1, s1 = feature_statistics(a)
    mu2, s2 = feature_statistics(b)
    assert FixedReferenceFID(mu2, s2)(mu1, s1) == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-9)


def test_counts_give_the_statistics_of_the_repeated_rows():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 3))
    counts = rng.multinomial(50, np.full(50, 1 / 50)).astype(np.float64)
    mu, sigma = weighted_statistics(x, counts)
    mu_r, sigma_r = feature_statistics(np.repeat(x, counts.astype(int), axis=0))
    assert np.allclose(mu, mu_r) and np.allclose(sigma, sigma_r)


def _reference(d: int = 4) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    return (np.zeros(d), np.eye(d)), (np.zeros(3), 4.0 * np.eye(3))


def test_the_bootstrap_se_estimates_the_spread_of_fid_over_independent_sample_sets():
    """The quantity the interval is for: FID's sd over fresh sample sets of the same size (here 400 sets of 400
    draws from one Gaussian) matches one set's bootstrap se within 35 %."""
    rng = np.random.default_rng(2)
    pool_ref, _ = _reference()
    fid = FixedReferenceFID(*pool_ref)
    spread = np.std([fid(*feature_statistics(_features(rng, 400)["pool"])) for _ in range(400)], ddof=1)
    se = bootstrap_metrics(_features(rng, 400), *_reference(), resamples=300)["se"]["fid"]
    assert se == pytest.approx(spread, rel=0.35)


def test_the_se_shrinks_like_one_over_root_n():
    rng = np.random.default_rng(3)
    small = bootstrap_metrics(_features(rng, 500), *_reference(), resamples=200)["se"]["fid"]
    large = bootstrap_metrics(_features(rng, 4000), *_reference(), resamples=200)["se"]["fid"]
    assert large / small == pytest.approx(np.sqrt(500 / 4000), rel=0.35)


def test_the_bootstrap_is_seeded_and_records_its_method():
    feats = _features(np.random.default_rng(4), 200)
    one = bootstrap_metrics(feats, *_reference(), resamples=20, seed=0)
    assert one == bootstrap_metrics(feats, *_reference(), resamples=20, seed=0)
    assert one["se"] != bootstrap_metrics(feats, *_reference(), resamples=20, seed=1)["se"]
    assert set(one["se"]) == {"fid", "sfid", "inception_score"} and one["resamples"] == 20
    assert one["not_bootstrapped"] == ["precision", "recall"] and "PCG64" in one["method"]
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_metrics(feats, *_reference(), resamples=1)
