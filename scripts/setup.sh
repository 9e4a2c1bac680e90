#!/usr/bin/env bash
# Create .venv and install slidemap with its pinned CPU PyTorch. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# pyproject.toml's requires-python, checked before a venv that pip would then refuse is made.
NEW_ENOUGH='import sys; sys.exit(sys.version_info < (3, 10))'
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -c "$NEW_ENOUGH"; then
    echo "error: slidemap needs Python >= 3.10; $PYTHON is $("$PYTHON" -V 2>&1): set PYTHON" >&2
    exit 1
  fi
  "$PYTHON" -m venv .venv
elif ! .venv/bin/python -c "$NEW_ENOUGH"; then
  echo "error: .venv has $(.venv/bin/python -V 2>&1), slidemap needs >= 3.10:" \
    "rm -rf .venv and rerun (PYTHON=python3.X to choose)" >&2
  exit 1
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
# constraints.txt pins torch==2.13.0: an unpinned torch would pull several GB of CUDA wheels.
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[all,dev]"
.venv/bin/slidemap --help >/dev/null
echo "slidemap installed in .venv (ok)"
