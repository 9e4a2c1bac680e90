#!/usr/bin/env bash
# Create .venv and install slidemap with its pinned CPU PyTorch. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
# constraints.txt pins torch==2.13.0: an unpinned torch would pull several GB of CUDA wheels.
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[all,dev]"
echo "slidemap installed in .venv ($(.venv/bin/slidemap --help >/dev/null && echo ok))"
