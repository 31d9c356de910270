"""The package layering of docs/conventions.md: core <- models <- eval <- pipeline; no import runs back up."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> packages it must never import
FORBIDDEN = {
    "core": ("models", "eval", "pipeline"),
    "models": ("eval", "pipeline"),
    "eval": ("pipeline",),
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_a_package_above_it(package):
    offenders = []
    for module in sorted((ROOT / package).rglob("*.py")):
        bad = imported_packages(module) & set(FORBIDDEN[package])
        if bad:
            offenders.append(f"{module.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, offenders


def test_the_console_entry_point_names_real_stages(capsys):
    import importlib

    from pipeline.cli import STAGES, main

    for module in STAGES.values():
        assert hasattr(importlib.import_module(module), "main"), module
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["no-such-stage"]) == 2


def test_portable_path_never_keeps_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.io import REPO_ROOT, portable_path

    assert portable_path(REPO_ROOT / "config" / "claims.yaml") == "config/claims.yaml"
    assert portable_path("results") == "results"
    monkeypatch.chdir(tmp_path)
    assert portable_path(tmp_path / "work" / "x.pt") == "work/x.pt"
    assert portable_path("/somewhere/else/weights.pt") == "weights.pt"
