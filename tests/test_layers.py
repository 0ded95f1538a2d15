"""The layers: the search space, the search, training and evaluation never reach up into the orchestration
(``e2rnas.run``) or the CLI; provenance and I/O live beside them (``e2rnas._provenance``, ``e2rnas._io``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "e2rnas"
LOWER = ("space", "search", "train", "evaluation")
UPPER = ("e2rnas.run", "e2rnas.cli")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("package", LOWER)
def test_lower_layers_do_not_import_the_orchestration_or_the_cli(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    reaching = {f"{f.relative_to(ROOT)}: {m}" for f in files for m in imported_modules(f) if m.startswith(UPPER)}
    assert not reaching


def test_the_scan_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from e2rnas.run.pipeline import run_pipeline\n")
    assert "e2rnas.run.pipeline" in imported_modules(f)
