"""Issue 19 item 2 (part): `make snapshot` copies the last run into results/<scale>/ only when that run was at
<scale> (tools/snapshot.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("snapshot_tool", ROOT / "tools" / "snapshot.py")
snapshot_tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(snapshot_tool)


def fake_run(root: Path, scale: str) -> None:
    (root / "results" / "cells" / "table1").mkdir(parents=True)
    (root / "paper_figures").mkdir()
    (root / "results" / "table1.csv").write_text(f"# provenance: {{}}\ncell,metric,scale\na,fid,{scale}\n")
    (root / "results" / "table1.md").write_text("| a |\n")
    (root / "results" / "audit.csv").write_text("# provenance: {}\nclaim,verdict\nx,supported\n")
    (root / "results" / "cells" / "table1" / "a.json").write_text("{}")
    (root / "paper_figures" / "fig1.png").write_bytes(b"png")


def test_a_snapshot_of_another_scale_is_refused_and_nothing_is_copied(tmp_path):
    fake_run(tmp_path, "smoke")
    (tmp_path / "results" / "mini").mkdir()
    (tmp_path / "results" / "mini" / "table1.csv").write_text("the committed mini table\n")
    with pytest.raises(SystemExit, match="results/table1.csv holds smoke-scale rows, not mini"):
        snapshot_tool.snapshot("mini", tmp_path)
    assert (tmp_path / "results" / "mini" / "table1.csv").read_text() == "the committed mini table\n"


def test_a_snapshot_of_the_same_scale_copies_tables_cells_and_figures(tmp_path):
    fake_run(tmp_path, "mini")
    copied = snapshot_tool.snapshot("mini", tmp_path)
    assert {p.name for p in copied} == {"table1.csv", "table1.md", "audit.csv", "fig1.png"}
    assert (tmp_path / "results" / "mini" / "cells" / "table1" / "a.json").exists()
    assert (tmp_path / "paper_figures" / "mini" / "fig1.png").read_bytes() == b"png"
