#!/usr/bin/env bash
# Create .venv with the CPU build of torch and anima installed editable (all extras).
# torch is installed first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[all]"
echo "anima installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
