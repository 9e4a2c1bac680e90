"""The benchmark scripts still run against the current code: their figures are the project's
evidence, so a script that no longer imports or runs leaves a number nobody can rerun."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from slidemap import api

BENCHMARKS = api.PACKAGE_ROOT / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.rglob("*.py"))


@pytest.mark.parametrize("path", SCRIPTS, ids=[str(p.relative_to(BENCHMARKS)) for p in SCRIPTS])
def test_every_name_a_benchmark_script_imports_from_slidemap_exists(path: Path) -> None:
    """Checked without running the script: several run their measurement on import."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("slidemap"):
            module = importlib.import_module(str(node.module))
            for alias in node.names:
                assert hasattr(module, alias.name), f"{path}: {node.module}.{alias.name}"

