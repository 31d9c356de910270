"""Copy the last run's outputs into the committed snapshot of a scale (``make snapshot SCALE=mini``).

    python tools/snapshot.py mini

results/{*.csv,*.json,*.md,*.tex,*.html,cells/} -> results/<scale>/ and paper_figures/{*.png,*.pdf,*.json} ->
paper_figures/<scale>/. Refused, with one line and nothing copied, when a table of results/ was made at another
scale (its ``scale`` column), so a smoke run can never replace the mini snapshot.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

RESULTS, FIGURES = ("*.csv", "*.json", "*.md", "*.tex", "*.html"), ("*.png", "*.pdf", "*.json")


def scales_of(results: Path) -> dict[str, set[str]]:
    """Table name -> the scales its rows were made at (tables without a ``scale`` column are left out)."""
    found = {}
    for table in sorted(results.glob("*.csv")):
        frame = pd.read_csv(table, comment="#", keep_default_na=False, dtype=str)
        if "scale" in frame:
            found[table.name] = {s for s in frame["scale"] if s}
    return found


def snapshot(scale: str, root: Path = Path(".")) -> list[Path]:
    """Check every table's scale, then replace results/<scale>/ and paper_figures/<scale>/; the files copied."""
    results, figures = root / "results", root / "paper_figures"
    wrong = {name: found for name, found in scales_of(results).items() if found - {scale}}
    if wrong:
        name, found = next(iter(wrong.items()))
        raise SystemExit(f"error: results/{name} holds {', '.join(sorted(found))}-scale rows, not {scale}: the last "
                         f"run was another scale (`make run SCALE={scale}` first); nothing copied")
    if not (results / "audit.csv").exists():
        raise SystemExit("error: results/audit.csv is missing: finish a run first (`make run`); nothing copied")
    copied = []
    for source, target, patterns in ((results, results / scale, RESULTS), (figures, figures / scale, FIGURES)):
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for pattern in patterns:
            for file in sorted(source.glob(pattern)):
                copied.append(Path(shutil.copy2(file, target / file.name)))
    if (results / "cells").is_dir():
        shutil.copytree(results / "cells", results / scale / "cells")
    return copied


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scale")
    args = parser.parse_args(argv)
    print(f"snapshot {args.scale}: {len(snapshot(args.scale))} files (+ cells/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
