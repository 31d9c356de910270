"""Compare two runs' results byte for byte, provenance aside: the proof that a refactor changed no number.

    python tools/compare_outputs.py OLD_DIR NEW_DIR [--paths results]

Walks ``results/`` (and ``paper_figures/`` with ``--paths results paper_figures``) of both working
directories. Set aside, because they name the run rather than its numbers: every JSON ``provenance`` block
and the per-run keys ``path``, ``mtime_ns`` and ``seconds``; a CSV's ``# provenance:`` first line and its
``git_commit`` column; the provenance comment line of a Markdown, LaTeX or HTML table; a PDF's
``/CreationDate``; output locks (``.<name>.lock``). Everything else is compared byte for byte (PNGs included).
Exit 0 when identical, 1 with one line per difference otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RUN_SPECIFIC_KEYS = {"provenance", "path", "mtime_ns", "seconds"}
PROVENANCE_LINE = re.compile(r"^\s*(?:<!--|%)?\s*provenance: ")


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in RUN_SPECIFIC_KEYS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def comparable(path: Path) -> Any:
    """What must match: JSON without provenance, CSV without its provenance line, other files' bytes."""
    if path.suffix == ".json":
        return _strip(json.loads(path.read_text()))
    if path.suffix == ".csv":
        rows = list(csv.reader(line for line in path.read_text().splitlines() if not line.startswith("# provenance:")))
        keep = [i for i, name in enumerate(rows[0] if rows else []) if name != "git_commit"]
        return [[row[i] for i in keep if i < len(row)] for row in rows]
    if path.suffix in (".md", ".tex", ".html"):   # the paper-shaped tables: their provenance comment line
        return [line for line in path.read_text().splitlines() if not PROVENANCE_LINE.match(line)]
    if path.suffix == ".pdf":
        return re.sub(rb"/CreationDate \([^)]*\)", b"", path.read_bytes())
    return path.read_bytes()


def _is_lock(path: Path) -> bool:
    """An output lock of core.locks (``.<name>.lock``): it names a process, not a result."""
    return path.name.startswith(".") and path.name.endswith(".lock")


def differences(old: Path, new: Path, folders: Sequence[str]) -> list[str]:
    found = []
    for folder in folders:
        old_files = {p.relative_to(old) for p in (old / folder).rglob("*") if p.is_file() and not _is_lock(p)}
        new_files = {p.relative_to(new) for p in (new / folder).rglob("*") if p.is_file() and not _is_lock(p)}
        found += [f"only in {old}: {p}" for p in sorted(old_files - new_files)]
        found += [f"only in {new}: {p}" for p in sorted(new_files - old_files)]
        found += [f"differs: {p}" for p in sorted(old_files & new_files) if comparable(old / p) != comparable(new / p)]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--paths", nargs="+", default=["results"], help="folders to compare (default: results)")
    args = parser.parse_args(argv)
    found = differences(args.old, args.new, args.paths)
    for line in found:
        print(line)
    count = sum(1 for folder in args.paths for p in (args.old / folder).rglob("*") if p.is_file())
    print(f"{len(found)} differences in {count} files under {', '.join(args.paths)}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
