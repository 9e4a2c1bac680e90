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
# A .venv without pip (`uv venv`, or one `python3 -m venv` left when ensurepip was missing, as on
# Debian without python3-venv) gets pip from ensurepip, not "No module named pip" on every rerun.
if ! .venv/bin/python -m pip --version >/dev/null 2>&1 \
    && ! .venv/bin/python -m ensurepip --upgrade >/dev/null 2>&1; then
  echo "error: .venv has no pip and ensurepip cannot install one: rm -rf .venv and rerun" \
    "(on Debian/Ubuntu first: apt install python3-venv)" >&2
  exit 1
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
# constraints.txt pins torch==2.13.0: an unpinned torch would pull several GB of CUDA wheels.
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[all,dev]"
.venv/bin/slidemap --help >/dev/null
echo "slidemap installed in .venv (ok)"
