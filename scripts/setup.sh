#!/usr/bin/env bash
# Install ftwatch into ./.venv from nothing. `--dev` adds the test tools.
# torch is installed first, pinned (CPU wheel on machines without CUDA wheels in reach);
# an existing torch in the venv is kept, so GPU users can install their own build first.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
fi
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
else
  .venv/bin/python -m pip install -q --disable-pip-version-check -e .
fi
