#!/usr/bin/env bash
# One-step set-up: a virtual environment in .venv with neurodeploy, its test tools, sinabs (core
# layers only, as an independent reference) and Lava (patched for Python 3.11, see
# scripts/install_lava.py). Idempotent: re-running it only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned: the CPU wheel lies on disk; anything else pulls a multi-GB CUDA build.
$VPY -m pip install -q "torch==2.13.0"
$VPY -m pip install -q -c scripts/constraints.txt -e ".[test,loihi,ray]"
# sinabs 3.1.3 pins nir<=1.0.4 and depends on samna, whose PyPI releases are network stubs:
# install it without dependencies (we only use its core layers, never sinabs.backend.dynapcnn).
$VPY -m pip install -q -c scripts/constraints.txt --no-deps "sinabs==3.1.3" "pbr"
# snnTorch and SpikingJelly, for the time-stepped SNN tests (tests/test_timestepped.py): without
# dependencies so pip cannot touch torch; what they really import (torch, numpy, matplotlib, h5py,
# nir) is already there. SpikingJelly 0.0.0.0.14: 2.x needs loguru, tensorboard and torchvision.
$VPY -m pip install -q -c scripts/constraints.txt --no-deps "snntorch==1.0.0" "spikingjelly==0.0.0.0.14"
$VPY scripts/install_lava.py
