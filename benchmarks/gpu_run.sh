#!/usr/bin/env bash
# Runs benchmarks/gpu.py on a GPU machine that has jax, optax, flax,
# scikit-image, pillow and pytest but no network: the two other dependencies
# travel as wheels in .whl/. First, on any machine with network, from the
# repository root (dm-pix is pure Python; constriction has a cp312 wheel):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl dm-pix constriction
#
# (gets dm_pix-0.4.5-py3-none-any.whl and constriction-0.5.0-cp312-cp312-manylinux_2_17_x86_64
# .manylinux2014_x86_64.whl). Copy the repository with .whl/ and the Kodak images
# (kodim01-24.png under shared/data/kodak/, or pass --kodak DIR) to the GPU machine and run
#
#   bash benchmarks/gpu_run.sh [--kodak DIR]
#
# It installs (a few seconds; the time is recorded), then writes
# benchmarks/results/gpu_<device>.json and .md within about 7 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e .
install_s=$(( $(date +%s) - start ))
python3 -P benchmarks/gpu.py --install-s "$install_s" "$@"
