#!/usr/bin/env bash
# Installs NVRTC (the CUDA run-time compiler, no GPU needed) from PyPI into .nvrtc/ at the repository root, unless
# it is already there, and prints the LD_LIBRARY_PATH under which build.rs finds it and compiles every kernel to
# PTX. Pinned to CUDA 12.9: its PTX (ISA 8.8) loads on drivers >= 575, including the target H200's 580.
# Usage: export LD_LIBRARY_PATH="$(scripts/install-nvrtc.sh)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
lib="$root/.nvrtc/nvidia/cuda_nvrtc/lib"
if [ ! -e "$lib/libnvrtc.so.12" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --target "$root/.nvrtc" \
    nvidia-cuda-nvrtc-cu12==12.9.86 >&2
fi
echo "$lib"
