"""The benchmark scripts still run against the current code: their figures are the project's
evidence, so a script that no longer imports or runs leaves a number nobody can rerun."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from factories import rewrite_sidecar

from slidemap import api

BENCHMARKS = api.PACKAGE_ROOT / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.rglob("*.py"))
SCRIPT_IDS = [str(p.relative_to(BENCHMARKS)) for p in SCRIPTS]


def _imports(path: Path) -> set[str]:
    """The top-level packages a script imports at module level."""
    roots: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    return roots


# Run in a subprocess only where that is quick: importing torch (through slidemap) takes seconds.
LIGHT = [p for p in SCRIPTS if not _imports(p) & {"torch", "slidemap"}]


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


@pytest.mark.parametrize("path", SCRIPTS, ids=SCRIPT_IDS)
def test_every_name_a_benchmark_script_imports_from_slidemap_exists(path: Path) -> None:
    """Checked without running the script: several run their measurement on import."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("slidemap"):
            module = importlib.import_module(str(node.module))
            for alias in node.names:
                assert hasattr(module, alias.name), f"{path}: {node.module}.{alias.name}"


@pytest.mark.parametrize("path", SCRIPTS, ids=SCRIPT_IDS)
def test_every_benchmark_script_parses_its_arguments_with_argparse(path: Path) -> None:
    """Read by hand, ``--help`` was taken for a path or a recipe and ended in a traceback, and a
    script without arguments ran its whole measurement."""
    tree = ast.parse(path.read_text())
    calls = {node.func.attr for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    assert calls & {"parse_args", "parse_intermixed_args"}, path
    assert not any(isinstance(node, ast.Attribute) and node.attr == "argv"
                   for node in ast.walk(tree)), f"{path} reads sys.argv"


@pytest.mark.parametrize("path", LIGHT, ids=[str(p.relative_to(BENCHMARKS)) for p in LIGHT])
def test_help_of_a_benchmark_script_prints_its_usage(path: Path) -> None:
    done = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True,
                          cwd=api.PACKAGE_ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")


def test_batch_measures_windows_at_the_model_files_own_size(
        tiny_scene: dict[str, Path], tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    predict = json.loads(tiny_model.with_suffix(".json").read_text())["predict"]
    rewrite_sidecar(tiny_model, predict={**predict, "tile": 64, "overlap": 16})
    batch = _script(BENCHMARKS / "batch.py", monkeypatch)
    done = batch.measure(tiny_model, 2, 1, tiny_scene["image"], tiny_scene["dem"])
    assert (done["batch"], done["windows"], done["tile"]) == (2, 8, 64)


def test_test_time_without_the_loso_models_names_the_training_to_run_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """It stopped with a traceback after reading the first site's data; now on one line,
    before reading any."""
    test_time = _script(BENCHMARKS / "rgb_sites" / "test_time.py", monkeypatch)
    runs = tmp_path / "rgb-loso-base-s1"
    (runs / "nepal").mkdir(parents=True)
    (runs / "nepal" / "model.safetensors").touch()
    monkeypatch.setattr(test_time, "load_arrays", lambda *args: pytest.fail("data read"))
    monkeypatch.setattr(sys, "argv", ["test_time.py", str(runs)])
    with pytest.raises(SystemExit) as stopped:
        test_time.main()
    message = str(stopped.value.code)
    assert message.count("\n") == 0 and "nepal" not in message, message
    assert message.endswith("run bash benchmarks/rgb_sites/loso.sh base 1 first"), message
