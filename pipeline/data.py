"""Data-stage CLI: write an ADM reference npz (reference), check a config's data sources (check).

``python -m pipeline.data reference ...`` is what the rules ``reference_npz`` and ``dataset_npz`` run;
``python -m pipeline.data check <yaml>...`` exits 1 with one ``error:`` line per missing source. The work
lives in :mod:`pipeline.datasets` (image sources), :mod:`pipeline.references` (reference npz),
:mod:`pipeline.vae_weights` (VAE locations) and :mod:`pipeline.data_config` (scale config → specs,
plans, CLI arguments and the DAG-time checks).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from core.errors import run_cli
from core.io import DataSourceError
from pipeline.data_config import check_data_sources
from pipeline.references import write_reference_npz


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ref = sub.add_parser("reference", help="write an ADM reference npz (+ provenance JSON)")
    ref.add_argument("--dataset", required=True, choices=["digits", "imagefolder", "npz"])
    ref.add_argument("--root", help="image-folder root, or the ADM npz for --dataset npz")
    ref.add_argument("--image-size", type=int)
    ref.add_argument("--split", default="reference", choices=["train", "reference", "all"],
                     help="digits split (default: reference)")
    ref.add_argument("--num", type=int, help="number of images (default: all)")
    ref.add_argument("--seed", type=int, default=0)
    ref.add_argument("--copy", action="store_true", help="copy an ADM npz instead of symlinking it")
    ref.add_argument("--workers", type=int, default=4, help="image-decoding threads")
    ref.add_argument("--out", required=True)
    check = sub.add_parser("check", help="check the data sources of a YAML config; exit 1 on problems")
    check.add_argument("config", nargs="+", help="YAML files, merged left to right (top-level keys)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; data-source problems end with one ``error: ...`` line (SystemExit)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "reference":
            summary = write_reference_npz(args.dataset, args.out, root=args.root, image_size=args.image_size,
                                          num=args.num, seed=args.seed, split=args.split, copy=args.copy,
                                          workers=args.workers)
            print(f"wrote {args.out}: {summary['num_images']} images {summary['shape']}")
            return 0
        import yaml

        merged: dict[str, Any] = {}
        for path in args.config:
            with open(path) as handle:
                merged.update(yaml.safe_load(handle) or {})
        errors = check_data_sources(merged)
        for line in errors:
            print(f"error: {line}", file=sys.stderr)
        return 1 if errors else 0
    except DataSourceError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    sys.exit(run_cli(main))
