"""scripts/setup.sh run against stand-in interpreters: it says when Python is too old instead of
failing inside pip, and does not report an install whose ``slidemap`` does not run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from slidemap import api

# A stand-in interpreter: -V prints its version, -c runs the version check (exit 1: too old, as
# Python 3.9 would), anything else (``-m venv``, ``-m pip``) succeeds and is logged.
FAKE = """#!/bin/sh
case "$1" in
  -V) echo "Python {version}" ;;
  -c) exit {check} ;;
  *) echo "$*" >> "{log}" ;;
esac
"""


def _checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(api.PACKAGE_ROOT / "scripts" / "setup.sh", root / "scripts" / "setup.sh")
    return root


def _fake(path: Path, version: str, log: Path, check: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE.format(version=version, check=check, log=log))
    path.chmod(0o755)
    return path


def _setup(root: Path, python: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(root / "scripts" / "setup.sh")], capture_output=True,
                          text=True, env={**os.environ, "PYTHON": str(python)}, timeout=60)


def test_a_python_too_old_is_named_before_any_venv_is_made(tmp_path: Path) -> None:
    root, log = _checkout(tmp_path), tmp_path / "calls.log"
    old = _fake(tmp_path / "bin" / "python3.9", "3.9.18", log, check=1)
    run = _setup(root, old)
    assert run.returncode == 1
    assert "needs Python >= 3.10" in run.stderr and "3.9.18" in run.stderr
    assert not log.exists() and not (root / ".venv").exists()


def test_a_venv_left_with_an_old_python_is_not_reused(tmp_path: Path) -> None:
    root, log = _checkout(tmp_path), tmp_path / "calls.log"
    _fake(root / ".venv" / "bin" / "python", "3.9.18", log, check=1)
    run = _setup(root, sys.executable)  # a new enough PYTHON does not mend the old .venv
    assert run.returncode == 1
    assert "rm -rf .venv" in run.stderr and "3.9.18" in run.stderr
    assert not log.exists()  # nothing was installed into it


def test_an_install_whose_command_fails_is_not_reported_as_done(tmp_path: Path) -> None:
    root, log = _checkout(tmp_path), tmp_path / "calls.log"
    _fake(root / ".venv" / "bin" / "python", "3.11.7", log)
    broken = root / ".venv" / "bin" / "slidemap"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    run = _setup(root, sys.executable)
    assert run.returncode != 0
    assert "installed" not in run.stdout
    assert "-c constraints.txt -e .[all,dev]" in log.read_text()  # torch's pin is kept


# A .venv interpreter without pip until ``-m ensurepip`` gives it one (``uv venv`` makes such a
# venv, and so does a ``python3 -m venv`` that failed for want of ensurepip).
PIPLESS = """#!/bin/sh
echo "$*" >> "{log}"
case "$1 $2" in
  "-c "*) exit 0 ;;
  "-m ensurepip") {ensurepip} ;;
  "-m pip") [ -e "{pip}" ] || {{ echo "No module named pip" >&2; exit 1; }} ;;
esac
"""


def test_a_venv_without_pip_gets_pip_from_ensurepip(tmp_path: Path) -> None:
    root, log = _checkout(tmp_path), tmp_path / "calls.log"
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    pip = tmp_path / "pip-installed"
    python.write_text(PIPLESS.format(log=log, pip=pip, ensurepip=f'touch "{pip}"'))
    python.chmod(0o755)
    _fake(root / ".venv" / "bin" / "slidemap", "3.11.7", log)
    run = _setup(root, sys.executable)
    assert run.returncode == 0, run.stderr
    calls = log.read_text()
    assert "-m ensurepip" in calls and "-c constraints.txt -e .[all,dev]" in calls


def test_a_venv_without_pip_that_ensurepip_cannot_mend_says_what_to_do(tmp_path: Path) -> None:
    root, log = _checkout(tmp_path), tmp_path / "calls.log"
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(PIPLESS.format(log=log, pip=tmp_path / "pip-installed", ensurepip="exit 1"))
    python.chmod(0o755)
    run = _setup(root, sys.executable)
    assert run.returncode == 1
    assert "no pip" in run.stderr and "rm -rf .venv" in run.stderr
    assert "-e .[all,dev]" not in log.read_text()
