"""Score a sample npz against a reference npz, like ADM's ``evaluator.py REF SAMPLES``.

``python -m eval.evaluate REF.npz SAMPLES.npz --extractor inception|digits --weights PATH
--out metrics.json [--batch-size B] [--device D]``

Both files are ADM npz (``arr_0`` uint8 NHWC). The reference may carry ADM's precomputed
``mu``/``sigma``/``mu_s``/``sigma_s``; otherwise its statistics come from its own ``arr_0``.
Prints the five numbers as ADM does and writes every setting plus provenance to the JSON, with the bootstrap
standard errors of FID, sFID and IS (``bootstrap``: :mod:`eval.bootstrap`, ``--bootstrap-resamples``, default 200).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from core.errors import InputError, positive_int, require_file, run_cli
from core.io import atomic_write_json, provenance
from core.npz import validate_adm_npz
from eval.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, bootstrap_metrics
from eval.features import DEFAULT_BATCH_SIZE, FeatureExtractor, build_extractor, extract_npz
from eval.metrics import (
    ADM_FID_EPS,
    ADM_IS_SPLIT_SIZE,
    ADM_PR_BLOCK_SIZE,
    ADM_PR_NEIGHBOURHOOD,
    compute_all_metrics,
    load_reference,
)


def evaluate_npz(reference_path: str | os.PathLike, samples_path: str | os.PathLike,
                 extractor: FeatureExtractor, batch_size: int, split_size: int = ADM_IS_SPLIT_SIZE,
                 k: int = ADM_PR_NEIGHBOURHOOD, pr_block_size: int = ADM_PR_BLOCK_SIZE,
                 device: str | torch.device | None = None,
                 bootstrap_resamples: int = DEFAULT_RESAMPLES) -> dict[str, Any]:
    """Metrics of ``samples_path`` against ``reference_path``, their bootstrap standard errors
    (:mod:`eval.bootstrap`; none with ``bootstrap_resamples`` 0) and the settings that produced them."""
    reference = load_reference(reference_path, extractor, batch_size)
    sample_features = extract_npz(extractor, samples_path, batch_size)
    metrics = compute_all_metrics(sample_features, reference, split_size, k, pr_block_size, ADM_FID_EPS, device)
    bootstrap = None if bootstrap_resamples == 0 else bootstrap_metrics(
        sample_features, reference.pool_stats, reference.spatial_stats, bootstrap_resamples, DEFAULT_SEED, split_size)
    num_samples = int(len(sample_features["pool"]))
    settings = {
        "extractor": extractor.settings(),
        "samples": {"path": str(samples_path), "num_samples": num_samples},
        "reference": {"path": str(reference_path), "statistics": reference.statistics_source,
                      "num_images": reference.num_images,
                      "num_images_for_precision_recall": int(len(reference.pool_features))},
        "inception_score": {"split_size": split_size, "num_splits": len(metrics["inception_score_per_split"]),
                            "order": "file order, consecutive splits", "features": "logits"},
        "fid": {"features": "pool", "statistics": "float64 mean/cov", "sqrtm": "scipy.linalg.sqrtm",
                "eps": ADM_FID_EPS},
        "sfid": {"features": "spatial"},
        "precision_recall": {"k": k, "block_size": pr_block_size, "distance": "euclidean float32",
                             "features": "pool", "reference": "arr_0 of the reference npz"},
        "batch_size": batch_size,
        "device": str(device) if device is not None else "cpu",
    }
    return {"metrics": metrics, "bootstrap": bootstrap, "settings": settings}


def print_adm_summary(metrics: dict[str, Any]) -> None:
    """The five lines ADM's evaluator prints."""
    print("Computing evaluations...")
    print(f"Inception Score: {metrics['inception_score']}")
    print(f"FID: {metrics['fid']}")
    print(f"sFID: {metrics['sfid']}")
    print(f"Precision: {metrics['precision']}")
    print(f"Recall: {metrics['recall']}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="ADM-compatible IS / FID / sFID / precision / recall.")
    parser.add_argument("reference", help="reference npz (arr_0 uint8 NHWC, optional mu/sigma/mu_s/sigma_s)")
    parser.add_argument("samples", help="sample npz (arr_0 uint8 NHWC)")
    parser.add_argument("--extractor", choices=("inception", "digits"), default="inception")
    parser.add_argument("--weights", default=None,
                        help="extractor weights; Inception defaults to torch-fidelity's file in the torch hub cache")
    parser.add_argument("--out", required=True, help="metrics JSON")
    parser.add_argument("--batch-size", type=positive_int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--split-size", type=positive_int, default=ADM_IS_SPLIT_SIZE,
                        help="IS split size (ADM: 5000)")
    parser.add_argument("--k", type=positive_int, default=ADM_PR_NEIGHBOURHOOD, help="P/R neighbourhood (ADM: 3)")
    parser.add_argument("--pr-block-size", type=positive_int, default=ADM_PR_BLOCK_SIZE)
    parser.add_argument("--bootstrap-resamples", type=int, default=DEFAULT_RESAMPLES,
                        help="bootstrap replicates of FID/sFID/IS over the sample features (0: none)")
    args = parser.parse_args(argv)
    if args.bootstrap_resamples != 0 and args.bootstrap_resamples < 2:
        raise InputError(f"--bootstrap-resamples: expected 0 or an integer >= 2, got {args.bootstrap_resamples}")
    validate_adm_npz(args.reference, "reference batch")  # both read before the extractor is built
    validate_adm_npz(args.samples, "sample set")
    if args.weights is not None:
        require_file(args.weights, f"{args.extractor} extractor weights")
    return score_npz(args.reference, args.samples, args.out, args.extractor, args.weights, args.batch_size,
                     args.device, args.split_size, args.k, args.pr_block_size, args.bootstrap_resamples)


def score_npz(reference: str | os.PathLike, samples: str | os.PathLike, out: str | os.PathLike,
              extractor: str = "inception", weights: str | None = None, batch_size: int | None = None,
              device: str | None = None, split_size: int = ADM_IS_SPLIT_SIZE, k: int = ADM_PR_NEIGHBOURHOOD,
              pr_block_size: int = ADM_PR_BLOCK_SIZE, bootstrap_resamples: int = DEFAULT_RESAMPLES,
              checkpoint_source: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Score ``samples`` against ``reference``, print ADM's five lines and write the metrics JSON atomically.

    ``checkpoint_source``: the published file the samples' checkpoint was imported from (name, size, SHA-256,
    layout; ``pipeline.sample`` passes it), recorded as the JSON's ``checkpoint_source``."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = {"reference": str(reference), "samples": str(samples), "extractor": extractor, "weights": weights,
                "batch_size": batch_size, "device": device, "split_size": split_size, "k": k,
                "pr_block_size": pr_block_size, "bootstrap_resamples": bootstrap_resamples}
    batch_size = batch_size or DEFAULT_BATCH_SIZE[extractor]
    result = evaluate_npz(reference, samples, build_extractor(extractor, weights, device), batch_size, split_size,
                          k, pr_block_size, device, bootstrap_resamples)
    print_adm_summary(result["metrics"])
    extra = {"checkpoint_source": dict(checkpoint_source)} if checkpoint_source else {}
    atomic_write_json(Path(out), {**result, **extra, "provenance": provenance(settings, None)})
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
