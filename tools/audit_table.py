"""Write the audit's Markdown table into the README between ``<!-- audit-table -->`` markers.

    python tools/audit_table.py results/mini/audit.csv README.md

One line per (claim, reading): claim text, reading, verdict, effect with its 95 % interval, seeds, what would
decide an inconclusive row; then the verdict counts. The README's table can then never drift from the CSV.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

START, END = "<!-- audit-table -->", "<!-- /audit-table -->"


def _number(text: str) -> str:
    try:
        return f"{float(text):.3g}"
    except ValueError:
        return ""


def table(rows: Sequence[dict[str, str]]) -> str:
    """The Markdown table and a summary line of verdict counts."""
    lines = ["| claim | reading | verdict | effect [95 % interval] | seeds | to decide |", "|---|---|---|---|---|---|"]
    for row in rows:
        if not row["effect"]:
            effect = ""
        elif row["effect_is"].startswith("share"):   # a property's share of the draws: no interval of its own
            effect = f"holds in {float(row['effect']):.1%} of draws"
        else:
            effect = f"{_number(row['effect'])} [{_number(row['effect_low'])}, {_number(row['effect_high'])}]"
        text = row["text"] + (" *(implied)*" if row["type"] == "implied" else "")
        dependent = row["reading_dependent"]
        reading = row["reading"] + (" (verdict depends on it)" if dependent == "yes" else
                                    " (identical results under every reading here)" if dependent.startswith("no (")
                                    else "")
        seeds = str(len(row["seeds"].split())) if row["seeds"] else ""
        lines.append(f"| {text} | {reading} | {row['verdict']} | {effect} | {seeds} | {row['to_decide']} |")
    counts = Counter(row["verdict"] for row in rows)
    order = ["supported", "contradicted", "inconclusive", "not run at this scale", "not applicable at this scale"]
    summary = ", ".join(f"{counts[v]} {v}" for v in order if counts[v])
    return "\n".join(lines) + f"\n\n{len(rows)} rows: {summary}.\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audit", type=Path)
    parser.add_argument("readme", type=Path)
    args = parser.parse_args(argv)
    rows = list(csv.DictReader(line for line in args.audit.read_text().splitlines() if not line.startswith("#")))
    text = args.readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"error: {args.readme} has no {START} ... {END} block")
    new = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _m: f"{START}\n{table(rows)}{END}", text,
                 flags=re.S)
    args.readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
