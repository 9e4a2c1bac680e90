"""The wheel, as ``pip install .`` builds it: an installed slidemap runs its defaults outside the
repository (the shipped models, Leaflet for ``report --interactive``, py.typed)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from slidemap import __version__, api

ROOT = api.PACKAGE_ROOT
SHIPPED = [api.DEFAULT_MODEL, api.RGB_MODEL, api.default_model_path(patches=True)]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("setuptools") is None,
                                reason="building the wheel needs setuptools")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of what pyproject.toml reads (the checkout stays clean)."""
    tree = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tree / name)
    for folder in ("src", "models"):
        shutil.copytree(ROOT / folder, tree / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "-w", str(out), str(tree)],
                   check=True, capture_output=True)
    (built,) = out.glob("slidemap-*.whl")
    return built


def test_wheel_holds_every_module_and_the_files_read_at_run_time(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    source = ROOT / "src"
    modules = {p.relative_to(source).as_posix() for p in (source / "slidemap").rglob("*.py")}
    assert modules - names == set()  # a subpackage left out of pyproject's packages
    shipped = {f"slidemap/shipped_models/{path.stem}{suffix}"
               for path in SHIPPED for suffix in (".safetensors", ".json")}
    assert shipped - names == set()
    assert {"slidemap/py.typed", "slidemap/report/vendor/leaflet/leaflet.js",
            "slidemap/report/vendor/leaflet/leaflet.css"} - names == set()
    assert f"slidemap-{__version__}.dist-info/METADATA" in names  # pyproject's version


def test_installed_wheel_finds_its_shipped_models_outside_the_repository(
        wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure-Python wheel installs as it unpacks
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the checkout's editable install
    code = ("import slidemap, slidemap.api as a; "
            "print(slidemap.__file__); print(a.default_model_path()); "
            "print(a.default_model_path(dem=False)); print(a.default_model_path(patches=True))")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    paths = [Path(line) for line in run.stdout.splitlines()]
    assert all(path.is_relative_to(site) for path in paths), paths
    assert [path.name for path in paths[1:]] == [path.name for path in SHIPPED]


def test_slidemap_models_says_where_an_installed_wheel_keeps_its_shipped_models(
        wheel: Path, tmp_path: Path) -> None:
    """suggest, export and explain take a MODEL path: the README's models/... names the
    checkout's copies, so an installed slidemap must say where its own are."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "60"}
    run = subprocess.run([sys.executable, "-m", "slidemap", "models"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("shipped models are in "), run.stdout
    folder = Path(last.removeprefix("shipped models are in "))
    assert folder.is_relative_to(site)
    for path in SHIPPED:
        assert path.stem in run.stdout and (folder / path.name).is_file()
