"""Feature extraction and metric cost: extractor images/s, then time and peak memory of FID, sFID, IS and
precision/recall at 10k and 50k samples (ADM's sizes: 2048-d pool, 2023-d spatial, 1008 logits, 10k
reference images).

* Inception: torch-fidelity's ``inception-v3-compat`` architecture through
  :class:`eval.features.InceptionExtractor` with *random* weights (the real file is never downloaded;
  speed does not depend on weight values).
* Digits CNN: :class:`eval.features.DigitsExtractor`, random initialisation, on 8×8 images.
* Metrics run :mod:`eval.metrics` on random Gaussian features of the real dimensions. FID/sFID = sample
  statistics + Fréchet distance against precomputed reference statistics (as with ADM's batches); IS over
  splits of 5,000; P/R with k = 3 against 10,000 reference features, blockwise (blocks of 10,000).
* 50k samples: statistics, IS and P/R (50k × 10k) are measured (skip with ``--quick``). The Fréchet distance
  (scipy ``sqrtm`` of a 2048×2048 matrix) costs the same at any N, so it is timed once at 10k and reused
  for 50k unless ``--full`` re-times it.
* Peak memory: the process's resident set sampled every 2 ms while the call runs (CUDA: the allocator's
  peak); ``extra`` is the peak above the level when the call started (the features themselves excluded).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import Context, Result, peak_memory, rate, timed

REFERENCE = 10_000
SIZES = (10_000, 50_000)
POOL, SPATIAL, LOGITS = 2048, 2023, 1008   # ADM's sizes (pipeline.budget.inception_feature_dims: pool, spatial)
INCEPTION_BATCH = 8


def random_inception_weights(folder: Path) -> Path:
    """A state dict of torch-fidelity's Inception-v3 architecture, PyTorch's default random initialisation."""
    from pipeline.budget import inception_architecture

    torch.manual_seed(0)
    net = inception_architecture(folder)
    path = folder / "inception-random.pth"
    torch.save({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    return path


def inception_rate(ctx: Context) -> dict[str, Any]:
    """Images/s of :class:`eval.features.InceptionExtractor` (random weights) on 256-px images."""
    from eval.features import InceptionExtractor
    from pipeline.budget import inception_flops

    with tempfile.TemporaryDirectory(dir=ctx.scratch) as folder:
        extractor = InceptionExtractor(random_inception_weights(Path(folder)), device=ctx.device)
        images = np.random.default_rng(0).integers(0, 256, (INCEPTION_BATCH, 256, 256, 3), dtype=np.uint8)
        timing = rate(ctx, lambda: extractor.extract_batch(images), min_seconds=0.5, max_calls=3)
    images_s = INCEPTION_BATCH / timing["median_s"]
    return {"extractor": "inception-v3-compat (random weights)", "resolution": 256, "batch": INCEPTION_BATCH,
            "images_s": images_s, "achieved_flops": inception_flops(256) * images_s,
            "hours_10k_plus_10k_reference": 20_000 / images_s / 3600,
            "hours_50k_plus_10k_reference": 60_000 / images_s / 3600}


def digits_rate(ctx: Context) -> dict[str, Any]:
    from eval.digits_classifier import DigitsClassifier, DigitsClassifierConfig, save_digits_classifier
    from eval.features import DigitsExtractor

    model = DigitsClassifier(DigitsClassifierConfig(), torch.Generator().manual_seed(0))
    path = ctx.scratch / "digits-random.pt"
    save_digits_classifier(model, {"test_accuracy": float("nan")}, path)
    extractor = DigitsExtractor(path, device=ctx.device)
    images = np.random.default_rng(0).integers(0, 256, (10_000, 8, 8, 1), dtype=np.uint8)
    timing = rate(ctx, lambda: extractor.extract(images, 1000), min_seconds=0.5, max_calls=5)
    return {"extractor": "digits CNN (random init)", "images": len(images),
            "images_s": len(images) / timing["median_s"]}


def _measure(ctx: Context, fn: Any) -> dict[str, Any]:
    with peak_memory(ctx) as memory:
        seconds, value = timed(ctx, fn)
    return {"seconds": seconds, "peak_mb": memory["peak_mb"], "extra_mb": memory["extra_mb"],
            "memory_kind": memory["kind"], "value": value}


def metric_costs(ctx: Context, num: int, reference_pool: np.ndarray, reference_stats: dict[str, Any],
                 frechet: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """Time and memory of each metric on ``num`` random samples; Fréchet distances reused when given."""
    from eval.metrics import feature_statistics, frechet_distance, inception_score, precision_recall

    rng = np.random.default_rng(num)
    features = {"pool": rng.standard_normal((num, POOL), dtype=np.float32),
                "spatial": rng.standard_normal((num, SPATIAL), dtype=np.float32),
                "logits": rng.standard_normal((num, LOGITS), dtype=np.float32)}
    out: dict[str, Any] = {"num_samples": num}
    for name, key in (("fid", "pool"), ("sfid", "spatial")):
        stats = _measure(ctx, lambda k=key: feature_statistics(features[k]))
        if frechet is None:
            distance = _measure(ctx, lambda s=stats["value"], k=key: frechet_distance(*s,
                                                                                      *reference_stats[k]))
            distance["timed_at"] = num
        else:
            distance = dict(frechet[name])
        stats.pop("value")
        distance.pop("value", None)
        out[name] = {"statistics": stats, "frechet": distance,
                     "seconds": stats["seconds"] + distance["seconds"],
                     "peak_mb": max(stats["peak_mb"], distance["peak_mb"]),
                     "extra_mb": max(stats["extra_mb"], distance["extra_mb"])}
    out["is"] = _measure(ctx, lambda: inception_score(features["logits"]))
    out["is"].pop("value")
    pr = _measure(ctx, lambda: precision_recall(reference_pool, features["pool"], device=ctx.device))
    pr.pop("value")
    out["precision_recall"] = {**pr, "reference": len(reference_pool), "dim": POOL}
    return out


def run(ctx: Context) -> Result:
    from eval.metrics import feature_statistics

    result = Result("metrics")
    inception, digits = inception_rate(ctx), digits_rate(ctx)
    rng = np.random.default_rng(1)
    reference_pool = rng.standard_normal((REFERENCE, POOL), dtype=np.float32)
    reference_spatial = rng.standard_normal((REFERENCE, SPATIAL), dtype=np.float32)
    reference_stats = {"pool": feature_statistics(reference_pool),
                       "spatial": feature_statistics(reference_spatial)}
    costs = {}
    frechet = None
    for num in SIZES:
        if num > REFERENCE and ctx.quick:
            continue
        reuse = None if ctx.full else frechet
        costs[str(num)] = metric_costs(ctx, num, reference_pool, reference_stats, reuse)
        if frechet is None:
            frechet = {name: costs[str(num)][name]["frechet"] for name in ("fid", "sfid")}
    result.data = {"inception": inception, "digits": digits, "metrics": costs,
                   "frechet_reused_for_50k": not ctx.full, "skipped_50k": ctx.quick}
    ctx.shared["metrics_host"] = {
        "frechet_seconds_2048": costs["10000"]["fid"]["frechet"]["seconds"],
        "stats_seconds_per_10k_2048": costs["10000"]["fid"]["statistics"]["seconds"],
    }
    result.row("Inception-v3 features 256 px (random weights)", inception["images_s"],
               f"images/s ({inception['achieved_flops'] / 1e9:.0f} GFLOP/s; 50k+10k ref ≈ "
               f"{inception['hours_50k_plus_10k_reference']:.1f} h here)")
    result.row("digits CNN features 8 px", digits["images_s"], "images/s")
    for num, c in costs.items():
        for name, label in (("fid", "FID"), ("sfid", "sFID"), ("is", "IS"), ("precision_recall", "P/R")):
            entry = c[name]
            reused = name in ("fid", "sfid") and num != "10000" and not ctx.full
            note = " (sqrtm timed at 10k)" if reused else ""
            result.row(f"{label} at {int(num) // 1000}k", entry["seconds"],
                       f"s, peak {entry['peak_mb']:.0f} MB (+{entry['extra_mb']:.0f} MB){note}")
    return result
