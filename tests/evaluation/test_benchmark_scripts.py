"""The benchmark scripts still run against the current code: their figures are the project's
evidence, so a script that no longer imports or runs leaves a number nobody can rerun."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from factories import rewrite_sidecar

from slidemap import api

BENCHMARKS = api.PACKAGE_ROOT / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.rglob("*.py"))


def _script(path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Load a benchmark script by path (benchmarks/ is not a package), with its own folder on
    the import path as when it is run."""
    monkeypatch.syspath_prepend(str(path.parent))
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", SCRIPTS, ids=[str(p.relative_to(BENCHMARKS)) for p in SCRIPTS])
def test_every_name_a_benchmark_script_imports_from_slidemap_exists(path: Path) -> None:
    """Checked without running the script: several run their measurement on import."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("slidemap"):
            module = importlib.import_module(str(node.module))
            for alias in node.names:
                assert hasattr(module, alias.name), f"{path}: {node.module}.{alias.name}"


def test_batch_measures_windows_at_the_model_files_own_size(
        tiny_scene: dict[str, Path], tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    predict = json.loads(tiny_model.with_suffix(".json").read_text())["predict"]
    rewrite_sidecar(tiny_model, predict={**predict, "tile": 64, "overlap": 16})
    batch = _script(BENCHMARKS / "batch.py", monkeypatch)
    done = batch.measure(tiny_model, 2, 1, tiny_scene["image"], tiny_scene["dem"])
    assert (done["batch"], done["windows"], done["tile"]) == (2, 8, 64)
