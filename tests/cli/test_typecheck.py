"""``mypy`` as a contributor runs it from the repository: pyproject.toml alone tells it where
slidemap is, since it cannot follow an editable install's import hook."""

from __future__ import annotations

from pathlib import Path

import pytest

from slidemap import api

mypy = pytest.importorskip("mypy.api")


def test_mypy_finds_slidemap_for_a_file_outside_src_without_mypypath(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No site-packages: as where the editable install is an import hook that mypy skips."""
    monkeypatch.delenv("MYPYPATH", raising=False)
    script = tmp_path / "uses_slidemap.py"
    script.write_text("from slidemap.errors import SlidemapError\n\n"
                      "error: SlidemapError = SlidemapError('x')\n")
    out, err, code = mypy.run(["--config-file", str(api.PACKAGE_ROOT / "pyproject.toml"),
                               "--no-site-packages", "--follow-imports=skip",
                               "--cache-dir", str(tmp_path / "cache"), str(script)])
    assert code == 0, out + err
