#!/usr/bin/env bash
# Set up ddkit in ./.venv from the package registries alone.
# torch is pinned to 2.13.0 first (the CPU wheel): a bare "torch" would pull a multi-GB CUDA build.
# Usage: bash scripts/setup.sh          # runtime
#        bash scripts/setup.sh --test   # plus test-only packages (pytest, ruff, scipy, diffusers)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "torch==2.13.0"
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install -q -e ".[test]"
else
  .venv/bin/python -m pip install -q -e .
fi
