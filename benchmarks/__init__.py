"""Benchmark suite of the harness: `python -m benchmarks.run_all` (see benchmarks/README.md)."""
