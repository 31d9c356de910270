"""Compute budget: estimated wall-clock and GPU-hours of every job, figure and table, before anything runs.

``python -m pipeline.budget --scale paper [--gpu H100-SXM5] [--throughput benchmarks/results/HOST.json]
--out results/paper/budget.csv`` (or ``snakemake results/paper/budget.csv --config scale=paper``).

How a job is estimated (docs/benchmarks.md has the numbers):

* FLOPs come from the architectures themselves: every network, the SD-VAE and Inception-v3 are built on
  the meta device and run once under ``torch.utils.flop_counter.FlopCounterMode`` (nothing is allocated;
  DiT-XL/2 gives 118.6 G multiply-adds at 256 px, the DiT paper's "118.6 Gflops"). A training step costs
  ``3 × forward`` per image (backward = 2 × forward, checked with the counter for all paper networks).
* A training step on GPUs is compute + exposed DDP all-reduce + optimizer/EMA passes (+ SD-VAE encoding when
  a calibration source encoded on the fly), :mod:`~pipeline.budget.step_model`: compute = FLOPs / (peak ×
  utilisation), the utilisation falling with fewer tokens per GPU; its five parameters are fitted to
  published DiT-XL/2 training throughputs (DiT issue #22, fast-DiT) and checked against held-out ones
  (``python -m pipeline.budget --validate``). Sampling and scoring: FLOPs / (peak × the fitted utilisation).
  Peaks and bandwidths are vendor or typical figures (``config/throughput.yaml``).
* A benchmark file (``python -m benchmarks.run_all``) adds the machine it ran on as a device, with its
  measured matmul peak and utilisation, and exact per-configuration training and sampling rates that take
  precedence over the FLOP model.

Jobs (identified by their output path, exactly as the DAG names them): ``latents`` (one per latent
folder), ``train`` (one per segment between milestones) and ``sample`` (one per sample set: sampling on the
job's GPUs, then scoring FID/sFID/IS/P/R on rank 0, as the ``sample`` rule does; the two parts are separate
columns). Figs. 8-10's grid is a ``sample`` job without scoring.
A job needed by several figures/tables is counted once in the grand total. Per experiment the CSV gives
the *standalone* cost (every job it needs, as if only that target were asked for) and the *attributed*
cost (each shared job split equally among the experiments that need it; attributed costs add up to the
grand total), plus the critical path (the longest latents → segments → sample chain).

Modules: :mod:`~pipeline.budget.flops` (FLOP counting on the meta device), :mod:`~pipeline.budget.step_model`
(the fitted training-step model), :mod:`~pipeline.budget.throughput` (devices, calibration, measured
rates), :mod:`~pipeline.budget.estimate` (the jobs and their estimates), :mod:`~pipeline.budget.rows` (CSV
rows and text tables), :mod:`~pipeline.budget.cli` (``main``). Everything
public is re-exported here.
"""

from pipeline.budget.cli import load_scale_config, main
from pipeline.budget.estimate import (
    GRID_EXPERIMENT,
    GRID_TARGET,
    JOB_KINDS,
    BudgetEstimate,
    Job,
    estimate_budget,
)
from pipeline.budget.flops import (
    SD_VAE_ARCHITECTURE,
    count_forward_flops,
    digits_classifier_flops,
    digits_feature_dims,
    dit_paper_gflops,
    inception_architecture,
    inception_feature_dims,
    inception_flops,
    network_forward_flops,
    precision_recall_flops,
    train_flops_per_image,
    vae_flops,
)
from pipeline.budget.rows import COLUMNS, budget_rows, calibration_table, summary_table, write_budget_csv
from pipeline.budget.throughput import THROUGHPUT_FILE, Device, Throughput, load_throughput

__all__ = [
    "COLUMNS", "GRID_EXPERIMENT", "GRID_TARGET", "JOB_KINDS", "SD_VAE_ARCHITECTURE", "THROUGHPUT_FILE",
    "BudgetEstimate", "Device", "Job", "Throughput",
    "budget_rows", "calibration_table", "count_forward_flops", "digits_classifier_flops", "digits_feature_dims",
    "dit_paper_gflops", "estimate_budget", "inception_architecture", "inception_feature_dims",
    "inception_flops", "load_scale_config", "load_throughput", "main", "network_forward_flops",
    "precision_recall_flops", "summary_table", "train_flops_per_image", "vae_flops", "write_budget_csv",
]
